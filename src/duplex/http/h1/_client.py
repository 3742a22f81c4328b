"""The client's side of one HTTP/1.1 connection: h11 over a ``Transport``."""

from __future__ import annotations

from math import inf
from typing import Any

import h11
import trio

from ..._errors import ProtocolError
from .._transport import Transport

__all__ = ["HTTPConnection"]


class HTTPConnection(Transport):
    """One h11 connection over one trio stream: the client's side of HTTP/1.1.

    One task receives events while others send; sends are serialised. Every send is
    bounded by ``write_timeout`` and every socket read by the timeout its caller gives,
    raising ``duplex.Timeout`` naming the phase.
    """

    __slots__ = ("h11",)

    def __init__(
        self,
        stream: trio.abc.Stream,
        role: type[h11.CLIENT] | type[h11.SERVER],
        *,
        max_incomplete_event_size: int = 16384,
        read_size: int = 65536,
        write_timeout: float | None = None,
    ) -> None:
        super().__init__(stream, read_size=read_size, write_timeout=write_timeout)
        self.h11 = h11.Connection(role, max_incomplete_event_size=max_incomplete_event_size)

    def next_event(self) -> Any:
        """The next h11 event already buffered, or ``h11.NEED_DATA`` / ``h11.PAUSED``.

        Raises ``ProtocolError`` for input h11 rejects.
        """
        try:
            return self.h11.next_event()
        except h11.RemoteProtocolError as error:
            raise ProtocolError(str(error), error.error_status_hint) from error

    async def receive_data(
        self, timeout: float | None = None, phase: str = "read", *, deadline: float = inf
    ) -> bool:
        """Read once from the socket into h11; False at EOF.

        Raises ``duplex.Timeout`` after ``timeout`` seconds without data (or once
        ``deadline`` passes), and ``trio.BrokenResourceError`` if the connection broke.
        """
        data = await self.read_some(timeout, phase, deadline=deadline)
        try:
            self.h11.receive_data(data)
        except h11.RemoteProtocolError as error:
            raise ProtocolError(str(error), error.error_status_hint) from error
        return bool(data)

    async def receive_event(self, timeout: float | None = None, phase: str = "read") -> Any:
        """The next h11 event, reading the socket as needed (each read within ``timeout``)."""
        while True:
            event = self.next_event()
            if event is not h11.NEED_DATA:
                return event
            await self.receive_data(timeout, phase)

    def buffered(self) -> bytes:
        """What h11 holds unparsed."""
        data: bytes = self.h11.trailing_data[0]
        return data

    def encode(self, event: Any) -> list[bytes]:
        """The bytes h11 would put on the wire for ``event`` (its state moves on)."""
        try:
            pieces = self.h11.send_with_data_passthrough(event)
        except h11.LocalProtocolError as error:
            raise ProtocolError(f"cannot send this message: {error}", 500) from error
        return pieces or []

    async def send(self, *events: Any) -> None:
        """Encode ``events`` and write them to the socket in one go.

        Body bytes are not copied on the way: h11 passes them through and the socket
        takes them in one scatter-gather write.
        """
        if len(events) == 1:
            await self.send_pieces(self.encode(events[0]))
            return
        pieces: list[bytes] = []
        for event in events:
            pieces += self.encode(event)
        await self.send_pieces(pieces)
