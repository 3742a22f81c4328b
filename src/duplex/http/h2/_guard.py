"""What an HTTP/2 peer may ask of the server for nothing, and how fast.

Some frames cost the server work but carry no request: a stream reset as soon as it
is opened (the "rapid reset" attack: the handler starts, then is cancelled), SETTINGS
and PING frames (each must be answered), empty DATA, PRIORITY and unknown frames. A
peer gets a budget of each, refilled with time (a token bucket): enough for any client
that means well, from browsers to gRPC keepalives, and a firm end for one that floods.
A peer over its budget gets GOAWAY (ENHANCE_YOUR_CALM) and the connection closes.

The other attacks are bounded elsewhere: h2 refuses a header block of more than 64
CONTINUATION frames and one that decodes past ``max_header_list_size`` (an HPACK bomb);
``max_concurrent_streams`` bounds the handlers running at once; each stream's window
bounds what it buffers; ``write_timeout`` ends a stream whose window never opens.
"""

from __future__ import annotations

from collections.abc import Iterable

import h2.events

__all__ = ["Budget", "FloodGuard"]

#: The fewest resets a peer may make at once (and a second), however low its limit.
RESET_FLOOR = 100
#: Frames that must be answered (SETTINGS, PING): a burst of this many, then this many
#: a second.
CONTROL_BURST, CONTROL_RATE = 100, 50.0
#: Frames that carry nothing (empty DATA without END_STREAM, PRIORITY, unknown types).
EMPTY_BURST, EMPTY_RATE = 100, 100.0


class Budget:
    """A token bucket: ``burst`` at once, refilled at ``rate`` a second."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, burst: float, rate: float) -> None:
        self.burst = burst
        self.rate = rate
        self.tokens = burst
        self.stamp: float | None = None

    def spend(self, now: float, count: int = 1) -> bool:
        """Take ``count`` tokens at time ``now`` (seconds); False if there are not that
        many (the budget is then empty)."""
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < count:
            self.tokens = 0.0
            return False
        self.tokens -= count
        return True


class FloodGuard:
    """The budgets of one connection.

    Resets: a peer may reset twice its concurrent stream limit of streams at once (and
    at least ``RESET_FLOOR``), and as many a second: a browser cancelling a page's
    fetches, or a client dropping every response of a server with a low limit, stays
    below.
    """

    __slots__ = ("control", "empty", "resets")

    def __init__(self, max_concurrent_streams: int) -> None:
        streams = max(2 * max_concurrent_streams, RESET_FLOOR)
        self.resets = Budget(streams, float(streams))
        self.control = Budget(CONTROL_BURST, CONTROL_RATE)
        self.empty = Budget(EMPTY_BURST, EMPTY_RATE)

    def flood(self, events: Iterable[h2.events.Event], now: float) -> str:
        """What a batch of events received at ``now`` floods the server with ("" for
        nothing). Asked before the batch is acted on, so that a flood starts no handler."""
        resets = control = empty = 0
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                if not event.data and event.stream_ended is None:
                    empty += 1
            elif isinstance(event, h2.events.StreamReset):
                if event.remote_reset:
                    resets += 1
            elif isinstance(event, (h2.events.RemoteSettingsChanged, h2.events.PingReceived)):
                control += 1
            elif isinstance(event, (h2.events.PriorityUpdated, h2.events.UnknownFrameReceived)):
                empty += 1
        if resets and not self.resets.spend(now, resets):
            return "streams reset as soon as they open"
        if control and not self.control.spend(now, control):
            return "SETTINGS or PING frames"
        if empty and not self.empty.spend(now, empty):
            return "frames that carry nothing"
        return ""
