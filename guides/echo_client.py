"""The echo client: read the response while the request is still being written.

Run it: ``python guides/echo_client.py`` starts an echo server in-process and talks to
it; ``python guides/echo_client.py http://127.0.0.1:8000/`` talks to a running
``duplex echo`` instead, and then echoes what you type, line by line.
"""

from __future__ import annotations

import sys

import trio

import duplex

from echo_server import echo_streamable


async def reference_client(client: duplex.Client, url: str) -> bytes:
    """Write two chunks, finish the request, then read the echo to the end."""
    output = duplex.Writable()
    response = await client.get(url, body=output)
    stream = duplex.Stream(response.body, output)
    async with stream:
        await stream.write(b"Hello, ")
        await stream.write(b"World!")
        await stream.close_write()
        received = b""
        while chunk := await stream.readpartial(1024):
            received += chunk
    return received


async def line_by_line(client: duplex.Client, url: str, lines: list[str]) -> None:
    """Send a line, wait for its echo, then send the next: one request, full duplex."""
    output = duplex.Writable()
    response = await client.post(url, body=output)
    async with duplex.Stream(response.body, output) as stream:
        for line in lines:
            await stream.write(f"{line}\n".encode())
            echo = await stream.readline()
            print(f"sent {line!r}, echoed {echo.decode().rstrip()!r}")
        await stream.close_write()
        # Reading to the end lets the exchange finish cleanly and the connection be reused.
        assert await stream.read() == b""


async def typed_lines() -> list[str]:
    lines = []
    stdin = trio.wrap_file(sys.stdin)
    while line := await stdin.readline():
        lines.append(line.rstrip("\n"))
    return lines


async def main(url: str | None = None) -> None:
    async with trio.open_nursery() as nursery:
        server = None
        if url is None:
            server = await nursery.start(duplex.serve, echo_streamable, "127.0.0.1", 0)
            url = f"http://127.0.0.1:{server.port}/"
        async with duplex.Client() as client:
            print(f"reference client received: {(await reference_client(client, url)).decode()}")
            lines = ["one", "two", "three"] if server is not None else await typed_lines()
            await line_by_line(client, url, lines)
        if server is not None:
            await server.shutdown()


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else None)
