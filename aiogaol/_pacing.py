"""Spreading the synchronous part of many spawns over event-loop iterations.

Starting a jail costs the loop thread a few hundred microseconds of Python it cannot await: checking the
arguments and building the request before it is sent, and reading the answer and building the process
object after.  Sixty-four tasks that spawn at once (``gather``) would otherwise each run their first part
in the same iteration, and later all their second parts in another, and stall every other task for tens
of milliseconds.  Each loop gets a small budget per iteration; a spawn that finds it spent yields first,
and the budget is given back at the start of the next iteration.  A spawn is admitted twice: once
before its request is built (by the face, before any argument is converted) and once when its answer
has arrived.

The loop also limits how many jails are being built at once (``STARTING_PER_CPU`` per CPU): a jail's
set-up is a few milliseconds of CPU in the kernel, and sixty-four of them runnable together would keep
the loop's own thread waiting for a CPU for tens of milliseconds, although the burst as a whole ends
no sooner.  The others wait their turn, in order, without holding anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import sniffio

BUDGET = 0.00025  # seconds of spawning per loop iteration
STARTING_PER_CPU = 3  # jails being built at once, per CPU this process may run on


def _starting_limit() -> int:
    return max(4, STARTING_PER_CPU * len(os.sched_getaffinity(0)))


STALE_AFTER = 1.0  # seconds a jail may take to answer before its slot stops counting


class _Slots:
    """The loop's starting slots: a FIFO semaphore of the loop's own library (asyncio's or trio's).

    A jail whose set-up blocks (a bind mount from a hung NFS server, say) must not stop every other
    spawn of the loop: a spawn that has waited ``STALE_AFTER`` for a slot takes back those held longer
    than that, and their spawns go on without one."""

    def __init__(self, semaphore: Callable[[int], Any],
                 wait_at_most: Callable[[Callable[[], Awaitable[object]], float], Awaitable[bool]]) -> None:
        self.limit = _starting_limit()
        self.sem = semaphore(self.limit)
        self.wait_at_most = wait_at_most
        self.held: dict[Slot, float] = {}  # slot -> when it was taken

    def _locked(self) -> bool:
        return bool(self.sem.locked()) if isinstance(self.sem, asyncio.Semaphore) else self.sem.value == 0

    async def take(self) -> Slot:
        if self._locked():
            while not await self.wait_at_most(self.sem.acquire, STALE_AFTER):
                stale = time.monotonic() - STALE_AFTER
                for slot, since in list(self.held.items()):
                    if since <= stale:
                        slot.give_back()
        else:
            await self.sem.acquire()  # free: asyncio's returns at once, trio's checkpoints
        slot = Slot(self)
        self.held[slot] = time.monotonic()
        return slot

    def release(self, slot: Slot) -> None:
        del self.held[slot]
        self.sem.release()


async def _asyncio_wait_at_most(acquire: Callable[[], Awaitable[object]], seconds: float) -> bool:
    # asyncio.timeout, not wait_for: no task of its own per waiter (64 spawns may start waiting at once).
    try:
        async with asyncio.timeout(seconds):
            await acquire()
    except TimeoutError:
        return False
    return True


async def _trio_wait_at_most(acquire: Callable[[], Awaitable[object]], seconds: float) -> bool:
    import trio

    with trio.move_on_after(seconds):
        await acquire()
        return True
    return False


@dataclass
class _Pacer:
    schedule: Callable[[Callable[[], None]], object]
    # The library's own "yield to the loop once": anyio's generic checkpoint would import anyio's
    # backend module on first use, tens of milliseconds spent on the loop in the middle of a burst.
    checkpoint: Callable[[], Awaitable[None]]
    slots: _Slots = field(repr=False)
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
            pacer = _Pacer(lambda fn: token.run_sync_soon(fn), trio.lowlevel.checkpoint,
                           _Slots(trio.Semaphore, _trio_wait_at_most))
            var.set(pacer)
            return pacer
    loop = asyncio.get_running_loop()
    found = _asyncio_pacers.get(loop)
    if found is None:
        found = _Pacer(loop.call_soon, _asyncio_checkpoint, _Slots(asyncio.Semaphore, _asyncio_wait_at_most))
        _asyncio_pacers[loop] = found
    return found


@dataclass
class Ticket:
    pacer: _Pacer
    started: float
    slot: Slot | None = None  # the starting slot, for a spawn's first ticket (see starting())


async def _asyncio_checkpoint() -> None:
    await asyncio.sleep(0)


async def admit(pacer: _Pacer | None = None) -> Ticket:
    """Wait, if need be, until this loop iteration has budget left for a spawn's synchronous part."""
    if pacer is None:
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


class Slot:
    """A starting slot held by one spawn; given back once, when its jail has answered or it failed (or
    when it went stale, see ``_Slots``)."""

    def __init__(self, slots: _Slots) -> None:
        self._slots: _Slots | None = slots

    def give_back(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots.release(self)


@contextlib.asynccontextmanager
async def starting() -> AsyncIterator[Ticket]:
    """A spawn's admission, for the faces to hold around everything from checking the arguments to the
    jail's answer: one of the loop's starting slots (waited for in order, see the module's docstring),
    then budget.  ``launch`` gives the slot back as soon as the jail has answered; leaving the block
    gives it back in any case."""
    pacer = _current()
    slot = await pacer.slots.take()
    try:
        # Never start on a spawn's work in the iteration it was called in: sixty-four spawns started at
        # once (gather) all run that far in one iteration, and that iteration is long enough already.
        await pacer.checkpoint()
        ticket = await admit(pacer)
        ticket.slot = slot
        yield ticket
    finally:
        slot.give_back()


def slots_in_use() -> tuple[int, int]:
    """(taken, limit) of this loop's starting slots: for tests, which check that none is left taken."""
    slots = _current().slots
    return len(slots.held), slots.limit


@contextlib.asynccontextmanager
async def paced() -> AsyncIterator[None]:
    """Admit, run the block, charge it: for work a callback would otherwise do for every jail in the same
    iteration (reaping sixty-four jails that exited together, for instance)."""
    ticket = await admit()
    try:
        yield
    finally:
        charge(ticket)
