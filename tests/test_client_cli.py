"""``duplex request``: standard input streams up while the response streams down; the
exit status says how it went (0, 1 for an HTTP error status, 2 when the request failed)."""

from __future__ import annotations

import random
import socket
import subprocess

import trio

import duplex
from _client_support import DUPLEX, SUBPROCESS_TIMEOUT, echo_process, start_duplex, url


async def request(
    method: str, address: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [*DUPLEX, "request", method, address],
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


async def test_post_streams_stdin_through_an_echo_server_to_stdout() -> None:
    data = random.Random(4).randbytes(3 << 20)
    with trio.fail_after(SUBPROCESS_TIMEOUT):
        async with echo_process() as address:
            result = await request("POST", address, data)
        assert result.returncode == 0, result.stderr
        assert result.stdout == data


async def test_an_http_error_status_exits_1_with_a_message(nursery: trio.Nursery) -> None:
    async def not_found(request: duplex.Request) -> duplex.Response:
        return duplex.Response(404, body=b"no such thing\n")

    with trio.fail_after(SUBPROCESS_TIMEOUT):
        server = await start_duplex(nursery, not_found)
        result = await request("GET", url(server, "/missing"))
        assert result.returncode == 1
        assert result.stdout == b"no such thing\n"
        assert b"404" in result.stderr


async def test_an_unreachable_server_exits_2_with_a_message() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = probe.getsockname()[1]
        with trio.fail_after(SUBPROCESS_TIMEOUT):
            result = await request("GET", f"http://127.0.0.1:{port}/")
        assert result.returncode == 2
        assert b"failed" in result.stderr
