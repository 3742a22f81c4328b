"""Limits and timeouts for the server, each a named option with a default."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ClientLimits", "Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """What a server accepts before it answers with an error status and closes.

    Sizes are in bytes, times in seconds; ``None`` switches a limit off.
    """

    #: The whole request head, however it arrives (431 beyond it).
    max_header_size: int = 16384
    #: The request line alone (414 beyond it).
    max_request_line: int = 8192
    #: A request body, Content-Length or chunked (413 beyond it).
    max_body_size: int | None = 1 << 30
    #: Deadline for a whole request head, from connect or the previous response (408).
    header_timeout: float | None = 10.0
    #: How long an idle keep-alive connection waits for its next request.
    keep_alive_timeout: float | None = 5.0
    #: Longest wait for any progress reading a request body the handler wants.
    read_timeout: float | None = 60.0
    #: Longest wait for the peer to take any of the response (a write to the socket).
    write_timeout: float | None = 60.0
    #: Requests served on one connection before it closes.
    max_requests_per_connection: int | None = None
    #: Connections served at once; more are answered 503 and closed.
    max_connections: int = 10000
    #: How long ``shutdown()`` lets exchanges in flight finish before cancelling them.
    shutdown_grace: float = 10.0
    #: Request body left unread when the response ends: drained up to this, else close.
    max_drain_size: int = 65536
    #: How long a connection that closes with a request body unread (an early answer,
    #: a body over ``max_drain_size``) goes on reading and dropping it, so that a
    #: client which writes its whole body before it reads still receives the response.
    linger_timeout: float = 5.0
    #: The most it reads and drops then.
    max_linger_size: int = 1 << 26
    #: Unused: a request body is read from the socket as the handler reads it, with no
    #: queue in between (kept so that code which sets it keeps working).
    body_buffer_size: int = 65536
    #: Bytes asked of the socket in one read (between the chunks of a chunked request
    #: body, whole chunks with their framing, so that each arrives whole).
    read_size: int = 65536
    #: HTTP/2: streams a connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS);
    #: a peer that opens more than it acknowledged gets GOAWAY (PROTOCOL_ERROR).
    max_concurrent_streams: int = 100
    #: HTTP/2: the flow-control window of each request body (SETTINGS_INITIAL_WINDOW_SIZE):
    #: what a stream buffers at most while its handler does not read. The connection's
    #: window is this times ``max_concurrent_streams``, so that streams a handler does
    #: not read never hold back the others.
    stream_window_size: int = 65535
    #: HTTP/2: the decoded header block of a request (SETTINGS_MAX_HEADER_LIST_SIZE);
    #: None: ``max_header_size``.
    max_header_list_size: int | None = None

    @property
    def header_list_size(self) -> int:
        """``max_header_list_size``, or ``max_header_size`` where it is None."""
        if self.max_header_list_size is None:
            return self.max_header_size
        return min(self.max_header_list_size, self.max_header_size)


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """Timeouts and pool sizes for ``duplex.Client``; ``None`` switches a limit off.

    A timeout that expires raises ``duplex.Timeout`` naming its phase.
    """

    #: Opening a connection, TLS handshake included.
    connect_timeout: float | None = 10.0
    #: Longest wait for any progress reading the response (head, interim heads or body).
    read_timeout: float | None = 60.0
    #: Longest wait for the server to take any of the request.
    write_timeout: float | None = 60.0
    #: Longest wait for a free connection when the origin is at its maximum.
    pool_timeout: float | None = 10.0
    #: Connections to one origin (scheme, host, port) at once, busy or idle.
    max_connections_per_origin: int = 100
    #: Idle keep-alive connections kept per origin.
    max_idle_connections: int = 20
    #: How long an idle connection is kept before it is closed instead of reused; below
    #: a duplex server's keep_alive_timeout (5 s), so that it never reuses a connection
    #: the server is closing.
    idle_expiry: float | None = 4.0
    #: The whole response head, however it arrives, with every interim (1xx) head
    #: before it (the client's defence against a hostile server).
    max_response_header_size: int = 65536
    #: Bytes asked of the socket in one read.
    read_size: int = 65536
