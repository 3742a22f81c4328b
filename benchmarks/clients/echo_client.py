"""Streaming echo load: one connection, sending and reading at the same time.

A small trio program on a raw socket. In ``http`` mode it sends ``POST /echo`` with a
chunked body of ``--total`` bytes in ``--chunk``-byte chunks while another task reads
the response, decoding the chunked framing (or Content-Length) and counting payload
bytes. In ``h2`` mode it does the same over HTTP/2 with prior knowledge (h2c): one
stream, DATA frames as the server's window allows, its own receive window opened wide
(so that only the server's flow control paces the upload). In ``raw`` mode it sends and
reads the bytes as they are (a TCP echo).

Prints one JSON object: bytes sent and echoed, seconds from the first byte sent to the
last echoed byte, time to first echoed byte, and whether it stalled (no progress
for ``--stall`` seconds) or hit ``--timeout``. Both bound the run.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Awaitable, Callable

import hpack
import trio


class ChunkedCounter:
    """Counts the payload bytes of a chunked body without copying them."""

    def __init__(self) -> None:
        self.line = bytearray()
        self.data_left = 0  # payload bytes left in the current chunk
        self.crlf_left = 0  # bytes of the CRLF after it
        self.payload = 0
        self.done = False

    def feed(self, data: bytes | bytearray) -> int:
        """Consume ``data``; return how many payload bytes it held."""
        i, n, got = 0, len(data), 0
        while i < n and not self.done:
            if self.data_left:
                take = min(self.data_left, n - i)
                self.data_left -= take
                got += take
                i += take
                if not self.data_left:
                    self.crlf_left = 2
            elif self.crlf_left:
                take = min(self.crlf_left, n - i)
                self.crlf_left -= take
                i += take
            else:
                end = data.find(b"\n", i)
                if end < 0:
                    self.line += data[i:]
                    break
                self.line += data[i:end]
                i = end + 1
                size = int(bytes(self.line).split(b";")[0].strip() or b"0", 16)
                self.line.clear()
                if size == 0:
                    self.done = True  # trailers ignored: ours never send any
                self.data_left = size
        self.payload += got
        return got


class H2Echo:
    """The ``h2`` mode's one stream, its frames made and read by hand (HPACK aside) so
    that the load client costs little per frame, as the raw socket does in ``http``
    mode: sends through ``send_chunk``, counts echoed payload in ``receive``; the socket
    is shared by both (writes under one lock). Its own windows are opened wide at once
    (2^31 - 1 bytes: more than a run echoes), so it never sends WINDOW_UPDATE."""

    PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    WIDE = (1 << 31) - 1

    def __init__(self, stream: trio.SocketStream, host: str, port: int) -> None:
        self.stream = stream
        self.lock = trio.Lock()
        self.window_changed = trio.Event()
        self.stream_id = 1
        self.ended = False
        self.authority = f"{host}:{port}".encode()
        self.decoder = hpack.Decoder()
        self.inbox = b""
        self.outbox: list[bytes] = []
        # The server's windows and largest frame, until its SETTINGS say otherwise.
        self.initial_window = 65535
        self.stream_window = 65535
        self.connection_window = 65535
        self.max_frame = 16384

    @staticmethod
    def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
        return len(payload).to_bytes(3) + bytes((kind, flags)) + stream_id.to_bytes(4) + payload

    async def flush(self) -> None:
        async with self.lock:
            if self.outbox:
                data, self.outbox = b"".join(self.outbox), []
                await self.stream.send_all(data)

    async def open(self) -> None:
        # SETTINGS_INITIAL_WINDOW_SIZE (0x4), and the connection's window opened too.
        settings = (4).to_bytes(2) + self.WIDE.to_bytes(4)
        head = hpack.Encoder().encode(
            [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":authority", self.authority),
                (b":path", b"/echo"),
                (b"content-type", b"application/octet-stream"),
            ]
        )
        self.outbox += [
            self.PREFACE,
            self.frame(0x4, 0, 0, settings),
            self.frame(0x8, 0, 0, (self.WIDE - 65535).to_bytes(4)),
            self.frame(0x1, 0x4, self.stream_id, head),  # HEADERS, END_HEADERS
        ]
        await self.flush()

    async def send_chunk(self, payload: bytes) -> None:
        view = memoryview(payload)
        while view:
            window = min(self.stream_window, self.connection_window, self.max_frame)
            if window <= 0:
                self.window_changed = trio.Event()
                await self.window_changed.wait()
                continue
            piece = view[:window]
            view = view[window:]
            self.stream_window -= len(piece)
            self.connection_window -= len(piece)
            head = len(piece).to_bytes(3) + b"\x00\x00" + self.stream_id.to_bytes(4)
            async with self.lock:
                pieces: list[bytes | memoryview] = [*self.outbox, head, piece]
                self.outbox = []
                await self.stream.send_all(b"".join(pieces))

    async def finish(self) -> None:
        self.outbox.append(self.frame(0x0, 0x1, self.stream_id))  # END_STREAM
        await self.flush()

    def receive(self, data: bytes) -> int:
        """Feed bytes from the socket; the payload bytes they held."""
        data = self.inbox + data if self.inbox else data
        view = memoryview(data)
        got = position = 0
        while len(view) - position >= 9:
            length = int.from_bytes(view[position : position + 3])
            end = position + 9 + length
            if end > len(view):
                break
            kind, flags = view[position + 3], view[position + 4]
            stream_id = int.from_bytes(view[position + 5 : position + 9]) & 0x7FFFFFFF
            payload = view[position + 9 : end]
            position = end
            if kind == 0x0:  # DATA
                got += length - (payload[0] + 1 if flags & 0x8 else 0)
                self.ended = self.ended or bool(flags & 0x1)
            elif kind == 0x1:  # HEADERS (ours are small: never CONTINUATION)
                block = bytes(payload)
                if flags & 0x8:  # PADDED
                    block = block[1 : len(block) - block[0]]
                if flags & 0x20:  # PRIORITY
                    block = block[5:]
                fields = dict(self.decoder.decode(block, raw=True))
                status = fields.get(b":status")
                if status is not None and status != b"200":
                    raise RuntimeError(f"unexpected response: {status!r}")
                self.ended = self.ended or bool(flags & 0x1)
            elif kind == 0x4 and not flags & 0x1:  # SETTINGS: acknowledged
                for i in range(0, length, 6):
                    code = int.from_bytes(payload[i : i + 2])
                    value = int.from_bytes(payload[i + 2 : i + 6])
                    if code == 0x4:
                        self.stream_window += value - self.initial_window
                        self.initial_window = value
                    elif code == 0x5:
                        self.max_frame = value
                self.outbox.append(self.frame(0x4, 0x1, 0))
                self.window_changed.set()
            elif kind == 0x8:  # WINDOW_UPDATE
                increment = int.from_bytes(payload[:4]) & 0x7FFFFFFF
                if stream_id:
                    self.stream_window += increment
                else:
                    self.connection_window += increment
                self.window_changed.set()
            elif kind == 0x6 and not flags & 0x1:  # PING: answered
                self.outbox.append(self.frame(0x6, 0x1, 0, bytes(payload)))
            elif kind in (0x3, 0x7):  # RST_STREAM, GOAWAY
                raise trio.BrokenResourceError(f"the server ended the stream (frame {kind})")
        self.inbox = bytes(view[position:])
        return got


State = dict[str, float | int | str | None]


def new_state() -> State:
    """What a run counts: bytes sent and echoed, when the first and last echo came, and
    when there was progress last (for the stall detector)."""
    return {
        "sent": 0,
        "echoed": 0,
        "first": None,
        "sent_at_first": None,
        "last": None,
        "progress": time.perf_counter(),
    }


def count_echo(state: State, got: int, now: float) -> None:
    """``got`` payload bytes came back at ``now``."""
    if state["first"] is None:
        state["first"] = now
        state["sent_at_first"] = state["sent"]
    state["last"] = now
    state["echoed"] = int(state["echoed"] or 0) + got


async def drive(
    args: argparse.Namespace,
    stream: trio.SocketStream,
    state: State,
    sender: Callable[[], Awaitable[None]],
    receiver: Callable[[], Awaitable[None]],
) -> dict[str, object]:
    """Run ``sender`` beside ``receiver`` (bounded by ``--timeout`` and the stall
    detector), close the stream, and report the run."""
    start = 0.0

    async def watchdog(cancel: trio.CancelScope) -> None:
        while True:
            await trio.sleep(0.25)
            if time.perf_counter() - float(state["progress"] or 0) > args.stall:
                state["stalled"] = 1
                cancel.cancel()
                return

    outcome = "ok"
    async with stream:
        with trio.move_on_after(args.timeout) as scope:
            try:
                async with trio.open_nursery() as nursery:
                    start = time.perf_counter()
                    state["progress"] = start
                    nursery.start_soon(watchdog, nursery.cancel_scope)
                    nursery.start_soon(sender)
                    await receiver()
                    nursery.cancel_scope.cancel()
            except* trio.BrokenResourceError as group:
                outcome = "connection broken"
                state["detail"] = repr(group.exceptions[0])
        if scope.cancelled_caught:
            outcome = "timeout"
        if state.get("stalled"):
            outcome = "stalled"
    echoed = int(state["echoed"] or 0)
    end = float(state["last"] or time.perf_counter())
    first = state["first"]
    if echoed < args.total and outcome == "ok":
        outcome = "short"
    return {
        "mode": args.mode,
        "outcome": outcome,
        "sent": state["sent"],
        "echoed": echoed,
        "seconds": end - start,
        "first_byte_seconds": None if first is None else float(first) - start,
        "sent_at_first_echo": state["sent_at_first"],
        "mib_per_s": echoed / (1 << 20) / (end - start) if echoed else 0.0,
        **({"detail": state["detail"]} if "detail" in state else {}),
    }


async def run(args: argparse.Namespace) -> dict[str, object]:
    if args.mode == "h2":
        return await run_h2(args)
    total, chunk_size = args.total, args.chunk
    chunks = total // chunk_size
    payload = bytes(range(256)) * (chunk_size // 256)
    http = args.mode == "http"
    frame = f"{chunk_size:x}\r\n".encode() + payload + b"\r\n" if http else payload
    stream = await trio.open_tcp_stream(args.host, args.port)
    state = new_state()

    async def sender() -> None:
        if http:
            await stream.send_all(
                f"POST /echo HTTP/1.1\r\nhost: {args.host}:{args.port}\r\n"
                "content-type: application/octet-stream\r\n"
                "transfer-encoding: chunked\r\n\r\n".encode()
            )
        for _ in range(chunks):
            await stream.send_all(frame)
            state["sent"] = int(state["sent"] or 0) + chunk_size
            state["progress"] = time.perf_counter()
        if http:
            await stream.send_all(b"0\r\n\r\n")
        else:
            await stream.send_eof()

    async def receiver() -> None:
        counter: ChunkedCounter | None = None  # None: count raw bytes
        head = bytearray()
        head_done = not http
        while True:
            data = await stream.receive_some(262144)
            if not data:
                return
            now = time.perf_counter()
            state["progress"] = now
            if not head_done:
                head += data
                end = head.find(b"\r\n\r\n")
                if end < 0:
                    continue
                head_done = True
                lines = bytes(head[:end]).decode("latin-1").lower().split("\r\n")
                if not lines[0].startswith("http/1.1 200"):
                    raise RuntimeError(f"unexpected response: {lines[0]}")
                fields = {k.strip(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
                if fields.get("transfer-encoding") == "chunked":
                    counter = ChunkedCounter()
                data = bytes(head[end + 4 :])
            got = counter.feed(data) if counter is not None else len(data)
            if got:
                count_echo(state, got, now)
            if (counter is not None and counter.done) or int(state["echoed"] or 0) >= total:
                return

    return await drive(args, stream, state, sender, receiver)


async def run_h2(args: argparse.Namespace) -> dict[str, object]:
    total, chunk_size = args.total, args.chunk
    chunks = total // chunk_size
    payload = bytes(range(256)) * (chunk_size // 256)
    stream = await trio.open_tcp_stream(args.host, args.port)
    echo = H2Echo(stream, args.host, args.port)
    state = new_state()

    async def sender() -> None:
        await echo.open()
        for _ in range(chunks):
            await echo.send_chunk(payload)
            state["sent"] = int(state["sent"] or 0) + chunk_size
            state["progress"] = time.perf_counter()
        await echo.finish()

    async def receiver() -> None:
        while not echo.ended and int(state["echoed"] or 0) < total:
            data = await stream.receive_some(262144)
            if not data:
                return
            now = time.perf_counter()
            state["progress"] = now
            got = echo.receive(data)
            await echo.flush()  # window updates, settings acknowledgements
            if got:
                count_echo(state, got, now)

    return await drive(args, stream, state, sender, receiver)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=["http", "h2", "raw"], default="http")
    parser.add_argument("--total", type=int, default=256 << 20)
    parser.add_argument("--chunk", type=int, default=65536)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--stall", type=float, default=5.0)
    args = parser.parse_args()
    print(json.dumps(trio.run(run, args)))


if __name__ == "__main__":
    main()
