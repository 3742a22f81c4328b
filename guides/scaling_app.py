"""The application of the scaling guide: a chat room shared by every worker.

Serve it with ``duplex serve scaling_app:chat --lifespan scaling_app:lifespan --workers 2``
(from this folder, with a Redis server at ``REDIS_URL``, default
``redis://127.0.0.1:6379``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import duplex

room = duplex.RedisChannelGroup(
    os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"), "room", history=100
)


@contextlib.asynccontextmanager
async def lifespan() -> AsyncIterator[None]:
    """Entered once in each worker before it serves: the worker's own subscription to
    the shared room, until its last exchange has ended."""
    async with room:
        yield


async def chat(request: duplex.Request) -> duplex.Response:
    if request.method == "POST" and request.path == "/say":
        text = (await request.body.join()).decode()
        processes = await room.broadcast(text)
        return duplex.Response(200, body=f"sent to {processes} workers\n")
    # Every worker answers with its pid, so that clients can see where they landed.
    headers = {"x-worker-pid": str(os.getpid())}
    return duplex.channel(request, headers=headers, on_open=room.add)
