"""The HTTP/1.1 client: full-duplex requests over a keep-alive pool.

``request`` sends the head, hands the request body to a task the client owns, and
returns as soon as the response head arrives; the response body is read from the socket
on demand by whoever reads it. So the caller can read the response while it still
writes the request.
"""

from __future__ import annotations

import logging
import re
import select
import ssl
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AsyncExitStack
from math import inf
from types import TracebackType
from typing import Any, TypeAlias
from urllib.parse import urljoin, urlsplit

import h11
import trio
from trio.lowlevel import ParkingLot, cancel_shielded_checkpoint, checkpoint_if_cancelled

from .._body import Buffered, BytesLike, Readable
from .._errors import ProtocolError, Timeout
from .._version import __version__
from ._limits import ClientLimits
from ._models import Headers, HeadersLike
from ._transport import raw_socket
from .h1._client import HTTPConnection

__all__ = ["Client", "ClientResponse", "RequestBody", "TooManyRedirects"]

log = logging.getLogger("duplex.client")

RequestBody: TypeAlias = "BytesLike | str | Readable | AsyncIterable[bytes] | None"
Origin: TypeAlias = tuple[str, str, int]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_USER_AGENT = f"duplex/{__version__}"


class TooManyRedirects(Exception):
    """``follow_redirects`` met more redirects than ``max_redirects`` allows."""


_UNSAFE_IN_URL = re.compile(r"[\x00-\x20\x7f]")


def _split_url(url: str) -> tuple[Origin, str]:
    # urlsplit quietly drops CR, LF and tabs; a URL holding them (or NUL, or a space)
    # is refused instead, so that nothing can slip a line into the request head.
    if _UNSAFE_IN_URL.search(url):
        raise ValueError(f"URL {url!r} holds a space or a control character")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"unsupported URL scheme in {url!r} (http and https are)")
    if not parts.hostname:
        raise ValueError(f"no host in URL {url!r}")
    port = parts.port or _DEFAULT_PORTS[scheme]
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (scheme, parts.hostname, port), target


def _host_header(origin: Origin) -> bytes:
    scheme, host, port = origin
    if ":" in host:
        host = f"[{host}]"
    if port != _DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    return host.encode("idna" if not host.isascii() else "ascii")


def _close_nowait(stream: trio.abc.Stream) -> None:
    """Close a transport without a checkpoint (no TLS goodbye: the connection is dead)."""
    sock = raw_socket(stream)
    if sock is not None:
        sock.close()


class _PooledConnection:
    __slots__ = ("closed", "http", "idle_since", "origin", "reused")

    def __init__(self, origin: Origin, http: HTTPConnection) -> None:
        self.origin = origin
        self.http = http
        self.idle_since = 0.0
        self.reused = False
        self.closed = False

    def close(self) -> bool:
        """Close the transport; True the first time, False if it was closed already."""
        if self.closed:
            return False
        self.closed = True
        _close_nowait(self.http.stream)
        return True

    def is_stale(self) -> bool:
        """An idle connection the server has closed (or written to) is readable."""
        sock = raw_socket(self.http.stream)
        if sock is None:
            return False
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))


class _Pool:
    """Keep-alive connections per origin, bounded in number, busy and idle alike."""

    def __init__(self, limits: ClientLimits, ssl_context: ssl.SSLContext | None) -> None:
        self.limits = limits
        self._ssl_context = ssl_context
        self._idle: dict[Origin, list[_PooledConnection]] = {}
        self._busy: set[_PooledConnection] = set()
        self._open: dict[Origin, int] = {}
        self._waiters: dict[Origin, ParkingLot] = {}
        self.closed = False

    def open_connections(self, origin: Origin | None = None) -> int:
        """Connections open (busy or idle), to ``origin`` or in all."""
        if origin is None:
            return sum(self._open.values())
        return self._open.get(origin, 0)

    def idle_connections(self, origin: Origin | None = None) -> int:
        if origin is None:
            return sum(len(idle) for idle in self._idle.values())
        return len(self._idle.get(origin, ()))

    async def acquire(self, origin: Origin) -> _PooledConnection:
        limits = self.limits
        # The pool timeout bounds the wait for a free slot, never a connect under way.
        deadline = trio.current_time() + (
            inf if limits.pool_timeout is None else limits.pool_timeout
        )
        # Checkpoint first, so that an idle connection is checked for staleness and
        # handed over with no yield between: a connection taken then cancelled at a
        # checkpoint would be in no list, never closed; and the later the check, the
        # narrower the window in which the server may close it unseen.
        await trio.lowlevel.checkpoint()
        while True:
            if self.closed:
                raise trio.ClosedResourceError("the client is closed")
            connection = self._take_idle(origin)
            if connection is not None:
                self._busy.add(connection)
                return connection
            if self._open.get(origin, 0) < limits.max_connections_per_origin:
                self._open[origin] = self._open.get(origin, 0) + 1
                try:
                    connection = await self._connect(origin)
                except BaseException:
                    self._forget(origin)
                    raise
                self._busy.add(connection)
                return connection
            with trio.move_on_at(deadline) as scope:
                await self._waiters.setdefault(origin, ParkingLot()).park()
            if scope.cancelled_caught:
                raise Timeout("pool", limits.pool_timeout or 0.0)

    def _take_idle(self, origin: Origin) -> _PooledConnection | None:
        idle = self._idle.get(origin)
        expiry = self.limits.idle_expiry
        now = trio.current_time()
        while idle:
            connection = idle.pop()
            if (expiry is not None and now - connection.idle_since > expiry) or (
                connection.is_stale()
            ):
                self.discard(connection)
                continue
            connection.reused = True
            return connection
        return None

    async def _connect(self, origin: Origin) -> _PooledConnection:
        scheme, host, port = origin
        limits = self.limits
        timeout = limits.connect_timeout
        with trio.move_on_after(inf if timeout is None else timeout) as scope:
            tcp = await trio.open_tcp_stream(host, port)
            stream: trio.abc.Stream = tcp
            if scheme == "https":
                context = self._ssl_context or ssl.create_default_context()
                tls = trio.SSLStream(tcp, context, server_hostname=host, https_compatible=True)
                try:
                    await tls.do_handshake()
                except BaseException:
                    await trio.aclose_forcefully(tcp)
                    raise
                stream = tls
        if scope.cancelled_caught:
            raise Timeout("connect", timeout or 0.0)
        http = HTTPConnection(
            stream,
            h11.CLIENT,
            max_incomplete_event_size=limits.max_response_header_size,
            read_size=limits.read_size,
            write_timeout=limits.write_timeout,
        )
        return _PooledConnection(origin, http)

    def release(self, connection: _PooledConnection) -> None:
        """Take back a connection whose exchange finished cleanly; reuse it if we can."""
        self._busy.discard(connection)
        h = connection.http.h11
        idle = self._idle.setdefault(connection.origin, [])
        if (
            not self.closed
            and not connection.closed
            and h.our_state is h11.DONE
            and h.their_state is h11.DONE
            # Bytes after the response answer no request: reusing them would hand them
            # to the next request as its response.
            and h.trailing_data == (b"", False)
            and len(idle) < self.limits.max_idle_connections
        ):
            h.start_next_cycle()
            connection.idle_since = trio.current_time()
            idle.append(connection)
            self._wake(connection.origin)
        else:
            self.discard(connection)

    def discard(self, connection: _PooledConnection) -> None:
        """Close a connection that must not be reused (once; later calls do nothing)."""
        self._busy.discard(connection)
        if connection.close():
            self._forget(connection.origin)

    def _forget(self, origin: Origin) -> None:
        self._open[origin] -= 1
        self._wake(origin)

    def _wake(self, origin: Origin) -> None:
        waiters = self._waiters.get(origin)
        if waiters:
            waiters.unpark()

    def close(self) -> None:
        """Close every connection, idle or still in use: none outlives its client."""
        self.closed = True
        connections = [*self._busy, *(c for idle in self._idle.values() for c in idle)]
        for idle in self._idle.values():
            idle.clear()
        for connection in connections:
            self.discard(connection)
        for waiters in self._waiters.values():
            waiters.unpark_all()


class _Exchange:
    """One request and response on a pooled connection.

    The connection goes back to the pool only when both messages have ended cleanly;
    anything else (an error, a cancellation, a body left unread) closes it.
    """

    __slots__ = (
        "connection",
        "finished",
        "pool",
        "request_done",
        "request_failed",
        "response_done",
        "sender",
    )

    def __init__(self, pool: _Pool, connection: _PooledConnection) -> None:
        self.pool = pool
        self.connection = connection
        self.request_done = False
        self.request_failed = False
        self.response_done = False
        self.finished = False
        self.sender = trio.CancelScope()

    def finish_request(self) -> None:
        self.request_done = True
        self._maybe_release()

    def finish_response(self) -> None:
        self.response_done = True
        self._maybe_release()

    def fail_request(self) -> None:
        """The request body could not be sent in full: never reuse the connection."""
        self.request_failed = True
        self._maybe_release()

    def _maybe_release(self) -> None:
        if self.finished or not self.response_done:
            return
        if self.request_done:
            self.finished = True
            self.pool.release(self.connection)
        elif self.request_failed:
            self.finished = True
            self.pool.discard(self.connection)

    def abort(self) -> None:
        """The exchange cannot finish: stop sending and close the connection."""
        self.sender.cancel()
        if not self.finished:
            self.finished = True
            self.pool.discard(self.connection)


class _ResponseBody(Readable):
    """The response body, read from the socket when the caller reads it."""

    def __init__(self, exchange: _Exchange, length: int | None, read_timeout: float | None):
        self._exchange = exchange
        self._http = exchange.connection.http
        self._length = length
        self._read_timeout = read_timeout
        self._remainder = b""
        self._ended = False
        self._closed = False

    @property
    def length(self) -> int | None:
        return self._length

    @property
    def is_empty(self) -> bool:
        return self._closed or (self._ended and not self._remainder)

    async def _receive(self, max_bytes: int | None) -> bytes:
        await checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("this response body was closed by its reader")
        if self._remainder or self._ended:
            data = self._remainder
            await cancel_shielded_checkpoint()
        else:
            data = await self._next_data()
        if max_bytes is not None and len(data) > max_bytes:
            data, self._remainder = data[:max_bytes], data[max_bytes:]
        else:
            self._remainder = b""
        return data

    async def _next_data(self) -> bytes:
        http = self._http
        try:
            while True:
                event = http.next_event()
                if event is h11.NEED_DATA:
                    await http.receive_data(self._read_timeout, "read")
                    continue
                if isinstance(event, h11.Data):
                    await cancel_shielded_checkpoint()
                    return bytes(event.data)
                if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    self._ended = True
                    self._exchange.finish_response()
                    await cancel_shielded_checkpoint()
                    return b""
                raise ProtocolError(f"unexpected {type(event).__name__} in a response body")
        except ProtocolError:
            self._exchange.abort()
            raise
        except Timeout:
            self._exchange.abort()
            raise
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            self._exchange.abort()
            raise ProtocolError("the connection broke in the middle of the response") from error

    async def aclose(self, error: BaseException | None = None) -> None:
        """Stop reading; a body not read to the end closes its connection."""
        if not self._closed:
            self._closed = True
            self._pushback = b""
            if not self._ended:
                self._exchange.abort()
        await trio.lowlevel.checkpoint()


class ClientResponse:
    """A response whose head has arrived; its ``body`` streams as you read it.

    Read the body to the end (or ``aclose()`` the response, which closes a connection
    whose body was not read to the end) to let the connection be reused.
    """

    __slots__ = ("body", "headers", "http_version", "method", "reason", "status", "url")

    def __init__(
        self,
        status: int,
        reason: str,
        headers: Headers,
        http_version: str,
        body: Readable,
        url: str,
        method: str,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.http_version = http_version
        self.body = body
        self.url = url
        self.method = method

    async def read(self) -> bytes:
        """The whole body (see ``Readable.join``)."""
        return await self.body.join()

    async def aclose(self) -> None:
        await self.body.aclose()

    async def __aenter__(self) -> ClientResponse:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<ClientResponse {self.status} {self.method} {self.url}>"


class Client:
    """An HTTP/1.1 client with a keep-alive pool per origin, used as
    ``async with duplex.Client() as client``.

    Request bodies that stream are sent by a task the client owns, so ``request``
    returns when the response head arrives, while the body may still be going out.
    Leaving the block closes every connection, those of responses still unread too.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        limits: ClientLimits | None = None,
        ssl_context: ssl.SSLContext | None = None,
        headers: HeadersLike | None = None,
        follow_redirects: bool = False,
        max_redirects: int = 20,
    ) -> None:
        self.base_url = base_url
        self.limits = limits or ClientLimits()
        self.headers = Headers(headers)
        if "user-agent" not in self.headers:
            self.headers.add("user-agent", _USER_AGENT)
        self.follow_redirects = follow_redirects
        self.max_redirects = max_redirects
        self._pool = _Pool(self.limits, ssl_context)
        self._exit_stack: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None

    async def __aenter__(self) -> Client:
        stack = AsyncExitStack()
        self._nursery = await stack.enter_async_context(trio.open_nursery())
        self._exit_stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        self._close()
        assert self._exit_stack is not None
        try:
            return await self._exit_stack.__aexit__(exc_type, exc_value, traceback)
        except BaseExceptionGroup as group:
            # The body tasks never raise, so a group holding just the exception that left
            # the `async with` block is that exception: give it back to the caller as is.
            if exc_value is not None and list(group.exceptions) == [exc_value]:
                raise exc_value from exc_value.__cause__
            raise

    def _close(self) -> None:
        self._pool.close()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    @property
    def pool(self) -> _Pool:
        """The connection pool (for inspection: ``open_connections()``)."""
        return self._pool

    def _url(self, url: str) -> str:
        if self.base_url is not None:
            return urljoin(self.base_url, url)
        return url

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: HeadersLike | None = None,
        body: RequestBody = None,
        follow_redirects: bool | None = None,
    ) -> ClientResponse:
        """Send a request; return once the response head has arrived.

        ``body``: bytes or str (sent with Content-Length), a ``Readable`` (Content-Length
        if its length is known, else chunked; a ``Writable`` you keep writing works), or
        an async iterable of bytes (chunked). Raises ``duplex.ProtocolError`` if the
        server breaks HTTP or the connection, ``duplex.Timeout`` naming the phase,
        ``OSError`` if the server cannot be reached, ``trio.BrokenResourceError`` if the
        TLS handshake fails (the ``ssl`` error as ``__cause__``), ``TooManyRedirects``.
        """
        follow = self.follow_redirects if follow_redirects is None else follow_redirects
        method = method.upper()
        url = self._url(url)
        request_headers = self.headers.copy()
        for name, value in Headers(headers).raw:
            request_headers.add(name, value)
        redirects = 0
        while True:
            response = await self._send(method, url, request_headers, body)
            location = response.headers.get("location")
            if not follow or response.status not in _REDIRECTS or location is None:
                return response
            if redirects >= self.max_redirects:
                await response.aclose()
                raise TooManyRedirects(f"more than {self.max_redirects} redirects from {url}")
            if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                method = "GET" if method != "HEAD" else method
                body = None
                for field in ("content-length", "content-type", "transfer-encoding"):
                    del request_headers[field]
            elif isinstance(body, Buffered):
                # Sent again from the start, as a new body: the first exchange's sender
                # may still be reading (and then closing) this one.
                body = Buffered(body.chunks)
            elif not (body is None or isinstance(body, bytes | bytearray | memoryview | str)):
                return response  # a streamed body cannot be sent twice
            await _discard(response)
            new_url = urljoin(url, location)
            if _split_url(new_url)[0] != _split_url(url)[0]:
                del request_headers["authorization"]
                del request_headers["cookie"]
            url = new_url
            redirects += 1

    async def _send(
        self, method: str, url: str, headers: Headers, body: RequestBody
    ) -> ClientResponse:
        if self._nursery is None:
            raise RuntimeError("use the client as `async with duplex.Client() as client:`")
        origin, target = _split_url(url)
        if isinstance(body, str):
            body = body.encode()
        elif isinstance(body, bytearray | memoryview):
            body = bytes(body)
        raw = [item for item in headers.raw if item[0] not in (b"host",)]
        raw.insert(0, (b"host", headers.get("host", "").encode("latin-1") or _host_header(origin)))
        names = {name for name, _ in raw}
        inline = body is None or isinstance(body, bytes)
        if b"content-length" not in names and b"transfer-encoding" not in names:
            if isinstance(body, bytes):
                if body or method in _METHODS_WITH_BODY:
                    raw.append((b"content-length", str(len(body)).encode()))
            elif body is None:
                if method in _METHODS_WITH_BODY:
                    raw.append((b"content-length", b"0"))
            elif isinstance(body, Readable) and body.length is not None:
                raw.append((b"content-length", str(body.length).encode()))
            else:
                raw.append((b"transfer-encoding", b"chunked"))
        for attempt in (1, 2):
            connection = await self._pool.acquire(origin)
            exchange = _Exchange(self._pool, connection)
            received_before = connection.http.bytes_received
            try:
                return await self._exchange(exchange, method, target, raw, body, url)
            except ProtocolError:
                # A kept-alive connection the server closed just as we reused it: safe
                # to try once more on a new one when nothing came back and the body is
                # ours to resend.
                retry = (
                    attempt == 1
                    and connection.reused
                    and inline
                    and connection.http.bytes_received == received_before
                )
                if not retry:
                    raise
                log.debug("retrying %s %s on a new connection", method, url)
        raise AssertionError("unreachable")

    async def _exchange(
        self,
        exchange: _Exchange,
        method: str,
        target: str,
        raw: list[tuple[bytes, bytes]],
        body: RequestBody,
        url: str,
    ) -> ClientResponse:
        http = exchange.connection.http
        assert self._nursery is not None
        try:
            events: list[Any] = [h11.Request(method=method, target=target, headers=raw)]
            if body is None or isinstance(body, bytes):
                if body:
                    events.append(h11.Data(data=body))
                events.append(h11.EndOfMessage())
                try:
                    await http.send(*events)
                except trio.BrokenResourceError as error:
                    if isinstance(error, ProtocolError):
                        raise
                    # The server may have answered early and stopped reading (a 413, say):
                    # its response is still there to read; the connection is not reused.
                    log.debug("request not sent in full: %r", error)
                    exchange.request_failed = True
                else:
                    exchange.request_done = True
            else:
                await http.send(*events)
                assert not isinstance(body, bytearray | memoryview | str)
                self._nursery.start_soon(_send_body, exchange, body)
            head_start = http.bytes_received - len(http.buffered())
            while True:
                event = await http.receive_event(self.limits.read_timeout, "read")
                if isinstance(event, h11.Response):
                    break
                if not isinstance(event, h11.InformationalResponse):
                    raise ProtocolError(f"unexpected {type(event).__name__} instead of a response")
            # h11 bounds only a head still incomplete; one that came in a single read is
            # measured here, as the bytes parsed to reach it.
            head_size = http.bytes_received - len(http.buffered()) - head_start
            if head_size > self.limits.max_response_header_size:
                raise ProtocolError(f"response head of {head_size} bytes is too large")
        except BaseException as error:
            exchange.abort()
            if isinstance(error, trio.BrokenResourceError | trio.ClosedResourceError) and not (
                isinstance(error, ProtocolError)
            ):
                raise ProtocolError("the connection broke before the response arrived") from error
            raise
        response_headers = Headers._from_h11(list(event.headers))
        length_header = response_headers.get("content-length")
        length = int(length_header) if length_header is not None else None
        if method == "HEAD" or event.status_code in (204, 304):
            length = 0
        response_body = _ResponseBody(exchange, length, self.limits.read_timeout)
        return ClientResponse(
            event.status_code,
            event.reason.decode("latin-1"),
            response_headers,
            event.http_version.decode("ascii"),
            response_body,
            url,
            method,
        )

    async def get(self, url: str, **kwargs: Any) -> ClientResponse:
        return await self.request("GET", url, **kwargs)

    async def head(self, url: str, **kwargs: Any) -> ClientResponse:
        return await self.request("HEAD", url, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> ClientResponse:
        return await self.request("POST", url, **kwargs)

    async def put(self, url: str, **kwargs: Any) -> ClientResponse:
        return await self.request("PUT", url, **kwargs)

    async def patch(self, url: str, **kwargs: Any) -> ClientResponse:
        return await self.request("PATCH", url, **kwargs)

    async def delete(self, url: str, **kwargs: Any) -> ClientResponse:
        return await self.request("DELETE", url, **kwargs)


async def _discard(response: ClientResponse, limit: int = 65536) -> None:
    """Read a small body to the end so its connection can be reused; else close it."""
    seen = 0
    try:
        while seen <= limit:
            chunk = await response.body.read()
            if not chunk:
                return
            seen += len(chunk)
    except trio.BrokenResourceError:
        pass
    await response.aclose()


async def _chunks(body: Readable | AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    if isinstance(body, Readable):
        while chunk := await body.read():
            yield chunk
    else:
        async for chunk in body:
            if chunk:
                yield chunk


async def _send_body(exchange: _Exchange, body: Readable | AsyncIterable[bytes]) -> None:
    """Stream a request body; runs in the client's nursery and never raises into it."""
    http = exchange.connection.http
    chunks = _chunks(body)
    failure: BaseException | None = None
    with exchange.sender:
        try:
            while True:
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                except Exception as error:
                    log.debug("request body failed: %r", error)
                    failure = error
                    exchange.abort()  # the server must not take a cut body for a whole one
                    return
                await http.send(h11.Data(data=chunk))
            await http.send(h11.EndOfMessage())
            exchange.finish_request()
        except (trio.BrokenResourceError, trio.ClosedResourceError, Timeout) as error:
            # The server stopped reading (an early response, or it went away); the
            # response may still be there to read, so leave the socket to the reader.
            log.debug("request body not sent in full: %r", error)
            failure = error
            exchange.fail_request()
    if isinstance(body, Readable) and (failure is not None or exchange.sender.cancel_called):
        with trio.CancelScope(shield=True):
            await body.aclose(failure)
