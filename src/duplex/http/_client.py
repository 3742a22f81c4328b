"""The HTTP client: full-duplex requests over a keep-alive pool.

``request`` sends the head (and a body the socket takes at once), hands the rest of the
request body to a task the client owns, and returns as soon as the response head
arrives; the response body is read from the socket by whoever reads it. So the caller
can read the response while it still writes the request, whatever the body's type.
"""

from __future__ import annotations

import logging
import math
import re
import ssl
from base64 import b64encode
from collections.abc import AsyncIterable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from functools import lru_cache
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import quote, unquote, urljoin, urlsplit

import trio
from trio.lowlevel import cancel_shielded_checkpoint, checkpoint, checkpoint_if_cancelled

from .._body import Buffered, BytesLike, Readable, Writable
from .._errors import ProtocolError, Timeout
from .._stream import Stream
from .._version import __version__
from ._limits import ClientLimits
from ._models import Headers, HeadersLike
from ._platform import capabilities
from ._pool import HTTP2, Origin, Pool, PooledConnection
from .h1._client import client_error
from .h1._client_exchange import ClientExchange, RequestContent
from .h1._client_wire import EncodedRequest, encode_request
from .h2client import H2ClientConnection, H2Exchange, H2ResponseBody, StreamRefused

if TYPE_CHECKING:
    from ..websocket import ClientWebSocket

__all__ = ["Client", "ClientResponse", "RequestBody", "TooManyRedirects"]

log = logging.getLogger("duplex.client")

RequestBody: TypeAlias = "BytesLike | str | Readable | AsyncIterable[bytes] | None"

_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_USER_AGENT = f"duplex/{__version__}"
#: How long a closing client waits for its HTTP/2 connections to take their GOAWAY.
_GOODBYE_TIME = 1.0


class TooManyRedirects(Exception):
    """``follow_redirects`` met more redirects than ``max_redirects`` allows."""


# -- URLs ------------------------------------------------------------------------------

# urlsplit quietly drops CR, LF and tabs; a URL holding them (or any other control
# character) is refused instead, so that nothing can slip a line into the request head.
_CONTROL_IN_URL = re.compile(r"[\x00-\x1f\x7f]")
# What stays as written in a path or query: RFC 3986's reserved characters and "%" (so
# that what is percent-encoded already stays so); everything else that is not
# unreserved (spaces, non-ASCII, quotes, ...) is percent-encoded as UTF-8, as browsers do.
_KEEP_IN_TARGET = "!$%&'()*+,/:;=?@[]"


@lru_cache(maxsize=256)
def _split_url(url: str) -> tuple[Origin, str, bytes | None]:
    """The origin, the request target and the ``Authorization`` value (from
    ``user:password@``, if any) of an absolute http or https URL.

    Raises ``ValueError`` for another scheme, a URL without a host, or one holding a
    control character.
    """
    if _CONTROL_IN_URL.search(url):
        raise ValueError(f"URL {url!r} holds a control character")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"unsupported URL scheme in {url!r} (http and https are)")
    if not parts.hostname:
        raise ValueError(f"no host in URL {url!r}")
    port = parts.port or _DEFAULT_PORTS[scheme]
    target = quote(parts.path or "/", safe=_KEEP_IN_TARGET)
    if parts.query:
        target += "?" + quote(parts.query, safe=_KEEP_IN_TARGET)
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = b"Basic " + b64encode(credentials.encode())
    return (scheme, parts.hostname, port), target, authorization


def _host_header(origin: Origin) -> bytes:
    scheme, host, port = origin
    if ":" in host:
        host = f"[{host}]"
    if port != _DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    return host.encode("idna" if not host.isascii() else "ascii")


# Fields that belong to one HTTP/1.1 connection, never sent over HTTP/2 (RFC 9113 §8.2.2).
_HOP_BY_HOP = frozenset(
    {b"host", b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)


def _h2_fields(
    method: str, scheme: str, target: str, fields: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """The request's HTTP/2 header block: pseudo-fields first (``:authority`` from the
    Host field ``_request_fields`` put first), then the others but the hop-by-hop ones."""
    authority = fields[0][1]
    block = [
        (b":method", method.encode("ascii")),
        (b":scheme", scheme.encode("ascii")),
        (b":authority", authority),
        (b":path", target.encode("ascii")),
    ]
    for name, value in fields:
        if name in _HOP_BY_HOP or (name == b"te" and value.lower() != b"trailers"):
            continue
        block.append((name, value))
    return block


def _h2_body_length(method: str, status: int, fields: list[tuple[bytes, bytes]]) -> int | None:
    if method == "HEAD" or status in (204, 304):
        return 0
    for name, value in fields:
        if name == b"content-length" and value.isdigit():
            return int(value)
    return None


def _request_fields(
    method: str, origin: Origin, authorization: bytes | None, headers: Headers, body: object
) -> list[tuple[bytes, bytes]]:
    """The request's header fields: Host first, credentials from the URL unless the
    caller gave some, and the framing the body needs unless the caller chose one."""
    raw = [item for item in headers.raw if item[0] != b"host"]
    raw.insert(0, (b"host", headers.get("host", "").encode("latin-1") or _host_header(origin)))
    names = {name for name, _ in raw}
    if authorization is not None and b"authorization" not in names:
        raw.append((b"authorization", authorization))
    if b"content-length" in names or b"transfer-encoding" in names:
        return raw
    if isinstance(body, bytes):
        if body or method in _METHODS_WITH_BODY:
            raw.append((b"content-length", b"%d" % len(body)))
    elif body is None:
        if method in _METHODS_WITH_BODY:
            raw.append((b"content-length", b"0"))
    elif isinstance(body, Readable) and body.length is not None:
        raw.append((b"content-length", b"%d" % body.length))
    else:
        raw.append((b"transfer-encoding", b"chunked"))
    return raw


# -- responses -------------------------------------------------------------------------


class ResponseBody(Readable):
    """A response body, read from the connection as its reader reads it.

    ``read()`` returns each piece as it arrives, then ``b""`` at the end and forever
    after. Raises ``duplex.ProtocolError`` if the server breaks HTTP or the connection,
    ``duplex.Timeout("read")`` when nothing arrives within ``read_timeout`` (either
    closes the connection; later reads raise ``trio.BrokenResourceError`` with that
    error as ``__cause__``), and ``trio.ClosedResourceError`` once closed. Every read is
    a checkpoint, and a cancelled read loses nothing; it frees the pool slot, though:
    the connection is the body's alone until its end.

    Read to its end, the body lets its connection go back to the pool. Closed before
    (``aclose()``) or dropped unread, it gives up reading: a request body still
    streaming goes on, and then the connection closes.
    """

    def __init__(self, exchange: ClientExchange, read_timeout: float | None) -> None:
        self._exchange = exchange
        self._read_timeout = read_timeout
        self._remainder = b""
        self._closed = False
        self._error: BaseException | None = None

    def __del__(self) -> None:
        # Dropped before its end: nobody can read the rest, so it is given up (and the
        # connection closed) rather than hold a pool slot for the life of the client.
        if not (self._closed or self._exchange.response_done):
            self._exchange.drop_response_soon()

    @property
    def length(self) -> int | None:
        return self._exchange.response_length

    @property
    def is_empty(self) -> bool:
        return self._closed or (
            self._exchange.response_done and not self._remainder and not self._pushback
        )

    async def _receive(self, max_bytes: int | None) -> bytes:
        await checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("this response body was closed by its reader")
        if self._error is not None:
            broken = trio.BrokenResourceError("the response body broke earlier")
            broken.__cause__ = self._error
            raise broken
        data = self._remainder
        if not data and not self._exchange.response_done:
            try:
                data = await self._exchange.receive_body(self._read_timeout)
            except trio.Cancelled:
                self._exchange.response_read_cancelled()
                raise
            except (trio.BrokenResourceError, trio.ClosedResourceError, Timeout) as error:
                if self._closed:  # by its reader, from another task
                    raise trio.ClosedResourceError("this response body was closed") from None
                self._error = error
                raise
        if max_bytes is not None and len(data) > max_bytes:
            data, self._remainder = data[:max_bytes], data[max_bytes:]
        else:
            self._remainder = b""
        await cancel_shielded_checkpoint()
        return data

    async def join(self) -> bytes:
        """As ``Readable.join``; a body of known length that has arrived whole is taken
        at one checkpoint, not one per read."""
        if not (self._pushback or self._remainder or self._closed or self._error is not None):
            await checkpoint_if_cancelled()
            whole = self._exchange.take_whole_body()
            if whole is not None:
                await cancel_shielded_checkpoint()
                return whole
        return await super().join()

    async def aclose(self, error: BaseException | None = None) -> None:
        """Stop reading. A body not read to its end closes its connection once the
        request has gone out: a request body still streaming goes on, the rest of the
        response dropped meanwhile. Idempotent, and a checkpoint."""
        self.close_read_nowait(error)
        await checkpoint()

    def close_read_nowait(self, error: BaseException | None = None) -> None:
        """``aclose`` without the checkpoint, for synchronous teardown code."""
        if self._closed:
            return
        self._closed = True
        self._pushback = b""
        self._remainder = b""
        self._exchange.drop_response(error)

    def close_exchange_nowait(self) -> None:
        """Close the body and end the whole exchange now: a request body still
        streaming breaks, and the connection closes unless it is free already."""
        self.close_read_nowait()
        self._exchange.abort()


class ClientResponse(trio.abc.AsyncResource):
    """A response whose head has arrived; its ``body`` streams as you read it.

    Read the body to the end to let the connection be reused. ``aclose()`` (or leaving
    ``async with``) ends the exchange: a request body still streaming breaks, and the
    connection closes unless it was free already. ``body.aclose()``, and dropping a
    response whose body was not read to the end, give up only the reading: the request
    body goes on, and the connection closes once it has gone out.
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
        """Close the body and end the exchange: a request body still streaming breaks,
        and a connection not free already closes. Idempotent, a checkpoint."""
        if isinstance(self.body, ResponseBody | H2ResponseBody):
            self.body.close_exchange_nowait()
        await self.body.aclose()

    def __repr__(self) -> str:
        return f"<ClientResponse {self.status} {self.method} {self.url}>"


# -- the client ------------------------------------------------------------------------


class Client:
    """An HTTP/1.1 and HTTP/2 client with a keep-alive pool per origin, used as
    ``async with duplex.Client() as client``.

    Request bodies that do not go out at once are sent by a task the client owns, so
    ``request`` returns when the response head arrives, while the body may still be
    going out. Leaving the block closes every connection, those of responses still
    unread too. The client checks once, when it is made, which fast paths the platform
    offers (see ``duplex.http._platform``).

    ``http2``: ``False`` (the default) speaks HTTP/1.1 only. ``True`` offers HTTP/2 by
    ALPN on https (``["h2", "http/1.1"]``, set on ``ssl_context`` if one is given: do not
    share that context with a client that speaks HTTP/1.1 only) and speaks it when the
    server picks it, HTTP/1.1 otherwise; plain http stays HTTP/1.1.
    ``"prior-knowledge"`` speaks HTTP/2 from the first byte: h2c on http, and h2 on https
    without falling back (``duplex.ProtocolError`` if the server will not). Over HTTP/2
    the requests to one origin share one connection as concurrent streams (see
    ``duplex.http._pool``), each full duplex as over HTTP/1.1, and
    ``response.http_version`` is ``"2"``.
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
        http2: HTTP2 = False,
    ) -> None:
        if http2 not in (False, True, "prior-knowledge"):
            raise ValueError(f"http2 must be False, True or 'prior-knowledge', not {http2!r}")
        self.base_url = base_url
        self.limits = limits or ClientLimits()
        self.headers = Headers(headers)
        if "user-agent" not in self.headers:
            self.headers.add("user-agent", _USER_AGENT)
        self.follow_redirects = follow_redirects
        self.max_redirects = max_redirects
        self.http2 = http2
        self._ssl_context = ssl_context
        self._pool = Pool(self.limits, ssl_context, direct_io=capabilities().direct_io, http2=http2)
        self._exit_stack: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    async def __aenter__(self) -> Client:
        stack = AsyncExitStack()
        self._nursery = await stack.enter_async_context(trio.open_nursery())
        self._pool.nursery = self._nursery
        self._exit_stack = stack
        self._token = trio.lowlevel.current_trio_token()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        # HTTP/2 servers hear that no stream more comes (a goodbye bounded in time and
        # shielded: a client leaving because it was cancelled says it too).
        with trio.move_on_after(_GOODBYE_TIME) as goodbye:
            goodbye.shield = True
            await self._pool.say_goodbye()
        self._pool.close()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        assert self._exit_stack is not None
        try:
            return await self._exit_stack.__aexit__(exc_type, exc_value, traceback)
        except BaseExceptionGroup as group:
            # The body tasks never raise, so a group holding just the exception that left
            # the `async with` block is that exception: give it back to the caller as is.
            if exc_value is not None and list(group.exceptions) == [exc_value]:
                raise exc_value from exc_value.__cause__
            raise

    @property
    def pool(self) -> Pool:
        """The connection pool (for inspection: ``open_connections()``)."""
        return self._pool

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

        ``url``: absolute, or relative to ``base_url``; non-ASCII characters and spaces
        in its path and query are percent-encoded as UTF-8, and ``user:password@``
        becomes ``Authorization: Basic`` (unless ``headers`` has one).

        ``body``: bytes or str (sent with Content-Length), a ``Readable`` (Content-Length
        if its length is known, else chunked; a ``Writable`` you keep writing works), or
        an async iterable of bytes (chunked). Whatever its type, the response is read
        while it goes out, so an echoing server never deadlocks with the client.

        Raises ``duplex.ProtocolError`` if the server breaks HTTP or the connection,
        ``duplex.Timeout`` naming the phase, ``OSError`` if the server cannot be
        reached, ``duplex.ProtocolError`` naming the TLS handshake if that fails (the
        ``ssl`` error as ``__cause__``), ``TooManyRedirects``, and ``ValueError`` for a
        URL it cannot send to.
        """
        follow = self.follow_redirects if follow_redirects is None else follow_redirects
        method = method.upper()
        url, request_headers = self._resolve(url, headers)
        redirects = 0
        while True:
            response = await self._send(method, url, request_headers, body)
            location = response.headers.get("location")
            if not follow or response.status not in _REDIRECTS or location is None:
                return response
            try:
                if redirects >= self.max_redirects:
                    raise TooManyRedirects(f"more than {self.max_redirects} redirects from {url}")
                if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                    method = "GET" if method != "HEAD" else method
                    body = None
                    for field in ("content-length", "content-type", "transfer-encoding"):
                        del request_headers[field]
                elif isinstance(body, Buffered):
                    # Sent again from the start, as a new body: the first exchange's
                    # sender may still be reading (and then closing) this one.
                    body = Buffered(body.chunks)
                elif not (body is None or isinstance(body, bytes | bytearray | memoryview | str)):
                    return response  # a streamed body cannot be sent twice
                new_url = urljoin(url, location)
                if _split_url(new_url)[0] != _split_url(url)[0]:
                    del request_headers["authorization"]
                    del request_headers["cookie"]
                await _discard(response)
            except BaseException:
                await response.aclose()
                raise
            url = new_url
            redirects += 1

    def _resolve(self, url: str, headers: HeadersLike | None) -> tuple[str, Headers]:
        """``url`` against ``base_url``, and the client's headers followed by
        ``headers``."""
        if self.base_url is not None:
            url = urljoin(self.base_url, url)
        fields = self.headers.copy()
        for name, value in Headers(headers).raw:
            fields.add(name, value)
        return url, fields

    async def _send(
        self, method: str, url: str, headers: Headers, body: RequestBody
    ) -> ClientResponse:
        if self._nursery is None or self._token is None:
            raise RuntimeError("use the client as `async with duplex.Client() as client:`")
        origin, target, authorization = _split_url(url)
        if isinstance(body, str):
            body = body.encode()
        elif isinstance(body, bytearray | memoryview):
            body = bytes(body)
        fields = _request_fields(method, origin, authorization, headers, body)
        request = encode_request(method, target, fields)
        replayable = body is None or isinstance(body, bytes)
        for attempt in (1, 2, 3):
            pool = self._pool
            lease = await (
                pool.acquire_stream(origin) if pool.speaks_http2(origin) else pool.acquire(origin)
            )
            if isinstance(lease, H2ClientConnection):
                try:
                    block = _h2_fields(method, origin[0], target, fields)
                    return await self._exchange_h2(lease, method, block, body, url)
                except StreamRefused as refused:
                    # Never processed by the server (GOAWAY, REFUSED_STREAM): safe to
                    # send again on another connection when the body is ours to send
                    # (or none of it was taken yet).
                    if attempt == 3 or not (replayable or refused.unsent):
                        raise
                    log.debug("retrying %s %s on a new connection", method, url)
                    continue
            connection = lease
            received_before = connection.http.bytes_received
            try:
                return await self._exchange(connection, request, body, url)
            except ProtocolError:
                # A kept-alive connection the server closed just as we reused it: safe
                # to try once more on a new one when nothing came back and the body is
                # ours to send again.
                retry = (
                    attempt == 1
                    and connection.reused
                    and replayable
                    and connection.http.bytes_received == received_before
                )
                if not retry:
                    raise
                log.debug("retrying %s %s on a new connection", method, url)
        raise AssertionError("unreachable")

    async def _exchange(
        self, connection: PooledConnection, request: EncodedRequest, body: RequestContent, url: str
    ) -> ClientResponse:
        assert self._nursery is not None and self._token is not None
        exchange = ClientExchange(connection, self._token)
        limits = self.limits
        try:
            await exchange.send_request(request, body, self._nursery)
        except BaseException as error:
            exchange.abort()
            raise client_error(error, "before the response arrived")  # noqa: B904
        head = await exchange.receive_response(request, limits)
        return ClientResponse(
            head.status_code,
            head.reason.decode("latin-1"),
            Headers.from_fields(list(head.headers)),
            head.http_version.decode("ascii"),
            ResponseBody(exchange, limits.read_timeout),
            url,
            request.method.decode("ascii"),
        )

    async def _exchange_h2(
        self,
        connection: H2ClientConnection,
        method: str,
        block: list[tuple[bytes, bytes]],
        body: RequestContent,
        url: str,
    ) -> ClientResponse:
        exchange, status, fields = await self._open_h2(connection, block, body)
        read_timeout = self.limits.read_timeout
        length = _h2_body_length(method, status, fields)
        return ClientResponse(
            status,
            "",
            Headers.from_fields(fields),
            "2",
            H2ResponseBody(exchange, read_timeout, length),
            url,
            method,
        )

    async def _open_h2(
        self, connection: H2ClientConnection, block: list[tuple[bytes, bytes]], body: RequestContent
    ) -> tuple[H2Exchange, int, list[tuple[bytes, bytes]]]:
        """Open a stream on ``connection`` (reserved for it) with the header ``block``,
        start sending ``body``, and return the exchange with its response's status and
        fields. Raises as ``request`` does (the reservation given back if no stream
        opened)."""
        assert self._nursery is not None and self._token is not None
        limits = self.limits
        exchange = H2Exchange(
            connection,
            self._token,
            write_timeout=limits.write_timeout,
            read_timeout=limits.read_timeout,
        )
        try:
            await exchange.send_request(block, body, self._nursery)
        except BaseException as error:
            if not exchange.stream_id:
                connection.unreserve()
            exchange.abort()
            raise client_error(error, "before the response arrived")  # noqa: B904
        status, fields = await exchange.receive_response(limits.read_timeout)
        return exchange, status, fields

    def websocket(
        self,
        url: str,
        subprotocols: Sequence[str] | None = None,
        compress: bool = False,
        headers: HeadersLike | None = None,
        *,
        max_message_size: int = 1 << 20,
        compress_min_size: int = 1024,
    ) -> AbstractAsyncContextManager[ClientWebSocket]:
        """Open a WebSocket: ``async with client.websocket(url) as ws`` (see
        ``duplex.websocket.ClientWebSocket``); leaving the block closes it with 1000
        (after an exception: at once, without a closing handshake).

        ``url``: ws:// or wss:// (or http://, https://), absolute or relative to
        ``base_url``. When the client speaks HTTP/2 to the origin (``http2``) and the
        server takes extended CONNECT (RFC 8441), the WebSocket is a stream of the
        shared connection; otherwise it is HTTP/1.1's Upgrade on a connection of its
        own. Either way it goes through the client's TLS context, timeouts
        (``read_timeout`` bounds the wait for the handshake's answer and for the
        server's close frame, not for messages) and header limit, with the client's
        headers plus ``headers``. ``subprotocols`` are offered in order
        (``ws.subprotocol`` says which the server took); ``compress=True`` offers
        permessage-deflate, under which messages under ``compress_min_size`` bytes go
        uncompressed. A message from the server over ``max_message_size`` bytes (once
        inflated) closes the WebSocket with 1009.

        Raises ``duplex.websocket.HandshakeRefused`` when the server answers with
        another status than 101 (200 over HTTP/2; its ``status`` and ``body`` say why),
        ``duplex.ProtocolError`` for an answer that is not a valid handshake,
        ``duplex.Timeout`` and ``OSError`` as ``request`` does, ``ValueError`` for a URL
        it cannot open.
        """
        from ..websocket import connect  # the WebSocket client builds on this module

        url, fields = self._resolve(url, headers)
        return connect(
            url,
            limits=self.limits,
            ssl_context=self._ssl_context,
            http2=self.http2,
            subprotocols=subprotocols,
            compress=compress,
            headers=fields,
            max_message_size=max_message_size,
            compress_min_size=compress_min_size,
            connector=self._pool.connector,
            extended_connect=self._extended_connect,
        )

    async def _extended_connect(
        self, origin: Origin, block: list[tuple[bytes, bytes]]
    ) -> tuple[int, list[tuple[bytes, bytes]], Stream] | None:
        """Open a stream to ``origin`` with the extended CONNECT header ``block`` (RFC
        8441; the caller builds it): the response's status and fields, and the stream's
        two directions as one ``Stream`` (its reads wait with no timeout). None when
        requests to ``origin`` do not go over HTTP/2, or its server does not take
        extended CONNECT (``SETTINGS_ENABLE_CONNECT_PROTOCOL``). Raises as ``request``
        does."""
        if self._nursery is None or self._token is None:
            raise RuntimeError("use the client as `async with duplex.Client() as client:`")
        pool, limits = self._pool, self.limits
        if not pool.speaks_http2(origin):
            return None
        lease = await pool.acquire_stream(origin)
        if not isinstance(lease, H2ClientConnection):
            lease.release()  # the server chose HTTP/1.1 by ALPN
            return None
        try:
            timeout = limits.read_timeout
            with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
                await lease.settings_received.wait()
            if scope.cancelled_caught:
                raise Timeout("read", timeout or 0.0)
            if lease.closed:
                raise ProtocolError("the HTTP/2 connection ended before its SETTINGS came")
        except BaseException:
            lease.unreserve()
            raise
        if not lease.h2.remote_settings.enable_connect_protocol:
            lease.unreserve()
            return None
        output = Writable()
        exchange, status, fields = await self._open_h2(lease, block, output)
        return status, fields, Stream(H2ResponseBody(exchange, None, None), output)

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
