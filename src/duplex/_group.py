"""Groups of channels that receive the same broadcasts."""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Literal, TypeAlias

import trio

from ._channel import Channel, Message
from .sse import Event

__all__ = ["ChannelGroup"]

Broadcast: TypeAlias = "Message | Callable[[Channel, Any], Any]"


class ChannelGroup:
    """Channels of any transport that receive the same broadcasts.

    ``broadcast`` never waits for a member: it queues the message on each channel
    (``Channel.offer``). A member whose queue already holds ``max_queue`` messages is
    handled by ``when_full``: ``"close"`` (the default) closes it with status
    ``"too-slow"``; ``"drop-oldest"`` drops its oldest queued message. So a slow member
    never stalls the others and never holds more than ``max_queue`` messages.

    With ``history=N`` the last N broadcast messages are kept as ``sse.Event`` with ids;
    an SSE client that reconnects with ``Last-Event-ID`` gets what it missed when its
    channel is added. Closed channels leave by themselves.
    """

    def __init__(
        self,
        *,
        max_queue: int = 1024,
        when_full: Literal["close", "drop-oldest"] = "close",
        history: int = 0,
    ) -> None:
        self.max_queue = max_queue
        self.when_full = when_full
        self._members: dict[Channel, Any] = {}
        self._history: deque[Event] = deque(maxlen=history)
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
        """The events kept for replay, oldest first."""
        return list(self._history)

    def add(self, channel: Channel, attachment: Any = None) -> None:
        """Add ``channel`` (with state for ``broadcast`` functions to use).

        If the group keeps history and the channel came with a ``Last-Event-ID``, the
        events after that id are queued for it at once (all kept events if the id is no
        longer in the history).
        """
        if not channel.is_open:
            return
        self._members[channel] = attachment
        channel._groups.add(self)
        if self._keep_history and channel.last_event_id is not None:
            missed = self._missed(channel.last_event_id)
            # The client asked for all of it: the replay may exceed ``max_queue``.
            limit = self.max_queue + len(missed)
            for event in missed:
                channel.offer(event, max_queue=limit, when_full=self.when_full)

    def _missed(self, last_event_id: str) -> list[Event]:
        events = list(self._history)
        for index, event in enumerate(events):
            if event.id == last_event_id:
                return events[index + 1 :]
        return events

    def discard(self, channel: Channel) -> None:
        """Remove ``channel`` if it is a member."""
        self._members.pop(channel, None)
        channel._groups.discard(self)

    def _stamp(self, message: Message) -> Message:
        """Give a broadcast message an id and remember it, when keeping history."""
        if isinstance(message, bytes):
            message = message.decode("utf-8", errors="replace")
        if isinstance(message, str):
            event = Event(message, id=str(self._next_id))
        elif message.id is None:
            event = Event(message.data, message.event, str(self._next_id), message.retry)
        else:
            event = message
        self._next_id += 1
        self._history.append(event)
        return event

    def _offer(self, channel: Channel, message: Message, close: bool) -> bool:
        delivered = channel.offer(
            message, close, max_queue=self.max_queue, when_full=self.when_full
        )
        if not delivered and not channel.is_open:
            self.discard(channel)
        return delivered

    async def broadcast(self, message: Broadcast, *, close: bool = False) -> int:
        """Queue ``message`` for every member; return how many took it.

        ``message`` may be a function ``fn(channel, attachment)`` (plain or async) that
        returns the member's message, or None to skip it. With ``close=True`` each
        member closes after the message (a long-poll answer). Messages given as values
        are kept in the history; per-member messages are not.
        """
        await trio.lowlevel.checkpoint()
        if not callable(message):
            if self._keep_history:
                message = self._stamp(message)
            delivered = 0
            max_queue, when_full = self.max_queue, self.when_full
            for channel in list(self._members):
                if channel.offer(message, close, max_queue=max_queue, when_full=when_full):
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
                delivered += self._offer(channel, result, close)
        return delivered
