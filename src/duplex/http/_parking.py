"""Exchanges that wait without a task of their own.

``Watchers`` starts a task that notices the peer leaving only for an exchange that
lasts (most end before one would be worth it). ``Parking`` holds exchanges that have
nothing to do (an idle channel) with no task at all: their sockets are watched through
one epoll set and their deadlines kept in buckets, by one task for the whole server, and
each is resumed in a new task when woken, when its peer leaves, at its deadline, or when
the server stops. Parking needs Linux's epoll (see ``_platform``); elsewhere an
exchange waits in its own task.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import math
import select
from collections.abc import Awaitable
from math import inf
from typing import Any, Protocol

import trio

from ._exchange import NO_WATCH, WATCH_TASK, Exchange
from ._transport import Transport, peek_gone

__all__ = ["WATCH_DELAY", "Parking", "Watchers"]

log = logging.getLogger("duplex.server")

#: How long an exchange runs before a watcher starts looking for its peer leaving.
WATCH_DELAY = 0.1
#: Parked exchanges' deadlines are kept in buckets of 1/_TICKS s (fired at or after).
_TICKS = 4


class Watched(Protocol):
    """A connection, as watchers and parking see it."""

    @property
    def in_flight(self) -> Exchange | None: ...

    @property
    def transport(self) -> Transport: ...

    #: The exchange parked on this connection, if any.
    parked: Exchange | None

    def peer_left(self, exchange: Exchange) -> None: ...

    def stash(self, data: bytes) -> int: ...

    def resume(self, exchange: Exchange) -> Awaitable[None]: ...


class Watchers:
    """Starts a watcher for each exchange that lasts ``WATCH_DELAY``.

    One task for the whole server, so that a quick exchange costs no task and keeps
    nothing alive: the set holds connections (each once), and each look reads the
    exchange in flight. It wakes every half ``WATCH_DELAY`` while exchanges run, and
    sleeps while there are none.
    """

    __slots__ = ("_wakeup", "_watching", "nursery")

    def __init__(self) -> None:
        self._watching: set[Watched] = set()
        self._wakeup = trio.lowlevel.ParkingLot()
        #: Where watcher tasks run (set by the server once it has a nursery).
        self.nursery: trio.Nursery | None = None

    def watch_later(self, connection: Watched) -> None:
        """Look at ``connection``'s exchange in flight once it has lasted WATCH_DELAY."""
        if not self._watching:
            self._wakeup.unpark()
        self._watching.add(connection)

    async def run(self) -> None:
        watching = self._watching
        while True:
            if not watching:
                await self._wakeup.park()
                continue
            await trio.sleep(WATCH_DELAY / 2)
            due = trio.current_time() - WATCH_DELAY
            for connection in list(watching):
                exchange = connection.in_flight
                if exchange is None:
                    watching.discard(connection)
                elif exchange.started <= due:
                    watching.discard(connection)
                    self._start(connection, exchange)

    def _start(self, connection: Watched, exchange: Exchange) -> None:
        """Start a task that notices the peer leaving mid-exchange, if still useful.

        Only while no one else waits on the socket (a reader of the request body, or the
        exchange's own task), and only for an exchange still running. The task peeks at
        the socket, reading nothing, and fails the exchange when the peer closes or
        resets the connection.
        """
        if (
            exchange is not connection.in_flight
            or not exchange.running
            or exchange.watch is not NO_WATCH
            or self.nursery is None
        ):
            return
        exchange.watch = WATCH_TASK
        exchange.watch_scope = scope = trio.CancelScope()
        self.nursery.start_soon(_watch, connection, exchange, scope)


async def _watch(connection: Watched, exchange: Exchange, scope: trio.CancelScope) -> None:
    with scope:
        if exchange is not connection.in_flight or not exchange.running:
            return
        await connection.transport.wait_peer_gone(connection.stash)
        log.debug("the peer left mid-exchange: %r", exchange)
        connection.peer_left(exchange)


class Parking:
    """Parked exchanges: their connections by descriptor, watched through one epoll set
    by one task; and their deadlines, in buckets."""

    __slots__ = (
        "_buckets",
        "_epoll",
        "_fds",
        "_keys",
        "_nursery",
        "_parked",
        "_scope",
        "_timer_keys",
        "over",
    )

    def __init__(self, nursery: trio.Nursery, *, enabled: bool) -> None:
        self._nursery = nursery
        self._epoll: Any = select.epoll() if enabled else None
        self._parked: dict[int, Watched] = {}
        # Where each parked connection is watched: its descriptor, its deadline's bucket.
        self._fds: dict[Watched, int] = {}
        self._keys: dict[Watched, int] = {}
        self._timer_keys: list[int] = []
        self._buckets: dict[int, set[Watched]] = {}
        self._scope: trio.CancelScope | None = None
        #: Set once the server stops holding parked exchanges (it is stopping).
        self.over = False

    @property
    def available(self) -> bool:
        """True while exchanges may park (epoll is there, and the server runs)."""
        return self._epoll is not None and not self.over

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()

    def park(self, connection: Watched) -> None:
        """Keep ``connection`` open with no task until its exchange is resumed."""
        exchange = connection.parked
        assert exchange is not None
        if exchange.wake_pending or exchange.failed or not self.available:
            self.resume(connection)
            return
        fd = connection.transport.fileno()
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
        self._parked[fd] = connection
        self._fds[connection] = fd
        if exchange.park_deadline < inf:
            key = math.ceil(exchange.park_deadline * _TICKS)
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = set()
                heapq.heappush(self._timer_keys, key)
                scope = self._scope
                if scope is not None and key / _TICKS < scope.deadline:
                    scope.deadline = key / _TICKS
            bucket.add(connection)
            self._keys[connection] = key

    def resume(self, connection: Watched) -> None:
        """Go on with ``connection``'s parked exchange in a new task (once)."""
        exchange = connection.parked
        if exchange is None:
            return
        connection.parked = None
        fd = self._fds.pop(connection, None)
        if fd is not None and self._parked.pop(fd, None) is not None:
            # (Not watched any more if the set is closed.)
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)
        key = self._keys.pop(connection, None)
        if key is not None:
            bucket = self._buckets.get(key)
            if bucket is not None:
                bucket.discard(connection)
                if not bucket:
                    del self._buckets[key]
        self._nursery.start_soon(connection.resume, exchange)

    def wake(self, connection: Watched, exchange: Exchange) -> None:
        """Resume ``exchange`` soon if it is parked on ``connection``."""
        if connection.parked is not exchange:
            return
        if connection in self._fds or connection in self._keys:
            self.resume(connection)
        else:
            exchange.wake_pending = True  # still on its way out of its task

    async def run(self) -> None:
        """The one task behind every parked exchange: it waits for their sockets (one
        epoll set, itself watched by trio) and their deadlines."""
        epoll = self._epoll
        if epoll is None:
            return
        try:
            while True:
                keys = self._timer_keys
                while keys and keys[0] not in self._buckets:
                    heapq.heappop(keys)
                with trio.CancelScope(deadline=keys[0] / _TICKS if keys else inf) as scope:
                    self._scope = scope
                    await trio.lowlevel.wait_readable(epoll.fileno())
                self._scope = None
                now = trio.current_time()
                while keys and keys[0] / _TICKS <= now:
                    for connection in list(self._buckets.pop(heapq.heappop(keys), ())):
                        self.resume(connection)
                for fd, events in epoll.poll(0):
                    self._look(fd, events)
        finally:
            # Stopping (or cancelled): every parked exchange ends in its own task, which
            # starts cancelled, so that its cleanup (a channel's on_close) still runs.
            self.over = True
            self._scope = None
            for connection in list(self._parked.values()):
                self.resume(connection)
            for bucket in list(self._buckets.values()):
                for connection in list(bucket):
                    self.resume(connection)

    def _look(self, fd: int, events: int) -> None:
        connection = self._parked.get(fd)
        if connection is None:
            return
        gone = peek_gone(connection.transport.socket())
        if gone is None:
            return  # nothing after all
        if not gone and not events & (select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR):
            # Data waits unread (a pipelined request, stray bytes): from now on only the
            # peer hanging up can wake it.
            self._epoll.modify(fd, select.EPOLLRDHUP)
            return
        exchange = connection.parked
        if exchange is not None:
            log.debug("the peer left a parked exchange: %r", exchange)
            connection.peer_left(exchange)
        self.resume(connection)
