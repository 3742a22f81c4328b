"""The aiohttp.web app (asyncio).

- ``GET /``: the 13-byte body;
- ``POST /echo``: a ``StreamResponse`` prepared at once, then each chunk of the request
  body written back as it arrives (``request.content.iter_any()``);
- ``GET /idle``: an SSE response head, then nothing until the client leaves.

Run: ``python aiohttp_app.py --port 8000``.
"""

from __future__ import annotations

import argparse
import asyncio
import resource

from aiohttp import web

BODY = b"Hello, world!"


async def small(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="text/plain")


async def echo(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "application/octet-stream"})
    await response.prepare(request)
    async for chunk in request.content.iter_any():
        await response.write(chunk)
    await response.write_eof()
    return response


async def idle(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"content-type": "text/event-stream", "cache-control": "no-cache"}
    )
    await response.prepare(request)
    # aiohttp does not cancel handlers when the client leaves (handler_cancellation is
    # off by default): look every few seconds, for an hour at most.
    for _ in range(720):
        transport = request.transport
        if transport is None or transport.is_closing():
            break
        await asyncio.sleep(5)
    return response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    app = web.Application()
    app.router.add_get("/", small)
    app.router.add_post("/echo", echo)
    app.router.add_get("/idle", idle)
    web.run_app(app, host=args.host, port=args.port, access_log=None, backlog=1024, print=None)


if __name__ == "__main__":
    main()
