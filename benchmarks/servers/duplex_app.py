"""duplex under test: every route the benchmarks use, on one ``duplex.serve``.

- ``GET /``: the 13-byte body (small requests);
- ``POST /echo``: a ``Streamable`` echoing each chunk as it arrives (streaming echo);
- ``POST /updown``: reads the whole upload, then sends as many bytes back (the
  half-duplex form that every client can do);
- ``GET /idle``: a ``duplex.channel`` with the heartbeat off that never sends;
- ``GET /sse``: the same, joined to a ``ChannelGroup``;
- ``POST /broadcast``: broadcasts the request body to the group (the admin endpoint);
  answers with the number of members that took it.

Run: ``python duplex_app.py --port 8000``. The limits are duplex's defaults except
``max_connections``, raised for the 10,000-connection runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
from collections.abc import AsyncIterator

import trio

import duplex

BODY = b"Hello, world!"
CHUNK = 65536
group = duplex.ChannelGroup()


async def echo(stream: duplex.Stream) -> None:
    while chunk := await stream.readpartial(CHUNK):
        await stream.write(chunk)


async def send_back(size: int) -> AsyncIterator[bytes]:
    block = bytes(CHUNK)
    while size > 0:
        piece = block if size >= CHUNK else block[:size]
        size -= len(piece)
        yield piece


async def handler(request: duplex.Request) -> duplex.Response:
    path = request.path
    if path == "/":
        return duplex.Response(200, {"content-type": "text/plain"}, BODY)
    if path == "/echo":
        return duplex.Response(
            200, {"content-type": "application/octet-stream"}, duplex.Streamable(echo)
        )
    if path == "/idle":
        return duplex.channel(request, heartbeat=None)
    if path == "/sse":
        return duplex.channel(request, on_open=group.add, heartbeat=None)
    if path == "/broadcast" and request.method == "POST":
        message = (await request.body.join()).decode()
        delivered = await group.broadcast(message)
        return duplex.Response(200, {"content-type": "text/plain"}, str(delivered))
    if path == "/updown":
        size = 0
        async for chunk in request.body:
            size += len(chunk)
        return duplex.Response(200, {"content-type": "application/octet-stream"}, send_back(size))
    return duplex.Response(404, body="not found\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--stream-window",
        type=int,
        default=None,
        help="Limits.stream_window_size (HTTP/2's initial window per stream; default: duplex's)",
    )
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    limits = duplex.Limits(max_connections=50_000)
    if args.stream_window is not None:
        limits = dataclasses.replace(limits, stream_window_size=args.stream_window)
    trio.run(lambda: duplex.serve(handler, args.host, args.port, limits=limits))


if __name__ == "__main__":
    main()
