"""Why a channel closed (``CloseStatus``), and the one place that turns what ended a
channel — a transport error, a WebSocket close — into that status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import trio

from ._websocket import ConnectionClosed

__all__ = ["GONE", "CloseStatus", "status_for"]

#: WebSocket close codes that mean the conversation broke: protocol error, unsupported
#: or invalid data, policy violation, message too big, missing extension, server error.
_WEBSOCKET_ERRORS = frozenset({1002, 1003, 1007, 1008, 1009, 1010, 1011})


@dataclass(frozen=True, slots=True)
class CloseStatus:
    """Why a channel closed, as ``on_close`` receives it.

    ``kind`` is one of:

    - ``"server"``: this side called ``close()`` (or sent with ``close=True``);
    - ``"client"``: the client closed cleanly (a WebSocket close frame);
    - ``"gone"``: the client vanished without closing (reset, EOF, WebSocket 1006);
    - ``"shutdown"``: the server is shutting down (code 1001), or restarting (1012: a
      worker of a rolling restart);
    - ``"too-slow"``: its queue was full (see ``when_full``);
    - ``"error"``: an illegal action or a failure of the channel itself.

    ``code`` is the WebSocket close code where there is one; ``reason`` explains.
    """

    kind: Literal["server", "client", "gone", "shutdown", "too-slow", "error"]
    code: int | None = None
    reason: str = ""

    @property
    def clean(self) -> bool:
        """True when an endpoint closed on purpose rather than the connection failing."""
        return self.kind in ("server", "client", "shutdown")


#: The client went away without a goodbye.
GONE = CloseStatus("gone", 1006, "the client went away")


def status_for(error: BaseException, asked: CloseStatus | None) -> CloseStatus | None:
    """The status of a channel that ``error`` ended, given the close already ``asked``
    for (if any); None for an error that is not the client's or the transport's doing
    (a bug, to be logged as such). A group of one exception (from a nursery) is that
    exception."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    if isinstance(error, ConnectionClosed):
        if error.code == 1006:
            return CloseStatus("gone", 1006, error.reason)
        if asked is not None and asked.kind != "gone":
            return asked
        # These codes report a broken conversation (a protocol error, bad data, a message
        # over the limit), whichever side noticed, not a choice to leave.
        kind: Literal["client", "error"] = "error" if error.code in _WEBSOCKET_ERRORS else "client"
        return CloseStatus(kind, error.code, error.reason)
    if isinstance(error, trio.BrokenResourceError | trio.ClosedResourceError):
        return asked or CloseStatus("gone", 1006, str(error) or GONE.reason)
    return None
