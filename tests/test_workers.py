"""``duplex serve module:handler --workers N`` and ``duplex.serve_workers``: N processes
answer on one port; a worker that dies is replaced; SIGHUP replaces them one at a time
and no request fails; SIGTERM stops them all gracefully; workers that cannot start, or a
port in use, end the supervisor with a clear message."""

from __future__ import annotations

import os
import re
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

import duplex
from _channel_support import Opened, serving
from _protocol_support import WebSocketClosed, WebSocketPeer
from _redis_support import (
    WORKER_APP,
    DuplexProcess,
    Subscriber,
    duplex_process,
    http_get,
    is_alive,
    parse_reply,
)

WORKERS = 2
#: Seconds a test may take: a few process starts (about a second each) and no more.
TIMEOUT = 30.0
#: New connections to open, at most, to see a given set of workers answer.
ATTEMPTS = 200
SERVING = r"worker \d+ \(pid (\d+)\) is serving"


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(WORKER_APP)
    return tmp_path


def workers(
    app_dir: Path, port: int = 0, env: dict[str, str] | None = None, *, ready: bool = True
) -> AbstractAsyncContextManager[DuplexProcess]:
    arguments = ["serve", "app:handler", "--port", str(port), "--workers", str(WORKERS)]
    return duplex_process(arguments, cwd=app_dir, env=env or {}, ready=ready)


async def serving_pids(supervisor: DuplexProcess) -> list[int]:
    """The pids of the first workers the supervisor reports serving."""
    pids, index = [], 0
    for _ in range(WORKERS):
        match, index = await supervisor.stderr.wait_for(SERVING, index)
        pids.append(int(match[1]))
    return pids


async def pids_answering(port: int, wanted: set[int]) -> set[int]:
    """Open new connections until every pid in ``wanted`` has answered (or give up)."""
    seen: set[int] = set()
    for _ in range(ATTEMPTS):
        reply = await http_get(port)
        assert reply.status == 200
        seen.add(int(reply.headers["x-pid"]))
        if wanted <= seen:
            break
    return seen


async def records(app_dir: Path, what: str) -> set[str]:
    """The files the app's handler wrote, one per worker, on entering or exiting."""
    return {path.name for path in await trio.Path(app_dir).glob(f"{what}-*")}


async def test_every_worker_answers_on_the_shared_port(app_dir: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with workers(app_dir) as supervisor:
            pids = set(await serving_pids(supervisor))
            assert len(pids) == WORKERS
            assert supervisor.pid not in pids
            assert await pids_answering(supervisor.port, pids) == pids


async def test_an_async_context_manager_handler_is_entered_and_exited_in_every_worker(
    app_dir: Path,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with workers(app_dir) as supervisor:
            pids = set(await serving_pids(supervisor))
            seen: set[int] = set()
            for _ in range(ATTEMPTS):
                reply = await http_get(supervisor.port)
                assert reply.body.endswith(b" entered=True\n")
                seen.add(int(reply.headers["x-pid"]))
                if seen == pids:
                    break
            assert await records(app_dir, "entered") == {f"entered-{pid}" for pid in pids}
            supervisor.signal(signal.SIGTERM)
            assert await supervisor.wait() == 0
        assert await records(app_dir, "exited") == {f"exited-{pid}" for pid in pids}


async def test_a_worker_killed_with_sigkill_is_replaced_and_the_port_keeps_answering(
    app_dir: Path,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with workers(app_dir) as supervisor:
            victim, survivor = await serving_pids(supervisor)
            os.kill(victim, signal.SIGKILL)
            _, index = await supervisor.stderr.wait_for(rf"\(pid {victim}\) exited")
            assert not is_alive(victim)
            reply = await http_get(supervisor.port)
            assert reply.status == 200
            assert reply.headers["x-pid"] != str(victim)
            match, _ = await supervisor.stderr.wait_for(SERVING, index)
            replacement = int(match[1])
            assert replacement not in (victim, survivor)
            assert await pids_answering(supervisor.port, {survivor, replacement}) == {
                survivor,
                replacement,
            }


@asynccontextmanager
async def watching(port: int, pid: int) -> AsyncIterator[Subscriber]:
    """An SSE channel served by worker ``pid``: new connections until one lands there."""
    async with AsyncExitStack() as stack:
        for _ in range(ATTEMPTS):
            subscriber = await stack.enter_async_context(Subscriber(port, "/watch"))
            if subscriber.pid == pid:
                yield subscriber
                return
        raise AssertionError(f"no connection landed on worker {pid}")


async def test_sigterm_lets_a_request_in_flight_finish_then_stops_every_worker(
    app_dir: Path,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with workers(app_dir) as supervisor:
            pids = await serving_pids(supervisor)
            head = b"POST /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n\r\n"
            async with await trio.open_tcp_stream("127.0.0.1", supervisor.port) as slow:
                await slow.send_all(head)
                received = b""
                while not (match := re.search(rb"started (\d+)\n", received)):
                    received += await slow.receive_some()
                pid = int(match[1])
                async with watching(supervisor.port, pid) as watch:
                    supervisor.signal(signal.SIGTERM)
                    # The worker closes its channels when its graceful shutdown starts.
                    await watch.wait_ended()
                await slow.send_all(b"tail")
                async for chunk in slow:
                    received += chunk
            reply = parse_reply(received)
            assert (reply.status, reply.body) == (200, f"started {pid}\ndone tail".encode())
            assert await supervisor.wait() == 0
    assert [pid for pid in pids if is_alive(pid)] == []


async def test_sigterm_while_workers_start_stops_every_worker(app_dir: Path) -> None:
    pids: list[int] = []
    try:
        with trio.fail_after(TIMEOUT):
            env = {"APP_STARTS_SLOWLY_IN_WORKERS": "1"}
            async with workers(app_dir, env=env, ready=False) as supervisor:
                index = 0
                for _ in range(WORKERS):
                    match, index = await supervisor.stderr.wait_for(r"starting in (\d+)", index)
                    pids.append(int(match[1]))
                supervisor.signal(signal.SIGTERM)
                assert await supervisor.wait() == 0
        assert [pid for pid in pids if is_alive(pid)] == []
    finally:
        for pid in pids:
            if is_alive(pid):
                os.kill(pid, signal.SIGKILL)


async def test_workers_that_keep_failing_at_start_end_the_supervisor_with_a_clear_message(
    app_dir: Path,
) -> None:
    with trio.fail_after(TIMEOUT):
        env = {"APP_FAILS_IN_WORKERS": "1"}
        async with workers(app_dir, env=env, ready=False) as supervisor:
            assert await supervisor.wait() == 1
            await supervisor.stderr.wait_for(
                r"^duplex: workers keep failing at start .*their own errors are above"
            )
            assert "serving on" not in supervisor.stdout.text


@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain", "so-reuseport"])
async def test_a_port_in_use_ends_the_supervisor_with_status_1_and_a_clear_message(
    app_dir: Path, reuse_port: bool
) -> None:
    with socket.socket() as holder, trio.fail_after(TIMEOUT):
        # Another server; one that shares with SO_REUSEPORT would take half the traffic.
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(reuse_port))
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        async with workers(app_dir, port, ready=False) as supervisor:
            assert await supervisor.wait() == 1
            message = rf"^duplex: cannot bind 127\.0\.0\.1:{port}: Address already in use$"
            await supervisor.stderr.wait_for(message)
            assert "serving on" not in supervisor.stdout.text


async def test_serve_workers_hands_back_the_port_and_stops_its_workers_when_cancelled(
    app_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(app_dir))
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                partial(duplex.serve_workers, "app:handler", "127.0.0.1", 0, workers=WORKERS)
            )
            pids: set[int] = set()
            for _ in range(ATTEMPTS):
                pids.add(int((await http_get(port)).headers["x-pid"]))
                if len(pids) == WORKERS:
                    break
            assert len(pids) == WORKERS
            assert os.getpid() not in pids
            nursery.cancel_scope.cancel()
    assert [pid for pid in pids if is_alive(pid)] == []
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)


async def test_serve_workers_raises_workers_failed_when_workers_keep_failing_at_start(
    app_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(app_dir))
    monkeypatch.setenv("APP_FAILS_IN_WORKERS", "1")
    with trio.fail_after(TIMEOUT), pytest.raises(duplex.WorkersFailed, match="keep failing"):
        await duplex.serve_workers("app:handler", "127.0.0.1", 0, workers=WORKERS)


# -- rolling restarts (SIGHUP) -----------------------------------------------------------

#: Clients looping requests through a rolling restart: a third open a new connection
#: for every request, a third reuse kept-alive HTTP/1.1 connections, a third send
#: their requests as streams of one HTTP/2 connection (h2c).
CLIENTS = 21
#: Requests one client sends at most (the loop ends long before, once told to stop).
MAX_REQUESTS = 5000
#: Answers each client must get after the restart has ended, from the new workers.
ANSWERS_AFTER = 3
#: WebSockets open on the old workers when the restart starts.
WEBSOCKETS = 4
RESTARTED = "every worker has been restarted"


class Load:
    """``CLIENTS`` clients looping GET / until ``stop()``: the pids that answered each,
    and every failure (an exception, a status other than 200). Without ``http2``, the
    h2c third reuse HTTP/1.1 connections too."""

    def __init__(self, port: int, *, http2: bool = True) -> None:
        self.port = port
        self.http2 = http2
        self.answers = [0] * CLIENTS
        self.pids: list[list[int]] = [[] for _ in range(CLIENTS)]
        self.failures: list[str] = []
        self.stopping = False
        self._changed = trio.lowlevel.ParkingLot()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for client in range(CLIENTS):
                kind = client % 3
                if kind == 0:
                    nursery.start_soon(self._new_connections, client)
                else:
                    nursery.start_soon(self._keep_alive, client, self.http2 and kind == 2)

    def stop(self) -> None:
        self.stopping = True

    async def wait_answers(self, at_least: list[int]) -> None:
        """Wait until client ``n`` has had ``at_least[n]`` answers, for every ``n``."""
        while any(have < want for have, want in zip(self.answers, at_least, strict=True)):
            await self._changed.park()

    def _answered(self, client: int, pid: int) -> None:
        self.answers[client] += 1
        self.pids[client].append(pid)
        self._changed.unpark_all()

    async def _new_connections(self, client: int) -> None:
        for _ in range(MAX_REQUESTS):
            if self.stopping:
                return
            try:
                reply = await http_get(self.port)
            except (OSError, AssertionError) as error:
                self.failures.append(f"new connection: {error!r}")
                continue
            if reply.status != 200:
                self.failures.append(f"new connection: status {reply.status}")
                continue
            self._answered(client, int(reply.headers["x-pid"]))

    async def _keep_alive(self, client: int, http2: bool) -> None:
        async with duplex.Client(http2="prior-knowledge" if http2 else False) as http:
            for _ in range(MAX_REQUESTS):
                if self.stopping:
                    return
                try:
                    response = await http.get(f"http://127.0.0.1:{self.port}/")
                    await response.body.join()
                except Exception as error:
                    self.failures.append(f"kept alive (http2={http2}): {error!r}")
                    continue
                if response.status != 200:
                    self.failures.append(f"kept alive (http2={http2}): {response.status}")
                    continue
                self._answered(client, int(response.headers["x-pid"]))


async def close_code(websocket: duplex.websocket.ClientWebSocket) -> int | None:
    """The code the server closes ``websocket`` with (after its first message)."""
    assert await websocket.receive() == "joined"
    with pytest.raises(duplex.websocket.ConnectionClosed):
        await websocket.receive()
    status = websocket.close_status
    return None if status is None else status.code


@pytest.mark.parametrize("path", ["so-reuseport", "shared-socket"])
async def test_sighup_replaces_every_worker_one_at_a_time_and_no_request_fails(
    app_dir: Path, path: str
) -> None:
    # The portable path has no SO_REUSEPORT: the workers share one listening socket.
    env = {"DUPLEX_PORTABLE": "1"} if path == "shared-socket" else {}
    with trio.fail_after(3 * TIMEOUT):
        async with workers(app_dir, env=env) as supervisor, duplex.Client() as http:
            old = set(await serving_pids(supervisor))
            load = Load(supervisor.port)
            codes: list[int | None] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(load.run)
                await load.wait_answers([1] * CLIENTS)
                async with AsyncExitStack() as stack:
                    sockets = [
                        await stack.enter_async_context(
                            http.websocket(f"ws://127.0.0.1:{supervisor.port}/watch")
                        )
                        for _ in range(WEBSOCKETS)
                    ]
                    start = len(supervisor.stderr.lines)
                    supervisor.signal(signal.SIGHUP)
                    codes = [await close_code(websocket) for websocket in sockets]
                _, end = await supervisor.stderr.wait_for(RESTARTED, start)
                for pid in old:
                    finished = rf"\(pid {pid}\) has finished \(exit status 0\)"
                    await supervisor.stderr.wait_for(finished, start)
                    assert not is_alive(pid)
                new = {
                    int(match[1])
                    for line in supervisor.stderr.lines[start:end]
                    if (match := re.search(SERVING, line))
                }
                # Each client may still have one answer unread that an old worker sent
                # before it finished (this task can see the supervisor say so first):
                # the ones after it were asked for once the old workers had gone.
                before = [count + 1 for count in load.answers]
                await load.wait_answers([count + ANSWERS_AFTER for count in before])
                load.stop()
            after = {pid for n, pids in enumerate(load.pids) for pid in pids[before[n] :]}
    assert load.failures == []
    assert len(new) == WORKERS and not new & old
    assert after <= new
    assert codes == [1012] * WEBSOCKETS
    assert supervisor.process.returncode == 0


@pytest.mark.both_protocols
async def test_a_restart_closes_websockets_with_1012(protocol: str) -> None:
    opened = Opened()

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_open=opened)

    with trio.fail_after(TIMEOUT):
        async with (
            serving(handler) as server,
            WebSocketPeer.connect(server.port, protocol) as websocket,
        ):
            channel = await opened.one()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(server.shutdown, 2, restart=True))
                with pytest.raises(WebSocketClosed) as closed:
                    await websocket.receive()
            status = await channel.wait_closed()
    assert closed.value.code == 1012
    assert (status.kind, status.code) == ("shutdown", 1012)


#: New connections opened while a worker is stopped: some queue in its accept backlog.
QUEUED = 20


async def test_connections_queued_for_a_worker_being_replaced_are_answered_by_its_successor(
    app_dir: Path,
) -> None:
    # The worker is stopped (SIGSTOP) so that connections pile up in its socket's accept
    # backlog; its successor, on the same socket, must take them before it ever runs again.
    replies: list[tuple[int, int]] = []

    async def get(port: int, sent: trio.Semaphore) -> None:
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            sent.release()
            received = b""
            async for chunk in stream:
                received += chunk
        reply = parse_reply(received)
        replies.append((reply.status, int(reply.headers["x-pid"])))

    with trio.fail_after(3 * TIMEOUT):
        async with workers(app_dir) as supervisor:
            stopped, running = await serving_pids(supervisor)
            os.kill(stopped, signal.SIGSTOP)
            try:
                sent = trio.Semaphore(0)
                async with trio.open_nursery() as nursery:
                    for _ in range(QUEUED):
                        nursery.start_soon(get, supervisor.port, sent)
                    for _ in range(QUEUED):
                        await sent.acquire()
                    start = len(supervisor.stderr.lines)
                    supervisor.signal(signal.SIGHUP)
                    _, end = await supervisor.stderr.wait_for(RESTARTED, start)
                # Every reply is in, and the stopped worker has not run since.
                assert is_alive(stopped)
            finally:
                os.kill(stopped, signal.SIGCONT)
            await supervisor.stderr.wait_for(rf"\(pid {stopped}\) has finished", start)
    successors = [
        int(match[1])
        for line in supervisor.stderr.lines[start:end]
        if (match := re.search(SERVING, line))
    ]
    assert [status for status, _ in replies] == [200] * QUEUED
    answered = {pid for _, pid in replies}
    assert stopped not in answered
    # Some landed on the stopped worker's socket (all but certain: 1 - 2**-QUEUED).
    assert answered - {running}
    assert answered <= {running, *successors}


async def test_a_restart_whose_new_worker_fails_to_start_stops_and_the_old_workers_serve_on(
    app_dir: Path,
) -> None:
    with trio.fail_after(3 * TIMEOUT):
        async with workers(app_dir) as supervisor:
            old = set(await serving_pids(supervisor))
            await (trio.Path(app_dir) / "broken").touch()
            start = len(supervisor.stderr.lines)
            supervisor.signal(signal.SIGHUP)
            await supervisor.stderr.wait_for(r"failed to start; the restart stops there", start)
            assert all(is_alive(pid) for pid in old)
            assert await pids_answering(supervisor.port, old) == old
            # Once the release is mended, the next SIGHUP replaces them all.
            await (trio.Path(app_dir) / "broken").unlink()
            start = len(supervisor.stderr.lines)
            supervisor.signal(signal.SIGHUP)
            _, end = await supervisor.stderr.wait_for(RESTARTED, start)
            new = {
                int(match[1])
                for line in supervisor.stderr.lines[start:end]
                if (match := re.search(SERVING, line))
            }
            assert len(new) == WORKERS and not new & old
            for pid in old:
                await supervisor.stderr.wait_for(rf"\(pid {pid}\) has finished", start)
            assert await pids_answering(supervisor.port, new) == new
