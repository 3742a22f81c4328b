"""HTTP/1.1 on h11: the full-duplex server, its models and limits."""

from ._client import Client, ClientResponse, RequestBody, TooManyRedirects
from ._limits import ClientLimits, Limits
from ._models import ExchangeNursery, Headers, Request, Response, Streamable
from ._server import Handler, Lifespan, PeerGone, Server, run, serve

__all__ = [
    "Client",
    "ClientLimits",
    "ClientResponse",
    "ExchangeNursery",
    "Handler",
    "Headers",
    "Lifespan",
    "Limits",
    "PeerGone",
    "Request",
    "RequestBody",
    "Response",
    "Server",
    "Streamable",
    "TooManyRedirects",
    "run",
    "serve",
]
