"""The exception types duplex adds to trio's.

duplex reuses trio's resource errors wherever they fit: ``trio.ClosedResourceError``
(you closed it), ``trio.BrokenResourceError`` (the other side or the world broke it, with
the reason in ``__cause__``) and ``trio.BusyResourceError`` (two tasks on one side at
once). The types here cover what trio has no word for.
"""

from __future__ import annotations

import trio

__all__ = ["IncompleteRead", "ProtocolError", "Timeout"]


class IncompleteRead(EOFError):
    """The stream ended before the requested number of bytes arrived.

    ``partial`` holds the bytes that did arrive; ``expected`` is how many were asked for.
    """

    def __init__(self, partial: bytes, expected: int) -> None:
        super().__init__(f"stream ended after {len(partial)} of {expected} bytes")
        self.partial = partial
        self.expected = expected


class ProtocolError(trio.BrokenResourceError):
    """The peer broke HTTP/1.1: malformed, truncated or hostile input, or a connection
    closed in the middle of a message.

    A ``trio.BrokenResourceError``, so a body whose peer broke the protocol fails the way
    every broken body does. ``status`` is the HTTP status a server answers it with (400
    unless a more precise one applies: 413, 414, 431, 501, 505). The parser's or the
    socket's own exception is the ``__cause__``.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Timeout(trio.TooSlowError):
    """An HTTP operation made no progress in time; ``phase`` names which one.

    Phases: ``"connect"``, ``"pool"``, ``"header"``, ``"read"``, ``"write"``.
    A subclass of ``trio.TooSlowError``.
    """

    def __init__(self, phase: str, seconds: float) -> None:
        super().__init__(f"{phase} timed out after {seconds:g} s")
        self.phase = phase
        self.seconds = seconds
