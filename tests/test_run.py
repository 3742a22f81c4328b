"""``duplex.run`` and the command line's servers (``demo``, ``echo``, ``serve``) in a real
process: they say where they serve, shut down gracefully on SIGINT or SIGTERM without a
traceback, say that they wait for a connection still busy, and stop at once on a second
signal."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from _redis_support import DuplexProcess, Output, http_get, parse_reply

#: Seconds a test may take: a process start (about a second) and a few exchanges.
TIMEOUT = 30.0
#: The grace the servers under test get: far longer than any test waits.
GRACE = 120

APP = f'''\
"""A handler with a slow route, served by duplex.run when run as a script."""

import duplex


async def slow(stream):
    """Says it started, then answers once the client has sent its whole body."""
    await stream.write(b"started\\n")
    rest = await stream.read()
    await stream.write(b"done " + rest)


async def handler(request):
    if request.path == "/slow":
        return duplex.Response(200, body=duplex.Streamable(slow))
    return duplex.Response(200, body="hello")


if __name__ == "__main__":
    duplex.run(handler, port=0, limits=duplex.Limits(shutdown_grace={GRACE}))
'''

SERVING = r"^duplex: serving on http://127\.0\.0\.1:(\d+)/( with \d+ workers)?$"
SLOW_HEAD = b"POST /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n\r\n"


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


@asynccontextmanager
async def running(
    arguments: list[str], cwd: Path, *, serving: str = SERVING
) -> AsyncIterator[DuplexProcess]:
    """``python ARGUMENTS`` in ``cwd``, once it says where it serves (a line that
    ``serving`` matches, the port its first group; ``port`` set); on the way out, killed
    if it is still running."""
    process = await trio.lowlevel.open_process(
        [sys.executable, *arguments],
        cwd=cwd,
        env=dict(os.environ, PYTHONPATH=str(cwd)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    running = DuplexProcess(process, Output(), Output())
    try:
        async with trio.open_nursery() as nursery:
            assert process.stdout is not None and process.stderr is not None
            nursery.start_soon(running.stdout.collect, process.stdout)
            nursery.start_soon(running.stderr.collect, process.stderr)
            match, _ = await running.stdout.wait_for(serving)
            running.port = int(match[1])
            yield running
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


#: How each kind of server is started (duplex.run in a script, and the command line),
#: and the shutdown grace each has.
SERVERS = {
    "run": (["app.py"], GRACE),
    "serve": (["-m", "duplex", "serve", "app:handler", "--port", "0"], 10),
}
COMMANDS = pytest.mark.parametrize(("command", "grace"), SERVERS.values(), ids=SERVERS.keys())


async def start_slow(port: int) -> tuple[trio.SocketStream, bytes]:
    """A POST /slow whose handler is running (it waits for the 4 bytes of the body), and
    what it has received so far."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(SLOW_HEAD)
    received = b""
    while b"started\n" not in received:
        chunk = await stream.receive_some()
        assert chunk, f"the server closed the connection: {received!r}"
        received += chunk
    return stream, received


@COMMANDS
@pytest.mark.parametrize(
    "signum",
    [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
    ids=["SIGINT", "SIGTERM", "SIGHUP"],
)
async def test_a_signal_shuts_an_idle_server_down_with_status_0_and_no_traceback(
    app_dir: Path, command: list[str], grace: int, signum: int
) -> None:
    with trio.fail_after(TIMEOUT):
        async with running(command, app_dir) as server:
            assert (await http_get(server.port)).body == b"hello"
            server.signal(signum)
            assert await server.wait() == 0
    assert "Traceback" not in server.stderr.text
    assert "waiting" not in server.stderr.text
    assert server.stdout.lines == [f"duplex: serving on http://127.0.0.1:{server.port}/\n"]


@COMMANDS
async def test_a_signal_lets_an_exchange_in_flight_finish_saying_it_waits_for_it(
    app_dir: Path, command: list[str], grace: int
) -> None:
    with trio.fail_after(TIMEOUT):
        async with running(command, app_dir) as server:
            slow, received = await start_slow(server.port)
            async with slow:
                server.signal(signal.SIGINT)
                match, _ = await server.stderr.wait_for(r"^duplex: shutting down: waiting")
                await slow.send_all(b"tail")
                async for chunk in slow:
                    received += chunk
            assert await server.wait() == 0
    reply = parse_reply(received)
    assert (reply.status, reply.body) == (200, b"started\ndone tail")
    assert match.string == (
        f"duplex: shutting down: waiting up to {grace} s for 1 connection to finish "
        "(press Ctrl-C again to stop now)\n"
    )
    assert "Traceback" not in server.stderr.text


@COMMANDS
async def test_a_second_signal_stops_at_once_without_waiting_out_the_grace(
    app_dir: Path, command: list[str], grace: int
) -> None:
    with trio.fail_after(TIMEOUT):
        async with running(command, app_dir) as server:
            slow, _ = await start_slow(server.port)
            async with slow:
                server.signal(signal.SIGTERM)
                await server.stderr.wait_for(r"^duplex: shutting down: waiting")
                server.signal(signal.SIGINT)
                # Well before the grace is out: only the second signal ends it.
                with trio.fail_after(grace / 2):
                    assert await server.wait() == 0
                # The exchange was cut: the connection ends without an answer.
                received = b""
                async for chunk in slow:
                    received += chunk
    assert b"done" not in received
    assert re.search(r"^duplex: received SIGINT again, stopping now$", server.stderr.text, re.M)
    assert "Traceback" not in server.stderr.text


@pytest.mark.parametrize("command", ["echo", "demo"])
async def test_the_command_lines_other_servers_stop_on_sigint_without_a_traceback(
    tmp_path: Path, command: str
) -> None:
    with trio.fail_after(TIMEOUT):
        async with running(["-m", "duplex", command, "--port", "0"], tmp_path) as server:
            reply = await http_get(server.port)
            assert reply.status == 200
            server.signal(signal.SIGINT)
            assert await server.wait() == 0
    assert "Traceback" not in server.stderr.text


async def test_run_says_in_one_line_that_it_cannot_listen_on_a_port_in_use(app_dir: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with running(SERVERS["run"][0], app_dir) as first:
            script = app_dir / "second.py"
            script.write_text(f"import duplex, app\nduplex.run(app.handler, port={first.port})\n")
            result = await trio.run_process(
                [sys.executable, str(script)],
                cwd=app_dir,
                env=dict(os.environ, PYTHONPATH=str(app_dir)),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            first.signal(signal.SIGTERM)
            assert await first.wait() == 0
    assert result.returncode == 1
    assert result.stdout == b""
    assert re.fullmatch(
        rb"duplex: cannot listen on 127\.0\.0\.1:\d+: [^\n]*in use\n", result.stderr
    ), result.stderr


async def test_a_second_signal_to_the_supervisor_of_workers_stops_them_at_once(
    app_dir: Path,
) -> None:
    command = ["-m", "duplex", "serve", "app:handler", "--port", "0", "--workers", "2"]
    with trio.fail_after(TIMEOUT):
        async with running(command, app_dir) as supervisor:
            slow, _ = await start_slow(supervisor.port)
            async with slow:
                supervisor.signal(signal.SIGINT)
                # The worker that serves the slow exchange waits for it (its grace: 10 s),
                # and though its supervisor passed the Ctrl-C on as SIGTERM, what it
                # tells the user is what the user did.
                await supervisor.stderr.wait_for(
                    r"^duplex: shutting down: waiting up to 10 s for 1 connection to finish "
                    r"\(press Ctrl-C or send SIGTERM again to stop now\)$"
                )
                supervisor.signal(signal.SIGINT)
                with trio.fail_after(5):
                    assert await supervisor.wait() == 0
                received = b""
                async for chunk in slow:
                    received += chunk
    assert b"done" not in received
    assert "Traceback" not in supervisor.stderr.text
    assert "duplex: stopping now\n" in supervisor.stderr.lines
    assert "SIGTERM again, stopping" not in supervisor.stderr.text


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("workers", [[], ["--workers", "1"]], ids=["one process", "workers"])
async def test_the_serving_line_brackets_an_ipv6_host_as_a_url_does(
    app_dir: Path, workers: list[str]
) -> None:
    if not ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    command = ["-m", "duplex", "serve", "app:handler", "--host", "::1", "--port", "0", *workers]
    serving = r"^duplex: serving on http://\[::1\]:(\d+)/( with 1 worker)?$"
    with trio.fail_after(TIMEOUT):
        async with running(command, app_dir, serving=serving) as server:
            stream = await trio.open_tcp_stream("::1", server.port)
            async with stream:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n")
                received = b""
                while chunk := await stream.receive_some():
                    received += chunk
            server.signal(signal.SIGTERM)
            assert await server.wait() == 0
    assert received.startswith(b"HTTP/1.1 200 ")
    assert received.endswith(b"hello")
