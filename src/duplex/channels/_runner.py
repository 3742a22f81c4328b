"""The server's side of a channel: what goes out to the client and when (``Writer``,
which lasts as long as the channel), and the task that opens the channel, writes,
waits for news or parks with no task at all, ends it, and calls ``on_close`` exactly
once (``Runner``, one per stretch of the channel's life in a task).

One task writes at a time. While ``on_open``, ``after_open`` or ``before_close`` runs
(hooks that may send), a second task writes beside it, so that what a hook sends goes
out as it is sent, and a hook that sends more than the queue holds is held back by the
client instead of deadlocked.
"""

from __future__ import annotations

import enum
import inspect
import logging
from collections.abc import Awaitable, Iterable, Iterator
from math import inf
from typing import Protocol

import trio

from ..http._takeover import ResponseControl
from ._hooks import Callback, Hooks, call
from ._lifecycle import Lifecycle, State
from ._messages import Message, Stamped
from ._queue import MessageQueue
from ._status import GONE, CloseStatus, status_for
from ._transports import ChannelHead, Refused, Transport

__all__ = ["CLEANUP_SECONDS", "ChannelLike", "Mode", "Runner", "Writer"]

log = logging.getLogger("duplex.channel")

#: How long the ``after_close`` hooks may take, and then ``on_close``, each.
CLEANUP_SECONDS = 5.0

SHUTDOWN = CloseStatus("shutdown", 1001, "the server is shutting down")
#: 1012, "service restart": a client may reconnect at once (another worker serves).
RESTART = CloseStatus("shutdown", 1012, "the server is restarting")


class ChannelLike(ChannelHead, Protocol):
    """What the runner reads of its channel (and hands to callbacks)."""

    heartbeat: float | None
    on_open: Callback | None
    on_receive: Callback | None
    on_close: Callback | None


class Mode(enum.Enum):
    """What the channel's writing task is doing."""

    #: Writing, or deciding what to do next.
    BUSY = ("busy", False)
    #: Waiting for news in its own task; a send is queued and wakes it.
    WAITING = ("waiting", False)
    #: Waiting in its own task, and a send may go straight to the socket.
    IDLE = ("idle", True)
    #: Held by the server with no task; a send may go straight to the socket.
    PARKED = ("parked", True)

    def __init__(self, label: str, direct: bool) -> None:
        #: A message may be written from the sender's task (``Writer.write_now``). (An
        #: attribute, not a property: a broadcast asks it of every member.)
        self.direct = direct


class Writer:
    """What goes out to a channel's client, and when; it lasts as long as the channel.

    Senders queue messages, or write them straight to the socket while the channel's
    task waits (``mode.direct``); ``wake`` has the task look again. ``run`` is the channel's
    ``Takeover`` function, and ``resume`` its sequel after the server held it parked.
    """

    __slots__ = (
        "_channel",
        "_control",
        "_deadline",
        "_hooks",
        "_life",
        "_partial",
        "_queue",
        "_transport",
        "_wait_scope",
        "_write_scope",
        "mode",
    )

    def __init__(
        self,
        channel: ChannelLike,
        life: Lifecycle,
        queue: MessageQueue,
        transport: Transport,
        hooks: Hooks,
    ) -> None:
        #: The channel, until it is done (then None: it holds its writer, and is no
        #: longer held by it, so that it ends with no cycle for the collector to undo).
        self._channel: ChannelLike | None = channel
        self._life = life
        self._queue = queue
        self._transport = transport
        self._hooks = hooks
        self._control: ResponseControl | None = None
        self.mode = Mode.BUSY
        # The scope a waiting task waits in (``wake`` cancels it), and the one the
        # writing task writes in (cancelled to cut off a client that takes nothing more).
        self._wait_scope: trio.CancelScope | None = None
        self._write_scope: trio.CancelScope | None = None
        #: ``write_nowait`` left part of a message for the channel's task to send.
        self._partial = False
        #: Parked, the heartbeat's deadline.
        self._deadline = inf

    # -- from any task ----------------------------------------------------------------

    def write_now(self, message: Message | Stamped) -> bool | None:
        """Write ``message`` from the sender's task if the socket takes it without
        waiting (a broadcast then wakes no task at all): True if it went out (or will,
        from the channel's task), False if the client is gone, None when it must be
        queued instead. Only while ``mode.direct``."""
        control = self._control
        assert control is not None
        try:
            written = control.write_nowait(self._transport.encode(message))
        except trio.BrokenResourceError:
            self.close(GONE)
            return False
        if written is None:
            return None
        if not written:
            # The socket took part of it: the channel's task sends the rest.
            self._partial = True
            self.wake()
        return True

    def wake(self) -> None:
        """Have the channel's task look at the queue and the lifecycle again."""
        mode = self.mode
        if mode is Mode.BUSY:
            return
        self.mode = Mode.BUSY  # what comes next waits for the task, in order
        if mode is Mode.PARKED:
            assert self._control is not None
            self._control.wake()
        else:
            assert self._wait_scope is not None
            self._wait_scope.cancel()

    def close(self, status: CloseStatus) -> bool:
        """Ask for the close for the reason ``status``; False if it was asked already."""
        if not self._life.ask_close(status):
            return False
        if status.kind in ("gone", "too-slow") and self._write_scope is not None:
            # Nothing more reaches this client: a write blocked on it would hold the
            # close (and on_close) until the write timeout.
            self._write_scope.cancel()
        self.wake()
        self._queue.wake_senders()
        return True

    def close_for_shutdown(self) -> None:
        """``close`` for a server that starts shutting down (a bound method is all an
        idle channel keeps for it)."""
        control = self._control
        self.close(RESTART if control is not None and control.server_restarting else SHUTDOWN)

    def illegal(self, action: str) -> None:
        """An illegal action (a send from ``after_close``, a header changed once open):
        logged, and the channel ends as errored."""
        channel = self._channel if self._channel is not None else "a finished channel"
        log.error("%r: illegal action: %s; the channel is closed", channel, action)
        self.fail(CloseStatus("error", 1011, f"illegal action: {action}"))

    def fail(self, status: CloseStatus) -> None:
        """End the channel as ``ERRORED`` for the reason ``status``."""
        self._life.fail(status)
        self.wake()
        self._queue.wake_senders()

    # -- the channel's task -----------------------------------------------------------

    async def run(self, control: ResponseControl) -> None:
        """Open the channel on ``control`` and run it until it closes or parks."""
        await Runner(self).drive(control, resumed=False, heartbeat_due=False)

    async def resume(self, control: ResponseControl) -> None:
        """Go on after the server held the channel parked."""
        heartbeat_due = self.mode is Mode.PARKED and trio.current_time() >= self._deadline
        self.mode = Mode.BUSY
        await Runner(self).drive(control, resumed=True, heartbeat_due=heartbeat_due)

    async def wait(self, control: ResponseControl, *, alone: bool, solo: bool) -> bool:
        """Wait until there is something to do (``wake``), the heartbeat is due, or the
        client leaves; True if the channel parked instead (the caller returns, and the
        server calls ``resume`` in a new task for any of these). ``alone``: no hook
        runs; ``solo``: no task receives either.

        Messages may go out from the sender's task meanwhile. Where the server can, it
        holds the channel with no task while it waits (``ResponseControl.park``);
        otherwise this task watches for the client leaving itself.
        """
        transport = self._transport
        direct = transport.direct and not self._hooks.before_chunk
        deadline = inf
        heartbeat = self._channel.heartbeat if self._channel is not None else None
        if transport.heartbeat is not None and heartbeat is not None:
            deadline = trio.current_time() + heartbeat
        if alone and direct and solo and control.park(self.resume, deadline):
            self.mode = Mode.PARKED
            self._deadline = deadline
            return True
        with trio.CancelScope(deadline=deadline) as scope:
            self._wait_scope = scope
            self.mode = Mode.IDLE if direct else Mode.WAITING
            try:
                if alone and control.can_watch:
                    await control.wait_peer_gone()
                    self.close(GONE)
                else:
                    # Beside hooks, the server watches for the client leaving (and then
                    # cancels the hooks too).
                    await trio.sleep_forever()
            finally:
                woken = self.mode is Mode.BUSY
                self.mode = Mode.BUSY
                self._wait_scope = None
        await self.after_wait(control, heartbeat_due=scope.cancelled_caught and not woken)
        return False

    async def after_wait(self, control: ResponseControl, *, heartbeat_due: bool) -> None:
        """What follows a wait for news: the rest of a message the socket took only in
        part, and the heartbeat if that is what ended the wait."""
        if self._partial:
            self._partial = False
            await control.flush()
        if heartbeat_due and self._transport.heartbeat is not None:
            await control.write(self._transport.heartbeat)


class Runner:
    """One stretch of a channel's life in a task: from its opening (or its resumption
    after a park) until it closes (or parks again)."""

    __slots__ = ("_beside_hooks", "_channel", "_hooks", "_life", "_queue", "_transport", "_writer")

    def __init__(self, writer: Writer) -> None:
        assert writer._channel is not None, "a channel that is done runs no more"
        self._writer = writer
        self._channel = writer._channel
        self._life = writer._life
        self._queue = writer._queue
        self._transport = writer._transport
        self._hooks = writer._hooks
        #: Hooks run in the channel's task, and a second task writes beside them.
        self._beside_hooks = False

    async def drive(self, control: ResponseControl, *, resumed: bool, heartbeat_due: bool) -> None:
        """Open the channel (or go on with it, ``resumed``) and run it until it closes,
        then finish it; or until it parks."""
        channel, writer = self._channel, self._writer
        writer._control = control
        status: CloseStatus | None = None
        parked = False
        try:
            if (
                self._transport.always_receives
                or channel.on_receive is not None
                or channel.request.body.length != 0
            ):
                async with trio.open_nursery() as nursery:
                    status = await self._serve(control, nursery, resumed, heartbeat_due)
                    nursery.cancel_scope.cancel()
            else:
                # Nothing to receive: the channel is this task alone, and while it waits
                # for news, not even that (it parks).
                status = await self._serve(control, None, resumed, heartbeat_due)
                parked = status is None
        finally:
            # Parked, the server holds the channel, and ``Writer.resume`` goes on with it.
            if not parked:
                if status is None:  # cancelled: the client went away, or the server stopped
                    if control.gone:
                        status = GONE
                    elif control.server_restarting:
                        status = CloseStatus("shutdown", 1012, "the server restarted")
                    else:
                        status = CloseStatus("shutdown", 1001, "the server stopped")
                await self._finish(status)  # (its callbacks run shielded)

    async def _serve(
        self,
        control: ResponseControl,
        nursery: trio.Nursery | None,
        resumed: bool,
        heartbeat_due: bool,
    ) -> CloseStatus | None:
        """Open the channel (unless ``resumed``) and run it until it closes or parks;
        why it closed (None when it parked)."""
        life = self._life
        try:
            if resumed:
                await self._writer.after_wait(control, heartbeat_due=heartbeat_due)
            else:
                await self._open(control, nursery)
            if await self._write_in_scope(control, solo=nursery is None):
                return None
        except Refused as error:
            log.debug("%r: refused: %s", self._channel, error)
            return CloseStatus("error", None, str(error))
        except Exception as error:
            status = status_for(error, life.close_status)
            if status is None:
                log.exception("%r failed", self._channel)
                self._writer.fail(CloseStatus("error", 1011, repr(error)))
                return life.close_status
            log.debug("%r: the transport broke: %r", self._channel, error)
            return status
        return life.close_status or CloseStatus("server")

    async def _open(self, control: ResponseControl, nursery: trio.Nursery | None) -> None:
        channel, life = self._channel, self._life
        if life.state is State.ERRORED:
            raise trio.ClosedResourceError("the channel errored before it opened")
        close = self._writer.close
        await self._transport.open(channel, control, nursery, close)
        life.opened()
        control.on_server_closing(self._writer.close_for_shutdown)
        if nursery is not None:
            nursery.start_soon(self._receive)
        await self._run_hooks(control, (channel.on_open, *self._hooks.after_open))

    async def _run_hooks(self, control: ResponseControl, hooks: Iterable[Callback | None]) -> None:
        """Run ``hooks`` in order; from the first one that waits, a second task writes
        what they send while they run."""
        pending = iter(hooks)
        for hook in pending:
            if hook is None:
                continue
            result = hook(self._channel)
            if inspect.isawaitable(result):
                await self._run_beside_writer(control, result, pending)
                return

    async def _run_beside_writer(
        self, control: ResponseControl, first: Awaitable[object], rest: Iterator[Callback | None]
    ) -> None:
        async with trio.open_nursery() as nursery:
            self._beside_hooks = True
            nursery.start_soon(self._write_beside, control)
            try:
                await first
                for hook in rest:
                    await call(hook, self._channel)
            finally:
                self._beside_hooks = False
                self._writer.wake()

    async def _write_beside(self, control: ResponseControl) -> None:
        try:
            await self._write_in_scope(control, solo=False, beside=True)
        except Exception as error:
            status = status_for(error, self._life.close_status)
            if status is None:
                raise
            # The hooks go on, and see their sends refused.
            log.debug("%r: the transport broke: %r", self._channel, error)
            self._writer.close(status)

    async def _write_in_scope(
        self, control: ResponseControl, *, solo: bool, beside: bool = False
    ) -> bool:
        """``_write`` in a scope that ``close`` cancels for a client that takes nothing
        more (``close`` has then recorded why); True if the channel parked.

        The scope is the writer's innermost one while it lasts: the writer beside
        ``before_close`` hooks, then the task that runs them."""
        writer = self._writer
        outer = writer._write_scope
        scope = writer._write_scope = trio.CancelScope()
        try:
            with scope:
                return await self._write(control, solo=solo, beside=beside)
        finally:
            writer._write_scope = outer
        return False

    async def _write(self, control: ResponseControl, *, solo: bool, beside: bool) -> bool:
        """Write what is sent until the channel ends (False) or parks (True, only
        ``solo``: no task receives); ``beside`` hooks, until they return."""
        life, queue = self._life, self._queue
        while True:
            state, status = life.state, life.close_status
            if state is State.ERRORED:
                if not beside:
                    await self._transport.abort(control)
                return False  # an unfinished response: the server cuts the connection
            if status is not None and status.kind in ("gone", "client", "error"):
                return False  # nothing more can, or should, go out
            if status is not None and status.kind == "too-slow":
                queue.clear()
                if beside:
                    return False
                break
            if queue and not (beside and self._may_be_last()):
                if not await self._flush(control, beside=beside):
                    return False  # that was the whole reply
                continue
            if beside:
                if not self._beside_hooks:
                    return False
                await self._writer.wait(control, alone=False, solo=False)
                continue
            if status is None:
                if await self._writer.wait(control, alone=True, solo=solo):
                    return True
                continue
            if state is State.CLOSING:
                life.advance(State.BEFORE_CLOSE)
                await self._run_hooks(control, self._hooks.before_close)
                if life.state is State.BEFORE_CLOSE:  # (not ERRORED meanwhile)
                    life.advance(State.ENDING)
                continue
            break
        await self._transport.end(self._channel, control, status)
        return False

    def _may_be_last(self) -> bool:
        """True when the one queued message may turn out to be the whole reply (a
        long-poll answer): the writer beside the hooks leaves it to the channel's task."""
        return (
            self._transport.holds_head
            and self._life.close_status is not None
            and len(self._queue) == 1
        )

    async def _flush(self, control: ResponseControl, *, beside: bool) -> bool:
        """Send everything queued; False if that made the whole reply."""
        life, queue, hooks = self._life, self._queue, self._hooks
        batch, size = queue.take()
        try:
            chunks: list[Message] = batch
            for hook in hooks.before_chunk:
                chunks = list(await call(hook, chunks))
            last = (
                not beside
                and life.close_status is not None
                and not queue
                and not hooks.before_close
            )
            return await self._transport.send(self._channel, control, chunks, last)
        finally:
            queue.release(size)

    async def _receive(self) -> None:
        """Hand what the client sends to ``on_receive``, in order; close when it stops."""
        channel = self._channel
        deliver = None if channel.on_receive is None else self._deliver
        try:
            status = await self._transport.receive(channel, deliver)
        except Exception as error:
            log.exception("%r: on_receive failed", channel)
            status = CloseStatus("error", 1011, repr(error))
        if status is not None:
            self._writer.close(status)

    async def _deliver(self, message: str | bytes) -> None:
        await call(self._channel.on_receive, self._channel, message)

    async def _finish(self, status: CloseStatus) -> None:
        """Close for good: tell the listeners (groups), run ``after_close``, then call
        ``on_close`` exactly once, whatever the hooks before it do; each stage gets
        ``CLEANUP_SECONDS``."""
        channel, life = self._channel, self._life
        if life.done:
            return
        if life.close_status is None:
            life.close_status = status
        if life.state is not State.ERRORED:
            life.advance(State.AFTER_CLOSE)
        self._queue.clear()
        try:
            await self._bounded("a close listener", life.take_listeners(), channel)
            await self._bounded("after_close", self._hooks.after_close, channel)
            if life.state is State.AFTER_CLOSE:
                life.advance(State.CLOSED)
            await self._bounded("on_close", (channel.on_close,), channel, life.close_status)
        finally:
            life.set_done()
            # Done, the channel writes no more: its writer lets go of the server's side
            # (its exchange and connection) and of the channel, which it would
            # otherwise keep, with itself, in cycles that only the collector would undo.
            self._writer._control = None
            self._writer._channel = None

    async def _bounded(
        self, what: str, callbacks: Iterable[Callback | None], *args: object
    ) -> None:
        """Run ``callbacks`` (skipping None) in order, shielded from the cancellation
        that may have ended the channel, within ``CLEANUP_SECONDS`` in all; a failure
        is logged and the next one runs."""
        callbacks = [callback for callback in callbacks if callback is not None]
        if not callbacks:
            return  # (no scope to enter: most channels have few of these callbacks)
        deadline = trio.current_time() + CLEANUP_SECONDS
        with trio.CancelScope(deadline=deadline, shield=True) as scope:
            for callback in callbacks:
                try:
                    await call(callback, *args)
                except Exception:
                    log.exception("%r: %s failed", self._channel, what)
        if scope.cancelled_caught:
            log.error(
                "%r: %s took more than %g s and was cancelled", self._channel, what, CLEANUP_SECONDS
            )
