"""The values an HTTP exchange is made of: Headers, Request, Response, Streamable."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, overload
from urllib.parse import unquote

import trio

from .._body import Readable
from .._stream import Stream

if TYPE_CHECKING:
    from ._takeover import Takeover

__all__ = [
    "Body",
    "ExchangeNursery",
    "Headers",
    "HeadersLike",
    "Request",
    "Response",
    "Streamable",
]

HeadersLike: TypeAlias = (
    "Headers | Mapping[str, str] | Mapping[bytes, bytes]"
    " | Iterable[tuple[str | bytes, str | bytes]]"
)

# RFC 9110 token characters for field names; values are visible characters, obs-text,
# spaces and tabs. Anything else (CR, LF, NUL, other controls) could split a message.
_log = logging.getLogger("duplex.server")

_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")


# Fields validated lately, by (name, value) as given: a handler tends to send the same
# few headers on every response. Bounded; emptied when full.
_fields: dict[tuple[str | bytes, str | bytes], tuple[bytes, bytes]] = {}
_MAX_FIELDS = 512


def _as_bytes(value: str | bytes, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"{what} {value!r} is not latin-1; encode it first") from None


def validate_field_value(value: bytes, what: str = "header value") -> bytes:
    """Return ``value`` if it cannot inject a line; raise ``ValueError`` otherwise."""
    if _VALUE.fullmatch(value) is None:
        raise ValueError(f"{what} {value!r} contains CR, LF, NUL or another control character")
    return value


class Headers:
    """Case-insensitive HTTP header fields that keep repeated names and their order.

    Names and values are read as ``str`` (latin-1); ``raw`` holds the wire form, names
    lower-cased. Built from a mapping or from ``(name, value)`` pairs; every name and
    value is validated, so no header can inject a line.
    """

    __slots__ = ("_raw",)

    def __init__(self, headers: HeadersLike | None = None) -> None:
        self._raw: list[tuple[bytes, bytes]] = []
        if headers is None:
            return
        if isinstance(headers, Headers):
            self._raw = list(headers._raw)
            return
        # (A dict is the common case: no check against the Mapping ABC for it.)
        items: Iterable[tuple[str | bytes, str | bytes]] = (
            headers.items() if type(headers) is dict or isinstance(headers, Mapping) else headers
        )
        for name, value in items:
            self.add(name, value)

    @classmethod
    def from_fields(cls, raw: list[tuple[bytes, bytes]]) -> Headers:
        """Wrap pairs h11 already validated and lower-cased (no copy, no checks)."""
        headers = cls.__new__(cls)
        headers._raw = raw
        return headers

    @property
    def raw(self) -> list[tuple[bytes, bytes]]:
        """The fields as ``(lower-case name, value)`` byte pairs, in order."""
        return self._raw

    def add(self, name: str | bytes, value: str | bytes) -> None:
        """Append a field, keeping any others of the same name."""
        key = (name, value)
        field = _fields.get(key)
        if field is None:
            raw_name = _as_bytes(name, "header name").lower()
            if _NAME.fullmatch(raw_name) is None:
                raise ValueError(f"invalid header name {name!r}")
            raw_value = validate_field_value(_as_bytes(value, "header value").strip(b" \t"))
            field = (raw_name, raw_value)
            if len(_fields) >= _MAX_FIELDS:
                _fields.clear()
            _fields[key] = field
        self._raw.append(field)

    def __setitem__(self, name: str, value: str) -> None:
        """Replace every field called ``name`` with one holding ``value``."""
        del self[name]
        self.add(name, value)

    def __delitem__(self, name: str) -> None:
        key = _as_bytes(name, "header name").lower()
        self._raw = [item for item in self._raw if item[0] != key]

    def __getitem__(self, name: str) -> str:
        """The first value of ``name``; ``KeyError`` if absent."""
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...
    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default``."""
        key = name.lower().encode("latin-1")
        for raw_name, raw_value in self._raw:
            if raw_name == key:
                return raw_value.decode("latin-1")
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order."""
        key = name.lower().encode("latin-1")
        return [value.decode("latin-1") for raw_name, value in self._raw if raw_name == key]

    def get_tokens(self, name: str) -> list[str]:
        """The comma-separated tokens of every ``name`` field, lower-cased and stripped."""
        return [
            token.strip().lower()
            for value in self.get_all(name)
            for token in value.split(",")
            if token.strip()
        ]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = name.lower().encode("latin-1")
        return any(raw_name == key for raw_name, _ in self._raw)

    def __iter__(self) -> Iterator[str]:
        return (name.decode("latin-1") for name, _ in self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def items(self) -> list[tuple[str, str]]:
        """Every field as ``(name, value)``, repeated names included."""
        return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in self._raw]

    def copy(self) -> Headers:
        return Headers(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return self._raw == other._raw
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"


class Streamable:
    """A response body written by ``fn(stream)`` once the response head is sent.

    ``stream`` is ``Stream(request.body, <response output>)``: ``fn`` reads the request
    body and writes the response body at the same time. When ``fn`` returns, the
    response ends; if it raises, the connection is cut.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Stream], Awaitable[object]]) -> None:
        self.fn = fn

    def __repr__(self) -> str:
        return f"Streamable({self.fn!r})"


Body: TypeAlias = (
    "bytes | bytearray | memoryview | str | Readable | AsyncIterable[bytes] | Streamable | Takeover"
)


class Response:
    """An HTTP response: a status, headers, and a body that may stream.

    ``body`` is bytes or str (sent with Content-Length; str as UTF-8), a ``Readable``
    (Content-Length when its length is known, else chunked), an async iterable of bytes
    (chunked), or a ``Streamable``. ``trailers`` are sent after a chunked body.
    Header values and the reason phrase are checked here: CR, LF and NUL raise
    ``ValueError``.
    """

    __slots__ = ("body", "headers", "reason", "status", "trailers")

    def __init__(
        self,
        status: int = 200,
        headers: HeadersLike | None = None,
        body: Body = b"",
        *,
        reason: str | bytes = b"",
        trailers: HeadersLike | None = None,
    ) -> None:
        if not 100 <= status <= 999:
            raise ValueError(f"invalid status code {status}")
        self.status = status
        self.headers = Headers(headers)
        self.reason = (
            validate_field_value(_as_bytes(reason, "reason phrase"), "reason phrase")
            if reason
            else b""
        )
        if type(body) is bytes:
            pass
        elif isinstance(body, str):
            body = body.encode()
            if "content-type" not in self.headers:
                self.headers.add("content-type", "text/plain; charset=utf-8")
        elif isinstance(body, bytearray | memoryview):
            body = bytes(body)
        self.body: bytes | Readable | AsyncIterable[bytes] | Streamable | Takeover = body
        self.trailers = Headers(trailers) if trailers is not None else None

    def __repr__(self) -> str:
        return f"<Response {self.status} body={type(self.body).__name__}>"


class ExchangeNursery:
    """``request.nursery``: a trio nursery for tasks that live as long as the exchange.

    ``start_soon`` and ``start`` work as trio's. One difference: a task that ends with
    ``trio.BrokenResourceError`` or ``trio.ClosedResourceError`` — the peer went away,
    or the body it wrote to was closed — ends alone, without cancelling the exchange;
    any other exception cuts the exchange short, as in any nursery.
    """

    __slots__ = ("_nursery",)

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    @property
    def cancel_scope(self) -> trio.CancelScope:
        """Cancelled when the peer goes away, and when the exchange is over."""
        return self._nursery.cancel_scope

    def start_soon(
        self, async_fn: Callable[..., Awaitable[object]], *args: object, name: object = None
    ) -> None:
        self._nursery.start_soon(_ending_alone, async_fn, *args, name=name or async_fn)

    async def start(
        self, async_fn: Callable[..., Awaitable[object]], *args: object, name: object = None
    ) -> Any:
        return await self._nursery.start(_ending_alone, async_fn, *args, name=name or async_fn)


async def _ending_alone(
    async_fn: Callable[..., Awaitable[object]],
    *args: object,
    task_status: trio.TaskStatus[Any] | None = None,
) -> None:
    try:
        if task_status is None:
            await async_fn(*args)
        else:
            await async_fn(*args, task_status=task_status)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
        _log.debug("a task of the exchange stopped: %r", error)


class NurserySource(Protocol):
    """What makes ``request.nursery`` when a handler first asks for it (its exchange)."""

    def make_tasks(self) -> ExchangeNursery: ...


class Request:
    """An HTTP request as a handler sees it.

    ``body`` streams while the handler runs (a ``Readable``: ``b""`` at the end; it raises
    ``trio.BrokenResourceError`` if the peer goes away mid-body). ``nursery`` holds tasks
    that live as long as the exchange and are cancelled when the peer goes away.
    """

    __slots__ = (
        "_nursery",
        "body",
        "client",
        "headers",
        "http_version",
        "method",
        "scheme",
        "target",
    )

    def __init__(
        self,
        method: str,
        target: str,
        headers: Headers,
        body: Readable,
        *,
        http_version: str = "1.1",
        nursery: ExchangeNursery | None = None,
        client: tuple[str, int] | None = None,
        scheme: str = "http",
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.http_version = http_version
        self._nursery: ExchangeNursery | NurserySource | None = nursery
        self.client = client
        self.scheme = scheme

    def set_nursery(self, nursery: ExchangeNursery | NurserySource) -> None:
        """Bind the request to its exchange's nursery, or to what makes it on first
        use (the server does, once)."""
        self._nursery = nursery

    @property
    def nursery(self) -> ExchangeNursery:
        """Tasks bound to this exchange; cancelled when the peer goes away."""
        nursery = self._nursery
        if nursery is None:
            raise RuntimeError("this request is not part of a running exchange")
        if not isinstance(nursery, ExchangeNursery):
            nursery = self._nursery = nursery.make_tasks()
        return nursery

    @property
    def path(self) -> str:
        """The target's path, percent-decoded."""
        return unquote(self.target.partition("?")[0])

    @property
    def query(self) -> str:
        """The target's query string, as sent (without the ``?``)."""
        return self.target.partition("?")[2]

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target}>"
