"""duplex: bidirectional byte streams over HTTP, on Trio."""

from . import sse, websocket
from ._body import Buffered, Readable, Writable
from ._errors import IncompleteRead, ProtocolError, Timeout
from ._stream import Stream
from ._version import __version__
from ._workers import WorkersFailed, serve_workers
from .channels import (
    BroadcastError,
    Channel,
    ChannelGroup,
    CloseStatus,
    RedisChannelGroup,
    channel,
)
from .http import (
    Client,
    ClientLimits,
    ClientResponse,
    ExchangeNursery,
    Handler,
    Headers,
    Lifespan,
    Limits,
    PeerGone,
    Request,
    Response,
    Server,
    Streamable,
    TooManyRedirects,
    run,
    serve,
)

__all__ = [
    "BroadcastError",
    "Buffered",
    "Channel",
    "ChannelGroup",
    "Client",
    "ClientLimits",
    "ClientResponse",
    "CloseStatus",
    "ExchangeNursery",
    "Handler",
    "Headers",
    "IncompleteRead",
    "Lifespan",
    "Limits",
    "PeerGone",
    "ProtocolError",
    "Readable",
    "RedisChannelGroup",
    "Request",
    "Response",
    "Server",
    "Stream",
    "Streamable",
    "Timeout",
    "TooManyRedirects",
    "WorkersFailed",
    "Writable",
    "__version__",
    "channel",
    "run",
    "serve",
    "serve_workers",
    "sse",
    "websocket",
]
