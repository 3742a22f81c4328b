"""Testing handlers with duplex.testing: the in-memory TestClient and hypothesis strategies.

Run it: ``python guides/testing.py`` runs the tests below and prints what each saw. With
pytest and pytest-trio (``trio_mode = true``), ``pytest guides/testing.py`` runs them as
they are.
"""

from __future__ import annotations

import trio
from hypothesis import given, settings

import duplex
from duplex.testing import TestClient, chunkings

# -- the application under test ---------------------------------------------------------


async def app(request: duplex.Request) -> duplex.Response:
    if request.path == "/hello":
        return duplex.Response(200, body=b"hello, world")
    if request.path == "/echo":

        async def copy(stream: duplex.Stream) -> None:
            while chunk := await stream.readpartial(1024):
                await stream.write(chunk)
            await stream.close_write()

        return duplex.Response(200, body=duplex.Streamable(copy))
    if request.path == "/ticks":

        async def on_open(channel: duplex.Channel) -> None:
            for n in range(3):
                await channel.send(duplex.sse.Event(f"tick {n}", id=str(n)))
            await channel.close()

        return duplex.channel(request, on_open=on_open)
    return duplex.Response(404, body=b"not found")


# -- the tests --------------------------------------------------------------------------


async def test_hello() -> None:
    async with TestClient(app) as client:
        response = await client.get("/hello")
        body = await response.read()
    assert (response.status, body) == (200, b"hello, world")
    print(f"GET /hello: {response.status} {body.decode()}")


async def test_echo_is_full_duplex() -> None:
    async with TestClient(app) as client:
        output = duplex.Writable()
        response = await client.post("/echo", body=output)
        stream = duplex.Stream(response.body, output)
        for chunk in (b"one", b"two", b"three"):
            await stream.write(chunk)
            # The echo of this chunk arrives while the request is still open.
            assert await stream.read_exactly(len(chunk)) == chunk
        await stream.close_write()
        assert await stream.read() == b""
    print("full duplex: each chunk echoed before the next was written")


async def test_ticks_arrive_as_events() -> None:
    async with TestClient(app) as client:
        ticks = [
            event.data async for event in duplex.sse.events(client, "/ticks", max_reconnects=0)
        ]
    assert ticks == ["tick 0", "tick 1", "tick 2"]
    print(f"sse: {ticks}")


async def echo_chunk_by_chunk(chunks: list[bytes]) -> None:
    async with TestClient(app) as client:
        output = duplex.Writable()
        response = await client.post("/echo", body=output)
        stream = duplex.Stream(response.body, output)
        for chunk in chunks:
            await stream.write(chunk)
            assert await stream.read_exactly(len(chunk)) == chunk
        await stream.close_write()
        assert await stream.read() == b""


@settings(max_examples=50, deadline=None)
@given(chunks=chunkings())
def test_echo_holds_for_any_chunking(chunks: list[bytes]) -> None:
    # hypothesis runs each example to completion: each in a trio.run of its own.
    trio.run(echo_chunk_by_chunk, chunks)


async def run_examples() -> None:
    with trio.fail_after(30):
        await test_hello()
        await test_echo_is_full_duplex()
        await test_ticks_arrive_as_events()


if __name__ == "__main__":
    trio.run(run_examples)
    test_echo_holds_for_any_chunking()
    print("property: the echo held for every chunking hypothesis tried")
