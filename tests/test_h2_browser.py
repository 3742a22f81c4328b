"""HTTP/2 in headless Chromium, over TLS with a trustme certificate: a ``fetch``
streaming upload (``duplex: "half"``, which browsers send only over HTTP/2) reaching the
handler chunk by chunk, ``EventSource`` over HTTP/2, and a WebSocket over HTTP/2
(RFC 8441 extended CONNECT).

Playwright's sync API runs in a worker thread; the server runs in this trio process.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Callable
from typing import TypeVar

import pytest
import trio

import duplex
from _websocket_support import in_chromium as shared_in_chromium
from test_demo_browser import CHROMIUM

T = TypeVar("T")

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="no /usr/bin/chromium")

if os.path.exists(CHROMIUM):
    from playwright.sync_api import Page

PAGE = b"<!doctype html><title>duplex over HTTP/2</title><p>ready</p>"


class App:
    """The page, and what the handler saw: each request's HTTP version by path, and the
    chunks of the streaming upload as they arrived."""

    def __init__(self) -> None:
        self.versions: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.chunk_arrived = trio.Event()

    async def __call__(self, request: duplex.Request) -> duplex.Response:
        self.versions[request.path] = request.http_version
        if request.path == "/upload":
            async for chunk in request.body:
                self.chunks.append(chunk)
                self.chunk_arrived.set()
            return duplex.Response(200, body=json.dumps([c.decode() for c in self.chunks]))
        if request.path == "/seen":
            # How many upload chunks the handler has read so far.
            return duplex.Response(200, body=str(len(self.chunks)))
        if request.path == "/events":

            async def greet(channel: duplex.Channel) -> None:
                for n in range(3):
                    await channel.send(f"event {n}")

            return duplex.channel(request, on_open=greet)
        if request.path == "/ws":

            async def echo(channel: duplex.Channel, message: str | bytes) -> None:
                await channel.send(f"echo: {message!s}")

            return duplex.channel(request, on_receive=echo)
        return duplex.Response(200, {"content-type": "text/html"}, PAGE)


async def in_chromium(script: Callable[[Page], T], app: duplex.Handler) -> T:
    """Serve ``app`` over TLS (ALPN h2), open its page in Chromium and run ``script``."""
    import trustme

    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return await shared_in_chromium(script, app, context)


async def test_a_streaming_upload_reaches_the_handler_chunk_by_chunk() -> None:
    """The page sends chunk one, waits until the handler has read it (asking ``/seen``
    on the same connection), and only then sends chunk two and ends the upload."""

    def script(page: Page) -> dict[str, object]:
        result: dict[str, object] = page.evaluate(
            """async () => {
                let push;
                const body = new ReadableStream({start(controller) { push = controller; }});
                const encoder = new TextEncoder();
                const upload = fetch('/upload', {method: 'POST', body, duplex: 'half'});
                push.enqueue(encoder.encode('one'));
                let seen = '0';
                for (let i = 0; i < 200 && seen === '0'; i++) {
                    seen = await (await fetch('/seen', {cache: 'no-store'})).text();
                    if (seen === '0') await new Promise(r => setTimeout(r, 25));
                }
                push.enqueue(encoder.encode('two'));
                push.close();
                const response = await upload;
                return {seenBeforeEnd: seen, chunks: await response.json()};
            }"""
        )
        return result

    app = App()
    with trio.fail_after(60):
        result = await in_chromium(script, app)
    assert result["seenBeforeEnd"] == "1"
    assert result["chunks"] == ["one", "two"]
    assert app.versions["/upload"] == "2"


async def test_event_source_over_http2() -> None:
    def script(page: Page) -> list[str]:
        events: list[str] = page.evaluate(
            """() => new Promise((resolve, reject) => {
                const seen = [];
                const source = new EventSource('/events');
                source.onmessage = (event) => {
                    seen.push(event.data);
                    if (seen.length === 3) { source.close(); resolve(seen); }
                };
                source.onerror = () => { if (seen.length < 3) reject('error'); };
            })"""
        )
        return events

    app = App()
    with trio.fail_after(60):
        assert await in_chromium(script, app) == ["event 0", "event 1", "event 2"]
    assert app.versions["/events"] == "2"


async def test_a_websocket_over_http2() -> None:
    def script(page: Page) -> str:
        # A request first, so that the page's HTTP/2 connection (and its SETTINGS,
        # which offer extended CONNECT) is there for the WebSocket to share.
        reply: str = page.evaluate(
            """async () => {
                await (await fetch('/seen', {cache: 'no-store'})).text();
                return await new Promise((resolve, reject) => {
                    const socket = new WebSocket(`wss://${location.host}/ws`);
                    socket.onopen = () => socket.send('hello');
                    socket.onmessage = (event) => { resolve(event.data); socket.close(); };
                    socket.onerror = () => reject('websocket error');
                });
            }"""
        )
        return reply

    app = App()
    with trio.fail_after(60):
        assert await in_chromium(script, app) == "echo: hello"
    assert app.versions["/ws"] == "2"


async def test_the_demo_streaming_upload_panel_over_http2() -> None:
    """``duplex demo``'s upload panel: the server's report of a chunk reaches the page
    (over SSE) while the page is still sending the upload."""
    from duplex.demo import Demo

    demo = Demo()

    def script(page: Page) -> dict[str, object]:
        page.wait_for_function("document.getElementById('upload-start') !== null")
        page.click("#upload-start")
        page.wait_for_function("window.uploadDone !== undefined")
        result: dict[str, object] = page.evaluate(
            "({done: window.uploadDone, progress: window.uploadProgress})"
        )
        return result

    with trio.fail_after(60):
        result = await in_chromium(script, demo.handler)
    done = result["done"]
    assert isinstance(done, dict) and done["chunks"] == 5 and done["http"] == "2"
    progress = result["progress"]
    assert isinstance(progress, list) and len(progress) == 5
    assert progress[0]["sent"] < 5  # reported before the upload ended
    assert "over HTTP/2" in progress[0]["text"]
