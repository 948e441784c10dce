"""Spreading the synchronous part of many spawns over event-loop iterations.

Starting a jail costs the loop thread a few hundred microseconds of Python it cannot await: checking the
arguments and building the request before it is sent, and reading the answer and building the process
object after.  Sixty-four tasks that spawn at once (``gather``) would otherwise each run their first part
in the same iteration, and later all their second parts in another, and stall every other task for tens
of milliseconds.  Each loop gets a small budget per iteration; a spawn that finds it spent yields first,
and the budget is given back at the start of the next iteration.  A spawn is admitted twice: once
before its request is built (by the face, before any argument is converted) and once when its answer
has arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import sniffio

BUDGET = 0.002  # seconds of spawning per loop iteration


@dataclass
class _Pacer:
    schedule: Callable[[Callable[[], None]], object]
    # The library's own "yield to the loop once": anyio's generic checkpoint would import anyio's
    # backend module on first use, tens of milliseconds spent on the loop in the middle of a burst.
    checkpoint: Callable[[], Awaitable[None]]
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
            pacer = _Pacer(lambda fn: token.run_sync_soon(fn), trio.lowlevel.checkpoint)
            var.set(pacer)
            return pacer
    loop = asyncio.get_running_loop()
    found = _asyncio_pacers.get(loop)
    if found is None:
        found = _asyncio_pacers[loop] = _Pacer(loop.call_soon, _asyncio_checkpoint)
    return found


@dataclass
class Ticket:
    pacer: _Pacer
    started: float


async def _asyncio_checkpoint() -> None:
    await asyncio.sleep(0)


async def admit() -> Ticket:
    """Wait, if need be, until this loop iteration has budget left for a spawn's synchronous part."""
    pacer = _current()
    while pacer.spent >= BUDGET:
        await pacer.checkpoint()
    return Ticket(pacer, time.perf_counter())


def charge(ticket: Ticket) -> None:
    """Count the time since admission against this iteration's budget."""
    pacer = ticket.pacer
    pacer.spent += time.perf_counter() - ticket.started
    if not pacer.reset_pending:
        pacer.reset_pending = True
        pacer.schedule(pacer.reset)


@contextlib.asynccontextmanager
async def paced() -> AsyncIterator[None]:
    """Admit, run the block, charge it: for work a callback would otherwise do for every jail in the same
    iteration (reaping sixty-four jails that exited together, for instance)."""
    ticket = await admit()
    try:
        yield
    finally:
        charge(ticket)
