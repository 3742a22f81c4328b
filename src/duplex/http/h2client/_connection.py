"""The client's side of an HTTP/2 connection: h2 over one trio stream, shared by many
exchanges (``_exchange``), one per stream.

One task reads the socket and hands each event to its stream; one task writes what h2
has to send, so that the reader never waits on a full socket (a server blocked on
writing to us would then never read again). Senders put frames into h2, move its bytes
to the connection's own outbound buffer at once, and wait while that buffer holds more
than ``_DRAIN_SIZE``: the socket's pace is everyone's back-pressure.

Flow control: the connection's window is given back as data arrives (a stream's window
bounds what it may buffer), each stream's only as its reader reads.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from math import inf
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import trio
from trio.lowlevel import ParkingLot

from ..._errors import ProtocolError, Timeout
from ..._foreign import mapped
from .._transport import close_nowait

if TYPE_CHECKING:
    from ._exchange import H2Exchange

__all__ = ["H2ClientConnection", "StreamRefused"]

log = logging.getLogger("duplex.client")

#: Unwritten outbound bytes a sender may leave queued before it waits for the socket.
_DRAIN_SIZE = 65536
#: The most one DATA frame carries (the least every server takes), whatever larger
#: frames the server allows: it bounds what senders queue over ``_DRAIN_SIZE``.
_MAX_FRAME_SIZE = 16384
#: Outbound bytes the socket has not taken beyond which the server is taken to flood
#: us with frames that need answers (senders wait at ``_DRAIN_SIZE`` each, one frame
#: of 16 KiB per stream at most over it).
_MAX_UNWRITTEN = 1000 * _MAX_FRAME_SIZE + (1 << 20)
#: The connection's receive window: given back as data arrives, so it never holds a
#: stream back; large so that the server is never held back by the round trip either.
_CONNECTION_WINDOW = 1 << 24
_ENDED_BY_SERVER = (h2.stream.StreamState.CLOSED, h2.stream.StreamState.HALF_CLOSED_REMOTE)
#: Bytes received before the connection's window is given back (one WINDOW_UPDATE).
_CONNECTION_ACK_SIZE = 1 << 20

_ConnectionState = h2.connection.ConnectionState
_ConnectionInputs = h2.connection.ConnectionInputs

#: h2's connection states, plus what a connection may still do once the server's
#: GOAWAY arrived: everything for the streams it goes on serving, nothing that opens a
#: new one. (h2 closes the whole connection at a GOAWAY; RFC 9113 §6.8 lets the streams
#: up to its last id finish, and frames for them may follow the GOAWAY in one read.)
_TRANSITIONS: dict[Any, Any] = {
    **h2.connection.H2ConnectionStateMachine._transitions,
    **{
        (_ConnectionState.CLOSED, each): (None, _ConnectionState.CLOSED)
        for each in _ConnectionInputs
        if each
        not in (
            _ConnectionInputs.SEND_HEADERS,
            _ConnectionInputs.SEND_PUSH_PROMISE,
            _ConnectionInputs.RECV_PUSH_PROMISE,
        )
    },
}


class StreamRefused(ProtocolError):
    """The server never processed the stream (above a GOAWAY's last stream id, or
    refused with REFUSED_STREAM): the request may be sent again on a new connection.
    ``unsent`` is True when nothing of it went out (the connection had its GOAWAY
    already): even a streamed body, untouched, may go again."""

    def __init__(self, message: str, *, unsent: bool = False) -> None:
        super().__init__(message)
        self.unsent = unsent


class H2ClientConnection:
    """One HTTP/2 connection to one origin, carrying up to the server's
    ``SETTINGS_MAX_CONCURRENT_STREAMS`` exchanges at once.

    ``run`` (a task in the client's nursery) reads and writes until the connection
    ends; it never raises. ``on_change`` is called when the connection may take more
    streams, or none ever again (the pool's cue).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_header_list_size: int,
        read_size: int,
        idle_expiry: float | None = None,
        on_change: Callable[[H2ClientConnection], None],
    ) -> None:
        self.stream = stream
        self._read_size = read_size
        self._idle_expiry = idle_expiry
        self._idle_since = trio.current_time()
        self._on_change = on_change
        config = h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_inbound_headers=True
        )
        self.h2 = h2.connection.H2Connection(config)
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list_size,
            },
        )
        self.h2.state_machine._transitions = _TRANSITIONS
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(_CONNECTION_WINDOW - 65535)
        #: The exchanges under way, by stream id.
        self.exchanges: dict[int, H2Exchange] = {}
        #: Streams promised to requests that have not opened them yet.
        self.reserved = 0
        #: True once the server's GOAWAY came: no new stream goes out here.
        self.goaway = False
        #: Why the connection ended, once it has (then it is closed).
        self.error: BaseException | None = None
        #: True if it ended by the server's close or a broken socket (not a protocol
        #: error, nor our own close).
        self.cut_off = False
        #: Bytes read from the socket so far.
        self.bytes_received = 0
        #: Streams opened on it so far.
        self.streams_opened = 0
        self.closed = False
        self._outbound = bytearray()
        self._queued = 0  # bytes ever put in the outbound buffer
        self._written = 0  # bytes of those written to the socket
        self._dirty = trio.Event()
        self._flushed = ParkingLot()
        self._unacked = 0  # connection window consumed and not given back yet
        self._scope = trio.CancelScope()
        # The server's limit is unknown until its SETTINGS arrive (right after its
        # preface): one stream until then, so that a burst of requests never goes
        # over a limit the server set and we have not read yet.
        self._stream_cap = 1
        #: Set once the server's first SETTINGS arrived, or the connection ended.
        self.settings_received = trio.Event()
        self.pull()

    # -- what the pool asks ----------------------------------------------------------

    @property
    def max_streams(self) -> int:
        """Streams the server lets us open at once (1 until its SETTINGS say)."""
        return min(self.h2.remote_settings.max_concurrent_streams, self._stream_cap)

    @property
    def settled(self) -> bool:
        """True once the server's first SETTINGS arrived (its stream limit is known)."""
        return self._stream_cap > 1

    def reserve(self) -> bool:
        """Promise a stream to a request, if the connection can carry one more. A
        connection idle for longer than ``idle_expiry`` closes instead (a server closes
        idle connections: the request would race its GOAWAY)."""
        if self.closed or self.goaway or len(self.exchanges) + self.reserved >= self.max_streams:
            return False
        expiry = self._idle_expiry
        if expiry is not None and self.is_idle and trio.current_time() - self._idle_since > expiry:
            self.close()
            return False
        if self.h2.highest_outbound_stream_id is not None and (
            self.h2.highest_outbound_stream_id + 2 * (self.reserved + 1) >= 1 << 31
        ):
            self._end_soon()  # stream ids run out: a new connection takes over
            return False
        self.reserved += 1
        return True

    def unreserve(self) -> None:
        """A promised stream was never opened (the request failed or was cancelled)."""
        self.reserved -= 1
        self._stream_freed()

    @property
    def is_idle(self) -> bool:
        return not self.exchanges and not self.reserved

    # -- streams ---------------------------------------------------------------------

    def open_stream(
        self, exchange: H2Exchange, headers: list[tuple[bytes, bytes]], end: bool
    ) -> int:
        """Send ``headers`` on a new stream (ending it if ``end``) for ``exchange``,
        taking a reserved slot; its id. Raises ``trio.BrokenResourceError`` if the
        connection has ended, ``StreamRefused`` if it takes no new stream, and
        ``ProtocolError`` (500) for headers HTTP/2 refuses; the slot stays reserved
        then (see ``unreserve``)."""
        self.check()
        if self.goaway:
            raise StreamRefused(
                "the server takes no new stream on this connection (GOAWAY)", unsent=True
            )
        stream_id = self.h2.get_next_available_stream_id()
        with mapped():
            self.h2.send_headers(stream_id, headers, end_stream=end)
        self.reserved -= 1
        self.streams_opened += 1
        self.exchanges[stream_id] = exchange
        self.pull()
        return stream_id

    def stream_done(self, stream_id: int) -> None:
        """The exchange on ``stream_id`` ended: its stream is free again."""
        if self.exchanges.pop(stream_id, None) is not None:
            self._stream_freed()

    def _stream_freed(self) -> None:
        if self.is_idle:
            self._idle_since = trio.current_time()
            if self.goaway:
                self.close()
        self._on_change(self)

    def reset(
        self, stream_id: int, code: h2.errors.ErrorCodes = h2.errors.ErrorCodes.CANCEL
    ) -> None:
        """End a stream at once (RST_STREAM), unless it has ended already."""
        if self.closed:
            return
        with contextlib.suppress(trio.BrokenResourceError), mapped():
            self.h2.reset_stream(stream_id, code)  # closed already: nothing to reset
        self.pull()

    def give_back(self, stream_id: int, size: int) -> None:
        """The reader of ``stream_id`` took ``size`` bytes: the server may send them
        again (WINDOW_UPDATE)."""
        if self.closed or size <= 0:
            return
        # A stream the server has ended takes no more: there is no window to give it
        # (asking h2 would raise, and a raise is dear: a response's last read gets here).
        stream = self.h2.streams.get(stream_id)
        if stream is None or stream.state_machine.state in _ENDED_BY_SERVER:
            return
        with contextlib.suppress(trio.BrokenResourceError, KeyError), mapped():
            self.h2.increment_flow_control_window(size, stream_id)
        self.pull()

    def window(self, stream_id: int) -> int:
        """Bytes ``stream_id`` may send now (stream and connection windows, one frame
        at most); 0 while the server holds it back. Raises
        ``trio.BrokenResourceError`` once the stream or the connection has ended."""
        self.check()
        with mapped():
            window = self.h2.local_flow_control_window(stream_id)
        return min(window, self.h2.max_outbound_frame_size, _MAX_FRAME_SIZE)

    def send_data(self, stream_id: int, data: bytes, *, end: bool = False) -> None:
        """Queue ``data`` (at most ``window``) on ``stream_id``, ending the stream if
        ``end``. Raises ``trio.BrokenResourceError`` once it cannot carry more."""
        self.check()
        with mapped():
            if data:
                self.h2.send_data(stream_id, data)
            if end:
                self.h2.end_stream(stream_id)
        self.pull()

    def check(self) -> None:
        """Raise ``trio.BrokenResourceError`` (the reason as ``__cause__``) once the
        connection has ended."""
        if self.closed:
            broken = trio.BrokenResourceError(f"the HTTP/2 connection ended: {self.error}")
            broken.__cause__ = self.error
            raise broken

    # -- writing ---------------------------------------------------------------------

    def pull(self) -> None:
        """Move what h2 has to send into the outbound buffer, for the writer."""
        data = self.h2.data_to_send()
        if data:
            self._outbound += data
            self._queued += len(data)
            self._dirty.set()

    async def drain(self, timeout: float | None) -> None:
        """Wait while more than ``_DRAIN_SIZE`` bytes wait for the socket. A
        checkpoint. Raises ``duplex.Timeout("write")`` after ``timeout`` seconds without
        the socket taking them, ``trio.BrokenResourceError`` if the connection ends."""
        await trio.lowlevel.checkpoint_if_cancelled()
        mark = self._queued - _DRAIN_SIZE
        with trio.move_on_after(inf if timeout is None else timeout) as scope:
            while self._written < mark:
                self.check()
                await self._flushed.park()
        if scope.cancelled_caught:
            raise Timeout("write", timeout or 0.0)
        self.check()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def _write_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            while self._outbound:
                data, self._outbound = self._outbound, bytearray()
                await self.stream.send_all(data)
                self._written += len(data)
                self._flushed.unpark_all()

    # -- reading ---------------------------------------------------------------------

    async def run(self) -> None:
        """Read and write until the connection ends; never raises (the reason goes to
        every stream on it)."""
        error: BaseException | None = None
        try:
            with self._scope:
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._write_loop)
                        await self._read_loop()
                except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
                    error = _first(group)
                    self.cut_off = not isinstance(error, _ServerBrokeHTTP2)
            if error is None:
                error = trio.ClosedResourceError("the HTTP/2 connection was closed")
            self._end(error)
        finally:
            # h2's table of its own bound methods, one per frame type, makes each of
            # its connections a cycle that only the garbage collector would undo; this
            # task was the only reader of frames (cancelled from outside too).
            self.h2._frame_dispatch_table.clear()

    async def _read_loop(self) -> None:
        h = self.h2
        while True:
            data = await self.stream.receive_some(self._read_size)
            if not data:
                raise ProtocolError("the server closed the HTTP/2 connection")
            self.bytes_received += len(data)
            try:
                with mapped():
                    events = h.receive_data(data)
            except trio.BrokenResourceError as error:
                self.pull()  # h2's GOAWAY, on its way as the connection ends
                cause = error.__cause__
                raise _ServerBrokeHTTP2(f"the server broke HTTP/2: {cause}") from cause
            for event in events:
                self._dispatch(event)
            if self._unacked >= _CONNECTION_ACK_SIZE and not self.closed:
                h.increment_flow_control_window(self._unacked)
                self._unacked = 0
            self.pull()
            if len(self._outbound) > _MAX_UNWRITTEN:
                # Answers (PING, SETTINGS acknowledgements) pile up: the server sends
                # frames that ask for them and does not read.
                raise _ServerBrokeHTTP2("the server does not read what it asks us to send")

    def _dispatch(self, event: Any) -> None:
        kind = type(event)
        stream_id = getattr(event, "stream_id", None)
        exchange = self.exchanges.get(stream_id) if stream_id else None
        if kind is h2.events.DataReceived:
            self._unacked += event.flow_controlled_length
            if exchange is not None:
                exchange.on_data(event.data, event.flow_controlled_length)
        elif kind is h2.events.ResponseReceived:
            if exchange is not None:
                exchange.on_head(event.headers)
        elif kind is h2.events.TrailersReceived:
            if exchange is not None:
                exchange.on_trailers(event.headers)
        elif kind is h2.events.StreamEnded:
            if exchange is not None:
                exchange.on_end()
        elif kind is h2.events.StreamReset:
            if exchange is not None:
                exchange.on_reset(event.error_code)
        elif kind is h2.events.WindowUpdated:
            if stream_id:
                if exchange is not None:
                    exchange.on_window()
            else:
                self._wake_senders()
        elif kind is h2.events.RemoteSettingsChanged:
            self._stream_cap = 1000
            self.settings_received.set()
            self._wake_senders()
            self._on_change(self)
        elif kind is h2.events.ConnectionTerminated:
            self._on_goaway(event)

    def _wake_senders(self) -> None:
        for exchange in list(self.exchanges.values()):
            exchange.on_window()

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        """The server takes no new stream: those above its last stream id were never
        processed (they may be sent again elsewhere); the others go on, unless the
        GOAWAY reports an error."""
        self.goaway = True
        last = event.last_stream_id if event.last_stream_id is not None else 0
        code = event.error_code
        log.debug("GOAWAY (%s, last stream %d)", code, last)
        reason = ProtocolError(f"the server ended the HTTP/2 connection ({code!s})")
        for stream_id, exchange in list(self.exchanges.items()):
            if stream_id > last:
                exchange.on_refused()
            elif code != h2.errors.ErrorCodes.NO_ERROR:
                exchange.on_connection_error(reason)
        if code != h2.errors.ErrorCodes.NO_ERROR:
            self.error = reason
        self._on_change(self)
        if self.is_idle or code != h2.errors.ErrorCodes.NO_ERROR:
            self.close()

    # -- the end ---------------------------------------------------------------------

    def _end_soon(self) -> None:
        self.goaway = True
        if self.is_idle:
            self.close()

    async def say_goodbye(self) -> None:
        """Send GOAWAY (NO_ERROR: no stream more comes from us) and return once the
        socket took it, or at once if the connection ended. The caller bounds the wait,
        then closes. A checkpoint."""
        if not self.closed:
            # (h2 refuses when it ended the connection already: nothing to say then.)
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection()
            self.pull()
            mark = self._queued
            while self._written < mark and not self.closed:
                await self._flushed.park()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """Close the connection at once (the socket, without a goodbye: see
        ``say_goodbye``); every stream still on it breaks. Idempotent, never a
        checkpoint."""
        self._end(self.error or trio.ClosedResourceError("the HTTP/2 connection was closed"))

    def _end(self, error: BaseException) -> None:
        if self.closed:
            return
        self.closed = True
        self.error = error
        self._scope.cancel()
        close_nowait(self.stream)
        for exchange in list(self.exchanges.values()):
            exchange.on_connection_error(error)
        self.exchanges.clear()
        self._flushed.unpark_all()
        self.settings_received.set()
        self._on_change(self)


class _ServerBrokeHTTP2(ProtocolError):
    """What the server sent is not HTTP/2 as h2 knows it."""


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
