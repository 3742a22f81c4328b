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
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Sequence
from functools import partial
from typing import Literal, cast

import trio

from ._errors import Timeout
from ._stream import Stream
from ._version import __version__
from ._workers import WorkersFailed, serve_workers
from .demo import Demo
from .http import Client, Handler, Lifespan, Request, Response, Server, Streamable
from .http._server import serve_process, show_access_log

__all__ = ["echo", "main"]

log = logging.getLogger("duplex")


async def echo(request: Request) -> Response:
    """Stream every request body back as it arrives (the bi-directional style). The
    echo is of this one request, so no cache may keep it (``no-store``)."""

    async def copy(stream: Stream) -> None:
        while chunk := await stream.readpartial(65536):
            await stream.write(chunk)

    headers = {"content-type": "application/octet-stream", "cache-control": "no-store"}
    return Response(200, headers, Streamable(copy))


def load_handler(spec: str, what: str = "handler") -> Handler:
    """Import ``module:attribute`` and return the callable it names (``what``: the
    handler, or the lifespan). Raises ``SystemExit`` with a one-line message if it
    cannot."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"duplex: expected module:{what}, got {spec!r}")
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
            try:
                response = await client.request(method, url, headers=pairs, body=body)
            except ValueError as error:
                # The request as given cannot be sent: a URL without a host or with a
                # bad port, a header value with a line break.
                print(f"duplex: cannot send {method} {url}: {error}", file=sys.stderr)
                return 2
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
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log each exchange to standard error in the common log format",
    )


def _worker_arguments(args: argparse.Namespace) -> list[str]:
    """The options each worker of ``--workers`` gets as given (TLS, HTTP/2, the
    lifespan, the access log), for its command line."""
    given = []
    if args.certfile:
        given += ["--certfile", args.certfile]
    if args.keyfile:
        given += ["--keyfile", args.keyfile]
    if not args.http2:
        given.append("--no-http2")
    if args.lifespan:
        given += ["--lifespan", args.lifespan]
    if args.access_log:
        given.append("--access-log")
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
        "--lifespan",
        metavar="MODULE:FN",
        help="FN() returns an async context manager, entered before serving and exited "
        "after the shutdown (in each worker)",
    )
    serve_parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="serve from N processes on one port; SIGHUP restarts them one at a time, "
        "losing no connection",
    )
    # A worker of `--workers`: serves the listening socket its supervisor passes as FD.
    serve_parser.add_argument("--worker", type=int, metavar="FD", help=argparse.SUPPRESS)
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
    options = {"ssl_context": context, "http2": args.http2, "access_log": args.access_log}
    if args.access_log:
        show_access_log()
    if args.command == "demo":
        demo = Demo()
        return serve_process(Server(demo.handler, args.host, args.port, **options), demo.run)
    if args.command == "serve" and args.workers is not None:
        if args.workers < 1:
            serve_parser.error("--workers takes a number from 1 up")
        if args.lifespan:
            load_handler(args.lifespan, "lifespan")  # here, once, rather than in each worker
        scheme = "http" if context is None else "https"
        return run_workers(
            args.handler, args.host, args.port, args.workers, _worker_arguments(args), scheme
        )
    if args.command == "echo":
        return serve_process(Server(echo, args.host, args.port, **options))
    handler = load_handler(args.handler)
    lifespan = cast(Lifespan, load_handler(args.lifespan, "lifespan")) if args.lifespan else None
    inherited = None if args.worker is None else socket.socket(fileno=args.worker)
    server = Server(handler, args.host, args.port, sock=inherited, lifespan=lifespan, **options)
    if inherited is not None:
        # The supervisor stops its workers with SIGTERM, and retires one with SIGHUP in
        # a rolling restart; the SIGINT of a Ctrl-C reaches the whole process group,
        # and would count as a second signal (stop now).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return serve_process(server, signals=(signal.SIGTERM, signal.SIGHUP), supervised=True)
    return serve_process(server)


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
            # An IPv6 address is bracketed in a URL.
            origin = f"{scheme}://{f'[{host}]' if ':' in host else host}:{bound}"
            count = f"{workers} worker{'s' if workers > 1 else ''}"
            print(f"duplex: serving on {origin}/ with {count}", flush=True)

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
