"""URLs as browsers and other clients take them: non-ASCII characters and spaces in the
path and query are percent-encoded as UTF-8 (what is encoded already stays so), and
``user:password@`` becomes ``Authorization: Basic``; nothing can slip a line into the
request head."""

from __future__ import annotations

import base64

import pytest
import trio

import duplex
from _client_support import TIMEOUT, FakeServer, read_head

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Recorder:
    """A server that answers ``ok`` to every request and keeps each request head."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []

    async def respond(self, stream: trio.SocketStream) -> None:
        while head := await read_head(stream):
            self.heads.append(head)
            await stream.send_all(OK)

    @property
    def target(self) -> bytes:
        """The request target of the last request."""
        return self.heads[-1].split(b" ", 2)[1]

    def field(self, name: bytes) -> bytes | None:
        """The value of the last request's field ``name`` (lower-case), if it has one."""
        for line in self.heads[-1].split(b"\r\n")[1:]:
            field, _, value = line.partition(b":")
            if field.lower() == name:
                return value.strip()
        return None


async def send(nursery: trio.Nursery, address: str, **kwargs: object) -> Recorder:
    """GET ``address`` (``{port}`` in it is the port) from a recording server on
    127.0.0.1; the recorder."""
    recorder = Recorder()
    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, recorder.respond)
        async with duplex.Client() as client:
            response = await client.get(address.format(port=server.port), **kwargs)
            assert await response.read() == b"ok"
    return recorder


def basic(credentials: bytes) -> bytes:
    return b"Basic " + base64.b64encode(credentials)


TARGETS = {
    "non-ascii-as-utf8": ("/café?q=ü", b"/caf%C3%A9?q=%C3%BC"),
    "percent-encoded-kept": (
        "/caf%C3%A9/a%2Fb?q=%C3%BC&r=1%2B1",
        b"/caf%C3%A9/a%2Fb?q=%C3%BC&r=1%2B1",
    ),
    "space-as-percent-20": ("/a b?q=c d", b"/a%20b?q=c%20d"),
    "reserved-kept": ("/a:b@c;d=e,f!$'()*+?x=[1]&y=/?", b"/a:b@c;d=e,f!$'()*+?x=[1]&y=/?"),
    "fragment-not-sent": ("/page?q=1#section", b"/page?q=1"),
    "empty-path-as-slash": ("?q=1", b"/?q=1"),
}


@pytest.mark.parametrize(("path", "target"), TARGETS.values(), ids=TARGETS.keys())
async def test_the_request_target_is_the_path_and_query_as_browsers_send_them(
    nursery: trio.Nursery, path: str, target: bytes
) -> None:
    recorder = await send(nursery, "http://127.0.0.1:{port}" + path)
    assert recorder.target == target


async def test_user_and_password_in_the_url_become_basic_authorization(
    nursery: trio.Nursery,
) -> None:
    recorder = await send(nursery, "http://alice:s3cret@127.0.0.1:{port}/")
    assert recorder.field(b"authorization") == basic(b"alice:s3cret")
    host = recorder.field(b"host")
    assert host is not None
    assert host.startswith(b"127.0.0.1:")


async def test_percent_encoded_credentials_are_decoded_then_sent_as_utf8(
    nursery: trio.Nursery,
) -> None:
    recorder = await send(nursery, "http://al%40ice:p%3Ass%20w%C3%B6rd@127.0.0.1:{port}/")
    assert recorder.field(b"authorization") == basic("al@ice:p:ss wörd".encode())


async def test_a_user_without_a_password_is_sent_with_an_empty_one(
    nursery: trio.Nursery,
) -> None:
    recorder = await send(nursery, "http://alice@127.0.0.1:{port}/")
    assert recorder.field(b"authorization") == basic(b"alice:")


async def test_an_authorization_header_given_wins_over_the_url_credentials(
    nursery: trio.Nursery,
) -> None:
    address = "http://alice:s3cret@127.0.0.1:{port}/"
    recorder = await send(nursery, address, headers={"Authorization": "Bearer token"})
    assert recorder.field(b"authorization") == b"Bearer token"


async def test_a_url_without_credentials_sends_no_authorization(nursery: trio.Nursery) -> None:
    recorder = await send(nursery, "http://127.0.0.1:{port}/")
    assert recorder.field(b"authorization") is None


@pytest.mark.parametrize("character", ["\r", "\n", "\t", "\x00", "\x7f"])
async def test_a_url_with_a_control_character_raises_value_error(character: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with duplex.Client() as client:
            with pytest.raises(ValueError, match="control character"):
                await client.get(f"http://127.0.0.1:1/a{character}b")
