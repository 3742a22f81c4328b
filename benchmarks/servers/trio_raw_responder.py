"""The ceiling for small requests on trio: a keep-alive responder with no HTTP parser.

It answers every request head (everything up to a blank line) with the same 13-byte
response, and understands nothing else: no body, no header, no error. What duplex
costs per small request above this is duplex's own; below it is trio's.

Run: ``python trio_raw_responder.py --port 8000``.
"""

from __future__ import annotations

import argparse
from functools import partial

import trio

READ_SIZE = 65536
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n\r\nHello, world!"


async def handle(stream: trio.SocketStream) -> None:
    async with stream:
        buffered = b""
        try:
            while data := await stream.receive_some(READ_SIZE):
                buffered += data
                heads = buffered.count(b"\r\n\r\n")
                if heads:
                    buffered = buffered[buffered.rindex(b"\r\n\r\n") + 4 :]
                    await stream.send_all(RESPONSE * heads)
        except trio.BrokenResourceError:
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    trio.run(partial(trio.serve_tcp, handle, args.port, host=args.host, backlog=1024))


if __name__ == "__main__":
    main()
