"""A channel's queue: the messages it took and has not written yet, bounded in number
and in bytes."""

from __future__ import annotations

from collections import deque

import trio

from ._messages import Message

__all__ = ["MessageQueue"]

#: The queue of a channel that has queued nothing yet (never appended to).
_EMPTY: deque[tuple[Message, int]] = deque(maxlen=0)


class MessageQueue:
    """Messages waiting to go out, each with its size (see ``size_of``).

    ``bytes`` counts a message from when it is queued until ``release`` says it was
    written — a batch taken for writing still counts — so that a client that reads
    nothing holds at most about the byte bound, however the writing is batched.
    """

    __slots__ = ("_items", "_room", "bytes")

    def __init__(self) -> None:
        # Made when first needed: an idle channel has no deque and no parking lot.
        self._items = _EMPTY
        self._room: trio.lowlevel.ParkingLot | None = None
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def messages(self) -> list[Message]:
        """The queued messages, oldest first (a copy)."""
        return [message for message, _ in self._items]

    def fits(self, size: int, max_messages: int, max_bytes: int) -> bool:
        """True if a message of ``size`` bytes stays within both bounds. A message larger
        than ``max_bytes`` fits only when nothing is pending at all."""
        return len(self._items) < max_messages and (
            self.bytes == 0 or self.bytes + size <= max_bytes
        )

    def append(self, message: Message, size: int) -> None:
        if self._items is _EMPTY:
            self._items = deque()
        self._items.append((message, size))
        self.bytes += size

    def drop_oldest(self) -> bool:
        """Drop the oldest queued message; False if none was queued."""
        if not self._items:
            return False
        _, size = self._items.popleft()
        self.bytes -= size
        return True

    def take(self) -> tuple[list[Message], int]:
        """Everything queued, and its bytes, which count until ``release``d."""
        items = self._items
        batch = [message for message, _ in items]
        size = sum(size for _, size in items)
        items.clear()
        self.wake_senders()  # the count bound has room again
        return batch, size

    def release(self, size: int) -> None:
        """``size`` bytes taken have been written: there is room for that much more."""
        self.bytes -= size
        self.wake_senders()

    def clear(self) -> None:
        """Drop everything queued (nothing more will go out)."""
        while self.drop_oldest():
            pass
        self.wake_senders()

    async def wait_for_room(self) -> None:
        """Wait until messages are written or dropped, or ``wake_senders`` is called."""
        if self._room is None:
            self._room = trio.lowlevel.ParkingLot()
        await self._room.park()

    def wake_senders(self) -> None:
        if self._room is not None:
            self._room.unpark_all()
