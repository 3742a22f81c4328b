"""What the HTTP/2 server tests share: a raw HTTP/2 peer (h2 over a trio socket), and
servers with TLS (trustme) offering h2 by ALPN.

The raw peer sees exactly what the server sends: every event of every stream, and the
windows it opens. It gives window back for the data it receives at once, or
(``auto_ack=False``) only for what it ``take``s, so that a test can stall a stream.
"""

from __future__ import annotations

import ssl
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import trio
import trustme
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

import duplex

__all__ = ["PREFACE", "H2Peer", "Peer", "StreamState", "serving_h2", "tls_contexts"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass
class StreamState:
    """What the peer received on one stream."""

    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    ended: bool = False
    reset: int | None = None
    #: Flow-controlled bytes received and not yet given back.
    unacknowledged: int = 0

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class H2Peer:
    """A raw HTTP/2 client over a trio stream (prior knowledge)."""

    def __init__(
        self, stream: trio.abc.Stream, *, window: int | None = None, auto_ack: bool = True
    ) -> None:
        self.stream = stream
        self.auto_ack = auto_ack
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        _answers_after_goaway(self.conn)
        if window is not None:
            self.conn.local_settings = h2.settings.Settings(
                client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
            )
        self.streams: defaultdict[int, StreamState] = defaultdict(StreamState)
        self.events: list[h2.events.Event] = []
        self.closed = False
        # A task of ``reading``'s reads the socket (then ``receive`` waits for it).
        self._background = False
        self._changed = trio.Event()
        self._send_lock = trio.Lock()
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.remote_settings: dict[int, int] = {}

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, port: int, *, window: int | None = None, auto_ack: bool = True
    ) -> AsyncIterator[H2Peer]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        peer = cls(stream, window=window, auto_ack=auto_ack)
        async with stream:
            peer.conn.initiate_connection()
            # A connection window to spare: a stalled stream stalls only itself.
            peer.conn.increment_flow_control_window(1 << 30)
            await peer.flush()
            yield peer

    async def flush(self) -> None:
        async with self._send_lock:
            data = self.conn.data_to_send()
            if data:
                await self.stream.send_all(data)

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[None]:
        """Read in a task of its own meanwhile, as a real client does while it sends
        (a server that cannot send stops reading)."""
        async with trio.open_nursery() as nursery:
            self._background = True
            nursery.start_soon(self._read_forever)
            try:
                yield
            finally:
                self._background = False
                nursery.cancel_scope.cancel()

    async def _read_forever(self) -> None:
        try:
            while True:
                await self._receive_once()
        except EOFError:
            pass
        finally:
            self._changed.set()

    async def request(
        self,
        method: str = "GET",
        path: str = "/",
        headers: list[tuple[str, str]] | None = None,
        *,
        body: bytes | None = None,
        end: bool = True,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> int:
        """Open a stream with a request; ``end``: END_STREAM after ``body`` (if any)."""
        stream_id = self.conn.get_next_available_stream_id()
        fields = [
            (b":method", method.encode()),
            (b":path", path.encode()),
            (b":scheme", b"http"),
            (b":authority", b"localhost"),
        ]
        fields += extra or []
        fields += [(name.encode(), value.encode()) for name, value in headers or []]
        self.conn.send_headers(stream_id, fields, end_stream=end and not body)
        if body:
            self.conn.send_data(stream_id, body, end_stream=end)
        await self.flush()
        return stream_id

    async def send(self, stream_id: int, data: bytes, *, end: bool = False) -> None:
        """Send DATA as the server's window allows (reading meanwhile); nothing more
        once the server reset the stream (as it does with NO_ERROR after a complete
        response, when it wants no more of the request)."""
        view = memoryview(data)
        while True:
            if self.streams[stream_id].reset is not None:
                return
            room = min(
                self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
            )
            if room <= 0 and view:
                await self.receive()
                continue
            piece, view = view[:room], view[room:]
            self.conn.send_data(stream_id, bytes(piece), end_stream=end and not view)
            await self.flush()
            if not view:
                return

    async def end(self, stream_id: int) -> None:
        if self.streams[stream_id].reset is None:
            self.conn.end_stream(stream_id)
            await self.flush()

    async def reset(self, stream_id: int) -> None:
        self.conn.reset_stream(stream_id, 8)  # CANCEL
        await self.flush()

    async def receive(self) -> None:
        """Read once and take in what came (or wait for the reading task to); EOF sets
        ``closed`` and raises ``EOFError``."""
        if not self._background:
            await self._receive_once()
            return
        await self._changed.wait()
        if self.closed:
            raise EOFError("the server closed the connection")

    async def _receive_once(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            self.closed = True
            raise EOFError("the server closed the connection")
        for event in self.conn.receive_data(data):
            self._take(event)
        changed, self._changed = self._changed, trio.Event()
        changed.set()
        await self.flush()

    def _take(self, event: h2.events.Event) -> None:
        self.events.append(event)
        if isinstance(event, h2.events.ResponseReceived):
            state = self.streams[event.stream_id]
            for name, value in event.headers or []:
                assert isinstance(name, bytes) and isinstance(value, bytes)
                if name == b":status":
                    state.status = int(value)
                else:
                    state.headers.append((name, value))
        elif isinstance(event, h2.events.DataReceived):
            state = self.streams[event.stream_id]
            state.data += event.data or b""
            size = event.flow_controlled_length or 0
            if self.auto_ack and event.stream_id is not None:
                self.conn.acknowledge_received_data(size, event.stream_id)
            else:
                state.unacknowledged += size
        elif isinstance(event, h2.events.TrailersReceived):
            self.streams[event.stream_id].trailers = [
                (bytes(name), bytes(value)) for name, value in event.headers or []
            ]
        elif isinstance(event, h2.events.StreamEnded):
            self.streams[event.stream_id].ended = True
        elif isinstance(event, h2.events.StreamReset):
            self.streams[event.stream_id].reset = int(event.error_code or 0)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            for code, change in event.changed_settings.items():
                self.remote_settings[int(code)] = change.new_value

    async def until(self, condition: Callable[[], bool]) -> None:
        """Read until ``condition()`` holds."""
        while not condition():
            await self.receive()

    async def take(self, stream_id: int, size: int | None = None) -> bytes:
        """Wait for ``size`` bytes (None: the end) of the stream's DATA, take them and
        give them back to the server's window."""
        state = self.streams[stream_id]
        if size is None:
            await self.until(lambda: state.ended or state.reset is not None)
            size = len(state.data)
        else:
            await self.until(lambda: len(state.data) >= size or state.ended)
        data = bytes(state.data[:size])
        del state.data[:size]
        if state.unacknowledged and state.reset is None:
            self.conn.acknowledge_received_data(state.unacknowledged, stream_id)
            state.unacknowledged = 0
            await self.flush()
        return data

    async def response(self, stream_id: int) -> StreamState:
        """Read until the stream ends (or is reset); its state, with every byte taken."""
        state = self.streams[stream_id]
        await self.until(lambda: state.ended or state.reset is not None)
        return state


def _answers_after_goaway(conn: h2.connection.H2Connection) -> None:
    """Let ``conn`` (this peer's alone) take what a server sends after its graceful
    GOAWAY: streams up to its last id are still answered, but h2 takes nothing more
    once it has seen one."""
    machine = conn.state_machine
    transitions = dict(machine._transitions)
    closed = h2.connection.ConnectionState.CLOSED
    for kind in h2.connection.ConnectionInputs:
        transitions.setdefault((closed, kind), (None, closed))
    machine._transitions = transitions


def tls_contexts() -> tuple[trustme.CA, ssl.SSLContext]:
    """A CA and a server context with a certificate for 127.0.0.1 and localhost."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return ca, context


@asynccontextmanager
async def serving_h2(
    handler: duplex.Handler,
    *,
    limits: duplex.Limits | None = None,
    ssl_context: ssl.SSLContext | None = None,
    http2: bool = True,
) -> AsyncIterator[duplex.Server]:
    """Run ``handler`` on 127.0.0.1 and a free port (HTTP/2 on); stop on the way out."""
    async with trio.open_nursery() as nursery:
        server: duplex.Server = await nursery.start(
            partial(
                duplex.serve,
                handler,
                "127.0.0.1",
                0,
                limits=limits,
                ssl_context=ssl_context,
                http2=http2,
            )
        )
        yield server
        nursery.cancel_scope.cancel()


class Peer:
    """A raw HTTP/2 client: frames out as bytes, frames in as hyperframe objects."""

    def __init__(self, stream: trio.SocketStream, port: int) -> None:
        self.stream = stream
        self.port = port
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buffer = bytearray()
        self.eof = False

    @classmethod
    async def connect(cls, port: int, settings: dict[int, int] | None = None) -> Peer:
        peer = cls(await trio.open_tcp_stream("127.0.0.1", port), port)
        await peer.send(PREFACE + SettingsFrame(0, settings=settings or {}).serialize())
        return peer

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def send(self, data: bytes) -> bool:
        """Send ``data``; False if the server has closed the connection meanwhile."""
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def send_all_of(self, data: bytes, piece: int = 1 << 16) -> bool:
        """Send ``data`` in pieces, stopping (False) when the server closes the
        connection or stops reading for a second."""
        view = memoryview(data)
        while view:
            with trio.move_on_after(1):
                if not await self.send(bytes(view[:piece])):
                    return False
                view = view[piece:]
                continue
            return False  # the server stopped reading: bounded
        return True

    def request_block(self, path: str = "/", method: str = "GET") -> bytes:
        return bytes(
            self.encoder.encode(
                [
                    (":method", method),
                    (":scheme", "http"),
                    (":authority", f"127.0.0.1:{self.port}"),
                    (":path", path),
                ]
            )
        )

    def headers(self, stream_id: int, block: bytes, *, end_stream: bool = True) -> bytes:
        flags = {"END_HEADERS", *(["END_STREAM"] if end_stream else [])}
        return HeadersFrame(stream_id, block, flags=flags).serialize()

    async def next_frame(self) -> Frame | None:
        """The next frame from the server; None at EOF (or a reset connection)."""
        while True:
            if len(self.buffer) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(bytes(self.buffer[:9])))
                if len(self.buffer) >= 9 + length:
                    frame.parse_body(memoryview(bytes(self.buffer[9 : 9 + length])))
                    del self.buffer[: 9 + length]
                    return frame
            if self.eof:
                return None
            try:
                data = await self.stream.receive_some(1 << 16)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                self.eof = True
            self.buffer += data

    async def goaway(self) -> GoAwayFrame | None:
        """Read until the server's GOAWAY (returned) or the end of the connection (None
        if it closed without one)."""
        while (frame := await self.next_frame()) is not None:
            if isinstance(frame, GoAwayFrame):
                return frame
        return None

    async def closed(self) -> None:
        """Read (and drop) everything until the server closes the connection."""
        while await self.next_frame() is not None:
            pass

    async def response(self, stream_id: int) -> tuple[int, bytes]:
        """The status and body of ``stream_id``'s response (opening windows as it reads)."""
        status, body = 0, bytearray()
        while (frame := await self.next_frame()) is not None:
            if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                await self.send(SettingsFrame(0, flags=["ACK"]).serialize())
            if frame.stream_id != stream_id:
                continue
            if isinstance(frame, HeadersFrame):
                fields = dict(self.decoder.decode(frame.data, raw=True))
                if b":status" in fields:
                    status = int(fields[b":status"])
            elif isinstance(frame, DataFrame):
                body += frame.data
                if frame.flow_controlled_length:
                    update = frame.flow_controlled_length
                    await self.send(
                        WindowUpdateFrame(0, window_increment=update).serialize()
                        + WindowUpdateFrame(stream_id, window_increment=update).serialize()
                    )
            elif isinstance(frame, RstStreamFrame):
                raise AssertionError(f"stream {stream_id} reset: {frame.error_code}")
            if "END_STREAM" in frame.flags:
                return status, bytes(body)
        raise AssertionError("the connection closed before the response ended")
