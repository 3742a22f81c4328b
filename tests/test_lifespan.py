"""Lifespan: ``serve(..., lifespan=fn)``, ``Server(..., lifespan=fn)`` and ``duplex serve
--lifespan module:fn`` enter ``fn()`` once per process before the first request is served
and exit it after the last exchange has ended at shutdown; a handler that is itself an
async context manager is entered the same way, inside the lifespan. A
``RedisChannelGroup`` used before it is started says how to start it."""

from __future__ import annotations

import re
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import pytest
import trio
import trio.testing

import duplex
from _redis_support import RedisServer, duplex_process, http_get
from _server_support import RawClient, free_port, get, hello, request_bytes

#: Seconds a test may take: in-process servers take well under one, processes a few.
TIMEOUT = 30.0


class Recorder:
    """What happened, in order: the lifespan, the handler's own context, the exchanges."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.running = trio.Event()
        self.release = trio.Event()

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        self.events.append("lifespan entered")
        await trio.lowlevel.checkpoint()
        yield
        await trio.lowlevel.checkpoint()
        self.events.append("lifespan exited")

    async def handler(self, request: duplex.Request) -> duplex.Response:
        self.events.append(f"request {request.path}")
        if request.path == "/slow":
            self.running.set()
            await self.release.wait()

        async def body() -> AsyncIterator[bytes]:
            yield b"done"
            # Asked for the next chunk once "done" has been sent: the response ends.
            self.events.append(f"response {request.path} sent")

        return duplex.Response(200, body=body())


class ContextHandler:
    """A handler that is also an async context manager."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def __aenter__(self) -> ContextHandler:
        self.recorder.events.append("handler entered")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.recorder.events.append("handler exited")

    async def __call__(self, request: duplex.Request) -> duplex.Response:
        return await self.recorder.handler(request)


Start = Callable[..., Any]


async def start_with_serve(nursery: trio.Nursery, handler: Any, **options: Any) -> duplex.Server:
    server: duplex.Server = await nursery.start(
        partial(duplex.serve, handler, "127.0.0.1", 0, **options)
    )
    return server


async def start_with_server(nursery: trio.Nursery, handler: Any, **options: Any) -> duplex.Server:
    server: duplex.Server = await nursery.start(
        duplex.Server(handler, "127.0.0.1", 0, **options).serve
    )
    return server


STARTS = pytest.mark.parametrize(
    "start", [start_with_serve, start_with_server], ids=["serve", "Server"]
)


@STARTS
async def test_the_lifespan_is_entered_before_serving_and_exited_after_the_last_exchange(
    start: Start,
) -> None:
    recorder = Recorder()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server = await start(nursery, recorder.handler, lifespan=recorder.lifespan)
            assert recorder.events == ["lifespan entered"]
            assert (await get(server.port, "/first")).body == b"done"
            async with await RawClient.connect(server.port) as client:
                await client.send(request_bytes("/slow"))
                await recorder.running.wait()
                nursery.start_soon(server.shutdown, TIMEOUT)
                await trio.testing.wait_all_tasks_blocked()
                assert server.shutting_down
                assert "lifespan exited" not in recorder.events
                recorder.release.set()
                response = await client.read_response()
            assert response.body == b"done"
    assert recorder.events == [
        "lifespan entered",
        "request /first",
        "response /first sent",
        "request /slow",
        "response /slow sent",
        "lifespan exited",
    ]


@STARTS
async def test_a_handler_that_is_an_async_context_manager_is_entered_inside_the_lifespan(
    start: Start,
) -> None:
    recorder = Recorder()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server = await start(nursery, ContextHandler(recorder), lifespan=recorder.lifespan)
            assert (await get(server.port, "/")).body == b"done"
            await server.shutdown()
    assert recorder.events == [
        "lifespan entered",
        "handler entered",
        "request /",
        "response / sent",
        "handler exited",
        "lifespan exited",
    ]


@STARTS
async def test_a_handler_that_is_an_async_context_manager_is_entered_without_a_lifespan(
    start: Start,
) -> None:
    recorder = Recorder()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server = await start(nursery, ContextHandler(recorder))
            assert recorder.events == ["handler entered"]
            await server.shutdown()
    assert recorder.events == ["handler entered", "handler exited"]


@asynccontextmanager
async def failing() -> AsyncIterator[None]:
    raise ConnectionError("the database is down")
    yield


async def test_a_lifespan_that_fails_to_enter_stops_serve_before_it_listens() -> None:
    port = free_port()
    with trio.fail_after(TIMEOUT), pytest.raises(ConnectionError, match="database is down"):
        await duplex.serve(hello, "127.0.0.1", port, lifespan=failing)
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)


async def test_a_lifespan_that_fails_to_enter_stops_a_server_before_it_listens() -> None:
    server = duplex.Server(hello, "127.0.0.1", 0, lifespan=failing)
    with trio.fail_after(TIMEOUT), pytest.raises(ConnectionError, match="database is down"):
        await server.serve()
    assert server.listeners == []


async def test_a_lifespan_given_as_its_context_manager_is_a_clear_type_error() -> None:
    """``lifespan=fn()`` for ``lifespan=fn``: what it says names the fix."""

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        yield

    server = duplex.Server(hello, "127.0.0.1", 0, lifespan=cast(Any, lifespan()))
    with (
        trio.fail_after(TIMEOUT),
        pytest.raises(TypeError, match=r"lifespan=fn, not lifespan=fn\(\)"),
    ):
        await server.serve()
    assert server.listeners == []


async def test_a_lifespan_that_returns_no_async_context_manager_is_a_clear_type_error() -> None:
    def not_a_context() -> Any:
        return None

    server = duplex.Server(hello, "127.0.0.1", 0, lifespan=not_a_context)
    with trio.fail_after(TIMEOUT), pytest.raises(TypeError, match="not an async context manager"):
        await server.serve()
    assert server.listeners == []


# -- the command line --------------------------------------------------------------------

APP = '''\
"""Records in files beside this module when its lifespan and handler are entered and
exited (one file per process and event)."""

import contextlib
import os
import sys

import trio

import duplex

PID = str(os.getpid())
HERE = os.path.dirname(os.path.abspath(__file__))


def record(what):
    with open(os.path.join(HERE, f"{what}-{PID}"), "w") as file:
        file.write(str(len(os.listdir(HERE))))


@contextlib.asynccontextmanager
async def lifespan():
    record("lifespan-entered")
    yield
    record("lifespan-exited")


@contextlib.asynccontextmanager
async def stuck():
    """A lifespan that never finishes entering (a database that does not answer)."""
    print(f"entering in {PID}", file=sys.stderr, flush=True)
    await trio.sleep_forever()
    yield


class Handler:
    async def __aenter__(self):
        record("handler-entered")
        return self

    async def __aexit__(self, *exc_info):
        record("handler-exited")

    async def __call__(self, request):
        return duplex.Response(200, {"x-pid": PID}, body="hello")


handler = Handler()


@contextlib.asynccontextmanager
async def unreachable():
    """A lifespan whose database refuses the connection."""
    raise ConnectionRefusedError(111, "Connection refused")
    yield


@contextlib.asynccontextmanager
async def unflushed():
    """A lifespan that fails as it closes."""
    yield
    raise RuntimeError("flush failed")


def not_a_context():
    return 42


class Refusing:
    async def __aenter__(self):
        raise RuntimeError("no pool")

    async def __aexit__(self, *exc_info):
        pass

    async def __call__(self, request):
        return duplex.Response(200, body="hello")


refusing = Refusing()
'''


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


def recorded(app_dir: Path) -> dict[str, int]:
    """Each file the app wrote → the number of files there were when it wrote it, so
    that the order of the events in one process can be told."""
    return {
        path.name: int(path.read_text() or 0)
        for path in app_dir.iterdir()
        if path.name != "app.py" and not path.name.startswith("__")
    }


def order(records: dict[str, int], pid: int) -> list[str]:
    mine = {
        name.rsplit("-", 1)[0]: rank for name, rank in records.items() if name.endswith(f"-{pid}")
    }
    return sorted(mine, key=mine.__getitem__)


SERVING = r"worker \d+ \(pid (\d+)\) is serving"
EVERY_STEP = ["lifespan-entered", "handler-entered", "handler-exited", "lifespan-exited"]


async def test_duplex_serve_enters_and_exits_the_lifespan_given_with_dash_dash_lifespan(
    app_dir: Path,
) -> None:
    arguments = ["serve", "app:handler", "--port", "0", "--lifespan", "app:lifespan"]
    with trio.fail_after(TIMEOUT):
        async with duplex_process(arguments, cwd=app_dir, env={}) as server:
            reply = await http_get(server.port)
            assert reply.body == b"hello"
            pid = int(reply.headers["x-pid"])
            assert order(recorded(app_dir), pid) == EVERY_STEP[:2]
            server.signal(signal.SIGTERM)
            assert await server.wait() == 0
    assert order(recorded(app_dir), pid) == EVERY_STEP


async def test_every_worker_of_duplex_serve_workers_enters_and_exits_its_lifespan(
    app_dir: Path,
) -> None:
    arguments = ["serve", "app:handler", "--port", "0", "--workers", "2"]
    arguments += ["--lifespan", "app:lifespan"]
    with trio.fail_after(TIMEOUT):
        async with duplex_process(arguments, cwd=app_dir, env={}) as supervisor:
            pids, index = set(), 0
            for _ in range(2):
                match, index = await supervisor.stderr.wait_for(SERVING, index)
                pids.add(int(match[1]))
            supervisor.signal(signal.SIGTERM)
            assert await supervisor.wait() == 0
    records = recorded(app_dir)
    assert len(pids) == 2
    assert supervisor.pid not in pids
    for pid in pids:
        assert order(records, pid) == EVERY_STEP
    assert len(records) == 2 * len(EVERY_STEP)


async def test_a_lifespan_that_does_not_import_is_one_line_before_any_worker_starts(
    app_dir: Path,
) -> None:
    arguments = ["serve", "app:handler", "--workers", "2", "--lifespan", "app:nowhere"]
    with trio.fail_after(TIMEOUT):
        async with duplex_process(arguments, cwd=app_dir, env={}, ready=False) as process:
            assert await process.wait() != 0
    assert process.stderr.text == "duplex: 'app' has no attribute 'nowhere'\n"
    assert recorded(app_dir) == {}


async def test_a_signal_while_the_lifespan_enters_stops_the_server_at_once(
    app_dir: Path,
) -> None:
    arguments = ["serve", "app:handler", "--port", "0", "--lifespan", "app:stuck"]
    with trio.fail_after(TIMEOUT):
        async with duplex_process(arguments, cwd=app_dir, env={}, ready=False) as server:
            await server.stderr.wait_for(r"^entering in \d+$")
            server.signal(signal.SIGINT)
            assert await server.wait() == 0
    assert "serving on" not in server.stdout.text
    assert "Traceback" not in server.stderr.text
    assert recorded(app_dir) == {}


FAILING_TO_START = {
    "lifespan": (
        ["app:handler", "--lifespan", "app:unreachable"],
        "duplex: the lifespan failed to start: ConnectionRefusedError: [Errno 111] "
        "Connection refused",
    ),
    "handler": (["app:refusing"], "duplex: the handler failed to start: RuntimeError: no pool"),
}


@pytest.mark.parametrize(
    ("arguments", "last_line"), FAILING_TO_START.values(), ids=FAILING_TO_START.keys()
)
async def test_what_fails_to_start_is_named_after_its_own_traceback_with_status_1(
    app_dir: Path, arguments: list[str], last_line: str
) -> None:
    """An OSError of the application's (its database refuses it) is not the server
    failing to listen; the traceback is the application's, not an exception group's."""
    with trio.fail_after(TIMEOUT):
        async with duplex_process(
            ["serve", *arguments, "--port", "0"], cwd=app_dir, env={}, ready=False
        ) as server:
            assert await server.wait() == 1
    lines = server.stderr.text.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-1] == last_line
    assert any('app.py", line' in line for line in lines)
    assert "cannot listen" not in server.stderr.text
    assert "Group" not in server.stderr.text
    assert "serving on" not in server.stdout.text


async def test_a_lifespan_that_fails_as_the_server_stops_is_named_with_status_1(
    app_dir: Path,
) -> None:
    arguments = ["serve", "app:handler", "--port", "0", "--lifespan", "app:unflushed"]
    with trio.fail_after(TIMEOUT):
        async with duplex_process(arguments, cwd=app_dir, env={}) as server:
            assert (await http_get(server.port)).body == b"hello"
            server.signal(signal.SIGTERM)
            assert await server.wait() == 1
    lines = server.stderr.text.splitlines()
    assert (
        lines[-1] == "duplex: the lifespan failed as the server stopped: RuntimeError: flush failed"
    )
    assert "Group" not in server.stderr.text


async def test_a_lifespan_that_returns_no_context_manager_is_one_line_on_the_command_line(
    app_dir: Path,
) -> None:
    arguments = ["serve", "app:handler", "--port", "0", "--lifespan", "app:not_a_context"]
    with trio.fail_after(TIMEOUT):
        async with duplex_process(arguments, cwd=app_dir, env={}, ready=False) as server:
            assert await server.wait() == 1
    assert re.fullmatch(
        r"duplex: the lifespan <function not_a_context at \w+> returned 42, not an async "
        r"context manager \(write it with @contextlib\.asynccontextmanager\)\n",
        server.stderr.text,
    ), server.stderr.text


# -- RedisChannelGroup ---------------------------------------------------------------------


def group() -> duplex.RedisChannelGroup:
    # Never connected: the URL is not used before the group is started.
    return duplex.RedisChannelGroup("redis://127.0.0.1:1", "room")


async def test_a_redis_group_broadcast_before_it_is_started_says_how_to_start_it() -> None:
    with pytest.raises(RuntimeError, match=r"not started.*async with group.*lifespan"):
        await group().broadcast("hello")


async def test_a_redis_group_that_has_not_started_refuses_members_with_the_same_advice() -> None:
    room = group()
    refused: list[RuntimeError] = []
    done = trio.Event()

    def join(channel: duplex.Channel) -> None:
        try:
            room.add(channel)
        except RuntimeError as error:
            refused.append(error)
        done.set()

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.channel(request, on_open=join)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server = await start_with_serve(nursery, handler)
            async with duplex.Client() as client:
                url = f"http://127.0.0.1:{server.port}/"
                response = await client.get(url, headers={"accept": "text/event-stream"})
                assert response.status == 200
                await done.wait()
                await response.body.aclose()
            nursery.cancel_scope.cancel()
    assert len(refused) == 1
    assert "async with group" in str(refused[0])


@pytest.fixture
def paused_redis() -> Iterator[RedisServer]:
    """A Redis server that accepts connections but answers nothing (SIGSTOP)."""
    if not RedisServer.available():
        pytest.skip("redis-server is not on PATH")
    server = RedisServer()
    server.start()
    server.pause()
    yield server
    server.resume()
    server.stop()


async def test_a_redis_group_that_cannot_reach_redis_fails_to_start_naming_where_it_looked() -> (
    None
):
    """Not a wait, silent and without end, for a Redis that is not there; and the
    password in the URL stays out of the message."""
    pytest.importorskip("coredis")
    port = free_port()
    room = duplex.RedisChannelGroup(f"redis://:secret@127.0.0.1:{port}", "room", timeout=5)
    with trio.fail_after(TIMEOUT), pytest.raises(ConnectionError) as raised:
        async with room:
            pytest.fail("the group started without Redis")
    assert str(raised.value) == (
        f"RedisChannelGroup 'room' cannot reach Redis at 127.0.0.1:{port}: Connection refused"
    )
    with pytest.raises(RuntimeError, match="not started"):
        await room.broadcast("hello")


async def test_a_redis_group_whose_redis_does_not_answer_fails_to_start_within_its_timeout(
    paused_redis: RedisServer,
) -> None:
    pytest.importorskip("coredis")
    room = duplex.RedisChannelGroup(paused_redis.url, "room", timeout=0.5)
    with trio.fail_after(TIMEOUT), pytest.raises(ConnectionError, match=r"no answer within 0\.5 s"):
        async with room:
            pytest.fail("the group started without an answer from Redis")


async def test_a_redis_group_cancelled_while_it_starts_leaves_its_caller_intact(
    paused_redis: RedisServer,
) -> None:
    """A signal while a lifespan enters the group cancels it there: what it had opened
    closes, and the task that entered it goes on (trio's nurseries stay nested)."""
    pytest.importorskip("coredis")
    room = duplex.RedisChannelGroup(paused_redis.url, "room", timeout=TIMEOUT)
    with trio.fail_after(TIMEOUT):
        with trio.move_on_after(0.2) as entering:
            async with room:
                pytest.fail("the group started without an answer from Redis")
        assert entering.cancelled_caught
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep, 0)
    with pytest.raises(RuntimeError, match="not started"):
        await room.broadcast("hello")
