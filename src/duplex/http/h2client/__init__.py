"""HTTP/2 for the client: h2 connections shared by concurrent exchanges, one per
stream, full duplex on each."""

from ._connection import H2ClientConnection, StreamRefused
from ._exchange import H2Exchange, H2ResponseBody, StreamReset

__all__ = ["H2ClientConnection", "H2Exchange", "H2ResponseBody", "StreamRefused", "StreamReset"]
