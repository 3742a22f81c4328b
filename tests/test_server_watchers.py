"""The watcher that looks for a peer leaving mid-exchange shares the socket with the
exchange's reader: on the portable path it reads what the peer sends while nobody else
does and keeps it (``stash``) for the connection, in order. The reader cancels it before
it reads the socket itself; from then on the watcher must read nothing, or bytes it took
could be kept ahead of bytes the reader had read just before (a request body garbled:
the full-duplex echo tests met it now and then under load).
"""

from __future__ import annotations

import socket

import trio
import trio.testing

from duplex.http._transport import Receiver
from helpers import TIMEOUT

#: Each attempt wakes the watcher and the reader in one batch of trio's scheduler, whose
#: order is random: the reader goes first about every other time.
ATTEMPTS = 40


async def read_and_watch_once() -> bytes:
    """The peer sends ``0``, which the watcher keeps; then ``123``, while a reader woken
    with the watcher cancels it and reads one byte. Returns what the watcher kept and
    the reader read, joined in the order each was handed on."""
    peer, theirs = socket.socketpair()
    bell, bell_ringer = socket.socketpair()
    with peer, theirs, bell, bell_ringer:
        receiver = Receiver(
            trio.SocketStream(trio.socket.from_stdlib_socket(theirs)),
            read_size=65536,
            direct_io=False,
        )
        handed_on: list[bytes] = []

        def stash(data: bytes) -> int:
            if data:  # (b"" only asks how much it may keep)
                handed_on.append(data)
            return 65536

        async def watch(scope: trio.CancelScope) -> None:
            with scope:
                await receiver.wait_peer_gone(stash)

        async def read(scope: trio.CancelScope) -> None:
            await trio.lowlevel.wait_readable(bell)
            # The reader takes the socket over, as a request body's reader does.
            scope.cancel()
            handed_on.append(await receiver.read_some(max_bytes=1))

        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()
            peer.send(b"0")
            nursery.start_soon(watch, scope)
            nursery.start_soon(read, scope)
            await trio.testing.wait_all_tasks_blocked()
            assert handed_on == [b"0"]
            # Both wake in the same turn: the bytes for the watcher, the bell for the
            # reader (sent with no checkpoint in between).
            peer.send(b"123")
            bell_ringer.send(b"!")
            await trio.testing.wait_all_tasks_blocked()
            # (If the watcher went first and took everything, the reader reads the end.)
            peer.shutdown(socket.SHUT_WR)
        return b"".join(handed_on)


async def test_a_watcher_cancelled_as_it_wakes_keeps_nothing_ahead_of_the_reader() -> None:
    with trio.fail_after(TIMEOUT):
        for _ in range(ATTEMPTS):
            handed_on = await read_and_watch_once()
            assert b"0123".startswith(handed_on), f"out of order: {handed_on!r}"
