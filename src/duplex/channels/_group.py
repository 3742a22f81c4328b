"""Groups of channels that receive the same broadcasts."""

from __future__ import annotations

import inspect
import sys
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Literal, TypeAlias

import trio

from ..sse import Event
from ._channel import Channel
from ._messages import Message, Stamped, event_id, stamp

__all__ = ["Broadcast", "ChannelGroup"]

Broadcast: TypeAlias = "Message | Callable[[Channel, Any], Any]"


class ChannelGroup:
    """Channels of any transport that receive the same broadcasts.

    ``broadcast`` never waits for a member: it queues the message on each channel
    (``Channel.offer``). A member whose queue is full — ``max_queue`` messages, or
    ``max_queue_bytes`` — is handled by ``when_full``: ``"close"`` (the default) closes
    it with status ``"too-slow"``; ``"drop-oldest"`` drops its oldest queued messages.
    So a slow member never stalls the others and never holds more than about the bound.

    A message is delivered as it was given: bytes stay bytes, byte-exact, text stays
    text (an SSE member, whose transport carries text, gets bytes decoded as UTF-8).
    With ``history=N`` the last N broadcast messages are kept, numbered; an SSE client
    that reconnects with ``Last-Event-ID`` gets what it missed when its channel is
    added. Closed channels leave by themselves.
    """

    def __init__(
        self,
        *,
        max_queue: int = 1024,
        max_queue_bytes: int = 1 << 20,
        when_full: Literal["close", "drop-oldest"] = "close",
        history: int = 0,
    ) -> None:
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.when_full = when_full
        self._members: dict[Channel, Any] = {}
        self._history: deque[Stamped | Event] = deque(maxlen=history)
        self._keep_history = history > 0
        self._next_id = 1

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, channel: object) -> bool:
        return channel in self._members

    def __iter__(self) -> Iterator[Channel]:
        return iter(list(self._members))

    def items(self) -> list[tuple[Channel, Any]]:
        """Every member with its attachment."""
        return list(self._members.items())

    @property
    def history(self) -> list[Event]:
        """The messages kept for replay, oldest first, as the events an SSE member
        receives (with their ids)."""
        return [entry.event if isinstance(entry, Stamped) else entry for entry in self._history]

    def add(self, channel: Channel, attachment: Any = None) -> None:
        """Add ``channel`` (with state for ``broadcast`` functions to use).

        If the group keeps history and the channel came with a ``Last-Event-ID``, the
        messages after that id are queued for it at once (all kept ones if the id is no
        longer in the history).
        """
        if not channel.is_open:
            return
        self._members[channel] = attachment
        channel.add_close_callback(self.discard)
        if self._keep_history and channel.last_event_id is not None:
            missed = self._missed(channel.last_event_id)
            # The client asked for all of it: the replay may exceed the queue's bounds
            # (the history bounds it).
            for entry in missed:
                channel.offer(
                    entry,
                    max_queue=self.max_queue + len(missed),
                    max_queue_bytes=sys.maxsize,
                    when_full=self.when_full,
                )

    def _missed(self, last_event_id: str) -> list[Stamped | Event]:
        entries = list(self._history)
        for index, entry in enumerate(entries):
            if event_id(entry) == last_event_id:
                return entries[index + 1 :]
        return entries

    def discard(self, channel: Channel) -> None:
        """Remove ``channel`` if it is a member."""
        if self._members.pop(channel, self) is not self:
            channel.remove_close_callback(self.discard)

    def offer(self, channel: Channel, message: Message | Stamped, close: bool = False) -> bool:
        """Queue ``message`` for the one member ``channel``, as ``broadcast`` does (the
        group's bounds and ``when_full``); False if it was not queued."""
        delivered = channel.offer(
            message,
            close,
            max_queue=self.max_queue,
            max_queue_bytes=self.max_queue_bytes,
            when_full=self.when_full,
        )
        if not delivered and not channel.is_open:
            self.discard(channel)
        return delivered

    def _stamp(self, message: Message) -> Stamped | Event:
        """Number a broadcast message and remember it (the group keeps history)."""
        entry = stamp(message, str(self._next_id))
        self._next_id += 1
        self._history.append(entry)
        return entry

    async def broadcast(self, message: Broadcast, *, close: bool = False) -> int:
        """Queue ``message`` for every member; return how many took it.

        ``message`` may be a function ``fn(channel, attachment)`` (plain or async) that
        returns the member's message, or None to skip it. With ``close=True`` each
        member closes after the message (a long-poll answer). Messages given as values
        are kept in the history; per-member messages are not.
        """
        await trio.lowlevel.checkpoint()
        if not callable(message):
            entry: Message | Stamped = self._stamp(message) if self._keep_history else message
            delivered = 0
            max_queue, max_bytes, when_full = self.max_queue, self.max_queue_bytes, self.when_full
            for channel in list(self._members):
                if channel.offer(
                    entry,
                    close,
                    max_queue=max_queue,
                    max_queue_bytes=max_bytes,
                    when_full=when_full,
                ):
                    delivered += 1
                elif not channel.is_open:
                    self.discard(channel)
            return delivered
        delivered = 0
        for channel, attachment in list(self._members.items()):
            result = message(channel, attachment)
            if inspect.isawaitable(result):
                result = await result
            if result is not None:
                delivered += self.offer(channel, result, close)
        return delivered
