"""The ceiling for streaming echo: a raw trio TCP echo, no HTTP at all.

Run: ``python trio_raw_echo.py --port 8000``.
"""

from __future__ import annotations

import argparse
from functools import partial

import trio

READ_SIZE = 65536


async def handle(stream: trio.SocketStream) -> None:
    async with stream:
        try:
            while data := await stream.receive_some(READ_SIZE):
                await stream.send_all(data)
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
