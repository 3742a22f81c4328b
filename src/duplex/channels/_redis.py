"""A ChannelGroup whose broadcasts reach members in every process, through Redis.

Each process holds its own members; ``broadcast`` publishes to a Redis channel that every
process subscribes to, and each delivers to its local members. With ``history``, events
also go to a Redis stream (trimmed to ``history`` entries) in the same atomic step, so
an SSE client that reconnects to any process with ``Last-Event-ID`` gets what it missed.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit

import trio

from ..sse import Event
from ._channel import Channel
from ._group import Broadcast, ChannelGroup
from ._messages import Message, Stamped, event_id, stamp

__all__ = ["BroadcastError", "RedisChannelGroup"]

log = logging.getLogger("duplex.redis")

# XADD and PUBLISH as one step, so the stream's order is the order subscribers see.
_PUBLISH_WITH_HISTORY = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'm', ARGV[2])
return redis.call('PUBLISH', KEYS[2], id .. ' ' .. ARGV[2])
"""


class BroadcastError(ConnectionError):
    """A broadcast could not reach Redis (down, restarting, or too slow to answer)."""


def _encode(message: Message, close: bool) -> str:
    if isinstance(message, Event):
        body: dict[str, Any] = {"k": "e", "d": message.data, "e": message.event}
        if message.retry is not None:
            body["r"] = message.retry
    elif isinstance(message, str):
        body = {"k": "s", "d": message}
    else:
        body = {"k": "b", "d": base64.b64encode(message).decode("ascii")}
    if close:
        body["c"] = 1
    return json.dumps(body, separators=(",", ":"))


def _decode(payload: str, number: str | None) -> tuple[Message | Stamped, bool]:
    """A published message, numbered ``number`` when it went through the history."""
    body = json.loads(payload)
    kind = body["k"]
    message: Message
    if kind == "b":
        message = base64.b64decode(body["d"])
    elif kind == "s":
        message = body["d"]
    else:
        message = Event(body["d"], body.get("e"), None, body.get("r"))
    close = bool(body.get("c"))
    if number is None:
        return message, close
    return stamp(message, number), close


class RedisChannelGroup(ChannelGroup):
    """``ChannelGroup`` across processes: use it as
    ``async with duplex.RedisChannelGroup("redis://127.0.0.1:6379", "room") as group``.

    ``broadcast(message)`` publishes through Redis and returns how many processes
    received it; each delivers to its local members in publish order. Broadcasting a
    function reaches local members only (a function cannot travel). If Redis cannot be
    reached within ``timeout`` seconds, ``broadcast`` raises ``BroadcastError``; the
    subscription reconnects and resubscribes by itself. Without history, delivery is
    at most once: what is published while a process is resubscribing is lost to it.

    The group works only while it is entered (it holds the connection to Redis and the
    subscription): ``broadcast`` and ``add`` outside ``async with group`` raise
    ``RuntimeError``. A server enters it once per process from its lifespan
    (``serve(..., lifespan=...)``, ``duplex serve --lifespan``). Entering raises
    ``ConnectionError`` if Redis cannot be reached or does not answer within
    ``timeout``: a server then fails to start rather than wait, silent, for a Redis that
    may never come.
    """

    def __init__(
        self,
        url: str,
        name: str,
        *,
        max_queue: int = 1024,
        max_queue_bytes: int = 1 << 20,
        when_full: Literal["close", "drop-oldest"] = "close",
        history: int = 0,
        timeout: float = 5.0,
    ) -> None:
        super().__init__(
            max_queue=max_queue, max_queue_bytes=max_queue_bytes, when_full=when_full, history=0
        )
        self.url = url
        self.name = name
        self.history_size = history
        self.timeout = timeout
        self._channel_key = f"duplex:group:{name}"
        self._stream_key = f"duplex:group:{name}:history"
        self._client: Any = None
        # Holds the client and the nursery of the subscription while the group is entered.
        self._entered: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None
        self._subscribed = trio.Event()
        # Members catching up from the stream: live messages wait here until they have.
        self._catching_up: dict[Channel, list[Stamped | Event]] = {}

    async def __aenter__(self) -> RedisChannelGroup:
        try:
            import coredis
        except ImportError as error:  # pragma: no cover - depends on the install
            raise ImportError(
                "RedisChannelGroup needs coredis: pip install 'duplex[redis]'"
            ) from error
        parts = urlsplit(self.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 6379
        client = coredis.Redis(
            host=host,
            port=port,
            db=int(parts.path.strip("/") or 0),
            password=parts.password,
            connect_timeout=self.timeout,
            stream_timeout=None,
        )
        # Whatever fails or is cancelled on the way in unwinds what was entered before it
        # (a nursery left open would corrupt the caller's task).
        try:
            async with AsyncExitStack() as entering:
                try:
                    self._client = await entering.enter_async_context(client)
                    await self._reach(host, port)
                    self._nursery = await entering.enter_async_context(trio.open_nursery())
                    await self._nursery.start(self._subscribe)
                except BaseException:
                    self._client = self._nursery = None
                    raise
                self._entered = entering.pop_all()
        except ExceptionGroup as group:
            # The client's exit wraps what passes through it in a group of one.
            (unreachable, *others) = group.exceptions
            if others or not isinstance(unreachable, ConnectionError):
                raise
            raise unreachable from None
        return self

    async def _reach(self, host: str, port: int) -> None:
        """Raise ``ConnectionError`` (naming Redis by host and port, never by a URL that
        may hold a password) unless Redis answers a PING within ``timeout``."""
        where = f"RedisChannelGroup {self.name!r} cannot reach Redis at {host}:{port}"
        try:
            with trio.fail_after(self.timeout):
                await self._client.ping()
        except trio.TooSlowError:
            raise ConnectionError(f"{where}: no answer within {self.timeout:g} s") from None
        except Exception as error:
            if not type(error).__module__.startswith("coredis"):
                raise
            # The first cause says it plainly ("Connection refused").
            cause: BaseException = error
            while cause.__cause__ is not None:
                cause = cause.__cause__
            reason = (
                os.strerror(cause.errno) if isinstance(cause, OSError) and cause.errno else error
            )
            raise ConnectionError(f"{where}: {reason}") from None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._nursery is not None and self._entered is not None
        self._nursery.cancel_scope.cancel()
        self._nursery = None
        entered, self._entered = self._entered, None
        try:
            await entered.__aexit__(exc_type, exc_value, traceback)
        finally:
            self._client = None

    def _started(self) -> Any:
        """The Redis client; raises ``RuntimeError`` saying how to start the group if
        it is not entered."""
        client = self._client
        if client is None:
            raise RuntimeError(
                f"RedisChannelGroup {self.name!r} is not started: use it inside "
                "`async with group:`, or enter it from the server's lifespan "
                "(serve(..., lifespan=fn), duplex serve --lifespan module:fn)"
            )
        return client

    async def _subscribe(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver what Redis publishes to the local members; coredis reconnects and
        resubscribes after Redis restarts."""
        async with self._client.pubsub(
            channels=[self._channel_key],
            ignore_subscribe_messages=True,
            retry_policy=self._retry_policy(),
        ) as subscription:
            task_status.started()
            while True:
                # Not `async for`: coredis ends that iteration when a message arrives
                # while it resubscribes after a reconnect, and the group would go deaf.
                message = await subscription.get_message()
                if message is None or message.get("type") != "message":
                    continue
                data = message["data"]
                try:
                    self._deliver(data.decode() if isinstance(data, bytes) else data)
                except (ValueError, KeyError, TypeError) as error:
                    # Someone else's message on our channel must not end the group
                    # (and with it the server that holds it).
                    log.warning(
                        "%s: skipped a message that is not a broadcast: %r", self.name, error
                    )

    def _retry_policy(self) -> Any:
        """Resubscribe after an outage within about a second of Redis coming back, and
        keep trying for as long as it is away (coredis's default waits up to 16 s)."""
        from coredis.exceptions import ConnectionError
        from coredis.retry import ExponentialBackoffRetryPolicy

        return ExponentialBackoffRetryPolicy(
            (ConnectionError, TimeoutError), retries=None, base_delay=0.1, max_delay=1.0
        )

    def _deliver(self, published: str) -> None:
        number: str | None = None
        if not published.startswith("{"):
            # "<stream id> <message>" from a group that keeps history; every process
            # reads both forms, so groups with and without history can share a name.
            number, _, published = published.partition(" ")
        message, close = _decode(published, number)
        for channel in self:
            waiting = self._catching_up.get(channel)
            if waiting is not None and isinstance(message, Stamped | Event):
                waiting.append(message)
            else:
                self.offer(channel, message, close)

    async def broadcast(self, message: Broadcast, *, close: bool = False) -> int:
        """Publish ``message`` to every process's members; return how many processes
        received it. A function is applied to local members only (see the class).

        Raises ``BroadcastError`` if Redis does not answer within ``timeout``, and
        ``RuntimeError`` if the group is not started (entered).
        """
        client = self._started()
        if callable(message):
            return await super().broadcast(message, close=close)
        payload = _encode(message, close)
        try:
            with trio.fail_after(self.timeout):
                if self.history_size:
                    receivers = await client.eval(
                        _PUBLISH_WITH_HISTORY,
                        keys=[self._stream_key, self._channel_key],
                        args=[str(self.history_size), payload],
                    )
                else:
                    receivers = await client.publish(self._channel_key, payload)
                return int(receivers)
        except trio.TooSlowError as error:
            raise BroadcastError(f"Redis did not answer within {self.timeout} s") from error
        except Exception as error:
            if type(error).__module__.startswith("coredis"):
                raise BroadcastError(f"cannot broadcast through Redis: {error}") from error
            raise

    def add(self, channel: Channel, attachment: Any = None) -> None:
        """Add a local member; with history, a ``Last-Event-ID`` it brings is answered
        from the Redis stream (then live messages follow, in order, without repeats).
        Raises ``RuntimeError`` if the group is not started (entered)."""
        self._started()
        if not channel.is_open:
            return
        super().add(channel, attachment)
        if self.history_size and channel.last_event_id is not None and self._nursery:
            self._catching_up[channel] = []
            self._nursery.start_soon(self._catch_up, channel, channel.last_event_id)

    def discard(self, channel: Channel) -> None:
        super().discard(channel)
        self._catching_up.pop(channel, None)

    async def _catch_up(self, channel: Channel, last_event_id: str) -> None:
        replayed: list[Stamped | Event] = []
        try:
            with trio.fail_after(self.timeout):
                entries = await self._client.xrange(self._stream_key, f"({last_event_id}", "+")
            for entry in entries:
                identifier = entry.identifier
                identifier = identifier.decode() if isinstance(identifier, bytes) else identifier
                raw = entry.field_values.get(b"m", entry.field_values.get("m"))
                text = raw.decode() if isinstance(raw, bytes) else raw
                message, _ = _decode(text, identifier)
                assert not isinstance(message, str | bytes)  # numbered: it has an id
                replayed.append(message)
        except Exception as error:
            log.warning("could not replay %s after %s: %r", self.name, last_event_id, error)
        waiting = self._catching_up.pop(channel, [])
        seen = {event_id(entry) for entry in replayed}
        for entry in replayed + [entry for entry in waiting if event_id(entry) not in seen]:
            self.offer(channel, entry)
