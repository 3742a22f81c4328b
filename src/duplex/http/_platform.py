"""The one switch between duplex's fast Linux path and plain trio.

The fast path reads and writes sockets directly (``os.read``, ``os.writev``), peeks at
them without waiting (``MSG_DONTWAIT``), and watches parked exchanges through one epoll
set. Where any of that is missing, or where the portable path is forced (the
``DUPLEX_PORTABLE`` environment variable, or ``force_portable()`` in tests), duplex does
everything through trio's own streams and still serves. A server or client asks
``capabilities()`` when it starts, never at import.
"""

from __future__ import annotations

import os
import select
import socket
from dataclasses import dataclass

__all__ = ["Capabilities", "capabilities", "force_portable"]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What this platform offers duplex's fast path; all False on the portable path."""

    #: Read and write sockets directly, peek without waiting (``os.read``/``os.writev``,
    #: ``MSG_PEEK | MSG_DONTWAIT``).
    direct_io: bool
    #: Watch many parked exchanges through one epoll set.
    epoll: bool
    #: Several processes listen on one port (``SO_REUSEPORT``).
    reuse_port: bool

    @property
    def fast(self) -> bool:
        """True when any fast path is on."""
        return self.direct_io or self.epoll


_PORTABLE = Capabilities(direct_io=False, epoll=False, reuse_port=False)
_forced: bool | None = None


def force_portable(portable: bool | None) -> None:
    """Force the portable path on (True) or off (False) for servers and clients started
    from now on; None goes back to the environment's choice."""
    global _forced
    _forced = portable


def _portable_requested() -> bool:
    if _forced is not None:
        return _forced
    return os.environ.get("DUPLEX_PORTABLE", "") not in ("", "0")


def capabilities() -> Capabilities:
    """What the fast path may use here, now."""
    if _portable_requested():
        return _PORTABLE
    direct_io = (
        hasattr(os, "writev")
        and hasattr(socket, "MSG_DONTWAIT")
        and hasattr(socket, "MSG_PEEK")
        and hasattr(select, "poll")
    )
    return Capabilities(
        direct_io=direct_io,
        # Parking peeks at parked sockets without waiting: it needs direct I/O too.
        epoll=direct_io and hasattr(select, "epoll"),
        reuse_port=hasattr(socket, "SO_REUSEPORT"),
    )
