"""guides/deployment.md's nginx configuration, run by a real nginx in front of duplex.

The configuration is taken from the guide itself (its one ``nginx`` block), with only
the addresses and the certificate's path replaced, so that the guide and what is tested
cannot drift apart. Through it: a full-duplex echo over HTTP/1.1 and over HTTP/2 (TLS),
Server-Sent Events that are not buffered, a WebSocket, back-pressure, and a rolling
restart of workers. Skipped when nginx is not installed.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme

import duplex
from _redis_support import ROOT, WORKER_APP, duplex_process, free_port
from test_workers import ANSWERS_AFTER, CLIENTS, RESTARTED, WORKERS, Load, serving_pids

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is not installed")

GUIDE = ROOT / "guides" / "deployment.md"
#: Seconds a test may take: nginx starts in well under one.
TIMEOUT = 30.0
#: Attempts to connect while nginx starts (and tries at a free port, if one was taken).
CONNECT_ATTEMPTS = 200
PORT_ATTEMPTS = 3
CHUNKS = [b"one", b"two", b"three"]


def guide_config() -> str:
    """The guide's nginx configuration: its one ``nginx`` code block."""
    blocks = re.findall(r"^```nginx\n(.*?)^```$", GUIDE.read_text(), re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, "guides/deployment.md should hold one nginx block"
    return str(blocks[0])


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the guide's nginx block no longer says {old!r}"
    return text.replace(old, new)


@dataclass
class Front:
    """nginx's two ports: cleartext HTTP/1.1, and TLS with HTTP/2 by ALPN."""

    plain: int
    tls: int


def configuration(
    directory: Path, upstream: int, front: Front, certificate: Path, *, buffering: bool
) -> str:
    """A whole nginx.conf around the guide's block: one process, in the foreground (so
    that its pid is all there is to stop), writing everything (pid, error log,
    temporary files) in ``directory``."""
    block = guide_config()
    block = replace_once(block, "server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream};")
    block = replace_once(block, "listen 443 ssl http2;", f"listen 127.0.0.1:{front.tls} ssl http2;")
    block = replace_once(block, "listen 80;", f"listen 127.0.0.1:{front.plain};")
    block = replace_once(block, "/etc/ssl/example.com/fullchain.pem", str(certificate))
    block = replace_once(block, "/etc/ssl/example.com/privkey.pem", str(certificate))
    if buffering:
        block = replace_once(block, "proxy_buffering off;", "proxy_buffering on;")
    temporary = "\n".join(
        f"    {kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""daemon off;
master_process off;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} info;
events {{
    worker_connections 64;
}}
http {{
    access_log off;
{temporary}
{block}
}}
"""


@asynccontextmanager
async def nginx(upstream: int, *, buffering: bool = False) -> AsyncIterator[NginxFront]:
    """An nginx with the guide's configuration in front of ``upstream``, on free ports
    of 127.0.0.1, as a user other than root; stopped by its pid on the way out."""
    ca = trustme.CA()
    # /tmp itself: an unprivileged nginx must reach the directory (pytest's are 0700).
    directory = Path(tempfile.mkdtemp(prefix="duplex-nginx-"))
    try:
        certificate = directory / "cert.pem"
        ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
            str(certificate)
        )
        user = _unprivileged(directory)
        for attempt in range(PORT_ATTEMPTS):
            front = Front(*_two_free_ports())
            conf = directory / "nginx.conf"
            conf.write_text(
                configuration(directory, upstream, front, certificate, buffering=buffering)
            )
            # What nginx says before it has opened its error log goes to standard error.
            stderr = os.open(directory / "stderr.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                process = await trio.lowlevel.open_process(
                    [NGINX, "-p", str(directory), "-c", str(conf)],
                    stdin=subprocess.DEVNULL,
                    stderr=stderr,
                    user=user,
                )
            finally:
                os.close(stderr)
            try:
                if await _listening(process, front.plain) and await _listening(process, front.tls):
                    context = ssl.create_default_context()
                    ca.configure_trust(context)
                    yield NginxFront(front, context, directory)
                    return
            finally:
                with trio.CancelScope(shield=True):
                    await _stop(process)
            log = "".join(
                path.read_text(errors="replace")
                for path in (directory / "stderr.log", directory / "error.log")
                if path.exists()
            )
            if "Address already in use" not in log or attempt == PORT_ATTEMPTS - 1:
                raise AssertionError(f"nginx did not start:\n{log}")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class NginxFront:
    ports: Front
    #: Trusts nginx's certificate (for localhost and 127.0.0.1).
    ssl_context: ssl.SSLContext
    directory: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.ports.plain}"

    @property
    def https(self) -> str:
        return f"https://localhost:{self.ports.tls}"


def _two_free_ports() -> tuple[int, int]:
    first = free_port()
    for _ in range(PORT_ATTEMPTS):
        second = free_port()
        if second != first:
            return first, second
    raise AssertionError("no second free port")


def _unprivileged(directory: Path) -> str | None:
    """Run nginx as ``nobody`` when the tests run as root (and let it write in
    ``directory``); as the tests' own user otherwise."""
    if os.geteuid() != 0:
        return None
    nobody = pwd.getpwnam("nobody")
    for path in (directory, *directory.iterdir()):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    return "nobody"


async def _listening(process: trio.Process, port: int) -> bool:
    """Wait until ``port`` takes connections: True; False if nginx exits first."""
    for _ in range(CONNECT_ATTEMPTS):
        if process.returncode is not None or process.poll() is not None:
            return False
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            await trio.sleep(0.05)  # nginx is starting: nothing to wait on but the port
            continue
        await stream.aclose()
        return True
    return False


async def _stop(process: trio.Process) -> None:
    if process.returncode is None:
        process.terminate()
        with trio.move_on_after(10):
            await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()


# -- the application behind nginx --------------------------------------------------------


#: What /flood sends: more than the sockets between duplex, nginx and the client hold.
FLOOD = 64 << 20
FLOOD_CHUNK = 64 << 10


class App:
    """/echo streams each chunk back; /events sends one SSE event, then a second only
    once the test says the first arrived; /ws echoes WebSocket messages; /flood sends
    ``FLOOD`` bytes, counting what its writes got rid of. Under /…/accel, the response
    says ``X-Accel-Buffering: no``."""

    def __init__(self) -> None:
        self.first_arrived = trio.Event()
        self.flooded = 0
        self.flood_sent = trio.Event()

    async def __call__(self, request: duplex.Request) -> duplex.Response:
        if request.path == "/echo":
            return duplex.Response(200, body=duplex.Streamable(self.echo))
        headers = {"x-accel-buffering": "no"} if request.path.endswith("/accel") else {}
        if request.path.startswith("/events"):
            return duplex.channel(request, on_open=self.events, headers=headers)
        if request.path.startswith("/flood"):
            return duplex.Response(200, headers, duplex.Streamable(self.flood))
        if request.path == "/ws":
            return duplex.channel(
                request, on_receive=lambda channel, message: channel.send(message)
            )
        return duplex.Response(404)

    @staticmethod
    async def echo(stream: duplex.Stream) -> None:
        while chunk := await stream.readpartial(65536):
            await stream.write(chunk)

    async def flood(self, stream: duplex.Stream) -> None:
        chunk = b"x" * FLOOD_CHUNK
        while self.flooded < FLOOD:
            await stream.write(chunk)
            self.flooded += len(chunk)
        self.flood_sent.set()

    async def events(self, channel: duplex.Channel) -> None:
        await channel.send(duplex.sse.Event("first"))
        await self.first_arrived.wait()
        await channel.send(duplex.sse.Event("second"))
        await channel.close()


@asynccontextmanager
async def behind_nginx(*, buffering: bool = False) -> AsyncIterator[tuple[App, NginxFront]]:
    app = App()
    async with trio.open_nursery() as nursery:
        server: duplex.Server = await nursery.start(partial(duplex.serve, app, "127.0.0.1", 0))
        async with nginx(server.port, buffering=buffering) as front:
            yield app, front
        nursery.cancel_scope.cancel()


async def echoes_chunk_by_chunk(client: duplex.Client, url: str) -> list[bytes]:
    """Send ``CHUNKS`` one at a time, each only once the echo of the one before came
    back through nginx; the echoes."""
    body = duplex.Writable()
    # The first chunk goes before the response head is awaited: over HTTP/2, nginx
    # waits for the body's first bytes before it calls duplex (the guide says so).
    await body.write(CHUNKS[0])
    response = await client.post(url, body=body)
    assert response.status == 200
    echoes = [await response.body.read()]
    for chunk in CHUNKS[1:]:
        await body.write(chunk)
        echoes.append(await response.body.read())
    await body.close_write()
    assert await response.body.read() == b""
    return echoes


# -- the tests ---------------------------------------------------------------------------


async def test_a_full_duplex_echo_streams_through_nginx_over_http_1_1() -> None:
    with trio.fail_after(TIMEOUT):
        async with behind_nginx() as (_, front), duplex.Client() as client:
            echoes = await echoes_chunk_by_chunk(client, f"{front.http}/echo")
    assert echoes == CHUNKS


async def test_a_full_duplex_echo_streams_through_nginx_over_http_2_with_tls() -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            behind_nginx() as (_, front),
            duplex.Client(http2=True, ssl_context=front.ssl_context) as client,
        ):
            echoes = await echoes_chunk_by_chunk(client, f"{front.https}/echo")
    assert echoes == CHUNKS


async def read_events(
    app: App, url: str, client: duplex.Client
) -> tuple[list[str], duplex.Headers]:
    """The events of ``url``, telling ``app`` when the first one has arrived (the
    second is sent only then: a buffering proxy would hold the first forever)."""
    response = await client.get(url, headers={"accept": "text/event-stream"})
    assert response.status == 200
    parser = duplex.sse.EventParser()
    data: list[str] = []
    while chunk := await response.body.read():
        data += [event.data for event in parser.feed(chunk)]
        if data:
            app.first_arrived.set()
    return data, response.headers


@pytest.mark.parametrize("over", ["http/1.1", "h2"])
async def test_sse_events_are_not_buffered_by_nginx(over: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with behind_nginx() as (app, front):
            http2 = over == "h2"
            origin = front.https if http2 else front.http
            async with duplex.Client(http2=http2, ssl_context=front.ssl_context) as client:
                data, _ = await read_events(app, f"{origin}/events", client)
    assert data == ["first", "second"]


async def test_x_accel_buffering_no_streams_a_response_where_nginx_buffers() -> None:
    with trio.fail_after(TIMEOUT):
        async with behind_nginx(buffering=True) as (app, front), duplex.Client() as client:
            data, headers = await read_events(app, f"{front.http}/events/accel", client)
    assert data == ["first", "second"]
    assert "x-accel-buffering" not in headers  # nginx keeps it to itself


async def test_a_websocket_passes_through_nginx() -> None:
    with trio.fail_after(TIMEOUT):
        async with behind_nginx() as (_, front), duplex.Client() as client:
            async with client.websocket(f"ws://127.0.0.1:{front.ports.plain}/ws") as websocket:
                for message in ("hello", b"\x00binary", "x" * 100_000):
                    await websocket.send(message)
                    assert await websocket.receive() == message
            status = websocket.close_status
    assert status is not None and status.code == 1000


async def flood_unread(app: App, url: str, client: duplex.Client) -> None:
    """GET ``url`` (/flood) and read nothing of the body; return once duplex has sent it
    all (nginx took it whatever the client read), or has been held back: its writes
    blocked a while with less than all of it sent."""
    response = await client.get(url)
    assert response.status == 200
    while not app.flood_sent.is_set():
        sent = app.flooded
        # Held back when nothing moves for a while: nginx and the sockets between hold
        # a few megabytes at most, never all of FLOOD.
        await trio.testing.wait_all_tasks_blocked(cushion=0.5)
        if app.flooded == sent:
            return
    await response.body.aclose()


async def test_a_client_that_reads_nothing_holds_duplex_back_through_nginx() -> None:
    with trio.fail_after(TIMEOUT):
        async with behind_nginx() as (app, front), duplex.Client() as client:
            await flood_unread(app, f"{front.http}/flood", client)
            assert not app.flood_sent.is_set()
    assert app.flooded < FLOOD


async def test_x_accel_buffering_no_holds_duplex_back_where_nginx_buffers() -> None:
    with trio.fail_after(TIMEOUT):
        async with behind_nginx(buffering=True) as (app, front), duplex.Client() as client:
            await flood_unread(app, f"{front.http}/flood/accel", client)
            assert not app.flood_sent.is_set()
    assert app.flooded < FLOOD


async def test_where_nginx_buffers_duplex_sends_all_whatever_the_client_reads() -> None:
    # What the guide warns of, and what tells that the two tests above can fail.
    with trio.fail_after(TIMEOUT):
        async with behind_nginx(buffering=True) as (app, front), duplex.Client() as client:
            await flood_unread(app, f"{front.http}/flood", client)
            assert app.flood_sent.is_set()


async def test_a_rolling_restart_of_workers_behind_nginx_loses_no_request(tmp_path: Path) -> None:
    # Behind nginx, the workers' kept-alive connections are nginx's: a GET that nginx
    # sends on one just as its worker closes it must come back all the same.
    (tmp_path / "app.py").write_text(WORKER_APP)
    arguments = ["serve", "app:handler", "--port", "0", "--workers", str(WORKERS)]
    with trio.fail_after(3 * TIMEOUT):
        async with (
            duplex_process(arguments, cwd=tmp_path, env={}) as supervisor,
            nginx(supervisor.port) as front,
        ):
            old = set(await serving_pids(supervisor))
            load = Load(front.ports.plain, http2=False)  # nginx's port 80 has no h2c
            async with trio.open_nursery() as nursery:
                nursery.start_soon(load.run)
                await load.wait_answers([1] * CLIENTS)
                start = len(supervisor.stderr.lines)
                supervisor.signal(signal.SIGHUP)
                await supervisor.stderr.wait_for(RESTARTED, start)
                for pid in old:
                    await supervisor.stderr.wait_for(rf"\(pid {pid}\) has finished", start)
                # Each client may still have one answer on its way that an old worker
                # sent before it finished (nginx relays it when it next runs, on a
                # loaded machine after the supervisor said so): the ones after it were
                # asked for once the old workers had gone.
                before = [count + 1 for count in load.answers]
                await load.wait_answers([count + ANSWERS_AFTER for count in before])
                load.stop()
            after = {pid for n, pids in enumerate(load.pids) for pid in pids[before[n] :]}
    assert load.failures == []
    assert after and not after & old
