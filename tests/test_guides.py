"""Every runnable example in guides/ runs, exits cleanly and prints what its guide shows.

An example is a ``guides/*.py`` file with an ``if __name__ == "__main__":`` block (other
files there are modules the examples import). To add one, drop the file in guides/ and
say here what its output must contain.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDES = ROOT / "guides"
TIMEOUT = 60.0

EXPECTED_OUTPUT: dict[str, tuple[str, ...]] = {
    "streams_echo.py": ("Hello, World!",),
    "echo_server.py": ("echo_independent: Hello, World!", "echo_streamable: Hello, World!"),
    "echo_client.py": (
        "reference client received: Hello, World!",
        "sent 'one', echoed 'one'\nsent 'two', echoed 'two'\nsent 'three', echoed 'three'",
    ),
    "channels.py": (
        "http: ['3 (http)', '2 (http)', '1 (http)']",
        "sse: ['3 (sse)', '2 (sse)', '1 (sse)']",
        "websocket: ['3 (websocket)', '2 (websocket)', '1 (websocket)']",
    ),
    "lifecycle.py": (
        "chunky_monkey: 200 chunked\nchunky 0\nchunky 1\nchunky 2\nmonkey!",
        "shouting: 200 chunked\nMONKEY\nCHUNKY",
    ),
    "long_polling.py": (
        "broadcast answered 2 waiting clients",
        "first client (since 0.0) got ['old news', 'breaking news']",
        "second client (since 1.0) got ['breaking news']",
    ),
    "sse.py": tuple(f"id {n}: update update {n}" for n in range(1, 7)),
    "websocket.py": (
        "on_open: subprotocol chat",
        "subprotocol: chat",
        "sent 'hello', echoed 'hello'",
        "sent b'\\x00\\x01 binary', echoed b'\\x00\\x01 binary'",
        "refused: 400 none of the offered WebSocket subprotocols (mqtt) is spoken here;"
        " supported: graphql-transport-ws, chat",
        "compressed: True, 13000 characters echoed",
        "too big: closed with 1009",
        "on_close: client 4000 'done'",
        "on_close: error 1009",
    ),
    "http2.py": (
        "HTTP/2: sent 'one', echoed 'one'\nHTTP/2: sent 'two', echoed 'two'",
        "20 answers, e.g. '/item/0 over HTTP/2'",
        "connections used: 1",
    ),
    "testing.py": (
        "GET /hello: 200 hello, world",
        "full duplex: each chunk echoed before the next was written",
        "sse: ['tick 0', 'tick 1', 'tick 2']",
        "property: the echo held for every chunking hypothesis tried",
    ),
    # Which worker each subscriber lands on is the kernel's choice: only the delivery
    # is certain.
    "scaling.py": ("said to one worker: sent to 2 workers", "received {'hello, all'}"),
}
"""Example file name → texts its standard output must contain."""


def examples() -> list[Path]:
    return sorted(
        path for path in GUIDES.glob("*.py") if 'if __name__ == "__main__":' in path.read_text()
    )


@pytest.mark.parametrize("example", examples(), ids=lambda path: path.name)
def test_example_runs_and_prints_what_its_guide_shows(example: Path) -> None:
    expected = EXPECTED_OUTPUT.get(example.name)
    assert expected is not None, f"say in EXPECTED_OUTPUT what {example.name} must print"
    if example.name == "scaling.py" and shutil.which("redis-server") is None:
        pytest.skip("the scaling example needs redis-server")
    result = subprocess.run(
        [sys.executable, str(example.relative_to(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    for text in expected:
        assert text in result.stdout


def test_every_expected_output_belongs_to_an_example() -> None:
    assert set(EXPECTED_OUTPUT) == {path.name for path in examples()}
