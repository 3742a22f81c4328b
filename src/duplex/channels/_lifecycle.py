"""A channel's lifecycle as one state field and a table of the moves it may make.

rack-stream names four states — ``new``, ``open``, ``closed``, ``errored`` — and
``Channel.state`` reports those. Underneath, ``open`` and ``closed`` each have steps that
decide what a send may do:

=============  ==========  ==========================================================
state          reported    what holds
=============  ==========  ==========================================================
NEW            new         the handler builds the answer: status and headers may
                           change; sends are queued (refused once a close is asked)
OPEN           open        the server took it: sends go out
CLOSING        open        a close was asked: sends are refused; what is queued goes out
BEFORE_CLOSE   open        ``before_close`` hooks run: they may still send
ENDING         open        what they sent goes out, then the end
AFTER_CLOSE    closed      the end went out; ``after_close`` hooks run: a send is illegal
CLOSED         closed      ``on_close`` runs, or has run
ERRORED        errored     an illegal action, or a hook that failed: the channel ends
                           at once (an illegal action after the close errors it too)
=============  ==========  ==========================================================
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Literal, TypeAlias

import trio

from ._status import CloseStatus

__all__ = ["PUBLIC", "TRANSITIONS", "Lifecycle", "PublicState", "State"]

PublicState: TypeAlias = Literal["new", "open", "closed", "errored"]


class State(enum.Enum):
    """Where a channel is in its life (see the module's table)."""

    NEW = "new"
    OPEN = "open"
    CLOSING = "closing"
    BEFORE_CLOSE = "before_close"
    ENDING = "ending"
    AFTER_CLOSE = "after_close"
    CLOSED = "closed"
    ERRORED = "errored"


_S = State

#: Every move a channel may make; anything else is a bug in duplex, not in the user's
#: code (an illegal action of the user's is the move to ERRORED).
TRANSITIONS: dict[State, frozenset[State]] = {
    _S.NEW: frozenset({_S.OPEN, _S.AFTER_CLOSE, _S.ERRORED}),
    _S.OPEN: frozenset({_S.CLOSING, _S.AFTER_CLOSE, _S.ERRORED}),
    _S.CLOSING: frozenset({_S.BEFORE_CLOSE, _S.AFTER_CLOSE, _S.ERRORED}),
    _S.BEFORE_CLOSE: frozenset({_S.ENDING, _S.AFTER_CLOSE, _S.ERRORED}),
    _S.ENDING: frozenset({_S.AFTER_CLOSE, _S.ERRORED}),
    _S.AFTER_CLOSE: frozenset({_S.CLOSED, _S.ERRORED}),
    _S.CLOSED: frozenset({_S.ERRORED}),
    _S.ERRORED: frozenset(),
}

#: The name ``Channel.state`` reports for each state (rack-stream's four).
PUBLIC: dict[State, PublicState] = {
    _S.NEW: "new",
    _S.OPEN: "open",
    _S.CLOSING: "open",
    _S.BEFORE_CLOSE: "open",
    _S.ENDING: "open",
    _S.AFTER_CLOSE: "closed",
    _S.CLOSED: "closed",
    _S.ERRORED: "errored",
}


class Lifecycle:
    """Where a channel is in its life, why it closes, and who waits for the end.

    ``close_status`` is None until a close is asked for (by either side, or because the
    channel errored); asked while ``NEW``, the close happens as soon as the channel opens.
    """

    __slots__ = ("_done", "_listeners", "close_status", "state")

    def __init__(self) -> None:
        self.state = State.NEW
        self.close_status: CloseStatus | None = None
        # Made when needed: most channels have neither.
        self._done: trio.Event | bool = False
        self._listeners: list[Callable[[Any], object]] | None = None

    def advance(self, to: State) -> None:
        """Move to ``to``; a move the table does not allow is a bug (AssertionError)."""
        assert to in TRANSITIONS[self.state], f"a channel cannot go from {self.state} to {to}"
        self.state = to

    @property
    def is_open(self) -> bool:
        """True until a close is asked for (or the channel ends without one)."""
        state = self.state
        return state is State.OPEN or (state is State.NEW and self.close_status is None)

    @property
    def accepting(self) -> bool:
        """True while a send is taken: open, or in ``before_close``."""
        return self.is_open or self.state is State.BEFORE_CLOSE

    def ask_close(self, status: CloseStatus) -> bool:
        """Ask for the close, for the reason ``status``; False if it was asked already or
        the channel has ended."""
        if not self.is_open:
            return False
        self.close_status = status
        if self.state is State.OPEN:
            self.advance(State.CLOSING)
        return True

    def opened(self) -> None:
        """The server took the channel: open it (closing at once if that was asked),
        unless an illegal action ``ERRORED`` it meanwhile."""
        if self.state is State.ERRORED:
            return
        self.advance(State.OPEN)
        if self.close_status is not None:
            self.advance(State.CLOSING)

    def fail(self, status: CloseStatus) -> None:
        """An illegal action, or a failure of the channel itself: ``ERRORED`` for good,
        closing for the reason ``status`` unless a close was asked already."""
        if self.close_status is None:
            self.close_status = status
        if self.state is not State.ERRORED:
            self.advance(State.ERRORED)

    # -- the end ----------------------------------------------------------------------

    def add_listener(self, callback: Callable[[Any], object]) -> None:
        if self._listeners is None:
            self._listeners = []
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[Any], object]) -> None:
        if self._listeners is not None and callback in self._listeners:
            self._listeners.remove(callback)

    def take_listeners(self) -> list[Callable[[Any], object]]:
        """The listeners to tell of the close (each once: the list empties)."""
        listeners, self._listeners = self._listeners or [], None
        return listeners

    @property
    def done(self) -> bool:
        """True once ``on_close`` has run."""
        return self._done is True

    def set_done(self) -> None:
        if isinstance(self._done, trio.Event):
            self._done.set()
        self._done = True

    async def wait_done(self) -> None:
        """Return once ``on_close`` has run (a checkpoint either way)."""
        if self._done is True:
            await trio.lowlevel.checkpoint()
            return
        if self._done is False:
            self._done = trio.Event()
        assert isinstance(self._done, trio.Event)
        await self._done.wait()
