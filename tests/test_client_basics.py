"""Plain requests: methods, framing and headers, against the standard library's
``http.server`` (HTTP/1.1 keep-alive and HTTP/1.0 close-delimited) and duplex's server."""

from __future__ import annotations

import http.server
from collections.abc import AsyncIterator

import pytest
import trio

import duplex
from _client_support import TIMEOUT, StdlibServer, start_duplex, stdlib_server, url

BODY = b"hello from http.server\n"


class KeepAliveHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive: Content-Length, chunked, HEAD, 204 and 304."""

    protocol_version = "HTTP/1.1"
    timeout = TIMEOUT

    def setup(self) -> None:
        super().setup()
        assert isinstance(self.server, StdlibServer)
        self.server.peers.append(self.client_address)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path in ("/204", "/304"):
            self.send_response(int(self.path[1:]))
            self.end_headers()
        elif self.path.startswith("/path/"):
            self._send(self.path.encode())
        elif self.path == "/headers":
            echoed = "".join(f"{name}: {value}\n" for name, value in self.headers.items())
            self._send(echoed.encode())
        else:
            self._send(BODY)

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1234")
        self.end_headers()

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self._send(self.rfile.read(length))

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class CloseDelimitedHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.0: no length, the body ends when the server closes the connection."""

    protocol_version = "HTTP/1.0"
    timeout = TIMEOUT

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(BODY)


async def test_get_reads_a_content_length_body() -> None:
    with trio.fail_after(TIMEOUT):
        async with stdlib_server(KeepAliveHandler) as server, duplex.Client() as client:
            response = await client.get(f"{server.url}/")
            assert response.status == 200
            assert response.reason == "OK"
            assert response.http_version == "1.1"
            assert response.body.length == len(BODY)
            assert await response.read() == BODY


async def test_get_reads_a_chunked_body() -> None:
    with trio.fail_after(TIMEOUT):
        async with stdlib_server(KeepAliveHandler) as server, duplex.Client() as client:
            response = await client.get(f"{server.url}/chunked")
            assert response.body.length is None
            assert await response.read() == b"hello chunked world"


async def test_keep_alive_requests_share_one_connection() -> None:
    with trio.fail_after(TIMEOUT):
        async with stdlib_server(KeepAliveHandler) as server, duplex.Client() as client:
            for path in ("/", "/chunked", "/"):
                await (await client.get(f"{server.url}{path}")).read()
            assert len(server.peers) == 1


async def test_a_close_delimited_http_1_0_body_ends_when_the_server_closes() -> None:
    with trio.fail_after(TIMEOUT):
        async with stdlib_server(CloseDelimitedHandler) as server, duplex.Client() as client:
            response = await client.get(f"{server.url}/")
            assert response.http_version == "1.0"
            assert await response.read() == BODY
            assert client.pool.open_connections() == 0


async def test_a_close_delimited_response_is_followed_by_a_request_on_a_new_connection() -> None:
    with trio.fail_after(TIMEOUT):
        async with stdlib_server(CloseDelimitedHandler) as server, duplex.Client() as client:
            for _ in range(2):
                assert await (await client.get(f"{server.url}/")).read() == BODY


async def test_post_sends_bytes_with_content_length() -> None:
    with trio.fail_after(TIMEOUT):
        async with stdlib_server(KeepAliveHandler) as server, duplex.Client() as client:
            response = await client.post(f"{server.url}/", body=b"posted bytes")
            assert await response.read() == b"posted bytes"


async def test_post_sends_a_str_body_as_utf8() -> None:
    with trio.fail_after(TIMEOUT):
        async with stdlib_server(KeepAliveHandler) as server, duplex.Client() as client:
            response = await client.post(f"{server.url}/", body="héllo")
            assert await response.read() == "héllo".encode()


async def test_post_without_a_body_sends_content_length_zero() -> None:
    with trio.fail_after(TIMEOUT):
        async with stdlib_server(KeepAliveHandler) as server, duplex.Client() as client:
            response = await client.post(f"{server.url}/")
            assert await response.read() == b""


async def test_head_returns_an_empty_body_and_keeps_the_connection() -> None:
    with trio.fail_after(TIMEOUT):
        async with stdlib_server(KeepAliveHandler) as server, duplex.Client() as client:
            response = await client.head(f"{server.url}/")
            assert response.headers["content-length"] == "1234"
            assert response.body.length == 0
            assert await response.read() == b""
            assert await (await client.get(f"{server.url}/")).read() == BODY
            assert len(server.peers) == 1


@pytest.mark.parametrize("status", [204, 304])
async def test_a_bodiless_status_has_an_empty_body_and_keeps_the_connection(status: int) -> None:
    with trio.fail_after(TIMEOUT):
        async with stdlib_server(KeepAliveHandler) as server, duplex.Client() as client:
            response = await client.get(f"{server.url}/{status}")
            assert response.status == status
            assert response.body.length == 0
            assert await response.read() == b""
            assert await (await client.get(f"{server.url}/")).read() == BODY
            assert len(server.peers) == 1


async def test_sends_host_and_user_agent_headers() -> None:
    with trio.fail_after(TIMEOUT):
        async with stdlib_server(KeepAliveHandler) as server, duplex.Client() as client:
            echoed = await (await client.get(f"{server.url}/headers")).read()
            port = server.server_address[1]
            assert f"host: 127.0.0.1:{port}\n".encode() in echoed.lower()
            assert f"user-agent: duplex/{duplex.__version__}\n".encode() in echoed.lower()


async def test_sends_client_headers_and_request_headers() -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            stdlib_server(KeepAliveHandler) as server,
            duplex.Client(headers={"X-Client": "everywhere"}) as client,
        ):
            response = await client.get(f"{server.url}/headers", headers=[("X-Request", "once")])
            echoed = (await response.read()).lower()
            assert b"x-client: everywhere\n" in echoed
            assert b"x-request: once\n" in echoed


async def test_a_relative_url_is_joined_to_the_base_url() -> None:
    with trio.fail_after(TIMEOUT):
        async with (
            stdlib_server(KeepAliveHandler) as server,
            duplex.Client(f"{server.url}/path/") as client,
        ):
            assert await (await client.get("relative?q=1")).read() == b"/path/relative?q=1"


async def test_response_headers_are_case_insensitive_and_keep_repeats(
    nursery: trio.Nursery,
) -> None:
    async def handler(request: duplex.Request) -> duplex.Response:
        return duplex.Response(200, [("X-Tag", "a"), ("x-tag", "b")], b"")

    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, handler)
        async with duplex.Client() as client:
            response = await client.get(url(server))
            assert response.headers["X-TAG"] == "a"
            assert response.headers.get_all("x-tag") == ["a", "b"]


async def echo_framing(request: duplex.Request) -> duplex.Response:
    """Answer with the request's framing header, then its body."""
    framing = request.headers.get("transfer-encoding") or request.headers.get("content-length")
    return duplex.Response(200, body=f"{framing}:".encode() + await request.body.join())


async def test_an_async_iterable_body_is_sent_chunked(nursery: trio.Nursery) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"streamed "
        yield b""
        yield b"body"

    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, echo_framing)
        async with duplex.Client() as client:
            response = await client.put(url(server), body=chunks())
            assert await response.read() == b"chunked:streamed body"


async def test_a_readable_of_known_length_is_sent_with_content_length(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, echo_framing)
        async with duplex.Client() as client:
            response = await client.post(url(server), body=duplex.Buffered([b"ab", b"cd"]))
            assert await response.read() == b"4:abcd"


async def test_an_unsupported_scheme_raises_value_error() -> None:
    with trio.fail_after(TIMEOUT):
        async with duplex.Client() as client:
            with pytest.raises(ValueError, match="scheme"):
                await client.get("ftp://127.0.0.1/")


async def test_a_request_outside_the_async_with_block_raises_runtime_error() -> None:
    with trio.fail_after(TIMEOUT):
        client = duplex.Client()
        with pytest.raises(RuntimeError, match="async with"):
            await client.get("http://127.0.0.1:1/")


async def test_a_request_after_the_client_closed_raises_closed_resource_error() -> None:
    with trio.fail_after(TIMEOUT):
        async with duplex.Client() as client:
            pass
        with pytest.raises(trio.ClosedResourceError):
            await client.get("http://127.0.0.1:1/")
