"""The echo server in duplex's two styles, proven full duplex.

Run it: ``python guides/echo_server.py``. It starts both servers on free ports, sends
each a chunked request one chunk at a time, reads every chunk's echo before sending the
next, and prints what came back.
"""

from __future__ import annotations

import trio

import duplex


# Style 1: independent bodies. The response body is a Writable that a task in the
# exchange's nursery fills while it reads the request body.
async def echo_independent(request: duplex.Request) -> duplex.Response:
    output = duplex.Writable()
    stream = duplex.Stream(request.body, output)

    async def copy() -> None:
        async with stream:
            while chunk := await stream.readpartial(1024):
                await stream.write(chunk)

    request.nursery.start_soon(copy)
    return duplex.Response(200, body=output)


# Style 2: bi-directional. duplex runs the function once the response head is out and
# hands it the request body and the response output merged into one Stream.
async def echo_streamable(request: duplex.Request) -> duplex.Response:
    async def copy(stream: duplex.Stream) -> None:
        while chunk := await stream.readpartial(1024):
            await stream.write(chunk)

    return duplex.Response(200, body=duplex.Streamable(copy))


async def talk(port: int, lines: list[bytes]) -> list[bytes]:
    """Send each line as one chunk and wait for its echo before sending the next."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        received = b""
        echoes = []
        for line in lines:
            await stream.send_all(b"%x\r\n%s\r\n" % (len(line), line))
            while line not in received:  # the echo arrives inside one response chunk
                received += await stream.receive_some(65536)
            echoes.append(line)
        await stream.send_all(b"0\r\n\r\n")
        return echoes


async def main() -> None:
    async with trio.open_nursery() as nursery:
        for handler in (echo_independent, echo_streamable):
            server = await nursery.start(duplex.serve, handler, "127.0.0.1", 0)
            with trio.fail_after(10):
                echoes = await talk(server.port, [b"Hello, ", b"World!"])
            print(f"{handler.__name__}: {b''.join(echoes).decode()}")
            await server.shutdown()


if __name__ == "__main__":
    trio.run(main)
