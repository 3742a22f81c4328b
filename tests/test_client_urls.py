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


async def send(nursery: trio.Nursery, path: str, **kwargs: object) -> Recorder:
    """GET ``http://127.0.0.1:PORT`` + ``path`` from a recording server."""
    recorder = Recorder()
    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, recorder.respond)
        async with duplex.Client() as client:
            response = await client.get(f"http://127.0.0.1:{server.port}{path}", **kwargs)
            assert await response.read() == b"ok"
    return recorder


def basic(credentials: bytes) -> bytes:
    return b"Basic " + base64.b64encode(credentials)


async def test_a_non_ascii_path_and_query_are_sent_percent_encoded_as_utf8(
    nursery: trio.Nursery,
) -> None:
    recorder = await send(nursery, "/café?q=ü")
    assert recorder.target == b"/caf%C3%A9?q=%C3%BC"


async def test_what_is_percent_encoded_already_is_sent_as_it_is(nursery: trio.Nursery) -> None:
    recorder = await send(nursery, "/caf%C3%A9/a%2Fb?q=%C3%BC&r=1%2B1")
    assert recorder.target == b"/caf%C3%A9/a%2Fb?q=%C3%BC&r=1%2B1"


async def test_a_space_in_the_path_or_query_is_sent_as_percent_20(nursery: trio.Nursery) -> None:
    recorder = await send(nursery, "/a b?q=c d")
    assert recorder.target == b"/a%20b?q=c%20d"


async def test_reserved_characters_are_sent_as_they_are(nursery: trio.Nursery) -> None:
    recorder = await send(nursery, "/a:b@c;d=e,f!$'()*+?x=[1]&y=/?")
    assert recorder.target == b"/a:b@c;d=e,f!$'()*+?x=[1]&y=/?"


async def test_the_fragment_is_not_sent(nursery: trio.Nursery) -> None:
    recorder = await send(nursery, "/page?q=1#section")
    assert recorder.target == b"/page?q=1"


async def test_user_and_password_in_the_url_become_basic_authorization(
    nursery: trio.Nursery,
) -> None:
    recorder = Recorder()
    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, recorder.respond)
        async with duplex.Client() as client:
            await client.get(f"http://alice:s3cret@127.0.0.1:{server.port}/")
    assert recorder.field(b"authorization") == basic(b"alice:s3cret")
    assert recorder.field(b"host") == f"127.0.0.1:{server.port}".encode()


async def test_percent_encoded_credentials_are_decoded_then_sent_as_utf8(
    nursery: trio.Nursery,
) -> None:
    recorder = Recorder()
    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, recorder.respond)
        async with duplex.Client() as client:
            await client.get(f"http://al%40ice:p%3Ass%20w%C3%B6rd@127.0.0.1:{server.port}/")
    assert recorder.field(b"authorization") == basic("al@ice:p:ss wörd".encode())


async def test_a_user_without_a_password_is_sent_with_an_empty_one(
    nursery: trio.Nursery,
) -> None:
    recorder = Recorder()
    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, recorder.respond)
        async with duplex.Client() as client:
            await client.get(f"http://alice@127.0.0.1:{server.port}/")
    assert recorder.field(b"authorization") == basic(b"alice:")


async def test_an_authorization_header_given_wins_over_the_url_credentials(
    nursery: trio.Nursery,
) -> None:
    recorder = Recorder()
    with trio.fail_after(TIMEOUT):
        server = await FakeServer.start(nursery, recorder.respond)
        async with duplex.Client() as client:
            await client.get(
                f"http://alice:s3cret@127.0.0.1:{server.port}/",
                headers={"Authorization": "Bearer token"},
            )
    assert recorder.field(b"authorization") == b"Bearer token"


async def test_a_url_without_credentials_sends_no_authorization(nursery: trio.Nursery) -> None:
    recorder = await send(nursery, "/")
    assert recorder.field(b"authorization") is None


@pytest.mark.parametrize("character", ["\r", "\n", "\t", "\x00", "\x7f"])
async def test_a_url_with_a_control_character_raises_value_error(character: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with duplex.Client() as client:
            with pytest.raises(ValueError, match="control character"):
                await client.get(f"http://127.0.0.1:1/a{character}b")
