"""The one place where other libraries' exceptions become duplex's.

What the peer or the network does reaches a duplex user as trio's resource errors and
duplex's own (``ProtocolError``, ``Timeout``), never as h11's, h2's, wsproto's, ssl's,
coredis's or the OS's exceptions: those are translated here, once, with the original as
``__cause__``. The table matches by the exception's module and class name along its MRO,
so that an optional library (coredis) is never imported to be matched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import trio

from ._errors import ProtocolError

__all__ = ["mapped", "translate"]


def _peer_broke(error: BaseException) -> BaseException:
    return ProtocolError(str(error), getattr(error, "error_status_hint", 400))


def _cannot_send(error: BaseException) -> BaseException:
    return ProtocolError(f"cannot send this message: {error}", 500)


def _tls_failed(error: BaseException) -> BaseException:
    return ProtocolError(f"the TLS handshake failed: {error}", 400)


def _stream_gone(error: BaseException) -> BaseException:
    return trio.BrokenResourceError(f"the stream is gone: {error}")


def _connection_broke(error: BaseException) -> BaseException:
    return trio.BrokenResourceError(f"the connection broke: {error}")


def _server_broke(error: BaseException) -> BaseException:
    return trio.BrokenResourceError(f"the server broke the connection: {error}")


#: (top-level module, class name) → what it becomes; the first match along the MRO wins.
_TABLE: dict[tuple[str, str], Callable[[BaseException], BaseException]] = {
    ("h11", "RemoteProtocolError"): _peer_broke,
    ("h11", "LocalProtocolError"): _cannot_send,
    ("h2", "StreamClosedError"): _stream_gone,
    ("h2", "ProtocolError"): _cannot_send,
    ("wsproto", "RemoteProtocolError"): _peer_broke,
    ("wsproto", "LocalProtocolError"): _cannot_send,
    ("ssl", "SSLError"): _tls_failed,
    ("coredis", "RedisError"): _server_broke,
    ("builtins", "OSError"): _connection_broke,
}


def translate(error: BaseException) -> BaseException:
    """duplex's exception for ``error`` (with ``error`` as its ``__cause__``), or
    ``error`` itself when it is no other library's."""
    for cls in type(error).__mro__:
        make = _TABLE.get((cls.__module__.partition(".")[0], cls.__name__))
        if make is not None:
            translated = make(error)
            translated.__cause__ = error
            return translated
    return error


@contextmanager
def mapped(*kinds: type[BaseException]) -> Iterator[None]:
    """Translate the exceptions of ``kinds`` raised inside (all of the table's, when
    none are named)."""
    try:
        yield
    except BaseException as error:
        if kinds and not isinstance(error, kinds):
            raise
        translated = translate(error)
        if translated is error:
            raise
        raise translated from error
