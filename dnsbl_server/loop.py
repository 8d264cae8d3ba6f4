"""The event loop `dnsbl serve` runs on: uvloop's when it is installed, else asyncio's own.

Why: per UDP query, asyncio's selector loop costs several times what uvloop's costs (measured in the
README, "Speed"); nothing in the server depends on which loop runs it. `run` uses `asyncio.Runner` with a
loop factory rather than an event-loop policy, which Python 3.14 deprecates.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's `new_event_loop` when uvloop is importable; None (asyncio's default) otherwise."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the fastest loop available."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
