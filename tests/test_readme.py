"""The README's Python snippets, taken from README.md itself: the echo server runs as a
file and says where it serves, the client snippet talks to it and prints what the
README says it prints, and every other snippet at least compiles.

The one change a test makes to a snippet is the port: 0 (any free one) for the server,
the port it then serves on for the client, so that a running server of anyone's cannot
be in the way.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import trio

import duplex
from _redis_support import ROOT
from test_run import running

TIMEOUT = 30.0
SNIPPET = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def snippets() -> list[str]:
    return SNIPPET.findall((ROOT / "README.md").read_text())


def the_snippet(containing: str) -> str:
    (found,) = [snippet for snippet in snippets() if containing in snippet]
    return found


def test_every_snippet_compiles() -> None:
    assert len(snippets()) >= 4
    for index, snippet in enumerate(snippets()):
        compile(snippet, f"README.md snippet {index + 1}", "exec")


async def test_the_echo_server_snippet_serves_the_client_snippet(tmp_path: Path) -> None:
    server = the_snippet("duplex.run(echo)")
    (tmp_path / "echo.py").write_text(
        server.replace("duplex.run(echo)", "duplex.run(echo, port=0)")
    )
    client = the_snippet("duplex.Client()")
    expected = [comment for comment in re.findall(r"# (b'.*')$", client, re.M)]
    assert expected == ["b'Hello, '", "b'World!'"]
    with trio.fail_after(TIMEOUT):
        async with running(["echo.py"], tmp_path) as echo:
            (tmp_path / "client.py").write_text(
                client.replace("127.0.0.1:8000", f"127.0.0.1:{echo.port}")
            )
            result = await trio.run_process(
                [sys.executable, "client.py"],
                cwd=tmp_path,
                env=dict(os.environ),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            echo.signal(signal.SIGINT)
            assert await echo.wait() == 0
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines() == expected
    assert echo.stdout.text == f"duplex: serving on http://127.0.0.1:{echo.port}/\n"
    assert "Traceback" not in echo.stderr.text


async def test_the_channel_snippet_runs_as_a_file_and_broadcasts(tmp_path: Path) -> None:
    """Pasted into a file of its own, it imports what it uses and serves."""
    snippet = the_snippet("duplex.ChannelGroup(")
    assert "duplex.run(chat)" in snippet
    (tmp_path / "chat.py").write_text(
        snippet.replace("duplex.run(chat)", "duplex.run(chat, port=0)")
    )
    with trio.fail_after(TIMEOUT):
        async with running(["chat.py"], tmp_path) as chat:
            async with duplex.Client() as client:
                url = f"ws://127.0.0.1:{chat.port}/"
                async with client.websocket(url) as websocket:
                    await websocket.send("hello, room")
                    assert await websocket.receive() == "hello, room"
                await chat.stdout.wait_for(r"^left: client$")
            chat.signal(signal.SIGINT)
            assert await chat.wait() == 0
    assert "Traceback" not in chat.stderr.text
