"""The loop's starting slots (aiogaol/_pacing.py): they bound how many jails are built at once, are
given back on every path (success, failure, bad arguments, cancellation), and under both backends."""

from __future__ import annotations

import contextlib
from subprocess import DEVNULL

import anyio
import pytest

import aiogaol
from aiogaol import _pacing

from .conftest import open_fds, zombie_children

pytestmark = pytest.mark.anyio


async def _true(profile: aiogaol.Profile) -> int:
    async with await aiogaol.spawn(profile, ["/bin/true"], stdin=DEVNULL, stdout=DEVNULL,
                                   stderr=DEVNULL) as proc:
        return await proc.wait()


async def test_a_spawn_waits_while_every_slot_is_taken(anyio_backend: str) -> None:
    """With all slots held, a spawn does not start; once one is given back, it does."""
    profile = aiogaol.system_profile()
    await _true(profile)  # the spawner is up
    taken, limit = _pacing.slots_in_use()
    assert taken == 0 and limit >= 4
    done = anyio.Event()

    async def spawner() -> None:
        assert await _true(profile) == 0
        done.set()

    async with contextlib.AsyncExitStack() as holders:
        for _ in range(limit):
            await holders.enter_async_context(_pacing.starting())
        assert _pacing.slots_in_use() == (limit, limit)
        async with anyio.create_task_group() as tg:
            tg.start_soon(spawner)
            for _ in range(50):  # many loop iterations: it must still be waiting for a slot
                await anyio.sleep(0.002)
            assert not done.is_set()
            await holders.aclose()  # every slot back: the waiting spawn goes on
            await done.wait()
    assert _pacing.slots_in_use() == (0, limit)


async def test_slots_come_back_after_a_burst_of_successes_failures_and_cancellations(anyio_backend: str) -> None:
    profile = aiogaol.system_profile()
    await _true(profile)
    fds = open_fds()
    _, limit = _pacing.slots_in_use()
    outcomes: dict[str, int] = {"ok": 0, "missing": 0, "bad": 0}

    async def one(i: int) -> None:
        if i % 3 == 0:
            assert await _true(profile) == 0
            outcomes["ok"] += 1
        elif i % 3 == 1:
            with pytest.raises(aiogaol.ProgramNotFoundError):
                await aiogaol.spawn(profile, ["/no/such/program"])
            outcomes["missing"] += 1
        else:
            with pytest.raises(ValueError, match="NUL"):
                await aiogaol.spawn(profile, ["/bin/true"], env={"A": "b\0c"})
            outcomes["bad"] += 1

    async with anyio.create_task_group() as tg:
        for i in range(4 * limit):
            tg.start_soon(one, i)
    assert min(outcomes.values()) > 0
    assert _pacing.slots_in_use() == (0, limit)

    # Cancelled while waiting for a slot and while being built: nothing is left taken or running.
    with anyio.move_on_after(0.05):
        async with anyio.create_task_group() as tg:
            for _ in range(4 * limit):
                tg.start_soon(_true, profile)
    assert _pacing.slots_in_use() == (0, limit)
    assert await _true(profile) == 0
    assert zombie_children() == []
    assert open_fds() == fds


async def test_a_slot_held_too_long_stops_counting(anyio_backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Jails whose set-up hangs must not stop every other spawn: once a spawn has waited STALE_AFTER for a
    slot, slots held longer than that are taken back (and given back only once)."""
    monkeypatch.setattr(_pacing, "STALE_AFTER", 0.2)
    profile = aiogaol.system_profile()
    await _true(profile)
    _, limit = _pacing.slots_in_use()
    async with contextlib.AsyncExitStack() as holders:  # "hung" spawns that never answer
        for _ in range(limit):
            await holders.enter_async_context(_pacing.starting())
        assert _pacing.slots_in_use() == (limit, limit)
        assert await _true(profile) == 0  # waited 0.2 s, took the stale slots back, went on
        assert _pacing.slots_in_use() == (0, limit)
    # The holders' own give_back at the end of their blocks did nothing more: still exactly `limit` slots.
    assert _pacing.slots_in_use() == (0, limit)
    async with contextlib.AsyncExitStack() as holders:
        for _ in range(limit):
            await holders.enter_async_context(_pacing.starting())
        assert _pacing.slots_in_use() == (limit, limit)
        assert _pacing._current().slots._locked()  # and not one more: no slot was given back twice
