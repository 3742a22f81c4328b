"""``duplex demo`` in headless Chromium: every transport as a browser uses it.

Playwright's sync API runs in a worker thread; the demo app runs in this trio process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import pytest
import trio

import duplex
from duplex.demo import Demo

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

T = TypeVar("T")

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="no /usr/bin/chromium")

if os.path.exists(CHROMIUM):
    from playwright.sync_api import Page, sync_playwright


async def on_demo_page(script: Callable[[Page], T], seen: list[duplex.Request] | None = None) -> T:
    """Serve the demo, open its page in Chromium, and run ``script`` on it; note in
    ``seen`` every request the demo gets."""
    demo = Demo(tick_interval=0.2)

    async def handler(request: duplex.Request) -> duplex.Response:
        if seen is not None:
            seen.append(request)
        return await demo.handler(request)

    async with trio.open_nursery() as nursery:
        server: duplex.Server = await nursery.start(duplex.serve, handler, "127.0.0.1", 0)
        nursery.start_soon(demo.run)

        def browse() -> T:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
                )
                try:
                    page = browser.new_page()
                    page.set_default_timeout(15_000)
                    page.goto(f"http://127.0.0.1:{server.port}/")
                    return script(page)
                finally:
                    browser.close()

        result = await trio.to_thread.run_sync(browse, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()
    return result


async def test_event_source_resumes_after_a_drop_with_no_gap() -> None:
    def script(page: Page) -> tuple[int, list[int]]:
        page.wait_for_function("window.sseIds.length >= 3")
        page.click("#sse-drop")
        page.wait_for_function("window.sseOpens >= 2")
        seen = page.evaluate("window.sseIds.length")
        page.wait_for_function(f"window.sseIds.length >= {seen + 3}")
        opens: int = page.evaluate("window.sseOpens")
        ids: list[int] = page.evaluate("window.sseIds")
        return opens, ids

    seen: list[duplex.Request] = []
    with trio.fail_after(30):
        opens, ids = await on_demo_page(script, seen)
    assert opens >= 2
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    resumed_from = [
        request.headers.get("last-event-id") for request in seen if request.path == "/events"
    ]
    assert resumed_from[0] is None
    assert resumed_from[1] is not None
    assert int(resumed_from[1]) in ids


async def test_a_websocket_message_sent_from_the_page_comes_back() -> None:
    def script(page: Page) -> list[str]:
        page.wait_for_function("document.getElementById('ws-status').textContent === 'connected'")
        page.fill("#ws-input", "hello over websocket")
        page.click("#ws-form button")
        page.wait_for_function("window.wsMessages.length >= 1")
        messages: list[str] = page.evaluate("window.wsMessages")
        return messages

    with trio.fail_after(30):
        assert await on_demo_page(script) == ["hello over websocket"]


async def test_the_long_poll_chat_delivers_a_message() -> None:
    def script(page: Page) -> list[str]:
        page.wait_for_function("document.getElementById('poll-status').textContent === 'waiting…'")
        page.fill("#poll-input", "hello over long-poll")
        page.click("#poll-form button")
        page.wait_for_function("window.pollMessages.length >= 1")
        messages: list[str] = page.evaluate("window.pollMessages")
        return messages

    with trio.fail_after(30):
        assert await on_demo_page(script) == ["hello over long-poll"]


async def test_the_chunked_stream_shows_chunky_then_monkey() -> None:
    def script(page: Page) -> str:
        page.click("#stream-start")
        page.wait_for_function("window.streamDone !== undefined")
        done: str = page.evaluate("window.streamDone")
        return done

    with trio.fail_after(30):
        assert await on_demo_page(script) == "chunky 0\nchunky 1\nchunky 2\nmonkey!\n"
