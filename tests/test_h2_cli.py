"""The command line over HTTP/2: ``duplex echo``/``serve`` with ``--certfile`` serve
TLS with ALPN ``h2``, and h2c with prior knowledge always; curl and ``duplex request
--http2`` stream through them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio
import trustme

DUPLEX = [sys.executable, "-m", "duplex"]
DATA = bytes(range(256)) * (4 * 4096)  # 4 MiB

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A CA file, and a certificate and key for 127.0.0.1 and localhost that it signs."""
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    cafile, certfile, keyfile = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(cafile))
    issued.cert_chain_pems[0].write_to_path(str(certfile))
    issued.private_key_pem.write_to_path(str(keyfile))
    return cafile, certfile, keyfile


@asynccontextmanager
async def duplex_process(*arguments: str) -> AsyncIterator[str]:
    """``duplex <arguments> --port 0`` in a subprocess; the origin it says it serves."""
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(trio.run_process, [*DUPLEX, *arguments, "--port", "0"], stdout=subprocess.PIPE)
        )
        assert process.stdout is not None
        async with process.stdout:
            try:
                output = b""
                while b"\n" not in output:
                    chunk = await process.stdout.receive_some(4096)
                    assert chunk, f"duplex exited before serving: {output!r}"
                    output += chunk
                line = output.decode().splitlines()[0]
                assert "serving on " in line, line
                yield line.split("serving on ", 1)[1].split()[0].rstrip("/")
            finally:
                process.send_signal(signal.SIGINT)


async def curl(*arguments: str) -> bytes:
    result = await trio.run_process(
        ["curl", "-sS", "-w", "%{http_version}", "-o", "-", *arguments], capture_stdout=True
    )
    return bytes(result.stdout)


@needs_curl
async def test_duplex_echo_with_a_certificate_streams_4_mib_back_over_h2(
    certificate: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    cafile, certfile, keyfile = certificate
    upload = tmp_path / "up.bin"
    upload.write_bytes(DATA)
    with trio.fail_after(60):
        async with duplex_process(
            "echo", "--certfile", str(certfile), "--keyfile", str(keyfile)
        ) as origin:
            assert origin.startswith("https://127.0.0.1:")
            port = origin.rsplit(":", 1)[1]
            output = await curl(
                "--http2",
                "--cacert",
                str(cafile),
                "--data-binary",
                f"@{upload}",
                f"https://localhost:{port}/",
            )
    assert output[:-1] == DATA
    assert output[-1:] == b"2"


@needs_curl
async def test_duplex_echo_serves_h2c_and_http1_on_one_port(tmp_path: Path) -> None:
    upload = tmp_path / "up.bin"
    upload.write_bytes(DATA)
    with trio.fail_after(60):
        async with duplex_process("echo") as origin:
            h2c = await curl("--http2-prior-knowledge", "--data-binary", f"@{upload}", origin)
            http1 = await curl("--http1.1", "--data-binary", f"@{upload}", origin)
    assert h2c == DATA + b"2"
    assert http1 == DATA + b"1.1"


async def test_duplex_request_http2_streams_through_duplex_echo_over_tls(
    certificate: tuple[Path, Path, Path],
) -> None:
    cafile, certfile, keyfile = certificate
    environment = {**os.environ, "SSL_CERT_FILE": str(cafile)}
    with trio.fail_after(60):
        async with duplex_process(
            "echo", "--certfile", str(certfile), "--keyfile", str(keyfile)
        ) as origin:
            port = origin.rsplit(":", 1)[1]
            result = await trio.run_process(
                [*DUPLEX, "request", "--http2", "POST", f"https://localhost:{port}/"],
                stdin=DATA,
                capture_stdout=True,
                env=environment,
            )
    assert result.stdout == DATA


@needs_curl
async def test_duplex_serve_with_workers_and_a_certificate_speaks_h2(
    certificate: tuple[Path, Path, Path],
) -> None:
    cafile, certfile, _ = certificate  # the key comes with --keyfile; here: in certfile
    combined = certfile.parent / "combined.pem"
    combined.write_bytes(certfile.read_bytes() + (certfile.parent / "key.pem").read_bytes())
    with trio.fail_after(60):
        async with duplex_process(
            "serve", "duplex._cli:echo", "--workers", "2", "--certfile", str(combined)
        ) as origin:
            port = origin.rsplit(":", 1)[1]
            output = await curl(
                "--http2", "--cacert", str(cafile), "--data", "hello", f"https://localhost:{port}/"
            )
    assert output == b"hello2"


async def test_a_certificate_that_cannot_be_loaded_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with trio.fail_after(30):
        result = await trio.run_process(
            [*DUPLEX, "echo", "--port", "0", "--certfile", str(missing)],
            capture_stderr=True,
            check=False,
        )
    assert result.returncode != 0
    assert b"cannot load the certificate" in result.stderr
