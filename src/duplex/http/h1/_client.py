"""The client's side of an HTTP/1.1 connection: h11 over a ``Transport`` (one exchange
at a time runs on it: see ``_client_exchange``), and what a broken exchange raises.

Other libraries' exceptions (h11's, ssl's) become duplex's in ``duplex._foreign``, the
one place for that; ``client_error`` adds what the client knows: which part of the
exchange a connection broke in.
"""

from __future__ import annotations

import select
import ssl
from typing import Any

import h11
import trio

from ..._errors import ProtocolError
from ..._foreign import translate
from .._transport import Transport, close_nowait

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
    """One h11 connection over one trio stream: the client's side of HTTP/1.1.

    One task receives events while others send; sends are serialised. Every send is
    bounded by ``write_timeout`` and every socket read by the timeout its caller gives,
    raising ``duplex.Timeout`` naming the phase.
    """

    __slots__ = ("_poll", "closed", "h11")

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
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_head_size)
        # The fast path has select.poll (see _platform), which watches any descriptor.
        self._poll = direct_io
        #: True once ``close_nowait`` has run.
        self.closed = False

    def next_event(self) -> Any:
        """The next h11 event already buffered, or ``h11.NEED_DATA``.

        Raises ``ProtocolError`` for input h11 rejects.
        """
        try:
            return self.h11.next_event()
        except h11.RemoteProtocolError as error:
            raise translate(error) from error

    async def receive_data(self, timeout: float | None = None, phase: str = "read") -> bool:
        """Read once from the socket into h11; False at EOF.

        Raises ``duplex.Timeout`` after ``timeout`` seconds without data,
        ``trio.BrokenResourceError`` if the connection broke and
        ``trio.ClosedResourceError`` if it was closed here.
        """
        return self._feed(await self.read_some(timeout, phase))

    def receive_data_nowait(self) -> bool | None:
        """Read once from the socket into h11 if that needs no wait (the fast path):
        True if bytes came, False at EOF, None if it would block (or the transport is
        not a plain socket). Raises as ``receive_data`` does."""
        data = self.read_nowait()
        return None if data is None else self._feed(data)

    def _feed(self, data: bytes) -> bool:
        try:
            self.h11.receive_data(data)
        except h11.RemoteProtocolError as error:
            raise translate(error) from error
        return bool(data)

    def encode(self, event: Any) -> list[bytes]:
        """The bytes h11 puts on the wire for ``event`` (its state moves on).

        Raises ``ProtocolError`` (500) for a message HTTP/1.1 cannot carry.
        """
        try:
            pieces = self.h11.send_with_data_passthrough(event)
        except h11.LocalProtocolError as error:
            raise translate(error) from error
        return pieces or []

    async def send(self, event: Any) -> None:
        """Encode ``event`` and write it to the socket (body bytes are not copied)."""
        await self.send_pieces(self.encode(event))

    def next_cycle(self) -> bool:
        """Make the connection ready for its next exchange; False if it cannot carry one
        (an exchange not finished cleanly, or bytes after the response that answer no
        request: reused, they would be the next request's response)."""
        h = self.h11
        if (
            self.closed
            or h.our_state is not h11.DONE
            or h.their_state is not h11.DONE
            or h.trailing_data != (b"", False)
        ):
            return False
        h.start_next_cycle()
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
