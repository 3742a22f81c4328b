"""The application of the scaling guide: a chat room shared by every worker.

Serve it with ``duplex serve scaling_app:room --workers 2`` (from this folder, with a
Redis server at ``REDIS_URL``, default ``redis://127.0.0.1:6379``).
"""

from __future__ import annotations

import os
from types import TracebackType

import duplex


class Room:
    """A handler that is also an async context manager: ``duplex serve`` enters it once
    per worker process, so each worker has its own subscription to the shared group."""

    def __init__(self) -> None:
        url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
        self.group = duplex.RedisChannelGroup(url, "room", history=100)

    async def __aenter__(self) -> Room:
        await self.group.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.group.__aexit__(exc_type, exc_value, traceback)

    async def __call__(self, request: duplex.Request) -> duplex.Response:
        if request.method == "POST" and request.path == "/say":
            text = (await request.body.join()).decode()
            processes = await self.group.broadcast(text)
            return duplex.Response(200, body=f"sent to {processes} workers\n")
        # Every worker answers with its pid, so that clients can see where they landed.
        headers = {"x-worker-pid": str(os.getpid())}
        return duplex.channel(request, headers=headers, on_open=self.group.add)


room = Room()
