"""HTTP/2's DATA path: the server reads a request body's DATA frames itself, with the
bookkeeping h2 does for them, and leaves every other frame (and any DATA frame that is
padded, empty, ends its stream, or breaks a rule) to h2. The rules h2 checks must hold
on that path all the same: the bytes split anywhere, padding mixed in, DATA past a
window, DATA inside a header block, DATA after a stream ended or was reset, a frame
longer than SETTINGS_MAX_FRAME_SIZE.

The peer is a raw one that writes frames by hand (hyperframe, hpack).
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import trio
from h2.errors import ErrorCodes
from hyperframe.frame import DataFrame, HeadersFrame, RstStreamFrame, WindowUpdateFrame
from hypothesis import HealthCheck, given, settings

import duplex
from _h2_support import Peer
from _server_support import serving
from helpers import TIMEOUT

# The fast I/O path and the portable one read frames alike.
pytestmark = pytest.mark.both_paths

#: What duplex's default window lets a peer send on a stream before it reads.
WINDOW = 65535


async def body_back(request: duplex.Request) -> duplex.Response:
    """Answer with the request body, read whole; ``/hold`` reads nothing, ever."""
    if request.path == "/hold":
        await trio.sleep_forever()
    return duplex.Response(200, body=b"".join([chunk async for chunk in request.body]))


def data(stream_id: int, payload: bytes, *, pad: int | None = None, end: bool = False) -> bytes:
    frame = DataFrame(stream_id, payload, flags=["END_STREAM"] if end else [])
    if pad is not None:
        frame.flags.add("PADDED")
        frame.pad_length = pad
    return bytes(frame.serialize())


frames = st.lists(
    st.tuples(st.binary(max_size=3000), st.none() | st.integers(min_value=0, max_value=255)),
    max_size=12,
)


@settings(deadline=None, max_examples=30, suppress_health_check=[HealthCheck.too_slow])
@given(frames=frames, end_with_data=st.booleans(), cuts=st.data())
async def test_a_body_split_anywhere_padded_or_not_reaches_the_handler_whole(
    frames: list[tuple[bytes, int | None]], end_with_data: bool, cuts: st.DataObject
) -> None:
    # The whole body fits the stream's window: the peer needs no WINDOW_UPDATE.
    with trio.fail_after(TIMEOUT):
        async with serving(body_back) as server:
            peer = await Peer.connect(server.port)
            async with peer.stream:
                wire = peer.headers(1, peer.request_block("/", "POST"), end_stream=False)
                for payload, pad in frames:
                    wire += data(1, payload, pad=pad)
                wire += data(1, b"last" if end_with_data else b"", end=True)
                view = memoryview(wire)
                while view:
                    size = cuts.draw(st.integers(min_value=1, max_value=4096), label="piece")
                    assert await peer.send(bytes(view[:size]))
                    view = view[size:]
                status, body = await peer.response(1)
    expected = b"".join(payload for payload, _ in frames) + (b"last" if end_with_data else b"")
    assert (status, body) == (200, expected)


async def test_a_large_body_in_frames_of_the_largest_size_arrives_whole() -> None:
    # Frames as large as duplex allows, past the first window: given back as read.
    body = bytes(range(256)) * 1024  # 256 KiB
    with trio.fail_after(TIMEOUT):
        async with serving(body_back) as server:
            peer = await Peer.connect(server.port)
            async with peer.stream:
                await peer.send(peer.headers(1, peer.request_block("/", "POST"), end_stream=False))
                window, sent = WINDOW, 0
                while sent < len(body):
                    while window == 0:
                        frame = await peer.next_frame()
                        assert frame is not None
                        if isinstance(frame, WindowUpdateFrame) and frame.stream_id == 1:
                            window += frame.window_increment
                    size = min(window, len(body) - sent)
                    await peer.send(data(1, body[sent : sent + size]))
                    window, sent = window - size, sent + size
                await peer.send(data(1, b"", end=True))
                status, received = await peer.response(1)
    assert (status, received) == (200, body)


async def test_data_past_the_stream_window_is_a_flow_control_error() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(body_back) as server:
            peer = await Peer.connect(server.port)
            async with peer.stream:
                await peer.send(
                    peer.headers(1, peer.request_block("/hold", "POST"), end_stream=False)
                    + data(1, bytes(WINDOW))  # the whole window: taken
                    + data(1, b"x")  # one byte past it
                )
                await goes_away(peer, ErrorCodes.FLOW_CONTROL_ERROR)
            await served_by(server.port)


async def test_data_inside_a_header_block_is_a_protocol_error() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(body_back) as server:
            peer = await Peer.connect(server.port)
            async with peer.stream:
                # (Blocks encoded in the order they are sent: HPACK has a state.)
                first = peer.headers(1, peer.request_block("/hold", "POST"), end_stream=False)
                open_block = HeadersFrame(3, peer.request_block("/", "POST"))  # no END_HEADERS
                await peer.send(
                    first
                    + data(1, b"first")
                    + open_block.serialize()
                    + data(1, b"inside the block of stream 3")
                )
                await goes_away(peer, ErrorCodes.PROTOCOL_ERROR)
            await served_by(server.port)


async def test_a_frame_longer_than_the_settings_allow_is_refused_from_its_head() -> None:
    # Only the head is sent: the server must not wait for 16 MiB before it says no.
    head = (1 << 24) - 1
    with trio.fail_after(TIMEOUT):
        async with serving(body_back) as server:
            peer = await Peer.connect(server.port)
            async with peer.stream:
                await peer.send(
                    peer.headers(1, peer.request_block("/hold", "POST"), end_stream=False)
                    + head.to_bytes(3)
                    + b"\x00\x00"
                    + (1).to_bytes(4)
                )
                await goes_away(peer, ErrorCodes.FRAME_SIZE_ERROR)
            await served_by(server.port)


async def test_data_after_a_reset_or_an_end_leaves_the_connection_serving() -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(body_back) as server:
            peer = await Peer.connect(server.port)
            async with peer.stream:
                post = peer.request_block("/hold", "POST")
                reset = RstStreamFrame(1, error_code=ErrorCodes.CANCEL).serialize()
                await peer.send(
                    peer.headers(1, post, end_stream=False)
                    + data(1, b"before the reset")
                    + reset
                    + data(1, b"after the reset")  # the same write: after it all the same
                )
                # Stream 3 ends its body, then sends DATA on it again: a stream error
                # (RST_STREAM STREAM_CLOSED, RFC 9113 §5.1), which its response may
                # have beaten.
                await peer.send(
                    peer.headers(3, peer.request_block("/", "POST"), end_stream=False)
                    + data(3, b"whole", end=True)
                    + data(3, b"too late")
                )
                # The connection still serves a new stream.
                await peer.send(peer.headers(5, peer.request_block("/", "POST"), end_stream=False))
                await peer.send(data(5, b"next", end=True))
                assert await peer.response(5) == (200, b"next")


async def goes_away(peer: Peer, code: ErrorCodes) -> None:
    """The server ends ``peer``'s connection with GOAWAY ``code``."""
    goaway = await peer.goaway()
    assert goaway is not None
    assert goaway.error_code == code


async def served_by(port: int) -> None:
    """A new connection gets its answer: the server goes on serving everyone else."""
    peer = await Peer.connect(port)
    async with peer.stream:
        await peer.send(peer.headers(1, peer.request_block("/", "POST"), end_stream=False))
        await peer.send(data(1, b"served", end=True))
        assert await peer.response(1) == (200, b"served")
