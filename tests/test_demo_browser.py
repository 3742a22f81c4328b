"""``duplex demo`` in headless Chromium: every transport as a browser uses it, the page
at a phone's width, and nothing it asks for missing.

Playwright's sync API runs in a worker thread; the demo app runs in this trio process.
"""

from __future__ import annotations

import os
import ssl
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
    from playwright.sync_api import ConsoleMessage, Page, Response, sync_playwright


async def on_demo_page(
    script: Callable[[Page], T],
    seen: list[duplex.Request] | None = None,
    *,
    demo: Demo | None = None,
    tls: bool = False,
    width: int = 1280,
    failures: list[str] | None = None,
) -> T:
    """Serve the demo (over TLS with ALPN h2 if ``tls``), open its page in Chromium at
    ``width`` CSS pixels, and run ``script`` on it; note in ``seen`` every request the
    demo gets, and in ``failures`` every response of 400 or more, request that failed
    and error on the console, from the page's first request on."""
    demo = demo or Demo(tick_interval=0.2)
    context: ssl.SSLContext | None = None
    if tls:
        import trustme

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        trustme.CA().issue_cert("127.0.0.1").configure_cert(context)

    async def handler(request: duplex.Request) -> duplex.Response:
        if seen is not None:
            seen.append(request)
        return await demo.handler(request)

    async with trio.open_nursery() as nursery:
        server: duplex.Server = await nursery.start(
            lambda task_status: duplex.serve(
                handler, "127.0.0.1", 0, ssl_context=context, task_status=task_status
            )
        )
        nursery.start_soon(demo.run)

        def browse() -> T:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
                )
                try:
                    page = browser.new_context(
                        ignore_https_errors=tls, viewport={"width": width, "height": 900}
                    ).new_page()
                    page.set_default_timeout(15_000)
                    if failures is not None:
                        watch(page, failures)
                    page.goto(f"{'https' if tls else 'http'}://127.0.0.1:{server.port}/")
                    return script(page)
                finally:
                    browser.close()

        result = await trio.to_thread.run_sync(browse, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()
    return result


def watch(page: Page, failures: list[str]) -> None:
    def check(response: Response) -> None:
        if response.status >= 400:
            failures.append(f"{response.status} {response.url}")

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            failures.append(f"console: {message.text}")

    page.on("response", check)
    page.on(
        "requestfailed",
        lambda request: failures.append(f"failed: {request.url} ({request.failure})"),
    )
    page.on("console", console)


def send(page: Page, form: str, text: str) -> None:
    page.fill(f"#{form}-input", text)
    page.click(f"#{form}-form button")


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
        send(page, "ws", "hello over websocket")
        page.wait_for_function("window.wsMessages.length >= 1")
        messages: list[str] = page.evaluate("window.wsMessages")
        return messages

    with trio.fail_after(30):
        assert await on_demo_page(script) == ["hello over websocket"]


async def test_the_long_poll_chat_delivers_a_message() -> None:
    def script(page: Page) -> list[str]:
        page.wait_for_function(
            "document.getElementById('poll-status').textContent.startsWith('waiting')"
        )
        send(page, "poll", "hello over long-poll")
        page.wait_for_function("window.pollMessages.length >= 1")
        messages: list[str] = page.evaluate("window.pollMessages")
        return messages

    with trio.fail_after(30):
        assert await on_demo_page(script) == ["hello over long-poll"]


async def test_the_chats_are_one_room_and_a_new_tab_sees_its_history_on_both() -> None:
    """Lines said over either transport reach both logs; a second tab opened after them
    shows the same lines, in the same order, in its WebSocket and its long-poll log."""

    def script(page: Page) -> dict[str, list[str]]:
        page.wait_for_function("document.getElementById('ws-status').textContent === 'connected'")
        send(page, "ws", "one, over the websocket")
        page.wait_for_function("window.pollMessages.length >= 1")
        send(page, "poll", "two, over long-polling")
        page.wait_for_function("window.wsMessages.length >= 2 && window.pollMessages.length >= 2")
        other = page.context.new_page()
        other.goto(page.url)
        other.wait_for_function("window.wsMessages.length >= 2 && window.pollMessages.length >= 2")
        logs: dict[str, list[str]] = {
            "ws": page.evaluate("window.wsMessages"),
            "poll": page.evaluate("window.pollMessages"),
            "new ws": other.evaluate("window.wsMessages"),
            "new poll": other.evaluate("window.pollMessages"),
            "new ws shown": other.locator("#ws-log li").all_inner_texts(),
        }
        return logs

    with trio.fail_after(60):
        logs = await on_demo_page(script)
    lines = ["one, over the websocket", "two, over long-polling"]
    assert logs == {name: lines for name in ("ws", "poll", "new ws", "new poll", "new ws shown")}


async def test_a_blank_line_is_not_sent_from_any_chat_form() -> None:
    demo = Demo(tick_interval=0.2)

    def script(page: Page) -> list[str]:
        page.wait_for_function("document.getElementById('ws-status').textContent === 'connected'")
        send(page, "ws", "   ")
        send(page, "poll", " \t ")
        # The form refuses it, and a line sent after it is the first one said.
        send(page, "ws", "after the blanks")
        page.wait_for_function("window.pollMessages.length >= 1")
        messages: list[str] = page.evaluate("window.pollMessages")
        return messages

    with trio.fail_after(30):
        assert await on_demo_page(script, demo=demo) == ["after the blanks"]
    assert [message["text"] for message in demo.messages] == ["after the blanks"]


async def test_the_chunked_stream_shows_each_part_then_the_hooks_last_word() -> None:
    def script(page: Page) -> str:
        page.click("#stream-start")
        page.wait_for_function("window.streamDone !== undefined")
        done: str = page.evaluate("window.streamDone")
        return done

    with trio.fail_after(30):
        assert await on_demo_page(script) == (
            "part 1 of 3\npart 2 of 3\npart 3 of 3\nthe end (sent by the before_close hook)\n"
        )


def echo_round_trip(page: Page) -> dict[str, object]:
    send(page, "echo", "ping 1")
    page.wait_for_function("window.echoes.length >= 1")
    # The second line goes out on the connection the first one opened.
    send(page, "echo", "ping 2")
    page.wait_for_function("window.echoes.length >= 2")
    result: dict[str, object] = page.evaluate(
        "({echoes: window.echoes, transport: window.echoTransport,"
        " shown: [...document.querySelectorAll('#echo-log li')].map((li) => li.textContent)})"
    )
    return result


async def test_the_echo_panel_round_trips_over_a_websocket_on_plain_http() -> None:
    seen: list[duplex.Request] = []
    with trio.fail_after(30):
        result = await on_demo_page(echo_round_trip, seen)
    assert result["echoes"] == ["ping 1", "ping 2"]
    assert result["transport"] == "websocket"
    shown = result["shown"]
    assert isinstance(shown, list) and shown[0] == "→ ping 1" and shown[1].startswith("← ping 1")
    assert [request.http_version for request in seen if request.path == "/echo"] == ["1.1"]


async def test_the_echo_panel_round_trips_over_http2_with_a_streaming_fetch() -> None:
    seen: list[duplex.Request] = []
    failures: list[str] = []

    def script(page: Page) -> dict[str, object]:
        # Closing the browser fails the requests still open: what came before counts.
        return {**echo_round_trip(page), "failures": list(failures)}

    with trio.fail_after(60):
        result = await on_demo_page(script, seen, tls=True, failures=failures)
    assert result["failures"] == []
    assert result["echoes"] == ["ping 1", "ping 2"]
    assert result["transport"] == "http2"
    halves = [(request.path, request.http_version) for request in seen]
    assert ("/echo/up", "2") in halves
    assert ("/echo/down", "2") in halves


async def test_the_live_chart_draws_the_servers_counts() -> None:
    def script(page: Page) -> dict[str, object]:
        page.wait_for_function("document.getElementById('ws-status').textContent === 'connected'")
        send(page, "ws", "counted")
        page.wait_for_function("window.stats.some((sample) => sample.rate > 0)")
        # The line said ends the long-poll, which asks again a moment later (later than
        # the next sample, on a loaded machine): wait for a sample that counts it again.
        page.wait_for_function(
            """() => window.stats.length >= 3 && ((now) =>
                now.websocket >= 1 && now.sse >= 2 && now.http >= 1
            )(window.stats.at(-1).connections)"""
        )
        result: dict[str, object] = page.evaluate(
            """() => ({
                last: window.stats.at(-1),
                points: ["websocket", "sse", "http", "rate"].map((kind) =>
                    document.getElementById(`line-${kind}`).getAttribute("points")
                        .split(" ").filter(Boolean).length),
                websocket: document.getElementById("now-websocket").textContent,
            })"""
        )
        return result

    with trio.fail_after(30):
        result = await on_demo_page(script)
    last = result["last"]
    assert isinstance(last, dict)
    # The page's own: the chat's WebSocket; /events and /live; the long-poll waiting.
    assert last["connections"]["websocket"] >= 1
    assert last["connections"]["sse"] >= 2
    assert last["connections"]["http"] >= 1
    points = result["points"]
    assert isinstance(points, list) and all(count >= 3 for count in points)
    assert result["websocket"] == str(last["connections"]["websocket"])


async def test_at_a_phones_width_nothing_overflows_and_the_cards_keep_a_margin() -> None:
    def script(page: Page) -> dict[str, object]:
        page.wait_for_function("window.stats.length >= 1")
        page.click("#stream-start")
        page.wait_for_function("window.streamDone !== undefined")
        result: dict[str, object] = page.evaluate(
            """() => ({
                scrollWidth: document.documentElement.scrollWidth,
                clientWidth: document.documentElement.clientWidth,
                edges: [...document.querySelectorAll("section")].map((section) => {
                    const box = section.getBoundingClientRect();
                    return [box.left, box.right];
                }),
                inputs: [...document.querySelectorAll("input, button")].map(
                    (element) => element.getBoundingClientRect().right),
            })"""
        )
        return result

    with trio.fail_after(30):
        result = await on_demo_page(script, width=420)
    assert result["clientWidth"] == 420
    assert result["scrollWidth"] == 420
    edges = result["edges"]
    assert isinstance(edges, list) and len(edges) == 6
    assert all(left >= 8 and right <= 420 - 8 for left, right in edges)
    inputs = result["inputs"]
    assert isinstance(inputs, list) and all(right <= 420 - 8 for right in inputs)


async def test_nothing_the_page_asks_for_fails_or_is_missing() -> None:
    failures: list[str] = []

    def script(page: Page) -> list[str]:
        page.wait_for_function("document.getElementById('ws-status').textContent === 'connected'")
        send(page, "ws", "hi")
        send(page, "echo", "hi")
        page.click("#stream-start")
        page.wait_for_function(
            "window.streamDone !== undefined && window.echoes.length >= 1"
            " && window.pollMessages.length >= 1 && window.stats.length >= 2"
        )
        icon = page.request.get(page.url + "favicon.ico")
        if not icon.ok or icon.headers["content-type"] != "image/svg+xml":
            failures.append(f"favicon: {icon.status} {icon.headers}")
        # Closing the browser fails the requests still open: what came before counts.
        return list(failures)

    with trio.fail_after(60):
        assert await on_demo_page(script, failures=failures) == []
