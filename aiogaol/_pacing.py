"""Spreading the synchronous part of many spawns over event-loop iterations.

Starting a jail costs the loop thread about a millisecond of work it cannot await (building the helper's
argv, posix_spawn).  Sixty-four tasks that spawn at once would otherwise do all of it in one iteration and
stall every other task for tens of milliseconds.  Each loop gets a small budget per iteration; a spawn
that finds it spent yields first, and the budget is given back at the start of the next iteration.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import anyio.lowlevel
import sniffio

BUDGET = 0.002  # seconds of spawning per loop iteration


@dataclass
class _Pacer:
    schedule: Callable[[Callable[[], None]], object]
    spent: float = 0.0
    reset_pending: bool = False

    def reset(self) -> None:
        self.spent = 0.0
        self.reset_pending = False


_asyncio_pacers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pacer]" = weakref.WeakKeyDictionary()
_trio_pacer: object = None


def _current() -> _Pacer:
    global _trio_pacer
    if sniffio.current_async_library() == "trio":
        import trio

        if _trio_pacer is None:
            _trio_pacer = trio.lowlevel.RunVar("aiogaol_pacer")
        var: trio.lowlevel.RunVar[_Pacer] = _trio_pacer  # type: ignore[assignment]
        try:
            return var.get()
        except LookupError:
            token = trio.lowlevel.current_trio_token()
            pacer = _Pacer(lambda fn: token.run_sync_soon(fn))
            var.set(pacer)
            return pacer
    loop = asyncio.get_running_loop()
    found = _asyncio_pacers.get(loop)
    if found is None:
        found = _asyncio_pacers[loop] = _Pacer(loop.call_soon)
    return found


async def admit() -> _Pacer:
    """Wait, if need be, until this loop iteration has budget left for a spawn."""
    pacer = _current()
    while pacer.spent >= BUDGET:
        await anyio.lowlevel.checkpoint()
    return pacer


def charge(pacer: _Pacer, started: float) -> None:
    """Count the time since ``started`` (time.perf_counter) against this iteration's budget."""
    pacer.spent += time.perf_counter() - started
    if not pacer.reset_pending:
        pacer.reset_pending = True
        pacer.schedule(pacer.reset)
