"""Real bodies for the shared suites: each factory opens a body, a stream pair or a pipe
whose bytes cross a real socket on 127.0.0.1 between a ``duplex.serve`` server and a
client in the same trio run.

A handler hands what the test needs (``request.body``, a ``Streamable``'s stream, a
channel) to the test through a ``Handoff`` and waits until the test is done with it.
Every factory runs under ``deadlock_guard``: a test whose tasks all wait with nothing on
the way fails within a fraction of a second, instead of at the suite's time bound.

Chunk boundaries stay where the suites expect them because every body here is framed in
chunks: a chunked request whose frames a raw client sends whole, a ``Writable`` request
body (one frame per write), a chunked response (one frame per write). A reader never
takes bytes across the end of a chunk frame.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import pytest
import trio
import trio.testing

import duplex
from _server_support import RawClient, serving

__all__ = [
    "CHUNKED_POST",
    "DEADLOCK_CUSHION",
    "Deadlock",
    "Exchange",
    "Expected",
    "Handoff",
    "HeadHeld",
    "apply_expectations",
    "chunk_frames",
    "deadlock_guard",
    "open_exchange",
    "raw_chunked_post",
    "tasks",
    "unused",
    "url",
]

T = TypeVar("T")

DEADLOCK_CUSHION = 0.2
"""Seconds every task may wait at once before a test counts as deadlocked. On loopback a
byte sent is in the peer's socket when the send returns, so nothing is ever on the way
while every task waits: only a deadlock (or a timer) lasts this long."""

CHUNKED_POST = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk_frames(chunks: list[bytes], *, last: bool = True) -> bytes:
    """Each chunk as its own chunk frame, then (``last``) the last-chunk frame."""
    frames = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
    return frames + (b"0\r\n\r\n" if last else b"")


def url(server: duplex.Server, path: str = "/") -> str:
    return f"http://127.0.0.1:{server.port}{path}"


class Deadlock(Exception):
    """Every task waited at once for ``DEADLOCK_CUSHION`` seconds: nothing could move."""


class HeadHeld(Exception):
    """The server holds a response head back that a full-duplex client waits for."""


@asynccontextmanager
async def deadlock_guard(cushion: float = DEADLOCK_CUSHION) -> AsyncIterator[None]:
    """Cancel the block and raise ``Deadlock`` once every task has waited ``cushion`` s.

    A test's own ``wait_all_tasks_blocked()`` (no cushion) is always woken first, so only
    a wait that nothing will ever end trips the guard.
    """
    stuck = False

    async def watch(scope: trio.CancelScope) -> None:
        nonlocal stuck
        await trio.testing.wait_all_tasks_blocked(cushion)
        stuck = True
        scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as scope:
                nursery.start_soon(watch, scope)
                try:
                    yield
                finally:
                    nursery.cancel_scope.cancel()
    except BaseException as error:
        if stuck:
            raise Deadlock(f"every task waited {cushion} s with nothing on the way") from error
        leaf = _only_exception(error)
        if leaf is not error:
            raise leaf from None  # the test's own error, out of the nurseries' groups
        raise
    if stuck:
        raise Deadlock(f"every task waited {cushion} s with nothing on the way")


def _only_exception(error: BaseException) -> BaseException:
    """The one ``Exception`` that nested groups of one hold, else ``error`` itself."""
    leaf = error
    while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
        leaf = leaf.exceptions[0]
    return leaf if isinstance(leaf, Exception) else error


class Handoff(Generic[T]):
    """Carries one value from a handler to the test, and holds the handler until the
    test is done with it."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[T](1)
        self.done = trio.Event()

    async def give(self, value: T) -> None:
        """Hand ``value`` to the test, then wait until the test is done with it."""
        self._send.send_nowait(value)
        await self.done.wait()

    def offer(self, value: T) -> None:
        """Hand ``value`` to the test without waiting (from a hook that must return)."""
        self._send.send_nowait(value)

    async def take(self) -> T:
        return await self._receive.receive()

    def take_nowait(self) -> T:
        """The value if it was handed over already; ``trio.WouldBlock`` if not."""
        return self._receive.receive_nowait()

    @asynccontextmanager
    async def taken(self) -> AsyncIterator[T]:
        """The value handed over; the handler goes on when the block ends."""
        try:
            yield await self.take()
        finally:
            self.done.set()


@dataclass
class Exchange:
    """A full-duplex exchange over a real socket, both ends open.

    ``server_stream`` is the ``Stream`` the ``Streamable`` got, ``client_stream`` the
    client's ``Stream(response.body, output)``.
    """

    server: duplex.Server
    client: duplex.Client
    response: duplex.ClientResponse
    server_stream: duplex.Stream
    client_stream: duplex.Stream


@asynccontextmanager
async def open_exchange(
    *,
    output: duplex.Writable | None = None,
    limits: duplex.Limits | None = None,
    client_limits: duplex.ClientLimits | None = None,
    http2: bool | Literal["prior-knowledge"] = False,
) -> AsyncIterator[Exchange]:
    """A ``Streamable`` on a ``duplex.serve`` server and a ``duplex.Client`` posting a
    ``Writable`` to it: ``response = await client.post(url, body=output)``. The
    ``Streamable`` runs until the block ends. ``http2`` as the client takes it
    (``"prior-knowledge"``: the exchange is one HTTP/2 stream)."""
    handoff: Handoff[duplex.Stream] = Handoff()

    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, body=duplex.Streamable(handoff.give))

    output = duplex.Writable() if output is None else output
    async with (
        serving(handler, limits=limits) as server,
        duplex.Client(limits=client_limits, http2=http2) as client,
    ):
        response = await client.post(url(server), body=output)
        async with handoff.taken() as server_stream:
            client_stream = duplex.Stream(response.body, output)
            yield Exchange(server, client, response, server_stream, client_stream)


async def raw_chunked_post(port: int, chunks: list[bytes], *, last: bool = True) -> RawClient:
    """A raw connection that sent a chunked POST with ``chunks`` in one write (and the
    last-chunk frame, if ``last``)."""
    client = await RawClient.connect(port)
    await client.send(CHUNKED_POST + chunk_frames(chunks, last=last))
    return client


def unused(*args: Any) -> None:
    """A callback that does nothing (a channel's ``on_receive``, so that it reads)."""


@asynccontextmanager
async def tasks() -> AsyncIterator[trio.Nursery]:
    """A nursery for background tasks, cancelled when the block ends."""
    async with trio.open_nursery() as nursery:
        try:
            yield nursery
        finally:
            nursery.cancel_scope.cancel()


# -- what is expected to fail, and where -------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """A test that fails (or cannot hold) where its parameters include every name in
    ``where``: a factory's name, a ``Method``'s name, a read's name, or the I/O path
    (``"fast"``, ``"portable"``)."""

    test: str
    where: tuple[str, ...]
    reason: str


def parameter_names(request: pytest.FixtureRequest) -> set[str]:
    """The names of a test's parameters (a function's or a Method's name, else the value
    as text), and the I/O path it runs on (``"fast"`` unless the run says otherwise)."""
    params = getattr(request.node, "callspec", None)
    values = dict(params.params) if params is not None else {}
    names = {"fast"} if "io_path" not in values else set()
    for value in values.values():
        names.add(getattr(value, "name", getattr(value, "__name__", str(value))))
    return names


def apply_expectations(
    request: pytest.FixtureRequest, failing: list[Expected], not_applicable: list[Expected]
) -> None:
    """Skip the test if it cannot hold here; mark it xfail, strictly, if it is known to
    fail here (issue 13)."""
    test = request.function.__name__
    names = parameter_names(request)
    for entry in not_applicable:
        if entry.test == test and names.issuperset(entry.where):
            pytest.skip(entry.reason)
    for entry in failing:
        if entry.test == test and names.issuperset(entry.where):
            request.applymarker(pytest.mark.xfail(strict=True, reason=f"issue 13: {entry.reason}"))
            return
