"""rack-stream's hooks on a channel, and how duplex calls a callback that may be plain
or async."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

__all__ = ["NO_HOOKS", "Callback", "HookArgument", "Hooks", "call"]

Callback: TypeAlias = Callable[..., Any]
HookArgument: TypeAlias = "Callback | Iterable[Callback] | None"


async def call(callback: Callback | None, *args: Any) -> Any:
    """Run a plain or async callback; return what it returned."""
    if callback is None:
        return None
    result = callback(*args)
    if inspect.isawaitable(result):
        return await result
    return result


def _hook_list(hooks: HookArgument) -> tuple[Callback, ...]:
    if hooks is None:
        return ()
    if callable(hooks):
        return (hooks,)
    return tuple(hooks)


@dataclass(frozen=True, slots=True)
class Hooks:
    """A channel's hooks, each a tuple run in order: ``after_open(channel)``,
    ``before_chunk(chunks) -> chunks``, ``before_close(channel)``,
    ``after_close(channel)``."""

    after_open: tuple[Callback, ...] = ()
    before_chunk: tuple[Callback, ...] = ()
    before_close: tuple[Callback, ...] = ()
    after_close: tuple[Callback, ...] = ()

    @staticmethod
    def of(
        after_open: HookArgument,
        before_chunk: HookArgument,
        before_close: HookArgument,
        after_close: HookArgument,
    ) -> Hooks:
        """The hooks given as ``channel()`` takes them: one callable, several, or None."""
        if after_open is before_chunk is before_close is after_close is None:
            return NO_HOOKS
        return Hooks(
            _hook_list(after_open),
            _hook_list(before_chunk),
            _hook_list(before_close),
            _hook_list(after_close),
        )


#: The hooks of a channel that has none (shared).
NO_HOOKS = Hooks()
