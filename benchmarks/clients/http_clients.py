"""Client-side load: duplex.Client vs httpx.AsyncClient (on trio) vs aiohttp (asyncio).

``get``: ``--concurrency`` tasks share one client and loop ``GET --url`` over keep-alive,
reading each body, for ``--duration`` seconds or ``--max-requests`` requests, whichever
comes first. Reports requests/s and requests per client CPU-second.

``stream``: moves ``--total`` bytes up and the same bytes back down, in ``--chunk``-byte
chunks, against the duplex benchmark server. ``--route echo`` (``POST /echo``) needs a
client that reads the response while it still sends the request; ``--route updown``
(``POST /updown``: the server reads the whole upload, then sends it back) works with
any client. Every client gets the upload as the same async generator; ``--upload
writable`` has duplex's client send a ``duplex.Writable`` that another task writes
instead (its ``Stream`` way), which costs a hand-off between tasks per chunk. A run that
makes no progress for ``--stall`` seconds stops and says so.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

Result = dict[str, Any]


class Progress:
    def __init__(self) -> None:
        self.up = 0
        self.down = 0
        self.stamp = time.perf_counter()
        self.first: float | None = None
        self.last: float | None = None
        self.cpu0 = time.process_time()

    def sent(self, size: int) -> None:
        self.up += size
        self.stamp = time.perf_counter()

    def received(self, size: int) -> None:
        now = self.stamp = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now
        self.down += size


def chunks(args: argparse.Namespace, progress: Progress) -> AsyncIterator[bytes]:
    block = bytes(range(256)) * (args.chunk // 256)

    async def generate() -> AsyncIterator[bytes]:
        for _ in range(args.total // args.chunk):
            yield block
            progress.sent(len(block))

    return generate()


def stream_result(
    args: argparse.Namespace, progress: Progress, start: float, outcome: str
) -> Result:
    end = progress.last or time.perf_counter()
    if outcome == "ok" and progress.down < args.total:
        outcome = "short"
    return {
        "outcome": outcome,
        "up": progress.up,
        "down": progress.down,
        "seconds": end - start,
        "first_byte_seconds": None if progress.first is None else progress.first - start,
        "mib_per_s": progress.down / (1 << 20) / (end - start) if progress.down else 0.0,
        "client_cpu_seconds": time.process_time() - progress.cpu0,
    }


# -- trio clients: duplex and httpx -----------------------------------------------------


async def trio_get(args: argparse.Namespace) -> Result:
    import trio

    count = 0
    deadline = time.perf_counter() + args.duration

    if args.lib == "duplex":
        import duplex

        client_cm: Any = duplex.Client()

        async def fetch(client: Any) -> None:
            response = await client.get(args.url)
            await response.read()
    else:
        import httpx

        client_cm = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=args.concurrency, max_keepalive_connections=args.concurrency
            )
        )

        async def fetch(client: Any) -> None:
            response = await client.get(args.url)
            response.read  # noqa: B018 - httpx's get has read the body already

    async def worker(client: Any) -> None:
        nonlocal count
        while count < args.max_requests and time.perf_counter() < deadline:
            await fetch(client)
            count += 1

    async with client_cm as client:
        for _ in range(20):  # warm-up: connections open, code paths hot
            await fetch(client)
        cpu0, start = time.process_time(), time.perf_counter()
        deadline = start + args.duration
        async with trio.open_nursery() as nursery:
            for _ in range(args.concurrency):
                nursery.start_soon(worker, client)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
    return {"requests": count, "seconds": seconds, "cpu_seconds": cpu}


async def trio_stream(args: argparse.Namespace) -> Result:
    import trio

    if args.lib == "duplex":
        import duplex  # before the clocks start, as aiohttp is imported before its own
    else:
        import httpx

    progress = Progress()
    url = f"{args.url.rstrip('/')}/{args.route}"
    outcome = "ok"
    start = time.perf_counter()

    async def watchdog(scope: trio.CancelScope) -> None:
        nonlocal outcome
        while True:
            await trio.sleep(0.25)
            if time.perf_counter() - progress.stamp > args.stall:
                outcome = "stalled"
                scope.cancel()
                return

    with trio.move_on_after(args.timeout) as timeout:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watchdog, nursery.cancel_scope)
            start = progress.stamp = time.perf_counter()
            if args.lib == "duplex":
                async with duplex.Client() as client:
                    if args.upload == "writable":
                        body = duplex.Writable()

                        async def upload() -> None:
                            async for block in chunks(args, progress):
                                await body.write(block)
                            await body.close_write()

                        nursery.start_soon(upload)
                        response = await client.post(url, body=body)
                    else:
                        response = await client.post(url, body=chunks(args, progress))
                    async for chunk in response.body:
                        progress.received(len(chunk))
            else:
                async with (
                    httpx.AsyncClient(timeout=None) as httpx_client,
                    httpx_client.stream("POST", url, content=chunks(args, progress)) as reply,
                ):
                    async for chunk in reply.aiter_raw():
                        progress.received(len(chunk))
            nursery.cancel_scope.cancel()
    if timeout.cancelled_caught:
        outcome = "timeout"
    return stream_result(args, progress, start, outcome)


# -- aiohttp (asyncio) ------------------------------------------------------------------


async def aiohttp_get(args: argparse.Namespace) -> Result:
    import asyncio

    import aiohttp

    count = 0
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def fetch() -> None:
            async with session.get(args.url) as response:
                await response.read()

        for _ in range(20):
            await fetch()
        cpu0, start = time.process_time(), time.perf_counter()
        deadline = start + args.duration

        async def worker() -> None:
            nonlocal count
            while count < args.max_requests and time.perf_counter() < deadline:
                await fetch()
                count += 1

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
    return {"requests": count, "seconds": seconds, "cpu_seconds": cpu}


async def aiohttp_stream(args: argparse.Namespace) -> Result:
    import asyncio

    import aiohttp

    progress = Progress()
    url = f"{args.url.rstrip('/')}/{args.route}"
    start = progress.stamp = time.perf_counter()

    async def transfer() -> None:
        timeout = aiohttp.ClientTimeout(total=None)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, data=chunks(args, progress)) as response,
        ):
            async for chunk in response.content.iter_any():
                progress.received(len(chunk))

    task = asyncio.ensure_future(transfer())
    outcome = "ok"
    limit = start + args.timeout
    while not task.done():
        await asyncio.wait([task], timeout=0.25)
        now = time.perf_counter()
        if not task.done() and (now - progress.stamp > args.stall or now > limit):
            outcome = "stalled" if now <= limit else "timeout"
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if not task.cancelled():
        task.result()
    return stream_result(args, progress, start, outcome)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["get", "stream"])
    parser.add_argument("--lib", choices=["duplex", "httpx", "aiohttp"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--max-requests", type=int, default=1_000_000)
    parser.add_argument("--route", choices=["echo", "updown"], default="echo")
    parser.add_argument(
        "--upload",
        choices=["iterator", "writable"],
        default="iterator",
        help="duplex only: the request body as an async generator (as every client "
        "gets it) or as a duplex.Writable another task writes",
    )
    parser.add_argument("--total", type=int, default=256 << 20)
    parser.add_argument("--chunk", type=int, default=65536)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--stall", type=float, default=5.0)
    args = parser.parse_args()
    runner: Callable[[argparse.Namespace], Awaitable[Result]]
    if args.lib == "aiohttp":
        import asyncio

        runner = aiohttp_get if args.mode == "get" else aiohttp_stream
        result = asyncio.run(runner(args))
    else:
        import trio

        runner = trio_get if args.mode == "get" else trio_stream
        result = trio.run(runner, args)
    result.update(lib=args.lib, mode=args.mode, concurrency=args.concurrency, route=args.route)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
