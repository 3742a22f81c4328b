"""Channels: one object per client connection over plain HTTP (chunked or long-poll),
Server-Sent Events or WebSocket, and groups of them that broadcast.

- ``_channel``: ``Channel`` and ``channel()``, the API a handler sees;
- ``_lifecycle``: its states and the moves between them;
- ``_runner``: the task that drives a channel over its exchange;
- ``_transports``: what each transport puts on the wire;
- ``_queue``, ``_messages``, ``_hooks``, ``_status``: the parts they share;
- ``_websocket``: the WebSocket protocol (wsproto over a trio stream);
- ``_group``, ``_redis``: ``ChannelGroup`` and ``RedisChannelGroup``.
"""

from ._channel import Channel, channel
from ._group import ChannelGroup
from ._messages import Message
from ._redis import BroadcastError, RedisChannelGroup
from ._status import CloseStatus

__all__ = [
    "BroadcastError",
    "Channel",
    "ChannelGroup",
    "CloseStatus",
    "Message",
    "RedisChannelGroup",
    "channel",
]
