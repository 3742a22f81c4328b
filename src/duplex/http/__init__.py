"""HTTP/1.1 on h11: the full-duplex server, its models and limits."""

from ._limits import Limits
from ._models import Headers, Request, Response, Streamable
from ._server import Handler, PeerGone, Server, serve

__all__ = [
    "Handler",
    "Headers",
    "Limits",
    "PeerGone",
    "Request",
    "Response",
    "Server",
    "Streamable",
    "serve",
]
