"""``duplex serve module:handler --workers N`` and ``duplex.serve_workers``: N processes
answer on one port; a worker that dies is replaced; SIGTERM stops them all gracefully;
workers that cannot start, or a port in use, end the supervisor with a clear message."""

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
            await supervisor.stderr.wait_for(r"^duplex: workers keep failing at start")
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
