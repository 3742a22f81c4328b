"""What the tests share: a time bound for I/O, a producer, and calls run in the background."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

import pytest
import trio
import trio.testing

from duplex import Writable

__all__ = ["TIMEOUT", "Call", "Method", "background", "each_method", "produce"]

T = TypeVar("T")

TIMEOUT = 10.0
"""Seconds any one test may spend on I/O: only a deadlock ever comes close."""


async def produce(body: Writable, chunks: Iterable[bytes]) -> None:
    """Write each chunk, then ``close_write``; stop quietly if the reader gives up."""
    try:
        for chunk in chunks:
            await body.write(chunk)
        await body.close_write()
    except trio.BrokenResourceError:
        pass


class Call(Generic[T]):
    """An async call running in a background task, so a test can see whether it blocks."""

    def __init__(self) -> None:
        self.done = False
        self.error: Exception | None = None
        self._value: T | None = None

    @property
    def blocked(self) -> bool:
        return not self.done

    @property
    def value(self) -> T | None:
        """What the call returned; it must have finished without raising."""
        assert self.done, "the call is still blocked"
        assert self.error is None, f"the call raised {self.error!r}"
        return self._value

    def raised(self, kind: type[Exception]) -> Exception:
        """The exception the call raised, which must be a ``kind``."""
        assert self.done, "the call is still blocked"
        assert isinstance(self.error, kind), f"expected {kind.__name__}, got {self.error!r}"
        return self.error

    async def _run(self, function: Callable[..., Awaitable[T]], *args: object) -> None:
        try:
            self._value = await function(*args)
        except Exception as error:
            self.error = error
        self.done = True


async def background(
    nursery: trio.Nursery, function: Callable[..., Awaitable[T]], *args: object
) -> Call[T]:
    """Start ``function(*args)`` in ``nursery`` and return once every task is blocked."""
    call: Call[T] = Call()
    nursery.start_soon(call._run, function, *args)
    await trio.testing.wait_all_tasks_blocked()
    return call


@dataclass(frozen=True)
class Method(Generic[T]):
    """An async method under test: ``call`` it on a subject once ``prepare`` has run."""

    name: str
    call: Callable[[T], Awaitable[object]]
    prepare: Callable[[T], Awaitable[object]] | None = None

    async def ready(self, subject: T) -> None:
        """Let background tasks settle, then bring ``subject`` to the state under test."""
        await trio.testing.wait_all_tasks_blocked()
        if self.prepare is not None:
            await self.prepare(subject)


def each_method(methods: list[Method[T]]) -> pytest.MarkDecorator:
    """Parametrize a test over ``methods``, each named in the test id."""
    return pytest.mark.parametrize("method", methods, ids=[method.name for method in methods])
