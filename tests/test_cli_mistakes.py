"""The command line's answer to a user's mistake: one clear line on standard error and a
non-zero exit, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

DUPLEX = [sys.executable, "-m", "duplex"]


def duplex(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DUPLEX, *arguments], capture_output=True, text=True, timeout=30, check=False
    )


def one_clear_line(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    # The reason is the last line (argparse puts its usage before it).
    assert text in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("command", ["echo", "demo", "serve duplex._cli:echo"])
def test_a_port_in_use_is_one_line(command: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = duplex(*command.split(), "--port", port)
    one_clear_line(result, f"cannot listen on 127.0.0.1:{port}")


def test_an_address_that_does_not_resolve_is_one_line() -> None:
    result = duplex("echo", "--host", "no-such-host.invalid", "--port", "0")
    one_clear_line(result, "cannot listen on no-such-host.invalid:0")


def test_a_port_out_of_range_is_refused_not_replaced() -> None:
    one_clear_line(duplex("echo", "--port", "99999"), "a port is from 0 to 65535")


def test_a_url_without_its_scheme_is_one_line() -> None:
    result = duplex("request", "GET", "127.0.0.1:8140/")
    one_clear_line(result, "the URL needs its scheme: http://127.0.0.1:8140/")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://[::1", "Invalid IPv6 URL"),
        ("http://127.0.0.1:abc/", "Port could not be cast to integer value as 'abc'"),
        ("http://127.0.0.1:99999/", "Port out of range 0-65535"),
        ("http:///path", "no host in URL 'http:///path'"),
    ],
)
def test_a_url_that_cannot_be_requested_is_one_line(url: str, reason: str) -> None:
    result = duplex("request", "GET", url)
    one_clear_line(result, f"duplex: cannot send GET {url}: {reason}")


def test_a_header_value_with_a_line_break_is_one_line() -> None:
    result = duplex("request", "GET", "http://127.0.0.1:1/", "-H", "X-Note: a\nb")
    one_clear_line(result, "duplex: cannot send GET http://127.0.0.1:1/: header value")


def test_no_workers_is_refused_by_the_serve_command() -> None:
    result = duplex("serve", "duplex._cli:echo", "--workers", "0")
    one_clear_line(result, "duplex serve: error: --workers takes a number from 1 up")
    assert result.stderr.startswith("usage: duplex serve ")


def test_an_unknown_log_level_is_refused_before_or_after_the_command() -> None:
    one_clear_line(duplex("--log-level", "nonsense", "echo"), "invalid choice: 'nonsense'")
    one_clear_line(duplex("echo", "--log-level", "nonsense"), "invalid choice: 'nonsense'")


def test_version_and_help_name_every_command_in_plain_text() -> None:
    version = duplex("--version")
    assert version.returncode == 0 and version.stdout.startswith("duplex ")
    usage = duplex("--help")
    assert usage.returncode == 0
    for command in ("demo", "echo", "serve", "request"):
        assert command in usage.stdout
    assert "``" not in usage.stdout
