"""Coverage-guided fuzzing of the server's parse boundary with atheris (libFuzzer).

    python tests/fuzz_server.py -runs=100000 [corpus_dir]

A duplex server runs in a thread, instrumented along with h11. Each input goes to it on
a fresh connection, followed by our EOF; the rules checked are those of
tests/test_reliability_fuzz.py: every status is documented, a refusal is the last
answer, and the server logs no error. A broken rule is a crash, and libFuzzer saves the
input. tests/test_reliability_fuzz.py runs this briefly when atheris is installed.
"""

from __future__ import annotations

import logging
import queue
import re
import socket
import sys
import threading
from functools import partial

import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]
import trio

with atheris.instrument_imports(include=["duplex", "h11"]):
    import duplex

DOCUMENTED = {200, 400, 413, 414, 431, 501, 505}
STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")
LIMITS = duplex.Limits(
    header_timeout=2, keep_alive_timeout=2, read_timeout=2, max_body_size=4096,
    max_header_size=2048, max_request_line=512,
)  # fmt: skip


class Errors(logging.Handler):
    """Counts the records at ERROR or above, from any logger."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def echo_target(request: duplex.Request) -> duplex.Response:
    await request.body.discard()
    return duplex.Response(200, body=request.target)


def serve_in_thread() -> int:
    """Start the server in a daemon thread with its own trio run; its port."""
    ports: queue.Queue[int] = queue.Queue()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server: duplex.Server = await nursery.start(
                partial(duplex.serve, echo_target, "127.0.0.1", 0, limits=LIMITS)
            )
            ports.put(server.port)

    threading.Thread(target=trio.run, args=(main,), daemon=True).start()
    return ports.get(timeout=10)


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` and our EOF on a fresh connection; everything read until the close."""
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed before the end
        try:
            while more := sock.recv(65536):
                received += more
        except ConnectionResetError:
            pass
    return bytes(received)


def main() -> None:
    errors = Errors()
    logging.getLogger().addHandler(errors)
    port = serve_in_thread()

    def test_one_input(data: bytes) -> None:
        received = exchange(port, data)
        # Interim 100 Continue answers aside, the final statuses.
        statuses = [int(status) for status in STATUS_LINE.findall(received) if status != b"100"]
        if not set(statuses) <= DOCUMENTED:
            raise AssertionError(f"undocumented status in {statuses}")
        if any(status >= 400 for status in statuses[:-1]):
            raise AssertionError(f"an answer after a refusal: {statuses}")
        if errors.records:
            raise AssertionError(f"the server logged an error: {errors.records[0].getMessage()}")

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
