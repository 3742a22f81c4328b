"""What a channel sends: text, bytes or an SSE event; and a broadcast message that a
group's history numbered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from ..sse import Event

__all__ = ["Message", "Stamped", "event_id", "not_a_message", "size_of", "stamp"]

Message: TypeAlias = "str | bytes | Event"


@dataclass(frozen=True, slots=True)
class Stamped:
    """A broadcast message with the id a group's history gave it.

    An SSE member receives ``event`` (the message as an event carrying the id, so that
    a client reconnecting with ``Last-Event-ID`` resumes after it); every other member
    receives ``message`` exactly as it was given: bytes stay bytes, text stays text.
    """

    message: str | bytes
    event: Event


def stamp(message: Message, id: str) -> Stamped | Event:
    """``message`` numbered ``id`` (an event keeps its own id if it has one)."""
    if isinstance(message, Event):
        if message.id is not None:
            return message
        return Event(message.data, message.event, id, message.retry)
    text = message if isinstance(message, str) else message.decode("utf-8", errors="replace")
    return Stamped(message, Event(text, id=id))


def event_id(message: object) -> str | None:
    """The history id ``message`` carries, if any."""
    if isinstance(message, Stamped):
        return message.event.id
    if isinstance(message, Event):
        return message.id
    return None


def _text_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def size_of(message: Message) -> int:
    """The bytes ``message`` counts against a channel's queue bound (its data, UTF-8).

    Raises ``TypeError`` for anything a channel cannot send.
    """
    if isinstance(message, bytes):
        return len(message)
    if isinstance(message, str):
        return _text_size(message)
    if isinstance(message, Event):
        return _text_size(message.data)
    raise not_a_message(message)


def not_a_message(value: object) -> TypeError:
    """The error for sending ``value``, which a channel cannot send."""
    return TypeError(f"a channel sends str, bytes or sse.Event, not {type(value).__name__}")
