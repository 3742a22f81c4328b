"""From one process to several: two workers on one port, one chat room through Redis.

Run it: ``python guides/scaling.py`` (it needs ``redis-server`` on the PATH; it starts
its own on a free port and stops it at the end). Subscribers land on both workers; a
message said to one worker reaches every subscriber.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import trio

import duplex

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def subscribe(port: int, pids: set[str], received: list[str], ready: trio.Event) -> None:
    async with duplex.Client() as client:
        response = await client.get(
            f"http://127.0.0.1:{port}/", headers={"accept": "text/event-stream"}
        )
        pids.add(response.headers["x-worker-pid"])
        ready.set()
        parser = duplex.sse.EventParser()
        async for chunk in response.body:
            for event in parser.feed(chunk):
                received.append(event.data)
                return


async def main() -> None:
    if shutil.which("redis-server") is None:
        sys.exit("this example needs redis-server (apt-get install redis-server)")
    redis_port = free_port()
    redis = await trio.lowlevel.open_process(
        ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    # The workers inherit this environment: where Redis is and where the app lives.
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}"
    paths = [str(HERE), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                partial(
                    duplex.serve_workers,
                    "scaling_app:chat",
                    "127.0.0.1",
                    0,
                    worker_arguments=["--lifespan", "scaling_app:lifespan"],
                )
            )
            pids: set[str] = set()
            received: list[str] = []
            async with trio.open_nursery() as subscribers:
                for _ in range(8):
                    ready = trio.Event()
                    subscribers.start_soon(subscribe, port, pids, received, ready)
                    await ready.wait()
                async with duplex.Client() as client:
                    response = await client.post(f"http://127.0.0.1:{port}/say", body="hello, all")
                    print(f"said to one worker: {(await response.read()).decode().strip()}")
            print(f"{len(received)} subscribers on {len(pids)} workers received {set(received)}")
            nursery.cancel_scope.cancel()
    finally:
        redis.terminate()
        with trio.CancelScope(shield=True):
            await redis.wait()


if __name__ == "__main__":
    trio.run(main)
