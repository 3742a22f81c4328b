"""The ``duplex`` command line: ``demo``, ``echo``, ``serve``, ``request``.

A user's mistake (a port in use, an address that does not resolve, a URL without its
scheme, a port out of range, an unknown log level) is one line on standard error and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from functools import partial
from typing import Literal

import trio

from ._errors import Timeout
from ._stream import Stream
from ._version import __version__
from ._workers import WorkersFailed, serve_workers
from .demo import Demo
from .http import Client, Handler, Request, Response, Server, Streamable

__all__ = ["echo", "main"]

log = logging.getLogger("duplex")


async def echo(request: Request) -> Response:
    """Stream every request body back as it arrives (the bi-directional style)."""

    async def copy(stream: Stream) -> None:
        while chunk := await stream.readpartial(65536):
            await stream.write(chunk)

    return Response(200, {"content-type": "application/octet-stream"}, Streamable(copy))


def load_handler(spec: str) -> Handler:
    """Import ``module:attribute`` and return the handler it names."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"duplex: expected module:handler, got {spec!r}")
    sys.path.insert(0, ".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise SystemExit(f"duplex: cannot import {module_name!r}: {error}") from error
    handler = module
    for part in attribute.split("."):
        try:
            handler = getattr(handler, part)
        except AttributeError:
            raise SystemExit(f"duplex: {module_name!r} has no attribute {attribute!r}") from None
    if not callable(handler):
        raise SystemExit(f"duplex: {spec!r} is not callable")
    return handler


async def run_server(
    server: Server, background: Callable[[], Awaitable[object]] | None = None
) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully.

    ``background`` runs beside the server and is cancelled once it has stopped. A
    handler that is also an async context manager is entered before serving and exited
    after the shutdown: that is where a process sets up what it shares, such as a
    ``RedisChannelGroup``.
    """
    handler = server.handler
    async with AsyncExitStack() as stack:
        if isinstance(handler, AbstractAsyncContextManager):
            await stack.enter_async_context(handler)
        await _serve_until_signal(server, background)


async def _serve_until_signal(
    server: Server, background: Callable[[], Awaitable[object]] | None
) -> None:
    async with trio.open_nursery() as nursery:
        if background is not None:
            nursery.start_soon(background)
        await nursery.start(server.serve)
        print(f"duplex: serving on {_origin(server)}/", flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                break
        await server.shutdown()
        nursery.cancel_scope.cancel()


def _origin(server: Server) -> str:
    scheme = "https" if server.ssl_context is not None else "http"
    return f"{scheme}://{server.host}:{server.port}"


async def _stdin_chunks() -> AsyncIterator[bytes]:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stdin:
        while chunk := await stdin.receive_some(65536):
            yield bytes(chunk)


async def run_request(
    method: str,
    url: str,
    headers: list[str],
    send_body: bool,
    http2: bool | Literal["prior-knowledge"] = False,
) -> int:
    """Stream standard input into the request body while the response body streams to
    standard output; return the exit status (1 for an HTTP error status). ``http2`` as
    ``duplex.Client`` takes it."""
    pairs = []
    for header in headers:
        name, colon, value = header.partition(":")
        if not colon:
            print(f"duplex: bad header {header!r} (expected 'Name: value')", file=sys.stderr)
            return 2
        pairs.append((name.strip(), value.strip()))
    stdout = trio.lowlevel.FdStream(os.dup(sys.stdout.fileno()))
    try:
        async with Client(http2=http2) as client, stdout:
            body = _stdin_chunks() if send_body else None
            response = await client.request(method, url, headers=pairs, body=body)
            async for chunk in response.body:
                await stdout.send_all(chunk)
    except (OSError, trio.BrokenResourceError, Timeout) as error:
        # BrokenResourceError covers ProtocolError and a refused TLS handshake.
        print(f"duplex: {method} {url} failed: {error}", file=sys.stderr)
        return 2
    if response.status >= 400:
        print(f"duplex: HTTP {response.status} {response.reason}", file=sys.stderr)
        return 1
    return 0


DESCRIPTION = (
    "Bidirectional byte streams over HTTP: serve the demo page, a full-duplex echo or "
    "your own handler (HTTP/1.1 and HTTP/2), or send a request that streams both ways."
)
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _port(text: str) -> int:
    """A TCP port (0: any free one); argparse reports anything else."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is from 0 to 65535, not {port}")
    return port


def _add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8000, help="port to bind (8000)")
    parser.add_argument(
        "--certfile", help="serve TLS with this certificate chain (PEM), HTTP/2 by ALPN"
    )
    parser.add_argument("--keyfile", help="the certificate's private key (PEM; default: certfile)")
    parser.add_argument(
        "--no-http2",
        dest="http2",
        action="store_false",
        help="serve HTTP/1.1 only (HTTP/2 is on: by ALPN over TLS, h2c with prior knowledge)",
    )


def _tls_arguments(args: argparse.Namespace) -> list[str]:
    """The TLS and HTTP/2 options as given, for a worker's command line."""
    given = []
    if args.certfile:
        given += ["--certfile", args.certfile]
    if args.keyfile:
        given += ["--keyfile", args.keyfile]
    if not args.http2:
        given.append("--no-http2")
    return given


def server_context(certfile: str | None, keyfile: str | None) -> ssl.SSLContext | None:
    """The TLS context of ``--certfile``/``--keyfile`` (None without a certificate).
    Raises ``SystemExit`` with a clear message if they cannot be loaded."""
    if certfile is None:
        if keyfile is not None:
            raise SystemExit("duplex: --keyfile needs --certfile")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as error:
        raise SystemExit(f"duplex: cannot load the certificate {certfile!r}: {error}") from error
    return context


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="duplex", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"duplex {__version__}")
    # --log-level goes before or after the command alike (the command's copy only
    # overrides when given).
    logging_options = argparse.ArgumentParser(add_help=False)
    logging_options.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default=argparse.SUPPRESS,
        help="logging level (warning)",
    )
    parser.add_argument(
        "--log-level", type=str.lower, choices=LOG_LEVELS, default="warning",
        help="logging level (warning)",
    )  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo_parser = commands.add_parser(
        "demo",
        parents=[logging_options],
        help="serve a page that shows SSE, WebSocket, long-polling and streaming",
    )
    _add_address(demo_parser)
    echo_parser = commands.add_parser(
        "echo", parents=[logging_options], help="stream every request body back"
    )
    _add_address(echo_parser)
    serve_parser = commands.add_parser(
        "serve", parents=[logging_options], help="serve module:handler"
    )
    serve_parser.add_argument("handler", help="the handler, as module:attribute")
    _add_address(serve_parser)
    serve_parser.add_argument(
        "--workers", type=int, default=None, help="serve from N processes on one port"
    )
    # A worker of `--workers`: binds with SO_REUSEPORT beside its siblings.
    serve_parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    request_parser = commands.add_parser(
        "request",
        parents=[logging_options],
        help="send a request: standard input streams up while the response streams down",
    )
    request_parser.add_argument("method", help="GET, POST, PUT, ...")
    request_parser.add_argument("url")
    request_parser.add_argument(
        "-H", "--header", action="append", default=[], help="'Name: value' (repeatable)"
    )
    request_parser.add_argument(
        "--body",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="send standard input as the body (default: for POST, PUT and PATCH)",
    )
    version = request_parser.add_mutually_exclusive_group()
    version.add_argument(
        "--http2",
        action="store_true",
        help="offer HTTP/2 by ALPN on https (falling back to HTTP/1.1)",
    )
    version.add_argument(
        "--http2-prior-knowledge",
        action="store_true",
        help="speak HTTP/2 from the first byte (h2c on http)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if args.command == "request":
        if not args.url.lower().startswith(("http://", "https://")):
            print(
                f"duplex: the URL needs its scheme: http://{args.url} or https://{args.url}",
                file=sys.stderr,
            )
            return 2
        method = args.method.upper()
        send_body = args.body if args.body is not None else method in ("POST", "PUT", "PATCH")
        http2: bool | Literal["prior-knowledge"] = (
            "prior-knowledge" if args.http2_prior_knowledge else args.http2
        )
        return trio.run(run_request, method, args.url, args.header, send_body, http2)
    context = server_context(args.certfile, args.keyfile)
    tls = {"ssl_context": context, "http2": args.http2}
    if args.command == "demo":
        demo = Demo()
        server = Server(demo.handler, args.host, args.port, **tls)
        return _serve_or_say_why(server, demo.run)
    if args.command == "serve" and args.workers is not None:
        if args.workers < 1:
            parser.error("--workers takes a number from 1 up")
        scheme = "http" if context is None else "https"
        return run_workers(
            args.handler, args.host, args.port, args.workers, _tls_arguments(args), scheme
        )
    handler: Handler = echo if args.command == "echo" else load_handler(args.handler)
    reuse_port = args.command == "serve" and args.worker
    server = Server(handler, args.host, args.port, reuse_port=reuse_port, **tls)
    return _serve_or_say_why(server, None)


def _serve_or_say_why(server: Server, background: Callable[[], Awaitable[object]] | None) -> int:
    """Run ``server`` until a signal stops it (0); if it cannot listen (the port is in
    use, the address does not resolve), say so in one line (1)."""
    try:
        trio.run(run_server, server, background)
    except (OSError, BaseExceptionGroup) as error:
        cause = _os_error(error)
        if cause is None:
            raise
        reason = cause.strerror or str(cause)
        where = f"{server.host}:{server.requested_port}"
        print(f"duplex: cannot listen on {where}: {reason}", file=sys.stderr)
        return 1
    return 0


def _os_error(error: BaseException) -> OSError | None:
    """The ``OSError`` that ``error`` is, or is all of (through exception groups)."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error if isinstance(error, OSError) else None


def run_workers(
    spec: str,
    host: str,
    port: int,
    workers: int,
    worker_arguments: Sequence[str] = (),
    scheme: str = "http",
) -> int:
    """Serve ``spec`` from ``workers`` processes (each given ``worker_arguments`` as
    well); the exit status."""
    load_handler(spec)  # fail here, once, with a clear message, not in every worker

    class Announce:
        def started(self, bound: int) -> None:
            origin = f"{scheme}://{host}:{bound}"
            print(f"duplex: serving on {origin}/ with {workers} workers", flush=True)

    try:
        trio.run(
            partial(
                serve_workers,
                spec,
                host,
                port,
                workers=workers,
                worker_arguments=worker_arguments,
                task_status=Announce(),
            )
        )
    except WorkersFailed as error:
        print(f"duplex: {error}", file=sys.stderr)
        return 1
    return 0
