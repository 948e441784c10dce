"""``_background.Background``: a task group that no caller's task owns, on asyncio and trio."""

from __future__ import annotations

import anyio
import pytest

from aiogaol._background import Background

pytestmark = pytest.mark.anyio


async def test_started_in_one_task_and_closed_in_another() -> None:
    holder: list[Background] = []
    ran: list[str] = []

    async def opener() -> None:
        bg = Background()
        await bg.start()
        holder.append(bg)

    async with anyio.create_task_group() as tg:
        tg.start_soon(opener)
    bg = holder[0]

    async def forever() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            ran.append("cancelled at close")

    async def once() -> None:
        ran.append("ran")

    bg.start_soon(forever)
    bg.start_soon(once)
    await anyio.sleep(0.01)
    async with anyio.create_task_group() as tg:
        tg.start_soon(bg.aclose)  # from a task that neither started it nor its tasks
    await bg.aclose()  # twice is fine
    assert sorted(ran) == ["cancelled at close", "ran"]
    with pytest.raises(RuntimeError, match="not running"):
        bg.start_soon(once)
    with pytest.raises(RuntimeError, match="started once"):
        await bg.start()


async def test_a_failing_task_is_raised_by_aclose_not_lost() -> None:
    bg = Background()
    await bg.start()

    async def fail() -> None:
        raise KeyError("boom")

    bg.start_soon(fail)
    await anyio.sleep(0.01)
    with pytest.RaisesGroup(KeyError):  # what the host's task group raised, kept for the closer
        await bg.aclose()
    await bg.aclose()  # raised once


async def test_a_cancelled_closer_still_waits_for_the_host() -> None:
    bg = Background()
    await bg.start()
    done: list[bool] = []

    async def slow_to_stop() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.1)
            done.append(True)

    bg.start_soon(slow_to_stop)
    await anyio.sleep(0.01)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await bg.aclose()  # shielded: returns only once the host has left its task group
    assert done == [True]
