"""What the reliability tests share, beyond ``_server_support``: peers that reset, a
bounded poll, a handler that records bodies, and a raw WebSocket peer with hand-built
frames.
"""

from __future__ import annotations

import base64
import logging
import select
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import trio

import duplex

__all__ = [
    "BINARY",
    "CLOSE",
    "CONTINUATION",
    "PING",
    "PONG",
    "TEXT",
    "UPGRADE",
    "BodyRecorder",
    "Frame",
    "RawWebSocket",
    "error_records",
    "frame",
    "reset",
    "wait_until",
]


async def reset(stream: trio.SocketStream) -> None:
    """Close ``stream`` with a TCP reset rather than a FIN: linger on, for 0 s."""
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await trio.aclose_forcefully(stream)


async def wait_until(predicate: Callable[[], bool], *, interval: float = 0.01) -> None:
    """Poll ``predicate`` until it holds, for state nothing signals (the caller bounds it)."""
    while not predicate():  # noqa: ASYNC110 - nothing wakes a waiter for these states
        await trio.sleep(interval)


def error_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Every record at ERROR or above: a crash caught and logged is still a crash."""
    return [record for record in caplog.records if record.levelno >= logging.ERROR]


@dataclass
class BodyRecorder:
    """A handler that notes every request it sees, then its whole body, and answers with
    the body (a body that breaks leaves ``None`` as its entry)."""

    requests: list[tuple[str, bytes | None]] = field(default_factory=list)

    async def __call__(self, request: duplex.Request) -> duplex.Response:
        index = len(self.requests)
        self.requests.append((request.target, None))
        body = await request.body.join()
        self.requests[index] = (request.target, body)
        return duplex.Response(200, body=body)

    @property
    def targets(self) -> list[str]:
        return [target for target, _ in self.requests]


# -- a raw WebSocket peer --------------------------------------------------------------

KEY = base64.b64encode(b"reliability-test").decode()
UPGRADE = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
)
MASK = b"\x37\xfa\x21\x3d"

TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def frame(
    opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bool = True, rsv: int = 0
) -> bytes:
    """One WebSocket frame, built by hand; ``mask=False`` breaks the client's rule."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if mask else 0
    size = len(payload)
    if size < 126:
        head = bytes([first, mask_bit | size])
    elif size < 1 << 16:
        head = bytes([first, mask_bit | 126]) + struct.pack("!H", size)
    else:
        head = bytes([first, mask_bit | 127]) + struct.pack("!Q", size)
    if not mask:
        return head + payload
    masked = bytes(byte ^ MASK[index % 4] for index, byte in enumerate(payload))
    return head + MASK + masked


@dataclass(frozen=True)
class Frame:
    opcode: int
    payload: bytes
    fin: bool = True

    @property
    def close_code(self) -> int | None:
        """The status code of a close frame (None if it carries none)."""
        assert self.opcode == CLOSE
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None


class RawWebSocket:
    """A WebSocket client over a plain socket: it sends what the test builds and parses
    what the server sends, without repairing anything on either side."""

    def __init__(self, stream: trio.SocketStream, head: bytes, rest: bytes) -> None:
        self.stream = stream
        self.head = head
        self.buffer = bytearray(rest)
        self.start = 0  # where the next frame begins in ``buffer``

    @classmethod
    async def connect(cls, port: int, target: str = "/ws", extra: str = "") -> RawWebSocket:
        """Open the connection and do the handshake; ``head`` is the server's answer."""
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{UPGRADE}{extra}\r\n"
        await stream.send_all(request.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            more = await stream.receive_some(65536)
            if not more:
                raise EOFError(f"the server closed during the handshake: {data!r}")
            data += more
        head, _, rest = data.partition(b"\r\n\r\n")
        return cls(stream, head, rest)

    @property
    def status(self) -> int:
        return int(self.head.split(b" ", 2)[1])

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None

    async def __aenter__(self) -> RawWebSocket:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await trio.aclose_forcefully(self.stream)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    def has_input(self) -> bool:
        """True if bytes from the server wait to be read, right now (no waiting)."""
        if len(self.buffer) > self.start:
            return True
        readable, _, _ = select.select([self.stream.socket.fileno()], [], [], 0)
        return bool(readable)

    async def _fill(self) -> bool:
        try:
            more = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            more = b""
        self.buffer += more
        return bool(more)

    async def read_frame(self) -> Frame | None:
        """The next frame from the server; None if the connection ends first."""
        while True:
            parsed = self._parse()
            if parsed is not None:
                return parsed
            if not await self._fill():
                return None

    def _parse(self) -> Frame | None:
        data, start = self.buffer, self.start
        if len(data) - start < 2:
            return None
        size, offset = data[start + 1] & 0x7F, start + 2
        if size == 126:
            if len(data) - start < 4:
                return None
            size, offset = struct.unpack("!H", data[start + 2 : start + 4])[0], start + 4
        elif size == 127:
            if len(data) - start < 10:
                return None
            size, offset = struct.unpack("!Q", data[start + 2 : start + 10])[0], start + 10
        if len(data) < offset + size:
            return None
        first = data[start]
        parsed = Frame(first & 0x0F, bytes(data[offset : offset + size]), bool(first & 0x80))
        self.start = offset + size
        if self.start > 65536:  # drop what was parsed, now and then rather than each time
            del data[: self.start]
            self.start = 0
        return parsed

    async def read_close_code(self) -> int | None:
        """Skip data and control frames up to the server's close frame: its code, or
        None if the connection ends without one."""
        while (received := await self.read_frame()) is not None:
            if received.opcode == CLOSE:
                return received.close_code
        return None
