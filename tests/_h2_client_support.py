"""What the HTTP/2 client tests share: servers that speak HTTP/2, each on 127.0.0.1 and
a port of its own.

- ``hypercorn_h2`` runs hypercorn's trio worker with a small ASGI app (``/`` answers,
  ``/echo`` streams every request chunk back), over TLS with a trustme certificate or
  as h2c, and counts the TCP connections it served.
- ``RawH2Server`` is an HTTP/2 server whose test drives h2 itself, frame by frame:
  each connection is an ``H2Peer`` the test takes from ``accept()``.
"""

from __future__ import annotations

import ssl
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import h2.config
import h2.connection
import h2.events
import h2.settings
import hypercorn.config
import hypercorn.trio
import trio
import trustme

__all__ = ["H2Peer", "Hypercorn", "RawH2Server", "hypercorn_h2", "tls_contexts"]

E = TypeVar("E")


# -- hypercorn ---------------------------------------------------------------------------


@dataclass
class Hypercorn:
    """A hypercorn server: its base URL, and the client ports of the connections whose
    requests it served (one port per TCP connection)."""

    url: str
    client_ports: set[int] = field(default_factory=set)
    http_versions: list[str] = field(default_factory=list)


def _app(server: Hypercorn) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        server.client_ports.add(scope["client"][1])
        server.http_versions.append(scope["http_version"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["path"] != "/echo":
            await send({"type": "http.response.body", "body": b"hello over h2"})
            return
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            if message["body"]:
                await send(
                    {"type": "http.response.body", "body": message["body"], "more_body": True}
                )
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def tls_contexts() -> tuple[trustme.CA, ssl.SSLContext]:
    """A certificate authority, and a client context that trusts it."""
    ca = trustme.CA()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return ca, context


@asynccontextmanager
async def hypercorn_h2(
    ca: trustme.CA | None = None, alpn: list[str] | None = None
) -> AsyncIterator[Hypercorn]:
    """Hypercorn with TLS (a certificate from ``ca``, offering ``alpn``) or, without
    ``ca``, cleartext (HTTP/1.1, and h2c to a client with prior knowledge)."""
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 1.0
    if alpn is not None:
        config.alpn_protocols = alpn
    with tempfile.NamedTemporaryFile(suffix=".pem") as pem:
        if ca is not None:
            ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(pem.name)
            config.certfile = config.keyfile = pem.name
        stop = trio.Event()
        server = Hypercorn("")
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(
                partial(hypercorn.trio.serve, _app(server), config, shutdown_trigger=stop.wait)
            )
            server.url = binds[0]
            try:
                yield server
            finally:
                stop.set()


# -- a raw HTTP/2 server -----------------------------------------------------------------


class H2Peer:
    """The server's side of one HTTP/2 connection, driven by the test: ``next(kind)``
    reads until an event of that kind, ``send()`` writes what h2 has queued."""

    def __init__(
        self, stream: trio.SocketStream, settings: dict[h2.settings.SettingCodes, int]
    ) -> None:
        self.stream = stream
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values=settings)
        self.h2.initiate_connection()
        self.events: list[Any] = []
        self.seen: list[Any] = []
        self.closed = trio.Event()

    async def send(self) -> None:
        data = self.h2.data_to_send()
        if data:
            await self.stream.send_all(data)

    async def receive(self) -> bool:
        """Read once from the socket; False at EOF."""
        data = await self.stream.receive_some(65536)
        if not data:
            self.closed.set()
            return False
        events = self.h2.receive_data(data)
        self.events.extend(events)
        self.seen.extend(events)
        await self.send()
        return True

    async def next(self, kind: type[E], stream_id: int | None = None) -> E:
        """The next event of ``kind`` (on ``stream_id``, if given), skipping others."""
        event: E = await self.next_of((kind,), stream_id)
        return event

    async def next_of(self, kinds: tuple[type[Any], ...], stream_id: int | None = None) -> Any:
        """The next event of one of ``kinds`` (on ``stream_id``, if given); events of
        other kinds and other streams stay for a later call."""
        while True:
            for index, event in enumerate(self.events):
                if stream_id is not None and getattr(event, "stream_id", None) != stream_id:
                    continue
                if isinstance(event, kinds):
                    del self.events[index]
                    return event
            if not await self.receive():
                raise EOFError("the client closed the connection")

    def respond(self, stream_id: int, status: int = 200, end: bool = False) -> None:
        self.h2.send_headers(stream_id, [(b":status", b"%d" % status)], end_stream=end)

    async def echo(self) -> None:
        """Answer every request on the connection with the echo of its body, each piece
        sent back as the client's window allows and acknowledged only once sent (so the
        client's sending waits for its own reading); until the client leaves."""
        h = self.h2
        pending: dict[int, bytearray] = {}
        ended: set[int] = set()
        while True:
            for event in self.events:
                if isinstance(event, h2.events.RequestReceived):
                    self.respond(event.stream_id)
                    pending[event.stream_id] = bytearray()
                elif isinstance(event, h2.events.DataReceived):
                    pending[event.stream_id] += event.data
                elif isinstance(event, h2.events.StreamEnded):
                    ended.add(event.stream_id)
            self.events.clear()
            for stream_id, data in list(pending.items()):
                while data:
                    size = min(
                        len(data), h.local_flow_control_window(stream_id), h.max_outbound_frame_size
                    )
                    if size <= 0:
                        break
                    h.send_data(stream_id, bytes(data[:size]))
                    h.acknowledge_received_data(size, stream_id)
                    del data[:size]
                if not data and stream_id in ended:
                    h.end_stream(stream_id)
                    del pending[stream_id]
            await self.send()
            if not await self.receive():
                return


class RawH2Server:
    """A TCP listener speaking HTTP/2 (h2c, prior knowledge) through h2; each
    connection waits in ``accept()`` for the test to drive it."""

    def __init__(self, settings: dict[h2.settings.SettingCodes, int] | None = None) -> None:
        self.settings = settings or {}
        self.port = 0
        self.connections = 0
        self._send, self._receive = trio.open_memory_channel[H2Peer](100)

    @classmethod
    async def start(
        cls, nursery: trio.Nursery, settings: dict[h2.settings.SettingCodes, int] | None = None
    ) -> RawH2Server:
        server = cls(settings)
        listeners: list[trio.SocketListener] = await nursery.start(
            partial(trio.serve_tcp, server._handle, 0, host="127.0.0.1")
        )
        server.port = listeners[0].socket.getsockname()[1]
        return server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        peer = H2Peer(stream, self.settings)
        async with stream:
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await peer.send()
                await self._send.send(peer)
                await peer.closed.wait()

    async def accept(self) -> H2Peer:
        return await self._receive.receive()
