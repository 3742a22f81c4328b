"""The floor cost of duplex's stack: ``trio.serve_tcp`` and one ``h11.Connection`` per
socket, keep-alive, and nothing else (no limits, no timeouts, no second task).

- ``GET /``: the 13-byte body;
- ``POST /echo``: reads ``h11.Data`` events and sends each straight back (one task:
  read, write, read, ...);
- ``GET /idle``: an SSE response head, then nothing until the client leaves.

Run: ``python trio_h11_floor.py --port 8000``.
"""

from __future__ import annotations

import argparse
import resource
from functools import partial
from typing import Any

import h11
import trio

BODY = b"Hello, world!"
SMALL_HEADERS = [("content-type", "text/plain"), ("content-length", str(len(BODY)))]
STREAM_HEADERS = [("content-type", "application/octet-stream")]
SSE_HEADERS = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
READ_SIZE = 65536


async def next_event(stream: trio.SocketStream, conn: h11.Connection) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(READ_SIZE))
            continue
        return event


async def small(stream: trio.SocketStream, conn: h11.Connection) -> None:
    while not isinstance(await next_event(stream, conn), h11.EndOfMessage):
        pass
    await stream.send_all(
        b"".join(
            [
                conn.send(h11.Response(status_code=200, headers=SMALL_HEADERS)),
                conn.send(h11.Data(data=BODY)),
                conn.send(h11.EndOfMessage()),
            ]
        )
    )


async def echo(stream: trio.SocketStream, conn: h11.Connection) -> None:
    await stream.send_all(conn.send(h11.Response(status_code=200, headers=STREAM_HEADERS)))
    while True:
        event = await next_event(stream, conn)
        if isinstance(event, h11.Data):
            await stream.send_all(conn.send(event))
        elif isinstance(event, h11.EndOfMessage):
            await stream.send_all(conn.send(h11.EndOfMessage()))
            return
        else:
            raise trio.BrokenResourceError(f"unexpected {event!r}")


async def idle(stream: trio.SocketStream, conn: h11.Connection) -> None:
    await stream.send_all(conn.send(h11.Response(status_code=200, headers=SSE_HEADERS)))
    while await stream.receive_some(READ_SIZE):
        pass


async def handle(stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    async with stream:
        try:
            while True:
                event = await next_event(stream, conn)
                if not isinstance(event, h11.Request):
                    return
                if event.target == b"/echo":
                    await echo(stream, conn)
                elif event.target == b"/idle":
                    await idle(stream, conn)
                    return
                else:
                    await small(stream, conn)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, h11.ProtocolError):
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    trio.run(partial(trio.serve_tcp, handle, args.port, host=args.host, backlog=1024))


if __name__ == "__main__":
    main()
