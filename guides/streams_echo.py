"""An echo through an in-memory, full-duplex pipe: two Writables, two Streams.

Run it with ``python guides/streams_echo.py``.
"""

from __future__ import annotations

import trio

from duplex import Stream, Writable


async def echo(stream: Stream) -> None:
    """Send every chunk back as it arrives; finish when the peer does."""
    while chunk := await stream.readpartial(1024):
        await stream.write(chunk)
    await stream.close_write()


async def main() -> bytes:
    to_server, to_client = Writable(), Writable()
    server = Stream(to_server, to_client)
    client = Stream(to_client, to_server)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo, server)

        await client.write(b"Hello, ")
        await client.write(b"World!")
        await client.close_write()

        received = bytearray()
        while chunk := await client.readpartial(1024):
            received += chunk

    print(received.decode())
    return bytes(received)


if __name__ == "__main__":
    trio.run(main)
