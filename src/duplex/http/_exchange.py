"""One request and its response, as an explicit state machine.

An exchange knows nothing of the wire: HTTP/1.1's connection driver (and HTTP/2's
streams) drive it. Its lifecycle is one ``state`` field whose moves are listed in one
table; who watches the socket for the peer leaving is one ``watch`` field. The tasks a
handler starts in ``request.nursery`` belong to the exchange and end with it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from math import inf
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ._models import ExchangeNursery, Request

if TYPE_CHECKING:
    from .._body import Readable
    from ._takeover import ResponseControl

__all__ = ["Exchange", "ExchangeBody", "ExchangeTasks", "PeerGone", "State", "Watch"]

log = logging.getLogger("duplex.server")


class PeerGone(trio.BrokenResourceError):
    """The peer closed or reset the connection (or its stream) while the exchange was
    in flight."""


class State(enum.IntEnum):
    """Where an exchange is in its life (an int, so that a move is checked by a bit)."""

    #: The handler runs; nothing of the response has been sent.
    HANDLING = 0
    #: The response head is out; its body is on its way.
    RESPONDING = 1
    #: The response is complete (the request body may still be arriving).
    RESPONDED = 2
    #: The connection (or HTTP/2 stream) was handed to another protocol (a WebSocket).
    DETACHED = 3
    #: The peer left, or the request or response broke: the exchange is cancelled.
    FAILED = 4
    #: Over after a response: its tasks are cancelled, and the connection may go on.
    OVER = 5


#: Every move an exchange may make; any other is a bug in duplex.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.HANDLING: frozenset({State.RESPONDING, State.DETACHED, State.FAILED, State.OVER}),
    # (HTTP/2 hands a stream over once its 200 is out: a WebSocket, RFC 8441.)
    State.RESPONDING: frozenset({State.RESPONDED, State.DETACHED, State.FAILED, State.OVER}),
    State.RESPONDED: frozenset({State.FAILED, State.OVER}),
    # The last three are where an exchange ends.
    State.DETACHED: frozenset(),
    State.FAILED: frozenset(),
    State.OVER: frozenset(),
}
# Module-level names for the states and watchers: looking a member up through its Enum
# class costs several times a global's, and an exchange makes a few dozen a request.
HANDLING, RESPONDING, RESPONDED, DETACHED, FAILED, OVER = State
# The table as one bit mask per state, for the check every move makes.
_ALLOWED = [sum(1 << target for target in TRANSITIONS[state]) for state in State]


class Watch(enum.Enum):
    """Who watches the connection for the peer leaving while the exchange runs."""

    #: Nobody (yet): the server's watcher scheduler may start a task for it.
    NONE = "none"
    #: A watcher task (``Exchange.watch_scope`` cancels it).
    TASK = "task"
    #: The exchange's own task (a channel waiting for news), or the server's parking.
    SELF = "self"
    #: A reader of the request body, which waits on the socket itself.
    READER = "reader"


NO_WATCH, WATCH_TASK, WATCH_SELF, WATCH_READER = Watch


class ExchangeBody(Protocol):
    """What an exchange needs of its request body."""

    @property
    def length(self) -> int | None:
        """The body's length, if known (Content-Length)."""

    def fail(self, error: BaseException) -> None:
        """Later reads raise ``trio.BrokenResourceError`` from ``error``."""

    def close_read_nowait(self, error: BaseException | None = None) -> None:
        """Later reads raise ``trio.ClosedResourceError``."""


class Exchange:
    """One request and its response, with what each side knows of the other."""

    __slots__ = (
        "head_started",
        "on_server_closing",
        "park_deadline",
        "request",
        "request_body",
        "request_complete",
        "response_body",
        "resume",
        "scope",
        "started",
        "state",
        "task_nursery",
        "tasks",
        "wake_pending",
        "watch",
        "watch_scope",
    )

    def __init__(
        self,
        request: Request,
        body: ExchangeBody,
        scope: trio.CancelScope,
        nursery: trio.Nursery,
    ) -> None:
        self.request = request
        #: Where the tasks of ``request.nursery`` run (the server's nursery).
        self.task_nursery = nursery
        # (Made when the handler first asks for it: most exchanges start no task.)
        request.set_nursery(self)
        self.request_body = body
        self.state = HANDLING
        #: True once any of the response has been sent (whatever happened after).
        self.head_started = False
        self.started = trio.current_time()
        #: Cancels the handler and everything else of the exchange.
        self.scope = scope
        #: The response body being sent, closed with the error if the exchange fails.
        self.response_body: Readable | None = None
        #: True once the request body has been read to its end.
        self.request_complete = False
        self.watch = NO_WATCH
        self.watch_scope: trio.CancelScope | None = None
        #: Called when the server starts shutting down while this exchange runs.
        self.on_server_closing: Callable[[], object] | None = None
        # Parking (ResponseControl.park): what to run when resumed, when at the latest,
        # and whether a wake came while the exchange was still leaving its task.
        self.resume: Callable[[ResponseControl], Awaitable[object]] | None = None
        self.park_deadline = inf
        self.wake_pending = False
        #: The tasks of ``request.nursery`` (made with the first one).
        self.tasks: ExchangeTasks | None = None

    def __repr__(self) -> str:
        return f"<Exchange {self.request.method} {self.request.target} {self.state.name}>"

    def to(self, state: State) -> None:
        """Move to ``state``; a move the table does not list is a bug (RuntimeError)."""
        if state is not self.state:
            if not _ALLOWED[self.state] >> state & 1:
                raise RuntimeError(f"an exchange cannot go from {self.state.name} to {state.name}")
            self.state = state
            if state is RESPONDING:
                self.head_started = True
            elif state is OVER or state is FAILED:
                self._untie(state)

    def _untie(self, state: State) -> None:
        # The request holds its exchange (for ``request.nursery``), and a streamed
        # response's body holds it too: cycles that only the garbage collector would
        # undo, one collection every hundred or so requests. At its end the exchange
        # lets go of what the cycles went through.
        if self.tasks is None:
            # (What an ended exchange's nursery needs, without the exchange.)
            self.request.set_nursery(_Ended(self))
        self.on_server_closing = None
        if state is not FAILED:
            # (A failed exchange still closes the response's body with its error.)
            self.response_body = None

    @property
    def failed(self) -> bool:
        return self.state is FAILED

    @property
    def detached(self) -> bool:
        return self.state is DETACHED

    @property
    def running(self) -> bool:
        """True while the response is still being made (neither done nor broken)."""
        return self.state is HANDLING or self.state is RESPONDING

    def stop_watching(self) -> None:
        """Cancel the watcher task, if one watches."""
        if self.watch_scope is not None:
            self.watch_scope.cancel()
            self.watch_scope = None
        if self.watch is WATCH_TASK:
            self.watch = NO_WATCH

    def make_tasks(self) -> ExchangeTasks:
        """``request.nursery``, made on first use."""
        if self.tasks is None:
            self.tasks = ExchangeTasks(self, self.task_nursery)
        return self.tasks

    def task_failed(self) -> None:
        """A task in ``request.nursery`` raised: an unfinished response cannot go on."""
        if self.running:
            self.to(FAILED)

    def cancel(self) -> None:
        """Cancel the handler and the exchange's tasks."""
        self.scope.cancel()
        if self.tasks is not None:
            self.tasks.cancel()

    @property
    def ended(self) -> bool:
        """True once the exchange is in one of its final states."""
        return not _ALLOWED[self.state]

    def end(self) -> None:
        """The exchange is over: cancel the tasks left in ``request.nursery``."""
        if not self.ended:
            self.to(OVER)
        elif self.state is DETACHED:
            # (Handed over, it ended as the other protocol took it; that protocol is
            # done with it too by now.)
            self._untie(DETACHED)
        if self.tasks is not None:
            self.tasks.cancel()

    def fail(self, error: BaseException) -> None:
        """The exchange cannot go on: wake both bodies with ``error`` and cancel."""
        if not self.ended:
            self.to(FAILED)
        self.request_body.fail(error)
        response_body = self.response_body
        if response_body is not None:
            close = getattr(response_body, "close_read_nowait", None)
            if close is not None:
                close(error)
        self.cancel()


class _Ended:
    """What makes ``request.nursery`` once its exchange has ended: what the exchange
    would have made (its tasks are cancelled as they start), without the exchange."""

    __slots__ = ("scope", "state", "task_nursery")

    running = False

    def __init__(self, exchange: Exchange) -> None:
        self.scope = exchange.scope
        self.state = exchange.state
        self.task_nursery = exchange.task_nursery

    def __repr__(self) -> str:
        return f"<ended exchange {self.state.name}>"

    def make_tasks(self) -> ExchangeTasks:
        return ExchangeTasks(self, self.task_nursery)

    def task_failed(self) -> None:
        pass

    def cancel(self) -> None:
        pass


class ExchangeTasks(ExchangeNursery):
    """``request.nursery``: its tasks run in a nursery of the server's, each in a scope
    the exchange cancels at its end (the exchange itself needs no nursery).

    A task that raises anything but trio's resource errors is logged, the exchange told
    (``Exchange.task_failed``) and cancelled.
    """

    __slots__ = ("_done", "_exchange", "_scopes", "count")

    def __init__(self, exchange: Exchange | _Ended, nursery: trio.Nursery) -> None:
        self._exchange = exchange
        self._nursery = nursery
        self._scopes: set[trio.CancelScope] | None = None  # (made with the first task)
        self._done: trio.lowlevel.ParkingLot | None = None
        #: Tasks started and not yet finished.
        self.count = 0

    @property
    def cancel_scope(self) -> trio.CancelScope:
        return self._exchange.scope

    def start_soon(
        self, async_fn: Callable[..., Awaitable[object]], *args: object, name: object = None
    ) -> None:
        self.count += 1
        self._nursery.start_soon(self._run, async_fn, args, name=name or async_fn)

    async def start(
        self, async_fn: Callable[..., Awaitable[object]], *args: object, name: object = None
    ) -> Any:
        self.count += 1
        return await self._nursery.start(self._run, async_fn, args, name=name or async_fn)

    def cancel(self) -> None:
        for scope in self._scopes or ():
            scope.cancel()

    async def wait(self) -> None:
        """Return once every task has finished (shielded: the exchange waits for its
        tasks' cleanup however it ends)."""
        with trio.CancelScope(shield=True):
            while self.count:
                if self._done is None:
                    self._done = trio.lowlevel.ParkingLot()
                await self._done.park()

    async def _run(
        self,
        async_fn: Callable[..., Awaitable[object]],
        args: tuple[object, ...],
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        exchange = self._exchange
        scope = trio.CancelScope()
        if self._scopes is None:
            self._scopes = set()
        self._scopes.add(scope)
        try:
            with scope:
                if exchange.state is FAILED or exchange.state is OVER:
                    scope.cancel()
                if task_status is trio.TASK_STATUS_IGNORED:
                    await async_fn(*args)
                else:
                    await async_fn(*args, task_status=task_status)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            log.debug("a task of the exchange stopped: %r", error)
        except Exception:
            log.exception("a task of %r failed", exchange)
            exchange.task_failed()
            exchange.cancel()
        finally:
            self._scopes.discard(scope)
            self.count -= 1
            if not self.count and self._done is not None:
                self._done.unpark_all()
