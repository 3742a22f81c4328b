"""duplex: bidirectional byte streams over HTTP, on Trio."""

from ._body import Buffered, Readable, Writable
from ._errors import IncompleteRead, ProtocolError, Timeout
from ._stream import Stream
from .http import Handler, Headers, Limits, PeerGone, Request, Response, Server, Streamable, serve

__all__ = [
    "Buffered",
    "Handler",
    "Headers",
    "IncompleteRead",
    "Limits",
    "PeerGone",
    "ProtocolError",
    "Readable",
    "Request",
    "Response",
    "Server",
    "Stream",
    "Streamable",
    "Timeout",
    "Writable",
    "serve",
]

__version__ = "0.1.0"
