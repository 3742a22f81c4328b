"""The client's side of an HTTP/1.1 connection: ``ClientWire`` over a ``Transport`` (one
exchange at a time runs on it: see ``_client_exchange``), and what a broken exchange
raises.

Other libraries' exceptions (h11's, ssl's) become duplex's in ``duplex._foreign``, the
one place for that; ``client_error`` adds what the client knows: which part of the
exchange a connection broke in.
"""

from __future__ import annotations

import select
import ssl

import trio

from ..._errors import ProtocolError
from ..._foreign import translate
from .._transport import Transport, close_nowait
from ._client_wire import ClientWire

__all__ = ["HTTPConnection", "client_error"]


def client_error(error: BaseException, during: str) -> BaseException:
    """What an exchange raises for ``error``, met ``during`` a part of it ("before the
    response arrived", ...): a broken or closed connection as ``ProtocolError`` (the
    original, or the ``ssl.SSLError`` under it, as ``__cause__``); other libraries'
    exceptions as ``duplex._foreign`` translates them; duplex's own as they are.
    """
    if isinstance(error, trio.BrokenResourceError | trio.ClosedResourceError) and not (
        isinstance(error, ProtocolError)
    ):
        cause = error.__cause__ if isinstance(error.__cause__, ssl.SSLError) else error
        reason = str(cause)
        mapped = ProtocolError(f"the connection broke {during}" + (f": {reason}" if reason else ""))
        mapped.__cause__ = cause
        return mapped
    return translate(error)


# -- the connection --------------------------------------------------------------------


class HTTPConnection(Transport):
    """One HTTP/1.1 connection over one trio stream: the client's side, its input read
    by ``wire``.

    One task receives while others send; sends are serialised. Every send is bounded by
    ``write_timeout`` and every socket read by the timeout its caller gives, raising
    ``duplex.Timeout`` naming the phase.
    """

    __slots__ = ("_poll", "closed", "wire")

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_head_size: int = 65536,
        read_size: int = 65536,
        write_timeout: float | None = None,
        direct_io: bool = True,
    ) -> None:
        super().__init__(
            stream, read_size=read_size, write_timeout=write_timeout, direct_io=direct_io
        )
        self.wire = ClientWire(max_head_size=max_head_size, read_size=read_size)
        # The fast path has select.poll (see _platform), which watches any descriptor.
        self._poll = direct_io
        #: True once ``close_nowait`` has run.
        self.closed = False

    async def receive_data(
        self, timeout: float | None = None, phase: str = "read", *, found_empty: bool = False
    ) -> bool:
        """Read once from the socket into the wire (as much as it asks for); False at EOF.
        ``found_empty``: the caller has just found the socket empty, so the read waits
        before it tries.

        Raises ``duplex.Timeout`` after ``timeout`` seconds without data,
        ``trio.BrokenResourceError`` if the connection broke and
        ``trio.ClosedResourceError`` if it was closed here.
        """
        wire = self.wire
        if found_empty and self._socket is not None:
            data = await self.read_when_ready(timeout, phase, max_bytes=wire.fill_size)
        else:
            data = await self.read_some(timeout, phase, max_bytes=wire.fill_size)
        wire.feed(data)
        return bool(data)

    def receive_data_nowait(self) -> bool | None:
        """Read once from the socket into the wire if that needs no wait (the fast
        path): True if bytes came, False at EOF, None if it would block (or the
        transport is not a plain socket). Raises as ``receive_data`` does."""
        data = self.read_nowait(self.wire.fill_size)
        if data is None:
            return None
        self.wire.feed(data)
        return bool(data)

    def next_cycle(self) -> bool:
        """Make the connection ready for its next exchange; False if it cannot carry one
        (an exchange not finished cleanly, a close asked for or implied, or bytes after
        the response that answer no request: reused, they would be the next request's
        response). The request's side is the exchange's to check."""
        if self.closed or not self.wire.reusable():
            return False
        self.wire.next_exchange()
        return True

    def is_stale(self) -> bool:
        """True when this idle connection cannot carry a request: the server has closed
        or reset it, or sent bytes nobody asked for. Never waits.

        An idle connection is never readable: a zero-timeout ``poll`` on the fast path,
        ``select`` elsewhere, asks whether it is.
        """
        if self.closed:
            return True
        sock = self.socket()
        if sock is None:
            return False
        if self._poll:
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            return bool(poller.poll(0))
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True  # a socket select cannot watch is never trusted with a request
        return bool(readable)

    def close_nowait(self) -> None:
        """Close the socket at once, without a checkpoint and without a TLS goodbye (the
        connection is dead to us). Wakes a task waiting on it with
        ``trio.ClosedResourceError``. Idempotent."""
        if self.closed:
            return
        self.closed = True
        close_nowait(self.stream)
