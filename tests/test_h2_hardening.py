"""HTTP/2 hardening: the known attacks on an HTTP/2 server, each bounded and answered
(GOAWAY or RST_STREAM), and the next client still served.

The attacker is a raw peer that writes frames by hand (hyperframe, hpack), so that it
can send what no well-behaved library would: resets by the thousand, endless
CONTINUATION frames, a header block that inflates to megabytes, floods of SETTINGS,
PING and empty DATA frames, a window that never opens, stream ids at their end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from h2.errors import ErrorCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

import duplex
from _h2_support import Peer
from _server_support import serving

# The fast I/O path and the portable one answer every attack alike.
pytestmark = pytest.mark.both_paths

CALM = ErrorCodes.ENHANCE_YOUR_CALM


async def served(port: int) -> None:
    """A new client gets its answer: the server goes on serving everyone else."""
    peer = await Peer.connect(port)
    async with peer.stream:
        await peer.send(peer.headers(1, peer.request_block("/next")))
        status, body = await peer.response(1)
    assert (status, body) == (200, b"served /next")


class Counting:
    """A handler that counts the requests it sees; ``/hold`` waits until cancelled,
    ``/big`` answers with 4 MiB, anything else with ``served <path>``."""

    def __init__(self) -> None:
        self.started = 0
        self.produced = 0

    async def __call__(self, request: duplex.Request) -> duplex.Response:
        self.started += 1
        if request.path == "/hold":
            await trio.sleep_forever()
        if request.path == "/big":
            return duplex.Response(200, body=self._big())
        return duplex.Response(200, body=f"served {request.path}")

    async def _big(self) -> AsyncIterator[bytes]:
        for _ in range(64):
            self.produced += 65536
            yield bytes(65536)


async def test_rapid_reset_is_bounded_and_answered_with_goaway() -> None:
    """CVE-2023-44487: streams opened and reset at once, by the thousand, cost the
    server a bounded number of handlers before it sends GOAWAY (ENHANCE_YOUR_CALM)."""
    handler = Counting()
    with trio.fail_after(20):
        async with serving(handler) as server:
            peer = await Peer.connect(server.port)
            async with peer.stream:
                attack = bytearray()
                for n in range(20_000):
                    stream_id = 2 * n + 1
                    attack += peer.headers(stream_id, peer.request_block("/hold"))
                    attack += RstStreamFrame(stream_id, error_code=ErrorCodes.CANCEL).serialize()
                await peer.send_all_of(bytes(attack))
                goaway = await peer.goaway()
            assert goaway is not None and goaway.error_code == CALM
            assert handler.started < 5_000
            await served(server.port)


async def test_continuation_flood_is_answered_with_goaway() -> None:
    """CONTINUATION flood (2024): a header block that never ends is cut off long before
    the peer stops sending it."""
    with trio.fail_after(20):
        async with serving(Counting()) as server:
            peer = await Peer.connect(server.port)
            async with peer.stream:
                block = peer.request_block("/")
                start = HeadersFrame(1, block, flags=["END_STREAM"]).serialize()
                junk = bytes(16_000)
                flood = b"".join(ContinuationFrame(1, junk).serialize() for _ in range(1_000))
                finished = await peer.send_all_of(start + flood)
                goaway = await peer.goaway()
            assert goaway is not None or not finished
            if goaway is not None:
                assert goaway.error_code != ErrorCodes.NO_ERROR
            await served(server.port)


async def test_empty_continuation_frames_are_bounded_too() -> None:
    with trio.fail_after(20):
        async with serving(Counting()) as server:
            peer = await Peer.connect(server.port)
            async with peer.stream:
                start = HeadersFrame(1, peer.request_block("/"), flags=["END_STREAM"]).serialize()
                flood = ContinuationFrame(1, b"").serialize() * 200_000
                await peer.send_all_of(start + flood)
                goaway = await peer.goaway()
            assert goaway is not None and goaway.error_code != ErrorCodes.NO_ERROR
            await served(server.port)


async def test_hpack_bomb_never_reaches_the_handler() -> None:
    """A 4 KiB value put in the dynamic table once and referenced a thousand times (4
    MiB of headers from 1 KiB on the wire) is refused; the handler never sees it."""
    handler = Counting()
    with trio.fail_after(20):
        async with serving(handler) as server:
            peer = await Peer.connect(server.port)
            async with peer.stream:
                encoder = peer.encoder
                first = encoder.encode([("x-bomb", "b" * 4000)])  # indexed: entry 62
                block = bytes(peer.request_block("/bomb")) + bytes(first)
                # Each repeat is a one-byte reference to the same dynamic entry.
                block += b"\xbe" * 1000
                await peer.send(peer.headers(1, block))
                answered = False
                while (frame := await peer.next_frame()) is not None:
                    if isinstance(frame, GoAwayFrame):
                        answered = frame.error_code != ErrorCodes.NO_ERROR
                        break
                    if isinstance(frame, RstStreamFrame) and frame.stream_id == 1:
                        answered = True
                        break
                    if isinstance(frame, HeadersFrame) and frame.stream_id == 1:
                        fields = dict(peer.decoder.decode(frame.data, raw=True))
                        answered = fields[b":status"] == b"431"
                        break
            assert answered
            assert handler.started == 0
            await served(server.port)


async def test_settings_flood_is_answered_with_goaway() -> None:
    with trio.fail_after(20):
        async with serving(Counting()) as server:
            peer = await Peer.connect(server.port)
            async with peer.stream:
                await peer.send_all_of(SettingsFrame(0).serialize() * 100_000)
                goaway = await peer.goaway()
            assert goaway is not None and goaway.error_code == CALM
            await served(server.port)


async def test_ping_flood_is_answered_with_goaway() -> None:
    with trio.fail_after(20):
        async with serving(Counting()) as server:
            peer = await Peer.connect(server.port)
            async with peer.stream:
                await peer.send_all_of(PingFrame(0, opaque_data=b"12345678").serialize() * 100_000)
                goaway = await peer.goaway()
            assert goaway is not None and goaway.error_code == CALM
            await served(server.port)


async def test_empty_data_frame_flood_is_answered_with_goaway() -> None:
    with trio.fail_after(20):
        async with serving(Counting()) as server:
            peer = await Peer.connect(server.port)
            async with peer.stream:
                opening = peer.headers(1, peer.request_block("/hold", "POST"), end_stream=False)
                flood = DataFrame(1, b"").serialize() * 100_000
                await peer.send_all_of(opening + flood)
                goaway = await peer.goaway()
            assert goaway is not None and goaway.error_code == CALM
            await served(server.port)


async def test_a_window_that_never_opens_holds_back_only_that_client() -> None:
    """Zero-window stall: a peer that opens no window gets its streams reset once
    ``write_timeout`` passes; the server produced no more than the window's worth
    ahead, and served another client meanwhile."""
    handler = Counting()
    limits = duplex.Limits(write_timeout=1.0)
    with trio.fail_after(20):
        async with serving(handler, limits=limits) as server:
            peer = await Peer.connect(server.port, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0})
            async with peer.stream:
                block = b"".join(
                    peer.headers(2 * n + 1, peer.request_block("/big")) for n in range(10)
                )
                await peer.send(block)
                await served(server.port)  # while those ten stall
                reset: set[int] = set()
                while len(reset) < 10:
                    frame = await peer.next_frame()
                    if frame is None or isinstance(frame, GoAwayFrame):
                        break
                    if isinstance(frame, RstStreamFrame):
                        reset.add(frame.stream_id)
                    if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                        await peer.send(SettingsFrame(0, flags=["ACK"]).serialize())
            # Each stream's body waits for a window: a chunk or two each, not 4 MiB.
            assert handler.produced <= 10 * 3 * 65536
            await served(server.port)


async def test_streams_over_the_concurrency_limit_end_the_connection_not_the_server() -> None:
    """A peer that opens more streams than the SETTINGS it acknowledged allow gets
    GOAWAY (PROTOCOL_ERROR, RFC 9113 §5.1.2); no handler beyond the limit runs."""
    handler = Counting()
    limits = duplex.Limits(max_concurrent_streams=5)
    with trio.fail_after(20):
        async with serving(handler, limits=limits) as server:
            peer = await Peer.connect(server.port)
            async with peer.stream:
                # Acknowledge the server's settings before opening streams beyond them.
                while not isinstance(frame := await peer.next_frame(), SettingsFrame):
                    assert frame is not None
                await peer.send(SettingsFrame(0, flags=["ACK"]).serialize())
                data = b"".join(
                    peer.headers(2 * n + 1, peer.request_block("/hold")) for n in range(8)
                )
                await peer.send(data)
                goaway = await peer.goaway()
            assert goaway is not None and goaway.error_code == ErrorCodes.PROTOCOL_ERROR
            assert goaway.last_stream_id <= 9
            assert handler.started <= 5
            await served(server.port)


async def test_the_last_stream_id_is_served_and_going_back_is_a_protocol_error() -> None:
    """Stream-id exhaustion: the highest id there is gets served; a peer that then
    goes back to a lower one gets GOAWAY (PROTOCOL_ERROR)."""
    with trio.fail_after(20):
        async with serving(Counting()) as server:
            peer = await Peer.connect(server.port)
            async with peer.stream:
                last = (1 << 31) - 1
                await peer.send(peer.headers(last, peer.request_block("/last")))
                assert await peer.response(last) == (200, b"served /last")
                await peer.send(peer.headers(3, peer.request_block("/again")))
                goaway = await peer.goaway()
            assert goaway is not None and goaway.error_code == ErrorCodes.PROTOCOL_ERROR
            await served(server.port)


async def test_garbage_after_the_preface_is_a_goaway_not_a_crash() -> None:
    with trio.fail_after(20):
        async with serving(Counting()) as server:
            peer = await Peer.connect(server.port)
            async with peer.stream:
                # DATA on stream 0: a connection error (PROTOCOL_ERROR).
                await peer.send(b"\x00\x00\x04\x00\x00\x00\x00\x00\x00data")
                goaway = await peer.goaway()
                await peer.closed()
            assert goaway is not None and goaway.error_code == ErrorCodes.PROTOCOL_ERROR
            await served(server.port)
