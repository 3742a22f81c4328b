"""The exception types duplex adds to trio's.

duplex reuses trio's resource errors wherever they fit: ``trio.ClosedResourceError``
(you closed it), ``trio.BrokenResourceError`` (the other side or the world broke it, with
the reason in ``__cause__``) and ``trio.BusyResourceError`` (two tasks on one side at
once). The types here cover what trio has no word for.
"""

from __future__ import annotations

__all__ = ["IncompleteRead"]


class IncompleteRead(EOFError):
    """The stream ended before the requested number of bytes arrived.

    ``partial`` holds the bytes that did arrive; ``expected`` is how many were asked for.
    """

    def __init__(self, partial: bytes, expected: int) -> None:
        super().__init__(f"stream ended after {len(partial)} of {expected} bytes")
        self.partial = partial
        self.expected = expected
