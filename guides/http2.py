"""HTTP/2: the same handler, the same ``Stream``, the same ``Client`` call.

Run it: ``python guides/http2.py`` starts a server in-process (it speaks HTTP/1.1 and,
to a client that opens with the HTTP/2 preface, h2c) and talks HTTP/2 to it: a
full-duplex echo line by line over one stream, then twenty requests at once, sharing
one connection.
"""

from __future__ import annotations

import trio

import duplex

#: The client port of every request the server saw: one port, one connection.
seen_clients: set[object] = set()


async def handler(request: duplex.Request) -> duplex.Response:
    seen_clients.add(request.client)
    if request.path == "/echo":

        async def echo(stream: duplex.Stream) -> None:
            while chunk := await stream.readpartial(65536):
                await stream.write(chunk)

        return duplex.Response(200, body=duplex.Streamable(echo))
    return duplex.Response(200, body=f"{request.path} over HTTP/{request.http_version}")


async def line_by_line(client: duplex.Client, url: str) -> None:
    """Send a line, read its echo, then send the next: one HTTP/2 stream, full duplex."""
    output = duplex.Writable()
    response = await client.post(url, body=output)
    async with duplex.Stream(response.body, output) as stream:
        for line in ["one", "two", "three"]:
            await stream.write(f"{line}\n".encode())
            echo = await stream.readline()
            print(f"HTTP/{response.http_version}: sent {line!r}, echoed {echo.decode().rstrip()!r}")
        await stream.close_write()
        assert await stream.read() == b""


async def at_once(client: duplex.Client, base: str) -> None:
    """Twenty requests at once: concurrent streams of one connection."""
    answers: list[str] = []

    async def get(n: int) -> None:
        response = await client.get(f"{base}/item/{n}")
        answers.append((await response.body.join()).decode())

    seen_clients.clear()
    async with trio.open_nursery() as nursery:
        for n in range(20):
            nursery.start_soon(get, n)
    print(f"{len(answers)} answers, e.g. {sorted(answers)[0]!r}")
    print(f"connections used: {len(seen_clients)}")


async def main() -> None:
    async with trio.open_nursery() as nursery:
        server: duplex.Server = await nursery.start(duplex.serve, handler, "127.0.0.1", 0)
        base = f"http://127.0.0.1:{server.port}"
        async with duplex.Client(http2="prior-knowledge") as client:
            await line_by_line(client, f"{base}/echo")
            await at_once(client, base)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
