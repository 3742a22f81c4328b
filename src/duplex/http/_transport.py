"""The socket under every connection, server and client: reads and writes bounded in
time, and nothing of HTTP grammar.

This module is also the one place where socket errors become duplex's (``Timeout``,
trio's resource errors).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
from collections.abc import Awaitable, Callable
from math import inf
from typing import Any, Protocol, runtime_checkable

import trio

from .._errors import Timeout
from .._foreign import translate

__all__ = ["InMemoryStream", "Receiver", "Transport", "close_nowait", "peek_gone", "raw_socket"]


@runtime_checkable
class InMemoryStream(Protocol):
    """A stream with no socket under it that can still be closed at once and tell when
    its peer has gone (``duplex.testing``'s in-memory connections)."""

    def close_nowait(self) -> None: ...

    async def wait_peer_gone(self) -> None: ...


def raw_socket(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The socket under ``stream`` (through TLS), or None for other transports."""
    while True:
        if isinstance(stream, trio.SocketStream):
            return stream.socket
        if isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
            continue
        return None


def close_nowait(stream: trio.abc.Stream) -> None:
    """Close ``stream`` at once, with no checkpoint and no goodbye (TLS's included): its
    socket, or an ``InMemoryStream`` itself; other streams are left as they are."""
    sock = raw_socket(stream)
    if sock is not None:
        sock.close()
    elif isinstance(stream, InMemoryStream):
        stream.close_nowait()


def peek_gone(sock: trio.socket.SocketType | None) -> bool | None:
    """Whether the peer of ``sock`` has closed or reset the connection, by a peek that
    reads nothing: True if it has (or the socket is closed), False if data waits unread
    (then it cannot be told), None if there is nothing to see yet."""
    if sock is None:
        return None
    fd = sock.fileno()
    if fd < 0:
        return True
    # A stdlib socket object over the same descriptor, for the one non-blocking peek
    # that trio's socket does not offer; detached so that it closes nothing.
    peek = socket.socket(sock.family, sock.type, sock.proto, fileno=fd)
    try:
        data = peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None  # outside the handler: nothing of the exception stays alive
    except OSError:
        return True
    finally:
        peek.detach()
    return not data


#: Socket operations that may complete without waiting before the task yields to the
#: scheduler anyway, so that a peer that always has data ready cannot starve the others
#: (two: a keep-alive connection yields once per request, as fair as trio's own streams).
_BUDGET = 2
# What a transport has pending while it has nothing pending: one list for all (never
# changed in place), rather than one empty list per connection.
_NOTHING_PENDING: list[Any] = []
#: Pieces at most in one scatter-gather write (well under any system's IOV_MAX).
_MAX_PIECES = 64


class Receiver:
    """One trio stream's receiving side, each read bounded in time, and the watch for its
    peer leaving. On a plain TCP stream on the fast path the socket is read directly:
    a read the socket can complete at once costs no trip through trio's scheduler and no
    cancel scope; only one that must wait enters a deadline and yields. (Each is still a
    cancellation point, and every ``_BUDGET`` operations yield regardless.) Other
    streams (TLS, the portable path) go through the stream's own methods.
    """

    __slots__ = (
        "_budget",
        "_fast",
        "_socket",
        "bytes_received",
        "direct",
        "read_size",
        "stream",
        "yields",
    )

    def __init__(self, stream: trio.abc.Stream, *, read_size: int, direct_io: bool) -> None:
        self.stream = stream
        self.read_size = read_size
        # The fast path (see _platform): the socket itself, read and written directly
        # (plain TCP), and the peer's leaving seen through epoll (TLS too).
        self._fast = direct_io
        self._socket = stream.socket if direct_io and type(stream) is trio.SocketStream else None
        #: True when the socket is read and written directly (plain TCP, fast path).
        self.direct = self._socket is not None
        self._budget = _BUDGET
        #: Bytes received from the socket since the connection opened.
        self.bytes_received = 0
        #: How often an operation yielded to trio's scheduler (so that a caller can
        #: tell whether it still owes its own caller a checkpoint).
        self.yields = 0

    # -- receiving --------------------------------------------------------------------

    def read_nowait(self, max_bytes: int | None = None) -> bytes | None:
        """Read once from the socket if that needs no wait: the bytes (at most
        ``max_bytes``, else ``read_size``; ``b""`` at EOF), or None if it would block or
        the transport is not a plain socket.

        Raises ``trio.BrokenResourceError`` if the connection broke, and
        ``trio.ClosedResourceError`` if it was closed here.
        """
        sock = self._socket
        if sock is None:
            return None
        fd = sock.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("the connection is closed")
        try:
            data = os.read(fd, self.read_size if max_bytes is None else max_bytes)
        except BlockingIOError:
            return None  # an idle connection keeps no exception alive
        except OSError as error:
            raise translate(error) from error
        self.bytes_received += len(data)
        return data

    async def read_some(
        self,
        timeout: float | None = None,
        phase: str = "read",
        *,
        deadline: float = inf,
        max_bytes: int | None = None,
    ) -> bytes:
        """Read once from the socket (at most ``max_bytes``, else ``read_size``); ``b""``
        at EOF.

        Raises ``duplex.Timeout`` after ``timeout`` seconds without data (or once
        ``deadline`` passes), ``trio.BrokenResourceError`` if the connection broke, and
        ``trio.ClosedResourceError`` if it was closed here.
        """
        sock = self._socket
        if sock is None:
            if timeout is not None:
                deadline = min(deadline, trio.current_time() + timeout)
            size = self.read_size if max_bytes is None else max_bytes
            self.yields += 1
            if deadline == inf:
                data = await self.stream.receive_some(size)
            else:
                with trio.move_on_at(deadline) as scope:
                    data = await self.stream.receive_some(size)
                if scope.cancelled_caught:
                    raise Timeout(phase, 0.0 if timeout is None else timeout)
            self.bytes_received += len(data)
            return data if type(data) is bytes else bytes(data)
        await trio.lowlevel.checkpoint_if_cancelled()
        while (got := self.read_nowait(max_bytes)) is None:
            await self._wait(trio.lowlevel.wait_readable, sock, timeout, phase, deadline)
        await self.spend()
        return got

    async def read_when_ready(
        self,
        timeout: float | None = None,
        phase: str = "read",
        *,
        deadline: float = inf,
        max_bytes: int | None = None,
    ) -> bytes:
        """``read_some`` for a caller that has just found the socket empty
        (``read_nowait`` returned None): wait first, then read. On the fast path only
        (``direct``); raises as ``read_some``."""
        sock = self._socket
        assert sock is not None
        while True:
            await self._wait(trio.lowlevel.wait_readable, sock, timeout, phase, deadline)
            got = self.read_nowait(max_bytes)
            if got is not None:
                self._budget -= 1  # (as ``spend``: the wait has just yielded)
                return got

    async def wait_readable(self, timeout: float | None = None, phase: str = "read") -> None:
        """Wait until the socket has bytes (or its end) to read, on the fast path only
        (``direct``); a checkpoint. Raises ``duplex.Timeout`` after ``timeout`` seconds,
        and ``trio.ClosedResourceError`` if the socket is closed meanwhile."""
        sock = self._socket
        assert sock is not None
        await self._wait(trio.lowlevel.wait_readable, sock, timeout, phase)

    async def _wait(
        self,
        wait: Callable[[trio.socket.SocketType], Awaitable[None]],
        sock: trio.socket.SocketType,
        timeout: float | None,
        phase: str,
        deadline: float = inf,
    ) -> None:
        """Wait until ``sock`` is ready, within ``timeout`` seconds and ``deadline``."""
        self._budget = _BUDGET  # waiting yields to the others anyway
        self.yields += 1
        if timeout is not None:
            deadline = min(deadline, trio.current_time() + timeout)
        if deadline == inf:
            await wait(sock)
            return
        with trio.move_on_at(deadline) as scope:
            await wait(sock)
        if scope.cancelled_caught:
            raise Timeout(phase, 0.0 if timeout is None else timeout)

    async def spend(self) -> None:
        """Count an operation that did not wait; yield once the budget is spent."""
        self._budget -= 1
        if self._budget <= 0:
            self._budget = _BUDGET
            self.yields += 1
            await trio.lowlevel.cancel_shielded_checkpoint()

    def socket(self) -> trio.socket.SocketType | None:
        """The socket under the stream (through TLS), or None for other transports."""
        return raw_socket(self.stream)

    def fileno(self) -> int:
        """The socket's descriptor (-1 when there is none, or it is closed)."""
        sock = self.socket()
        return -1 if sock is None else sock.fileno()

    async def wait_peer_gone(self, stash: Callable[[bytes], int] | None = None) -> None:
        """Return once the peer has closed or reset the connection.

        It peeks at the socket. Once unread data is waiting (a pipelined request, or
        stray bytes), the peer closing its side is still seen on the fast path (Linux's
        ``EPOLLRDHUP``, reading nothing). On the portable path the data is read and
        handed to ``stash``, which returns how many more bytes it takes (a bound: the
        connection keeps them for the next request); once it takes no more, or without
        a stash, or over TLS, this waits forever. Cancellation is checked before every
        look, so that a watcher cancelled while it was being woken never waits on a
        socket that another task reads by then. With no socket, an ``InMemoryStream``
        says when its peer has gone; any other stream, never.
        """
        sock = raw_socket(self.stream)
        if sock is None:
            if isinstance(self.stream, InMemoryStream):
                await self.stream.wait_peer_gone()
                return
            await trio.sleep_forever()
            return
        if not self._fast:
            plain = type(self.stream) is trio.SocketStream
            await _wait_gone_portably(sock, stash if plain else None)
            return
        while True:
            await trio.lowlevel.checkpoint_if_cancelled()
            gone = peek_gone(sock)
            if gone is None:
                await trio.lowlevel.wait_readable(sock)
            elif gone:
                return
            else:
                await _wait_hangup(sock)
                return

    async def aclose(self) -> None:
        """Close the transport (idempotent, a checkpoint, closes even if cancelled)."""
        await trio.aclose_forcefully(self.stream)


class Transport(Receiver):
    """Reads and writes one trio stream, each operation bounded in time.

    Writes are serialised here (one sender at a time, in order), and, like reads, go to
    the socket directly on the fast path, waiting (within ``write_timeout``) only when
    the socket is full. A write stopped part-way cuts the connection (``broken``).
    """

    __slots__ = (
        "_abortable",
        "_pending",
        "_send_waiters",
        "_sending",
        "broken",
        "clogged",
        "write_timeout",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        read_size: int = 65536,
        write_timeout: float | None = None,
        direct_io: bool = True,
    ) -> None:
        super().__init__(stream, read_size=read_size, direct_io=direct_io)
        self.write_timeout = write_timeout
        # The scope of a send waiting for the socket, which ``abort_send`` cancels.
        self._abortable: trio.CancelScope | None = None
        # A flag and a parking lot rather than a trio.Lock: the lock's own checkpoint
        # would cost a trip through the scheduler on every send.
        self._sending = False
        # Made when a second sender must wait (most connections never have one).
        self._send_waiters: trio.lowlevel.ParkingLot | None = None
        # Bytes that ``write_nowait`` committed but the socket did not take yet: they go
        # out first with the next send (or ``flush``).
        self._pending: list[Any] = _NOTHING_PENDING
        #: Set when a send stopped part-way (cancelled, timed out, failed): the peer
        #: holds part of a message, so nothing more may be sent on this connection.
        self.broken = False
        #: Set while a wait for room in the socket has not seen it (see ``wait_writable``).
        self.clogged = False

    def write_nowait(self, pieces: list[Any]) -> bool | None:
        """Write ``pieces`` without waiting, for a sender that must not block.

        Returns None, having done nothing, when they cannot go out at once in order
        (another send in flight, bytes already pending, a transport other than plain
        TCP); True once the socket took all of them; False when it took only part (or
        none): the rest is committed and goes out first with the next send or ``flush``,
        which the caller must then await. Raises ``trio.BrokenResourceError`` if the
        connection broke.
        """
        sock = self._socket
        if sock is None or self._sending or self._pending or self.clogged:
            return None
        fd = sock.fileno()
        if fd < 0:
            return None
        try:
            sent = os.write(fd, pieces[0]) if len(pieces) == 1 else os.writev(fd, pieces)
        except BlockingIOError:
            sent = 0
        except OSError as error:
            raise translate(error) from error
        index = 0
        for piece in pieces:
            size = len(piece)
            if sent < size:
                break
            sent -= size
            index += 1
        else:
            return True  # (no copy of the list when all went out: the usual case)
        rest = pieces[index:]
        if sent:
            rest[0] = memoryview(rest[0])[sent:]
        self._pending = rest
        return False

    async def flush(self) -> None:
        """Write what ``write_nowait`` left pending (as ``send_pieces`` writes)."""
        await self.send_pieces([])

    async def send_raw(self, data: bytes) -> None:
        """Write bytes to the socket, serialised with other senders.

        Raises ``duplex.Timeout("write")`` if the peer takes none of it within
        ``write_timeout``, ``trio.BrokenResourceError`` if the connection broke.
        """
        await self.send_pieces([data])

    async def _take_sending(self) -> None:
        while self._sending:
            if self._send_waiters is None:
                self._send_waiters = trio.lowlevel.ParkingLot()
            await self._send_waiters.park()
        self._sending = True

    def _release_sending(self) -> None:
        self._sending = False
        if self._send_waiters is not None:
            self._send_waiters.unpark()

    async def send_pieces(self, pieces: list[Any]) -> None:
        """Write ``pieces`` in order, as ``send_raw`` writes one (the list is consumed)."""
        if self._sending:
            await self._take_sending()
        else:
            self._sending = True
        committed = bool(self._pending)
        if committed:
            pieces = self._pending + pieces
            self._pending = _NOTHING_PENDING
        try:
            if self.broken:
                raise trio.BrokenResourceError(
                    "an earlier write stopped part-way: the connection is cut"
                )
            sock = self._socket
            if sock is None:
                await self._send_through_stream(pieces)
            else:
                await self._send_to_socket(sock, pieces, committed)
        finally:
            self._sending = False
            if self._send_waiters is not None:
                self._send_waiters.unpark()

    async def _send_through_stream(self, pieces: list[Any]) -> None:
        data = b"".join(pieces) if len(pieces) != 1 else pieces[0]
        if not data:
            await trio.lowlevel.checkpoint()
            return
        timeout = self.write_timeout
        try:
            with trio.CancelScope() as aborted:
                self._abortable = aborted
                with trio.move_on_after(inf if timeout is None else timeout) as timed_out:
                    if self.clogged:
                        await self.stream.wait_send_all_might_not_block()
                        self.clogged = False
                    await self.stream.send_all(data)
        except BaseException:
            # How much of it went out cannot be told: nothing more may follow.
            self.cut()
            raise
        finally:
            self._abortable = None
        if aborted.cancelled_caught:
            self.cut()
            raise trio.ClosedResourceError("the send was aborted")
        if timed_out.cancelled_caught:
            self.cut()
            raise Timeout("write", 0.0 if timeout is None else timeout)

    async def _send_to_socket(
        self, sock: trio.socket.SocketType, pieces: list[Any], committed: bool
    ) -> None:
        pieces = [piece for piece in pieces if piece]
        partial = False
        waited = False
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self.clogged and pieces:
                await self._wait_to_send(sock)
                self.clogged = False
                waited = True
            if len(pieces) > _MAX_PIECES:
                pieces = [b"".join(pieces)]
            while pieces:
                fd = sock.fileno()
                if fd < 0:
                    raise trio.ClosedResourceError("the connection is closed")
                try:
                    sent = os.writev(fd, pieces) if len(pieces) > 1 else os.write(fd, pieces[0])
                except BlockingIOError:
                    await self._wait_to_send(sock)
                    waited = True
                    continue
                except OSError as error:
                    raise translate(error) from error
                # Drop what the socket took; a partly written piece goes on as a view.
                if sent:
                    partial = True
                while pieces and sent >= len(pieces[0]):
                    sent -= len(pieces.pop(0))
                if sent:
                    pieces[0] = memoryview(pieces[0])[sent:]
        except BaseException:
            # Stopped part-way (cancelled, timed out, broken), or before bytes already
            # promised to the peer went out: what it holds is not a whole message.
            if pieces and (committed or partial):
                self.cut()
            raise
        if not waited:
            await self.spend()

    async def _wait_to_send(self, sock: trio.socket.SocketType) -> None:
        """Wait until ``sock`` takes more (within ``write_timeout``); only a send that
        waits can be aborted, so the scope costs nothing to one that does not."""
        with trio.CancelScope() as aborted:
            self._abortable = aborted
            await self._wait(trio.lowlevel.wait_writable, sock, self.write_timeout, "write")
        self._abortable = None
        if aborted.cancelled_caught:
            raise trio.ClosedResourceError("the send was aborted")

    async def wait_writable(self) -> None:
        """Return when a send might not block (the socket has room); a checkpoint.

        On the portable path, or over TLS, the stream's own
        ``wait_send_all_might_not_block``. ``abort_send`` wakes it with
        ``trio.ClosedResourceError``."""
        sock = self._socket
        if sock is not None and self._pending:
            await self.flush()
            return
        # Until the socket has room again, the next send waits for it first: the kernel
        # takes a small write into a socket that does not report room yet, and a stream
        # that said it may block must not then take a write at once.
        self.clogged = True
        with trio.CancelScope() as aborted:
            self._abortable = aborted
            if sock is not None:
                self.yields += 1
                await trio.lowlevel.wait_writable(sock)
            else:
                # trio's streams allow one sender at a time, waiting included.
                await self._take_sending()
                try:
                    await self.stream.wait_send_all_might_not_block()
                finally:
                    self._release_sending()
        self._abortable = None
        if aborted.cancelled_caught:
            raise trio.ClosedResourceError("the wait was aborted")
        self.clogged = False

    async def send_eof(self) -> None:
        """Shut the write side once what is being sent (and pending) has gone out."""
        await self.send_pieces([])
        await self._take_sending()
        try:
            stream = self.stream
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
            else:
                await trio.lowlevel.checkpoint()
        finally:
            self._release_sending()

    def abort_send(self) -> None:
        """Wake a send that waits for the socket (from any task): it raises
        ``trio.ClosedResourceError`` (cutting the connection if it sent part)."""
        if self._abortable is not None:
            self._abortable.cancel()

    def cut(self) -> None:
        """End what is being sent without ending the message: nothing more is sent,
        and the peer sees the connection end mid-message (its side of the socket is
        shut for writing; reading goes on)."""
        self.broken = True
        sock = raw_socket(self.stream)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)


async def _wait_hangup(sock: trio.socket.SocketType) -> None:
    """Wait for the peer of ``sock`` to close or reset while unread data waits: an epoll
    set of its own that reports only hang-ups (EPOLLRDHUP), where the platform has one;
    elsewhere forever."""
    if not hasattr(select, "epoll"):
        await trio.sleep_forever()
    with select.epoll() as epoll:
        epoll.register(sock.fileno(), select.EPOLLRDHUP)
        await trio.lowlevel.wait_readable(epoll.fileno())


async def _wait_gone_portably(
    sock: trio.socket.SocketType, stash: Callable[[bytes], int] | None
) -> None:
    """``wait_peer_gone`` with trio's socket alone (which never blocks): a peek once the
    socket is readable; then what waits unread is read into ``stash`` while it takes
    any (``stash(b"")`` says how much it takes), and the end seen after it."""
    try:
        data = await sock.recv(1, socket.MSG_PEEK)
        room = 0 if stash is None else stash(b"")
        while data:
            if room <= 0:
                await trio.sleep_forever()
            # Wait, then take and stash with no checkpoint in between: a watcher woken
            # with bytes in hand but cancelled before it could stash them (the request's
            # reader taking over the socket) would stash them after the reader's later
            # bytes, out of order. trio's recv checkpoints after its read; this does not.
            await trio.lowlevel.wait_readable(sock)
            # Nor may a watcher that the reader cancelled as it was being woken read on:
            # the reader's own read (trio's, which yields before its bytes are fed)
            # may hold earlier bytes, and these would be stashed ahead of them.
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                data = _recv_now(sock, room)
            except BlockingIOError:
                continue  # (woken for nothing: wait again)
            if data:
                room = stash(data)  # type: ignore[misc]
    except OSError:
        return


def _recv_now(sock: trio.socket.SocketType, size: int) -> bytes:
    """Read up to ``size`` bytes from ``sock`` without waiting and without a checkpoint
    (raises ``BlockingIOError`` if there are none), through a stdlib socket object over
    the same descriptor, detached afterwards so that it closes nothing."""
    plain = socket.socket(sock.family, sock.type, sock.proto, fileno=sock.fileno())
    try:
        plain.setblocking(False)
        return plain.recv(size)
    finally:
        plain.detach()
