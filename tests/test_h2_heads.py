"""HTTP/2 response heads: duplex makes a stream's first HEADERS (and CONTINUATION)
frames itself (``queue_head``), where h2's ``send_headers`` builds frame objects. The
bytes it queues, the HPACK state it leaves and the stream's state must be h2's own, for
any fields, any size (split into CONTINUATION frames), with and without END_STREAM, and
after earlier heads have filled the HPACK table. A head it does not make (trailers,
1xx, a stream that cannot send) is h2's, errors included.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.exceptions
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

import duplex
from duplex.http.h2._connection import new_h2, queue_head

Fields = list[tuple[bytes, bytes]]

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-!#$%&'*+.^_`|~", min_size=1)
NAMES = st.sampled_from(
    [b"content-type", b"content-length", b"set-cookie", b"cache-control", b"server", b"x-a"]
) | TOKEN.map(str.encode)
# What duplex sends: values without CR, LF or NUL (HPACK itself takes any bytes).
VALUES = st.binary(max_size=40).map(
    lambda value: value.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"")
) | st.tuples(st.binary(min_size=1, max_size=64), st.integers(100, 400)).map(
    lambda piece: piece[0].replace(b"\x00", b"x") * piece[1]
)  # (large values, cheap to make: a head past one frame)
STATUSES = st.integers(min_value=200, max_value=999).map(lambda status: b"%d" % status)
HEADS = st.tuples(STATUSES, st.lists(st.tuples(NAMES, VALUES), max_size=8))


def head(status: bytes, fields: Fields) -> Fields:
    return [(b":status", status), *fields]


def twins(max_frame_size: int) -> tuple[h2.connection.H2Connection, ...]:
    """Two server connections in the same state, each with streams 1, 3, 5 and 7 open
    (GET requests, ended), and the client's SETTINGS (its largest frame) taken."""
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    client.update_settings({h2.settings.SettingCodes.MAX_FRAME_SIZE: max_frame_size})
    for stream_id in (1, 3, 5, 7):
        client.send_headers(
            stream_id,
            [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")],
            end_stream=True,
        )
    sent = client.data_to_send()
    servers = []
    for _ in range(2):
        server = new_h2(duplex.Limits())
        server.initiate_connection()
        server.receive_data(sent)
        server.data_to_send()
        servers.append(server)
    return tuple(servers)


def stream_state(server: h2.connection.H2Connection, stream_id: int) -> tuple[object, ...]:
    stream = server.streams[stream_id]
    machine = stream.state_machine
    return (
        machine.state,
        machine.headers_sent,
        machine.trailers_sent,
        stream.request_method,
        server.state_machine.state,
    )


@settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    heads=st.lists(st.tuples(HEADS, st.booleans()), min_size=1, max_size=4),
    max_frame_size=st.sampled_from([16384, 20000, 65535]),
)
def test_a_head_is_queued_as_h2_queues_it(
    heads: list[tuple[tuple[bytes, Fields], bool]], max_frame_size: int
) -> None:
    reference, fast = twins(max_frame_size)
    for stream_id, ((status, fields), end) in zip((1, 3, 5, 7), heads, strict=False):
        reference.send_headers(stream_id, head(status, fields), end_stream=end)
        queue_head(fast, stream_id, head(status, fields), end)
        assert fast.data_to_send() == reference.data_to_send()
        assert stream_state(fast, stream_id) == stream_state(reference, stream_id)
    # The same HPACK state: the next head encodes alike too.
    assert (
        fast.encoder.header_table.dynamic_entries == reference.encoder.header_table.dynamic_entries
    )


@pytest.mark.parametrize("end", [False, True])
def test_a_head_larger_than_several_frames_goes_in_continuation_frames_as_h2s(end: bool) -> None:
    reference, fast = twins(16384)
    fields = head(b"200", [(b"x-%d" % n, bytes(range(1, 256)) * 80) for n in range(3)])
    reference.send_headers(1, fields, end_stream=end)
    queue_head(fast, 1, fields, end)
    sent = fast.data_to_send()
    assert sent == reference.data_to_send()
    assert len(sent) > 3 * 16384  # HEADERS and at least three CONTINUATION frames


def test_heads_it_does_not_make_are_h2s_errors_included() -> None:
    reference, fast = twins(16384)
    # A 1xx, the head after it, and trailers (a second head), as h2 makes them.
    for fields, end in (
        ([(b":status", b"103"), (b"link", b"</a>")], False),
        ([(b":status", b"200")], False),
        ([(b"grpc-status", b"0")], True),
    ):
        reference.send_headers(1, fields, end_stream=end)
        queue_head(fast, 1, fields, end)
        assert fast.data_to_send() == reference.data_to_send()
        assert stream_state(fast, 1) == stream_state(reference, 1)
    # A head for a stream that has ended its response is refused as h2 refuses it.
    with pytest.raises(h2.exceptions.StreamClosedError):
        queue_head(fast, 1, [(b":status", b"200")], True)
    # Trailers without END_STREAM: h2's error.
    queue_head(fast, 3, [(b":status", b"200")], False)
    with pytest.raises(h2.exceptions.ProtocolError):
        queue_head(fast, 3, [(b"grpc-status", b"0")], False)
