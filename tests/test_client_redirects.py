"""Redirects: returned as they are unless ``follow_redirects``; then followed up to
``max_redirects``, with 303 (and 301/302 after POST) turning into GET, ``Buffered``
bodies sent again from the start, and streamed bodies never replayed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

import duplex
from _client_support import TIMEOUT, start_duplex, url


class Site:
    """``/redirect/<status>?to=<path>`` redirects; ``/loop`` redirects to itself;
    ``/target`` describes the request it got; every request is recorded."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes]] = []

    async def handler(self, request: duplex.Request) -> duplex.Response:
        body = await request.body.join()
        self.seen.append((request.method, request.path, body))
        if request.path.startswith("/redirect/"):
            status = int(request.path.rsplit("/", 1)[1])
            location = request.query.removeprefix("to=") or "/target"
            return duplex.Response(status, {"location": location}, b"moved")
        if request.path == "/loop":
            return duplex.Response(302, {"location": "/loop"})
        auth = request.headers.get("authorization", "-")
        return duplex.Response(200, body=f"{request.method} {auth} ".encode() + body)


async def test_a_redirect_is_not_followed_by_default(nursery: trio.Nursery) -> None:
    site = Site()
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, site.handler)
        async with duplex.Client() as client:
            response = await client.get(url(server, "/redirect/302"))
            assert response.status == 302
            assert response.headers["location"] == "/target"
            assert await response.read() == b"moved"
        assert len(site.seen) == 1


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_follow_redirects_follows_each_redirect_status(
    nursery: trio.Nursery, status: int
) -> None:
    site = Site()
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, site.handler)
        async with duplex.Client(follow_redirects=True) as client:
            response = await client.get(url(server, f"/redirect/{status}"))
            assert response.status == 200
            assert response.url == url(server, "/target")
            assert await response.read() == b"GET - "
            assert client.pool.open_connections() == 1


async def test_follow_redirects_per_request_overrides_the_client(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, Site().handler)
        async with duplex.Client() as client:
            response = await client.get(url(server, "/redirect/302"), follow_redirects=True)
            assert response.status == 200


async def test_too_many_redirects_raises(nursery: trio.Nursery) -> None:
    site = Site()
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, site.handler)
        async with duplex.Client(follow_redirects=True, max_redirects=3) as client:
            with pytest.raises(duplex.TooManyRedirects):
                await client.get(url(server, "/loop"))
        assert len(site.seen) == 4


async def test_a_303_turns_a_post_into_a_get_without_body(nursery: trio.Nursery) -> None:
    site = Site()
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, site.handler)
        async with duplex.Client(follow_redirects=True) as client:
            response = await client.post(url(server, "/redirect/303"), body=b"form data")
            assert await response.read() == b"GET - "
        assert site.seen[-1] == ("GET", "/target", b"")


@pytest.mark.parametrize("status", [301, 302])
async def test_a_301_or_302_turns_a_post_into_a_get(nursery: trio.Nursery, status: int) -> None:
    site = Site()
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, site.handler)
        async with duplex.Client(follow_redirects=True) as client:
            response = await client.post(url(server, f"/redirect/{status}"), body=b"form data")
            assert await response.read() == b"GET - "
        assert site.seen[-1] == ("GET", "/target", b"")


@pytest.mark.parametrize("status", [307, 308])
async def test_a_307_or_308_resends_a_bytes_body_with_the_same_method(
    nursery: trio.Nursery, status: int
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, Site().handler)
        async with duplex.Client(follow_redirects=True) as client:
            response = await client.put(url(server, f"/redirect/{status}"), body=b"payload")
            assert await response.read() == b"PUT - payload"


async def test_a_buffered_body_is_sent_again_from_the_start(nursery: trio.Nursery) -> None:
    body = duplex.Buffered([b"pay", b"load"])
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, Site().handler)
        async with duplex.Client(follow_redirects=True) as client:
            response = await client.post(url(server, "/redirect/307"), body=body)
            assert await response.read() == b"POST - payload"


async def test_a_large_buffered_body_redirected_before_it_was_read_is_sent_whole(
    nursery: trio.Nursery,
) -> None:
    chunks = [bytes([n]) * 65536 for n in range(64)]  # 4 MiB the redirect never reads

    async def handler(request: duplex.Request) -> duplex.Response:
        if request.path == "/early":
            return duplex.Response(307, {"location": "/target"})
        return duplex.Response(200, body=await request.body.join())

    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, handler)
        async with duplex.Client(follow_redirects=True) as client:
            response = await client.post(url(server, "/early"), body=duplex.Buffered(chunks))
            assert response.status == 200
            assert await response.read() == b"".join(chunks)


async def test_a_streamed_body_is_not_replayed_and_the_307_is_returned(
    nursery: trio.Nursery,
) -> None:
    site = Site()

    async def chunks() -> AsyncIterator[bytes]:
        yield b"streamed once"

    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, site.handler)
        async with duplex.Client(follow_redirects=True) as client:
            response = await client.post(url(server, "/redirect/307"), body=chunks())
            assert response.status == 307
            assert await response.read() == b"moved"
        assert [path for _, path, _ in site.seen] == ["/redirect/307"]


async def test_a_writable_body_is_not_replayed_and_the_308_is_returned(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, Site().handler)
        async with duplex.Client(follow_redirects=True) as client:
            output = duplex.Writable()
            await output.write(b"written once")
            await output.close_write()
            response = await client.post(url(server, "/redirect/308"), body=output)
            assert response.status == 308


async def test_a_relative_location_is_resolved_against_the_request_url(
    nursery: trio.Nursery,
) -> None:
    site = Site()
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, site.handler)
        async with duplex.Client(follow_redirects=True) as client:
            response = await client.get(url(server, "/redirect/302?to=../target"))
            assert response.status == 200
        assert site.seen[-1][1] == "/target"


async def test_credentials_are_not_sent_to_another_origin(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        first = await start_duplex(nursery, Site().handler)
        second = await start_duplex(nursery, Site().handler)
        target = url(second, "/target")
        async with duplex.Client(follow_redirects=True) as client:
            response = await client.get(
                url(first, f"/redirect/302?to={target}"),
                headers={"Authorization": "Bearer secret"},
            )
            assert await response.read() == b"GET - "


async def test_credentials_are_kept_on_the_same_origin(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, Site().handler)
        async with duplex.Client(follow_redirects=True) as client:
            response = await client.get(
                url(server, "/redirect/302"), headers={"Authorization": "Bearer secret"}
            )
            assert await response.read() == b"GET Bearer secret "


async def test_url_credentials_are_not_sent_to_another_origin(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        first = await start_duplex(nursery, Site().handler)
        second = await start_duplex(nursery, Site().handler)
        target = url(second, "/target")
        address = f"http://alice:s3cret@127.0.0.1:{first.port}/redirect/302?to={target}"
        async with duplex.Client(follow_redirects=True) as client:
            assert await (await client.get(address)).read() == b"GET - "


async def test_url_credentials_are_kept_on_the_same_origin(nursery: trio.Nursery) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_duplex(nursery, Site().handler)
        address = f"http://alice:s3cret@127.0.0.1:{server.port}/redirect/302"
        async with duplex.Client(follow_redirects=True) as client:
            response = await client.get(address)
            assert await response.read() == b"GET Basic YWxpY2U6czNjcmV0 "
