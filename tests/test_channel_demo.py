"""The demo's "Chunked HTTP stream" panel (rack-stream's example, a chunk every half
second from ``after_open``) receives each chunk when it is sent, not all at the end."""

from __future__ import annotations

import trio

import duplex
from _channel_support import serving
from duplex.demo import Demo


async def test_the_demo_stream_arrives_a_chunk_at_a_time() -> None:
    arrivals: list[tuple[float, bytes]] = []
    with trio.fail_after(10):
        async with serving(Demo().handler) as server, duplex.Client() as client:
            response = await client.get(f"http://127.0.0.1:{server.port}/stream")
            async for chunk in response.body:
                arrivals.append((trio.current_time(), chunk))
    assert b"".join(chunk for _, chunk in arrivals) == b"chunky 0\nchunky 1\nchunky 2\nmonkey!\n"
    assert arrivals[0][1] == b"chunky 0\n"
    # Sent over 1.5 s (three pauses of 0.5 s): the first is there long before the last.
    assert arrivals[-1][0] - arrivals[0][0] >= 0.9
