"""The trio driver of one HTTP/2 server connection.

One task reads the socket and feeds h2, acting on its events at once (no awaits
between them): a request's HEADERS make an exchange whose handler runs in a task of
the server's, DATA goes to that stream's request body, RST_STREAM fails its exchange,
WINDOW_UPDATE wakes its sender. After each batch of events what h2 has to send goes
out before the next read, so that a peer that does not read stops being read: the
outbound buffer never grows without bound. Everything h2 sends goes through
``flush``: straight to the socket when it takes them at once, else through the
connection's sender task (one ``Transport``, its writes in order), so that a writer
waiting for the socket can give up without leaving half a frame behind; the end of a
response does not wait (``flush_end``), so that a batch of responses is one write.
The WINDOW_UPDATE for request body bytes a handler read goes out without the reader
waiting (``acknowledge``): a read never waits on the socket's write side.

DATA, the frames that carry the bytes, take a shorter way than h2's: a request body's
DATA frames are read here and handed to their stream (``_take_data``), a response's
are written here with their payload uncopied (``send_data``), each with the bookkeeping
h2 would do (both flow-control windows, the stream's state) so that h2 stays the
authority on every rule; any frame off that way (padded, empty, ending a stream, or
breaking a rule) goes through h2, which answers it as it always does.

Every batch of events is shown to the connection's ``FloodGuard`` before it is acted
on: a peer that floods the server with resets, SETTINGS, PINGs or empty frames gets
GOAWAY (ENHANCE_YOUR_CALM) and starts no handler more (``_guard``).
"""

from __future__ import annotations

import logging
import re
from contextlib import suppress
from math import inf
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import hyperframe.frame
import trio
from h2.connection import ConnectionInputs, ConnectionState
from h2.errors import ErrorCodes
from h2.stream import StreamInputs, StreamState
from h2.utilities import (
    CONNECTION_HEADERS as _CONNECTION_FIELDS,
)
from h2.utilities import (
    HeaderValidationFlags,
    _check_host_authority_header,
    _check_path_header,
    _check_pseudo_header_field_acceptability,
    normalize_inbound_headers,
)
from hyperframe.frame import GoAwayFrame, RstStreamFrame

from ..._body import EmptyBody
from ..._errors import ProtocolError, Timeout
from .._exchange import PeerGone
from .._models import Headers, Request, validate_field_value
from .._respond import PEER_ERRORS, REASONS
from .._transport import Transport
from ..h1._closing import linger
from ._bodies import StreamBody
from ._exchange import H2Exchange
from ._guard import FloodGuard
from ._respond import respond

if TYPE_CHECKING:
    from collections.abc import Iterable

    from hpack.struct import Header

    from .._limits import Limits
    from .._server import Server

__all__ = ["PREFACE", "H2ServerConnection"]

log = logging.getLogger("duplex.server")

#: What a client speaking HTTP/2 with prior knowledge sends first.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: The window HTTP/2 opens for a connection before any WINDOW_UPDATE.
_DEFAULT_WINDOW = 65535
#: The decoded header list past which a connection fails (HPACK bombs), whatever
#: ``Limits.max_header_list_size`` is (and at least twice it).
_HARD_HEADER_LIST_SIZE = 65536
#: What each field counts on top of its name and value (RFC 9113 §6.5.2).
_FIELD_OVERHEAD = 32
#: A received field name as RFC 9113 §8.2.1 allows it (with a colon first for a
#: pseudo-header field), and what no received value may hold.
_NAME = re.compile(rb":?[\x21-\x39\x3b-\x40\x5b-\x7e]+")
_BAD_VALUE = re.compile(rb"[\x00\n\r]|\A[ \t]|[ \t]\Z")
_COLON = ord(":")
_PSEUDO_FIELDS = frozenset(
    {b":method", b":scheme", b":authority", b":path", b":status", b":protocol"}
)
#: SETTINGS_MAX_FRAME_SIZE's bounds (RFC 9113 §6.5.2).
_MIN_FRAME_SIZE = 1 << 14
_MAX_FRAME_SIZE = (1 << 24) - 1
#: The preface and the first frame's head up to its type, which must be SETTINGS.
_OPENING = len(PREFACE) + 4
_SETTINGS = 0x4
#: How long, and how much, a connection closed for an error reads and drops before it
#: closes, so that its GOAWAY is read rather than lost to a reset.
_GOAWAY_LINGER = 1.0
_GOAWAY_LINGER_SIZE = 1 << 20
#: A frame's head: length (3 bytes), type, flags, stream id (4 bytes).
_HEAD = 9
#: DATA's frame type, and the flags that keep a DATA frame off the fast path.
_DATA = 0x0
_END_STREAM_OR_PADDED = 0x1 | 0x8
#: HEADERS and CONTINUATION frame types, and the flags a response head's frames carry.
_HEADERS = 0x1
_CONTINUATION = 0x9
_END_STREAM = 0x1
_END_HEADERS = 0x4
#: A WINDOW_UPDATE frame's head up to its stream id: 4 bytes of payload, type 0x8.
_WINDOW_UPDATE_HEAD = b"\x00\x00\x04\x08\x00"
#: The states in which a stream takes DATA, and in which it sends DATA.
_RECEIVING = frozenset({StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL})
_SENDING = frozenset({StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE})
#: Pieces the outgoing list holds before they are joined (``writev`` takes 1,024).
_MAX_PIECES = 256


class _H2Connection(h2.connection.H2Connection):
    """h2's connection, but for two rules where h2 would lose every stream in flight:

    - a request body is held to its Content-Length by the driver (``_data``,
      ``_body_ended``), as a stream error (RFC 9113 §8.1.1), where h2 makes a mismatch
      a connection error;
    - a client's graceful GOAWAY (NO_ERROR) says it opens no more streams: the streams
      in flight are still answered, where h2 would send nothing more after one;

    and for three costs: a received frame is not formatted for h2's trace log
    (``_receive_frame``), nor each frame sent checked against the peer's frame size
    (``_prepare_for_sending``), both otherwise h2's own; a received header block is
    validated by h2's rules in one pass (``_process_received_headers``).
    """

    def _receive_goaway_frame(
        self, frame: GoAwayFrame
    ) -> tuple[list[hyperframe.frame.Frame], list[h2.events.Event]]:
        if frame.error_code != ErrorCodes.NO_ERROR:
            return super()._receive_goaway_frame(frame)
        event = h2.events.ConnectionTerminated()
        event.error_code = ErrorCodes.NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def _receive_frame(self, frame: hyperframe.frame.Frame) -> list[h2.events.Event]:
        # h2's own, but for its first line: ``trace("Received frame: %s", repr(frame))``,
        # which formats every frame (hexlifying a DATA frame's whole payload) for a log
        # h2 only keeps when asked to: a sixth of what h2 costs per DATA frame received.
        events: list[h2.events.Event]
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except h2.exceptions.StreamClosedError as error:
            if self._stream_is_closed_by_reset(error.stream_id):
                reset = RstStreamFrame(error.stream_id)
                reset.error_code = error.error_code
                self._prepare_for_sending([reset])
                events = error._events
            else:
                raise
        except h2.exceptions.StreamIDTooLowError as error:
            if self._stream_is_closed_by_reset(error.stream_id):
                reset = RstStreamFrame(error.stream_id)
                reset.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([reset])
                events = []
            elif self._stream_is_closed_by_end(error.stream_id):
                raise h2.exceptions.StreamClosedError(error.stream_id) from error
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        return events

    def _prepare_for_sending(self, frames: list[hyperframe.frame.Frame]) -> None:
        # h2's own, but without its assertion that no frame exceeds the peer's maximum
        # frame size (a generator over every frame sent, on every send): h2 cuts every
        # frame it makes to that size, and duplex makes none itself through h2.
        if frames:
            self._data_to_send += b"".join([frame.serialize() for frame in frames])

    def _begin_new_stream(
        self, stream_id: int, allowed_ids: h2.connection.AllowedStreamIDs
    ) -> h2.stream.H2Stream:
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        # (A class rather than attributes of the stream: a bound method of its own
        # would make each stream a cycle for the garbage collector to undo.)
        stream.__class__ = _Stream
        return stream


def _process_received_headers(
    headers: Iterable[Header], flags: HeaderValidationFlags, header_encoding: object
) -> list[Header]:
    """h2's processing of a received header block (cookies joined, then validated),
    with the checks h2 chains as seven generators made in one pass (the same rules,
    each failure the same ``ProtocolError``; duplex asks for bytes, never decoded)."""
    received = list(normalize_inbound_headers(headers, flags))
    pseudo: set[bytes] = set()
    regular = False
    method: bytes | None = None
    for name, value in received:
        # RFC 9113 §8.2.1: a name of visible ASCII without upper case, a colon only
        # as the first byte; a value without NUL, CR, LF, nor whitespace around it.
        if not _NAME.fullmatch(name):
            raise h2.exceptions.ProtocolError(f"invalid header name {name!r}")
        if value and _BAD_VALUE.search(value):
            raise h2.exceptions.ProtocolError(f"invalid value of header {name!r}")
        if name[0] == _COLON:
            if name in pseudo or regular or name not in _PSEUDO_FIELDS:
                raise h2.exceptions.ProtocolError(f"misplaced pseudo-header field {name!r}")
            pseudo.add(name)
            if name == b":method":
                method = value
        else:
            regular = True
            if name in _CONNECTION_FIELDS or (name == b"te" and value.lower() != b"trailers"):
                raise h2.exceptions.ProtocolError(f"connection-specific field {name!r}")
    _check_pseudo_header_field_acceptability(pseudo, method, flags)
    if not (flags.is_response_header or flags.is_trailer):
        # (Both h2's own, as generators: the :authority and Host, an empty :path.)
        for _ in _check_path_header(_check_host_authority_header(received, flags), flags):
            pass
    return received


class _Stream(h2.stream.H2Stream):
    """h2's stream, with duplex's checks of a received header block, and a body's
    length only counted (duplex checks it against Content-Length itself)."""

    _process_received_headers = staticmethod(_process_received_headers)  # type: ignore[assignment]

    def _track_content_length(self, length: int, end_stream: bool) -> None:
        self._actual_content_length += length


class H2ServerConnection:
    """One HTTP/2 connection of a ``Server``: its streams until it ends."""

    __slots__ = (
        "_broken",
        "_flush_wanted",
        "_flusher",
        "_goaway",
        "_idle",
        "_idle_deadline",
        "_inbox",
        "_outgoing",
        "_preface_left",
        "_queued",
        "_sending",
        "_sent",
        "_sent_lot",
        "cancel_scope",
        "client",
        "closing",
        "guard",
        "h2",
        "limits",
        "received",
        "scheme",
        "server",
        "streams",
        "streams_opened",
        "transport",
    )

    def __init__(
        self,
        server: Server,
        transport: Transport,
        client: tuple[str, int] | None,
        received: bytes = b"",
    ) -> None:
        self.server = server
        self.limits = limits = server.limits
        self.transport = transport
        self.client = client
        self.scheme = "https" if server.ssl_context is not None else "http"
        #: What was read before the connection knew it speaks HTTP/2 (the preface).
        self.received = received
        #: The preface bytes h2 has still to check, then a frame not yet read whole.
        self._preface_left = len(PREFACE)
        self._inbox = b""
        self.h2 = new_h2(limits)
        #: The exchanges of the streams open, by stream id.
        self.streams: dict[int, H2Exchange] = {}
        #: Streams opened so far.
        self.streams_opened = 0
        #: What the peer may ask for nothing, and how fast.
        self.guard = FloodGuard(limits.max_concurrent_streams)
        #: True once GOAWAY went out (or came in): no new stream is served.
        self.closing = False
        self.cancel_scope = trio.CancelScope()
        # The reader's wait for the socket, whose deadline is the idle timeout (or the
        # header timeout, before the first request).
        self._idle: trio.CancelScope | None = None
        self._idle_deadline = inf
        # What the sender task is to write, in order; flushes count what they queued
        # (``_queued``) and wait until the sender has written as much (``_sent``).
        self._outgoing: list[bytes | memoryview] = []
        self._queued = 0
        self._sent = 0
        self._sending = False
        self._broken = False
        self._flush_wanted = False
        self._flusher = trio.lowlevel.ParkingLot()
        self._sent_lot = trio.lowlevel.ParkingLot()
        # A GOAWAY to send with the next flush (h2 itself would refuse every frame after
        # one, and streams in flight must still be answered).
        self._goaway = b""

    def __repr__(self) -> str:
        return f"<HTTP/2 connection from {self.client}>"

    @property
    def busy(self) -> bool:
        """True while a stream is open (a shutdown waits for it)."""
        return bool(self.streams)

    @property
    def nursery(self) -> trio.Nursery:
        """Where the streams' handlers run: the server's nursery."""
        return self.server.nursery

    # -- sending ------------------------------------------------------------------------

    async def flush(self) -> None:
        """Hand what h2 has queued to the socket and return once it went out: at once
        when the socket takes it without waiting, else through the connection's sender
        task, whose writes are bounded by the write timeout. A flush that is cancelled
        (or interrupted) while it waits leaves its bytes to the sender: frames h2 counted
        as sent always reach the wire whole (HPACK state, flow-control windows).

        Raises ``PeerGone`` once the connection broke or timed out (it then closes).
        """
        if self._broken:
            raise PeerGone("the connection is closed")
        self._take_output()
        if not self._outgoing:
            await trio.lowlevel.checkpoint()
            return
        target = self._write_outgoing()
        if target:
            await self.wait_sent(target)
        else:
            await self.transport.spend()

    def flush_nowait(self) -> int:
        """``flush`` up to its wait: 0 if the socket took everything queued at once
        (the caller then spends a checkpoint: ``transport.spend()``); else what
        ``wait_sent`` waits for, the rest handed to the sender task. Raises ``PeerGone``
        once the connection broke."""
        if self._broken:
            raise PeerGone("the connection is closed")
        self._take_output()
        return self._write_outgoing() if self._outgoing else 0

    def _write_outgoing(self) -> int:
        target = self._queued
        if self._write_now():
            return 0
        self.flush_soon()
        return target

    async def wait_sent(self, target: int) -> None:
        """Return once the sender task has written what was queued up to ``target``
        (a count ``flush_nowait`` gave). Raises ``PeerGone`` once the connection broke."""
        while self._sent < target:
            if self._broken:
                raise PeerGone("the connection broke")
            await self._sent_lot.park()

    async def flush_end(self) -> None:
        """``flush`` for the end of a response: handed to the sender task without waiting
        for the socket, so that the ends of the responses a batch of requests made go
        out in one write. (What a stream sends is bounded by its window, and the reader
        waits for its own flushes: a peer that does not read is still held back.)"""
        if self._broken:
            raise PeerGone("the connection is closed")
        self.flush_soon()
        await trio.lowlevel.checkpoint()

    def _write_now(self) -> bool:
        """Write what is outgoing if the socket takes it at once: True if it took all.
        What it took only in part waits in the transport for the sender task."""
        if self._sending or self._broken:
            return False
        try:
            written = self.transport.write_nowait(self._outgoing)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            # (From any task, a read's acknowledgement too: never raised there.)
            self._break(error)
            return False
        if written is None:
            return False
        self._outgoing = []
        if written:
            self._sent = self._queued
        return written

    @property
    def output_idle(self) -> bool:
        """Nothing waits to go out: no write under way, nothing queued."""
        return not (self._sending or self._outgoing or self._broken)

    def write_queued(self) -> bool:
        """Write what is queued if the socket takes it at once: True if it took all;
        False if the rest waits for the sender task (``flush`` waits for it). Raises
        ``PeerGone`` once the connection broke."""
        if self._broken:
            raise PeerGone("the connection is closed")
        self._take_output()
        if self._write_now():
            return True
        self.flush_soon()
        return False

    def flush_soon(self) -> None:
        """Have the sender task send what h2 has queued (from any task, no wait)."""
        self._flush_wanted = True
        self._flusher.unpark()

    def _take_output(self) -> None:
        data = self.h2.data_to_send()
        if self._goaway:
            data, self._goaway = data + self._goaway, b""
        if data:
            self._outgoing.append(data)
            self._queued += 1

    async def _send_forever(self) -> None:
        """The sender task: writes what flushes left to it, in order."""
        transport = self.transport
        try:
            while True:
                self._take_output()
                if not (self._outgoing or self._flush_wanted):
                    await self._flusher.park()
                    continue
                self._flush_wanted = False
                pieces, self._outgoing = self._outgoing, []
                target = self._queued
                self._sending = True
                try:
                    await transport.send_pieces(pieces)  # (after what the transport holds)
                finally:
                    self._sending = False
                self._sent = target
                self._sent_lot.unpark_all()
        except PEER_ERRORS as error:
            self._break(error)

    def _break(self, error: BaseException) -> None:
        """A send failed: the connection is over (flushes waiting raise ``PeerGone``)."""
        log.debug("connection from %s: a send failed: %r", self.client, error)
        self._broken = True
        self._outgoing = []
        self._sent_lot.unpark_all()
        self.cancel_scope.cancel()

    def send_data(self, stream_id: int, data: bytes | memoryview, end: bool) -> None:
        """Queue ``data`` as one DATA frame of the stream (END_STREAM when ``end``):
        the frame and the bookkeeping of h2's ``send_data``, but the payload is never
        copied (it goes to the socket as it is, beside its 9-byte head). Raises h2's
        errors as its ``send_data`` does (it is then what runs)."""
        h2_connection = self.h2
        stream = h2_connection.streams.get(stream_id)
        size = len(data)
        if (
            stream is None
            or not 0 < size <= h2_connection.max_outbound_frame_size
            or size > stream.outbound_flow_control_window
            or size > h2_connection.outbound_flow_control_window
            or stream.state_machine.state not in _SENDING
            or h2_connection.state_machine.state is not ConnectionState.SERVER_OPEN
        ):
            h2_connection.send_data(stream_id, data, end_stream=end)
            return
        if end:
            stream.state_machine.process_input(StreamInputs.SEND_END_STREAM)
        stream.outbound_flow_control_window -= size
        h2_connection.outbound_flow_control_window -= size
        self._take_output()  # (what h2 queued goes first)
        outgoing = self._outgoing
        if len(outgoing) >= _MAX_PIECES:
            outgoing[:] = [b"".join(outgoing)]
        outgoing += (
            size.to_bytes(3) + (b"\x00\x01" if end else b"\x00\x00") + stream_id.to_bytes(4),
            data,
        )
        self._queued += 1

    def send_head(self, stream_id: int, fields: list[tuple[bytes, bytes]], end: bool) -> None:
        """Queue a response head (``:status`` first; END_STREAM when ``end``), as h2's
        ``send_headers`` does (``queue_head``). Raises h2's errors as it does."""
        queue_head(self.h2, stream_id, fields, end)

    def acknowledge(self, exchange: H2Exchange, size: int) -> None:
        """A handler read ``size`` bytes of its request body (or they were dropped):
        give them back to the peer's windows."""
        h2_connection = self.h2
        stream_id = exchange.stream_id
        stream = h2_connection.streams.get(stream_id)
        if stream is not None and size > 0:
            # h2's ``acknowledge_received_data``, step by step (its window managers
            # decide when to give back), but its WINDOW_UPDATE frames made here: h2
            # makes a frame object per frame, and a read of a request body costs one.
            update = b""
            increment = h2_connection._inbound_flow_control_window_manager.process_bytes(size)
            if increment:
                update = _window_update(0, increment)
            if stream.open:
                increment = stream._inbound_window_manager.process_bytes(size)
                if increment:
                    update += _window_update(stream_id, increment)
            if not update:
                return
            h2_connection._data_to_send += update
        else:
            try:
                h2_connection.acknowledge_received_data(size, stream_id)
            except h2.exceptions.ProtocolError as error:  # the connection is closed
                log.debug("no window update for stream %d: %r", stream_id, error)
                return
        # h2 sends WINDOW_UPDATE once enough was read: then straight to the socket if it
        # takes it at once (no wait, no task), else by the sender task. At once rather
        # than with the reader's next write: the peer sends on while the reader works
        # (measured: an echo paced by the window loses a tenth of its speed otherwise).
        self._take_output()
        if self._outgoing and not self._write_now():
            self.flush_soon()

    # -- the connection's life ------------------------------------------------------------

    def shutdown(self) -> None:
        """Begin a graceful close: GOAWAY now, the streams in flight go on (told with
        ``on_server_closing``), and the connection ends once they have."""
        self._go_away()
        for exchange in list(self.streams.values()):
            if exchange.on_server_closing is not None:
                exchange.on_server_closing()

    def _go_away(self) -> None:
        """GOAWAY (NO_ERROR) naming the last stream served: no stream after it is, and
        the connection ends once those in flight have."""
        if self.closing:
            return
        self.closing = True
        frame = GoAwayFrame(
            stream_id=0, last_stream_id=self.h2.highest_inbound_stream_id, error_code=0
        )
        self._goaway = frame.serialize()
        self.flush_soon()
        self._check_idle()

    async def run(self) -> None:
        """Serve the connection until it ends."""
        try:
            with self.cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._send_forever)
                    await self._serve()
                    await self._drain()
                    nursery.cancel_scope.cancel()
        except Exception:
            log.exception("unexpected error serving %s over HTTP/2", self.client)
        finally:
            self._broken = True  # (a flush waiting, or still to come, raises)
            self._sent_lot.unpark_all()
            for exchange in list(self.streams.values()):
                exchange.peer_reset(PeerGone("the connection closed"))
            self.transport.cut()
            self.transport.abort_send()
            await self.transport.aclose()
            self.server.connection_closed(self)
            # h2's table of its own bound methods, one per frame type, makes each of its
            # connections a cycle that only the garbage collector would undo (with the
            # HPACK tables and settings behind it); nothing reads frames any more.
            self.h2._frame_dispatch_table.clear()

    async def _serve(self) -> None:
        h2_connection = self.h2
        limits = self.limits
        h2_connection.initiate_connection()
        extra = limits.stream_window_size * limits.max_concurrent_streams - _DEFAULT_WINDOW
        if extra > 0:
            h2_connection.increment_flow_control_window(extra)
        if limits.header_timeout is not None:
            self._idle_deadline = trio.current_time() + limits.header_timeout
        if self.server.shutting_down:
            self.shutdown()
        data, self.received = self.received, b""
        opening = b""
        try:
            await self.flush()
            while True:
                if len(opening) < _OPENING:
                    opening += data[: _OPENING - len(opening)]
                    if len(opening) == _OPENING and opening[-1] != _SETTINGS:
                        # RFC 9113 §3.4: SETTINGS first (an HTTP/1.1 request behind the
                        # preface would otherwise hold the connection for its timeout).
                        log.debug("no SETTINGS after the preface from %s", self.client)
                        h2_connection.close_connection(ErrorCodes.PROTOCOL_ERROR)
                        await self._close_with_goaway()
                        return
                if data:
                    if not self._feed(data):
                        # The GOAWAY is queued: send it, then close.
                        await self._close_with_goaway()
                        return
                    await self.flush()
                if self.closing and not self.streams:
                    return
                data = await self._read()
                if not data:
                    return
        except Timeout as error:
            log.debug("connection from %s ended: %r", self.client, error)
            if error.phase == "read":
                # Idle, or no request in time: say so with GOAWAY.
                self.shutdown()
                await self.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            log.debug("connection from %s ended: %r", self.client, error)

    async def _drain(self) -> None:
        """Before the connection closes: what is queued, and what the sender task is
        writing, goes out (the last streams' ends, a GOAWAY), within the linger time. A
        flush returns once its own bytes are out, not those of another task's flush."""
        with trio.move_on_after(self.limits.linger_timeout), suppress(*PEER_ERRORS):
            self._take_output()
            if self._outgoing or self._sending or self._flush_wanted:
                self.flush_soon()
            while self._sent < self._queued and not self._broken:
                await self._sent_lot.park()
            if not self._broken:
                await self.transport.flush()  # (what a direct write left to it)

    async def _close_with_goaway(self) -> None:
        """Send the GOAWAY h2 has queued for a connection error, then linger a moment
        (bounded in time and size): closing with the peer's frames unread would make
        the kernel reset the connection, and the peer would never read why."""
        await self.flush()
        await linger(self.transport, seconds=_GOAWAY_LINGER, max_size=_GOAWAY_LINGER_SIZE)

    async def _read(self) -> bytes:
        """Read once; raises ``duplex.Timeout("read")`` once the connection was idle
        (or had not sent a request) too long."""
        transport = self.transport
        size = self.limits.read_size
        if transport.direct and self._idle_deadline == inf:
            # While streams are open: bytes already there are read without the scope
            # that bounds a wait (a scope per read costs as much as the read).
            await trio.lowlevel.checkpoint_if_cancelled()
            data = transport.read_nowait(size)
            if data is not None:
                await transport.spend()
                return data
            with trio.CancelScope(deadline=self._idle_deadline) as self._idle:
                return await transport.read_when_ready(max_bytes=size)
            raise Timeout("read", 0.0)
        with trio.CancelScope(deadline=self._idle_deadline) as self._idle:
            return await transport.read_some(max_bytes=size)
        raise Timeout("read", 0.0)

    def _check_idle(self) -> None:
        """Arm the idle deadline when no stream is open (or end a closing connection)."""
        if self.streams:
            return
        if self.closing:
            self._set_idle_deadline(-inf)
            return
        timeout = self.limits.keep_alive_timeout
        if timeout is not None and self.streams_opened:
            self._set_idle_deadline(trio.current_time() + timeout)

    def _set_idle_deadline(self, deadline: float) -> None:
        if deadline == self._idle_deadline:
            return  # (each stream opened says inf: a scope's deadline is costly to set)
        self._idle_deadline = deadline
        if self._idle is not None:
            self._idle.deadline = deadline

    # -- receiving ------------------------------------------------------------------------

    def _feed(self, data: bytes) -> bool:
        """Act on what was read, frame by frame in order: a DATA frame for a stream's
        request body goes to it here (``_take_data``), every other frame through h2;
        a frame read in part waits for the rest. Returns False once the connection
        must close: a protocol error or a flood, its GOAWAY queued."""
        if self._preface_left:
            # (h2 checks the preface: it comes before any frame.)
            take = min(self._preface_left, len(data))
            self._preface_left -= take
            if not self._through_h2(data[:take]):
                return False
            data = data[take:]
        if self._inbox:
            data, self._inbox = self._inbox + data, b""
        view = memoryview(data)
        size = len(data)
        largest = self.h2.max_inbound_frame_size
        start = position = 0  # (start: the first byte not yet acted on)
        while size - position >= _HEAD:
            length = int.from_bytes(view[position : position + 3])
            if length > largest:
                # Refused from its head (h2 would first buffer all of it).
                log.debug("an overlong frame (%d bytes) from %s", length, self.client)
                self.h2.close_connection(ErrorCodes.FRAME_SIZE_ERROR)
                return False
            end = position + _HEAD + length
            if end > size:
                break
            if (
                view[position + 3] == _DATA
                and length
                and not view[position + 4] & _END_STREAM_OR_PADDED
            ):
                if start < position:
                    # What came before goes first (it may reset this very stream).
                    if not self._through_h2(view[start:position]):
                        return False
                    start = position
                if self._take_data(view, position, length):
                    start = end
            position = end
        if start < position and not self._through_h2(view[start:position]):
            return False
        if position < size:
            self._inbox = bytes(view[position:])
        return True

    def _through_h2(self, data: bytes | memoryview) -> bool:
        """Have h2 take whole frames and act on its events (``_feed``'s return)."""
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as error:
            log.debug("HTTP/2 protocol error from %s: %r", self.client, error)
            return False  # (h2 queued its GOAWAY)
        flood = self.guard.flood(events, trio.current_time())
        if flood:
            log.warning("HTTP/2 flood from %s: %s", self.client, flood)
            self.h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
            return False
        self._on_events(events)
        return True

    def _take_data(self, view: memoryview, position: int, length: int) -> bool:
        """Give the payload of the DATA frame at ``position`` (not empty, neither padded
        nor ending its stream) to its stream's request body, with the bookkeeping h2
        does for it (both windows, the stream's count), but without h2's frame object,
        state machines and event, which cost more than the rest of the frame's way.
        Returns False, having done nothing, unless every rule h2 would check holds: the
        frame then goes through h2, which says what is wrong."""
        stream_id = int.from_bytes(view[position + 5 : position + _HEAD]) & 0x7FFFFFFF
        exchange = self.streams.get(stream_id)
        h2_connection = self.h2
        stream = h2_connection.streams.get(stream_id)
        if (
            exchange is None
            or stream is None
            or stream.state_machine.state not in _RECEIVING
            or h2_connection.state_machine.state is not ConnectionState.SERVER_OPEN
            or h2_connection.incoming_buffer._headers_buffer  # (in a header block)
        ):
            return False
        connection_window = h2_connection._inbound_flow_control_window_manager
        stream_window = stream._inbound_window_manager
        if length > connection_window.current_window_size:
            return False
        if length > stream_window.current_window_size:
            return False
        connection_window.current_window_size -= length
        stream_window.current_window_size -= length
        stream._actual_content_length += length
        start = position + _HEAD
        self._data(exchange, bytes(view[start : start + length]), length)
        return True

    # -- events ---------------------------------------------------------------------------

    def _on_events(self, events: list[h2.events.Event]) -> None:
        streams = self.streams
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                exchange = streams.get(event.stream_id)
                size = event.flow_controlled_length
                if exchange is None:
                    self.h2.acknowledge_received_data(size, event.stream_id)
                else:
                    self._data(exchange, event.data, size)
            elif isinstance(event, h2.events.RequestReceived):
                self._open_stream(event)
            elif isinstance(event, h2.events.StreamEnded):
                exchange = streams.get(event.stream_id)
                if exchange is not None:
                    self._body_ended(exchange)
            elif isinstance(event, h2.events.WindowUpdated):
                if event.stream_id:
                    exchange = streams.get(event.stream_id)
                    if exchange is not None:
                        exchange.wake_sender()
                else:
                    self._wake_senders()
            elif isinstance(event, h2.events.StreamReset):
                exchange = streams.get(event.stream_id)
                if exchange is not None:
                    exchange.peer_reset(
                        PeerGone(f"the peer reset the stream ({event.error_code!r})")
                    )
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self._wake_senders()
            elif isinstance(event, h2.events.ConnectionTerminated):
                if event.error_code == ErrorCodes.NO_ERROR:
                    # No new stream: those in flight finish, then the connection ends.
                    self._go_away()
                else:
                    # h2 sends nothing after that GOAWAY: what is in flight cannot finish.
                    self.closing = True
                    for exchange in list(streams.values()):
                        exchange.peer_reset(PeerGone(f"the peer closed the connection ({event})"))

    def _wake_senders(self) -> None:
        for exchange in self.streams.values():
            exchange.wake_sender()

    def _data(self, exchange: H2Exchange, data: bytes, size: int) -> None:
        exchange.received += len(data)
        body = exchange.request_body
        limit = self.limits.max_body_size
        if limit is not None and exchange.received > limit:
            error = ProtocolError("the request body is too large", 413)
        elif body.length is not None and exchange.received > body.length:
            error = ProtocolError("the request body is longer than its Content-Length")
        elif isinstance(body, StreamBody):
            body.feed(data, size)
            return
        else:
            error = ProtocolError("DATA on a request that had ended")
        self.h2.acknowledge_received_data(size, exchange.stream_id)
        exchange.body_failed(error)

    def _body_ended(self, exchange: H2Exchange) -> None:
        """The peer ended its stream (END_STREAM): the request body is whole, unless it
        falls short of its Content-Length (a stream error, RFC 9113 §8.1.1)."""
        body = exchange.request_body
        if not isinstance(body, StreamBody):
            return
        if body.length is not None and exchange.received != body.length:
            exchange.body_failed(ProtocolError("the request body ended short of its length"))
        else:
            body.close_write_nowait()

    def _open_stream(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        if self.closing:
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        self.streams_opened += 1
        self._set_idle_deadline(inf)
        try:
            request, length = self._request(event)
        except ValueError as error:
            log.debug("bad request on stream %d from %s: %s", stream_id, self.client, error)
            self.h2.reset_stream(stream_id, ErrorCodes.PROTOCOL_ERROR)
            self._check_idle()
            return
        exchange = H2Exchange(self, stream_id, request, request.body)  # type: ignore[arg-type]
        if isinstance(request.body, StreamBody):
            request.body.bind(exchange)
        else:
            exchange.request_complete = True
        limit = self.limits.max_body_size
        if _list_size(event) > self.limits.header_list_size:
            exchange.refuse(ProtocolError("the request head is too large", 431))
        elif length is not None and limit is not None and length > limit:
            exchange.refuse(ProtocolError("the request body is too large", 413))
        elif request.method == "CONNECT" and "upgrade" not in request.headers:
            # A tunnel, not an extended CONNECT: duplex is no proxy (as over HTTP/1.1).
            exchange.refuse(ProtocolError("CONNECT is not supported", 501))
        self.streams[stream_id] = exchange
        self.nursery.start_soon(self._run_stream, exchange)
        most = self.limits.max_requests_per_connection
        if most is not None and self.streams_opened >= most:
            self._go_away()

    def _request(self, event: h2.events.RequestReceived) -> tuple[Request, int | None]:
        """The request of a stream's HEADERS, and its body's declared length. Raises
        ``ValueError`` for a request duplex refuses (a control character in a value)."""
        method = path = authority = protocol = b""
        fields: list[tuple[bytes, bytes]] = []
        for name, value in event.headers or ():
            assert isinstance(name, bytes) and isinstance(value, bytes)
            if name.startswith(b":"):
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
                elif name == b":protocol":
                    protocol = value
                continue
            fields.append((name, validate_field_value(value)))
        if authority and not any(name == b"host" for name, _ in fields):
            fields.insert(0, (b"host", validate_field_value(authority)))
        if protocol:
            # An extended CONNECT (RFC 8441) reaches the handler as an upgrade would.
            fields.append((b"upgrade", validate_field_value(protocol)))
        length: int | None = None
        for name, value in fields:
            if name == b"content-length":
                length = int(value) if value.isdigit() else None
        body: StreamBody | EmptyBody
        if event.stream_ended is not None:
            body = EmptyBody()
            length = 0
        else:
            body = StreamBody(length, self.limits.read_timeout)
        request = Request(
            method.decode("ascii"),
            (path or authority).decode("latin-1"),
            Headers.from_fields(fields),
            body,
            http_version="2",
            client=self.client,
            scheme=self.scheme,
        )
        return request, length

    # -- a stream's task --------------------------------------------------------------

    async def _run_stream(self, exchange: H2Exchange) -> None:
        try:
            if not exchange.refused:
                with exchange.scope:
                    await respond(exchange)
            status = exchange.error_status
            if status is not None and not exchange.head_started and not exchange.closed:
                await self._answer(exchange, status)
        except PEER_ERRORS as error:
            log.debug("stream %d of %s ended: %r", exchange.stream_id, self.client, error)
        except Exception:
            log.exception("unexpected error on stream %d of %s", exchange.stream_id, self.client)
        finally:
            try:
                self._close_stream(exchange)
            except Exception:  # (nothing may reach the server's nursery)
                log.exception("closing stream %d of %s failed", exchange.stream_id, self.client)
            if exchange.tasks is not None:
                await exchange.tasks.wait()
            self.streams.pop(exchange.stream_id, None)
            body = exchange.request_body
            if isinstance(body, StreamBody):
                body.unbind()
            self._check_idle()
            if self.server.access_log:
                self.server.log_access(exchange.request, exchange.status or None, exchange.sent)

    def _close_stream(self, exchange: H2Exchange) -> None:
        """The stream's task ends: its request body is closed, an unfinished response
        cut (RST_STREAM), and the exchange over."""
        if not exchange.failed:
            # (A failed body stays failed: a reader in another task learns why.)
            exchange.request_body.close_read_nowait()
        if not exchange.out_ended:
            # A response left unfinished (failed, cancelled) is cut.
            exchange.reset(ErrorCodes.INTERNAL_ERROR)
        elif not exchange.closed and not exchange.request_complete:
            # Answered before its request ended: the peer need send no more.
            exchange.reset(ErrorCodes.NO_ERROR)
        exchange.end()

    async def _answer(self, exchange: H2Exchange, status: int) -> None:
        """Answer a stream whose request turned out bad with ``status``."""
        body = f"{status} {REASONS.get(status, b'').decode()}\n".encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
        ]
        with trio.move_on_after(self.limits.linger_timeout):
            await exchange.start(status, headers)
            await exchange.send(body, end=True)


def new_h2(limits: Limits) -> _H2Connection:
    """The h2 connection a server connection drives, set up from ``limits``."""
    # What the peer sends is validated; what duplex sends was already (Headers: token
    # names, lower-cased, values without CR, LF or NUL; connection-specific fields
    # dropped by H2Exchange), and checking it again would cost every response.
    config = h2.config.H2Configuration(
        client_side=False,
        header_encoding=None,
        validate_inbound_headers=True,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )
    connection = _H2Connection(config)
    connection.local_settings = h2.settings.Settings(
        client=False,
        initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: limits.stream_window_size,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.header_list_size,
            h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: _max_frame_size(limits.stream_window_size),
        },
    )
    # (Settings made so hold at once, and h2 read this one at its making.)
    connection.max_inbound_frame_size = connection.local_settings.max_frame_size
    # HPACK is decoded whole up to a hard limit (beyond it, the connection fails: the
    # decoder's state cannot be trusted); a list over the advertised limit but under
    # that one is answered 431 on its stream, and the connection goes on.
    connection.decoder.max_header_list_size = max(
        2 * limits.header_list_size, _HARD_HEADER_LIST_SIZE
    )
    return connection


def queue_head(
    h2_connection: h2.connection.H2Connection,
    stream_id: int,
    fields: list[tuple[bytes, bytes]],
    end: bool,
) -> None:
    """Queue a response head (``:status`` first; END_STREAM when ``end``) on a server's
    h2 connection: what h2's ``send_headers`` queues, byte for byte, with the same state
    changes, but the HEADERS and CONTINUATION frames made here rather than as h2's frame
    objects (which, with h2's checks and logging on the way, cost more than the HPACK
    encoding). A stream's first head that is not 1xx only; h2's ``send_headers``, which
    raises what is wrong, for anything else (trailers, 1xx, a stream not open for
    sending)."""
    stream = h2_connection.streams.get(stream_id)
    if (
        stream is None
        or stream.state_machine.headers_sent
        or stream.state_machine.state not in _SENDING
        or h2_connection.state_machine.state is not ConnectionState.SERVER_OPEN
        or fields[0][1].startswith(b"1")
    ):
        h2_connection.send_headers(stream_id, fields, end_stream=end)
        return
    # In h2's order: the state changes before the encoding, which changes the
    # connection's HPACK state for good.
    h2_connection.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
    stream.state_machine.process_input(StreamInputs.SEND_HEADERS)
    block = h2_connection.encoder.encode(fields)
    if end:
        stream.state_machine.process_input(StreamInputs.SEND_END_STREAM)
    largest = h2_connection.max_outbound_frame_size
    tail = stream_id.to_bytes(4)
    first = block[:largest]
    flags = (_END_STREAM if end else 0) | (_END_HEADERS if len(block) <= largest else 0)
    frames = [len(first).to_bytes(3), bytes((_HEADERS, flags)), tail, first]
    for start in range(largest, len(block), largest):
        piece = block[start : start + largest]
        last = _END_HEADERS if start + largest >= len(block) else 0
        frames += (len(piece).to_bytes(3), bytes((_CONTINUATION, last)), tail, piece)
    h2_connection._data_to_send += b"".join(frames)


def _window_update(stream_id: int, increment: int) -> bytes:
    """A WINDOW_UPDATE frame: ``increment`` more bytes for the stream (0: connection)."""
    return _WINDOW_UPDATE_HEAD + stream_id.to_bytes(4) + increment.to_bytes(4)


def _max_frame_size(window: int) -> int:
    """The SETTINGS_MAX_FRAME_SIZE duplex advertises: a stream's window (a DATA frame
    never exceeds it anyway), so that a peer sends a request body in as few frames as
    flow control allows (each frame costs its parsing and events); within what HTTP/2
    permits (RFC 9113 §6.5.2). A frame is buffered whole before it is parsed: this is
    what one connection may buffer of a frame."""
    return max(_MIN_FRAME_SIZE, min(window, _MAX_FRAME_SIZE))


def _list_size(event: h2.events.RequestReceived) -> int:
    """The size of a request's header list as SETTINGS_MAX_HEADER_LIST_SIZE counts it."""
    return sum(len(name) + len(value) + _FIELD_OVERHEAD for name, value in event.headers or ())
