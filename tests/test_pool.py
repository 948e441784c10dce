"""``aiogaol.Pool``: bounded, fair to its neighbours, closed cleanly, on asyncio and trio."""

from __future__ import annotations

import os
from collections.abc import Iterator

import anyio
import pytest

import aiogaol

from .conftest import open_fds, zombie_children

pytestmark = pytest.mark.anyio

SLEEP = "import time, sys; time.sleep(float(sys.argv[1])); print('slept')"


async def test_run_returns_output_and_usage(py_profile: aiogaol.Profile, python: str) -> None:
    async with aiogaol.Pool(py_profile, size=2) as pool:
        result = await pool.run([python, "-c", "import sys; print(sys.stdin.read().upper())"], input=b"abc")
    assert result.status == "ok" and result.ok
    assert result.returncode == 0 and result.signal is None
    assert result.stdout == b"ABC\n"
    assert isinstance(result, aiogaol.Result) and result.ran
    assert result.wall_time > 0 and result.cpu_time > 0 and result.max_rss > 0
    assert result.latency is not None and result.latency >= result.wall_time > 0


async def test_a_full_pool_makes_callers_wait(py_profile: aiogaol.Profile, python: str) -> None:
    most_running = 0
    saw_waiting = 0
    results: list[aiogaol.Result] = []
    async with aiogaol.Pool(py_profile, size=2) as pool:
        async def job() -> None:
            results.append(await pool.run([python, "-c", SLEEP, "0.3"]))

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(job)
            while len(results) < 6:
                stats = pool.stats()
                most_running = max(most_running, stats.running)
                saw_waiting = max(saw_waiting, stats.waiting)
                await anyio.sleep(0.01)
        stats = pool.stats()
    assert most_running == 2
    assert saw_waiting >= 3
    assert [r.status for r in results] == ["ok"] * 6
    assert (stats.running, stats.waiting, stats.done, stats.failed) == (0, 0, 6, 0)
    assert stats.p50 is not None and stats.p90 is not None and stats.p99 is not None
    assert stats.p50 <= stats.p90 <= stats.p99


async def test_hostile_jobs_do_not_harm_their_neighbours(py_profile: aiogaol.Profile, python: str) -> None:
    hostile = {
        "loop": "while True: pass",
        "ignores-term": "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
        "fork-bomb": "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass",
        "flood": "import sys\nwhile True: sys.stdout.write('x' * 65536)",
        "crash": "import os; os.abort()",
    }
    jobs = [aiogaol.Job([python, "-c", code], id=name) for name, code in hostile.items()]
    jobs += [aiogaol.Job([python, "-c", f"print({i} * {i})"], id=i) for i in range(10)]
    limits = aiogaol.Limits(processes=16, output=1 << 20)
    async with aiogaol.Pool(py_profile, size=5, limits=limits, timeout=1.0, grace_period=0.2) as pool:
        results = {r.id: r async for r in pool.map(jobs)}
        stats = pool.stats()
    for i in range(10):
        assert results[i].status == "ok", results[i]
        assert results[i].stdout == f"{i * i}\n".encode()
    assert results["loop"].status == "timed-out"
    assert results["ignores-term"].status == "timed-out"
    assert results["ignores-term"].returncode == -9
    assert results["fork-bomb"].status == "timed-out"
    assert results["flood"].status == "output-limit"
    assert len(results["flood"].stdout) == 1 << 20
    assert results["crash"].status == "signalled" and results["crash"].signal == 6
    assert (stats.done, stats.failed) == (15, 5)
    assert zombie_children() == []


async def test_a_job_that_cannot_start_is_an_error_result(py_profile: aiogaol.Profile) -> None:
    async with aiogaol.Pool(py_profile, size=1) as pool:
        result = await pool.run(["/no/such/program"])
        with pytest.raises(ValueError):
            await pool.run([])
        with pytest.raises(ValueError):
            await pool.run(["/bin/true"], timeout=-1)
    assert result.status == "error"
    assert isinstance(result.exception, aiogaol.ProgramNotFoundError)
    assert "ENOENT" in (result.error or "")


async def test_map_pulls_jobs_lazily(py_profile: aiogaol.Profile, python: str) -> None:
    pulled = 0
    consumed = 0
    most_ahead = 0

    def jobs() -> Iterator[list[str]]:
        nonlocal pulled
        for i in range(12):
            pulled += 1
            yield [python, "-c", f"print({i})"]

    async with aiogaol.Pool(py_profile, size=3) as pool:
        outputs = set()
        async for result in pool.map(jobs()):
            consumed += 1
            most_ahead = max(most_ahead, pulled - consumed)
            outputs.add(result.stdout)
            await anyio.sleep(0.02)  # a slow consumer: the feeder must not run ahead of it
    assert outputs == {f"{i}\n".encode() for i in range(12)}
    assert most_ahead <= 3


async def test_map_takes_async_iterables_and_per_map_timeout(py_profile: aiogaol.Profile, python: str) -> None:
    async def jobs():  # type: ignore[no-untyped-def]
        yield aiogaol.Job([python, "-c", SLEEP, "30"], id="slow")
        yield aiogaol.Job([python, "-c", "print('quick')"], id="quick")

    async with aiogaol.Pool(py_profile, size=2, grace_period=0.1) as pool:
        results = {r.id: r async for r in pool.map(jobs(), timeout=0.5)}
    assert results["slow"].status == "timed-out"
    assert results["quick"].stdout == b"quick\n"


async def test_stopping_a_map_early_leaves_nothing_behind(py_profile: aiogaol.Profile, python: str) -> None:
    before = open_fds()
    async with aiogaol.Pool(py_profile, size=2) as pool:
        async with pool.map([python, "-c", SLEEP, str(0.05 * (i % 2) or 30)] for i in range(8)) as results:
            async for first in results:
                assert first.status == "ok"
                break
    assert zombie_children() == []
    assert open_fds() <= before


async def test_closing_finishes_running_jobs(py_profile: aiogaol.Profile, python: str) -> None:
    results: list[aiogaol.Result] = []
    async with anyio.create_task_group() as tg:
        async with aiogaol.Pool(py_profile, size=1) as pool:
            async def job() -> None:
                results.append(await pool.run([python, "-c", SLEEP, "0.3"]))

            tg.start_soon(job)
            tg.start_soon(job)  # waits for the slot; turned away when the pool closes
            while pool.stats().running < 1:
                await anyio.sleep(0.01)
        # ``async with`` returned only after the running job finished
        assert pool.stats().running == 0
    statuses = sorted(r.status for r in results)
    assert statuses == ["cancelled", "ok"]
    with pytest.raises(RuntimeError):
        await pool.run([python, "-c", "pass"])


async def test_an_exception_in_the_block_cancels_running_jobs(py_profile: aiogaol.Profile, python: str) -> None:
    results: list[aiogaol.Result] = []
    with pytest.RaisesGroup(KeyError):  # the pool passes KeyError on as it is; the task group wraps it
        async with anyio.create_task_group() as tg:
            async with aiogaol.Pool(py_profile, size=2, grace_period=0.1) as pool:
                async def job() -> None:
                    results.append(await pool.run([python, "-c", SLEEP, "30"]))

                tg.start_soon(job)
                while pool.stats().running < 1:
                    await anyio.sleep(0.01)
                raise KeyError("boom")
    assert [r.status for r in results] in ([], ["cancelled"])
    assert zombie_children() == []


async def test_cancelling_the_caller_reaps_every_jail(py_profile: aiogaol.Profile, python: str) -> None:
    before = open_fds()
    with anyio.move_on_after(0.5):
        async with aiogaol.Pool(py_profile, size=4, grace_period=0.1) as pool:
            async for _ in pool.map([python, "-c", SLEEP, "30"] for _ in range(10)):
                pass
    assert zombie_children() == []
    assert open_fds() <= before


async def test_pool_arguments_are_checked(py_profile: aiogaol.Profile) -> None:
    with pytest.raises(ValueError):
        aiogaol.Pool(py_profile, size=0)
    with pytest.raises(TypeError):
        aiogaol.Pool("not a profile")  # type: ignore[arg-type]
    pool = aiogaol.Pool(py_profile, size=1)
    with pytest.raises(RuntimeError):
        pool.map([])
    with pytest.raises(aiogaol.PoolClosedError, match="not open yet"):
        pool.map([])
    with pytest.raises(aiogaol.PoolClosedError, match="not open yet"):
        await pool.run(["/bin/true"])


def _alive(marker: str) -> list[int]:
    """Host PIDs of processes (in jails or not) whose command line carries ``marker``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(name))
            except OSError:
                pass
    return found


async def test_open_run_and_close_from_different_tasks(py_profile: aiogaol.Profile, python: str) -> None:
    """Opened in one task, used from several, closed from yet another (a Ray actor's methods, a server's
    start-up and shutdown hooks): no cancel scope is tied to the opener."""
    marker = f"# lifecycle-{os.getpid()}"
    before = open_fds()
    pools: list[aiogaol.Pool] = []
    results: list[aiogaol.Result] = []

    async def opener() -> None:
        pools.append(await aiogaol.Pool(py_profile, size=2).open())

    async with anyio.create_task_group() as tg:
        tg.start_soon(opener)
    pool = pools[0]

    async def user(i: int) -> None:
        results.append(await pool.run([python, "-c", f"print({i}) {marker}"]))

    async def mapper() -> None:
        async for r in pool.map([python, "-c", f"print('m{i}') {marker}"] for i in range(3)):
            results.append(r)

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(user, i)
        tg.start_soon(mapper)
    assert sorted(r.stdout for r in results) == sorted([f"{i}\n".encode() for i in range(4)]
                                                       + [f"m{i}\n".encode() for i in range(3)])
    assert all(r.ok for r in results)

    async with anyio.create_task_group() as tg:
        tg.start_soon(pool.aclose)
    await pool.aclose()  # twice is fine
    with pytest.raises(aiogaol.PoolClosedError, match="closed"):
        await pool.run([python, "-c", "pass"])
    with pytest.raises(aiogaol.PoolClosedError):
        pool.map([[python, "-c", "pass"]])
    with pytest.raises(RuntimeError):
        await pool.open()  # opened once
    assert zombie_children() == []
    assert _alive(marker) == []
    assert open_fds() <= before


async def test_closing_from_another_task_cancels_or_finishes_its_jobs(py_profile: aiogaol.Profile,
                                                                      python: str) -> None:
    """aclose() from a task that is not the opener: cancel=True ends the running jobs (their callers get
    "cancelled"), and a map left running by its consumer is stopped; every jail is reaped on return."""
    marker = f"# closing-{os.getpid()}"
    before = open_fds()
    pool = await aiogaol.Pool(py_profile, size=3, grace_period=0.1).open()
    results: list[aiogaol.Result] = []
    abandoned = pool.map([python, "-c", f"{SLEEP} {marker}", "30"] for _ in range(5))

    async def user() -> None:
        results.append(await pool.run([python, "-c", f"{SLEEP} {marker}", "30"]))

    async with anyio.create_task_group() as tg:
        tg.start_soon(user)
        while pool.stats().running < 3:
            await anyio.sleep(0.01)
        tg.start_soon(lambda: pool.aclose(cancel=True))
    assert [r.status for r in results] == ["cancelled"]
    assert pool.stats().running == 0
    assert _alive(marker) == []
    await abandoned.aclose()
    assert zombie_children() == []
    assert open_fds() <= before


async def test_a_cancelled_closer_still_reaps_every_jail(py_profile: aiogaol.Profile, python: str) -> None:
    """A graceful aclose() whose own task is cancelled while it waits cancels the running jobs instead,
    and returns (raising the cancellation) only once they are reaped."""
    marker = f"# cancelled-closer-{os.getpid()}"
    pool = await aiogaol.Pool(py_profile, size=2, grace_period=0.1).open()
    results: list[aiogaol.Result] = []

    async def user() -> None:
        results.append(await pool.run([python, "-c", f"{SLEEP} {marker}", "30"]))

    async with anyio.create_task_group() as tg:
        tg.start_soon(user)
        while pool.stats().running < 1:
            await anyio.sleep(0.01)
        with anyio.move_on_after(0.3) as closing:
            await pool.aclose()  # waits for a 30 s job: cut short
        assert closing.cancelled_caught
        assert pool.stats().running == 0
    assert [r.status for r in results] == ["cancelled"]
    assert _alive(marker) == []
    assert zombie_children() == []
    await pool.aclose()


async def test_jobs_take_runs_own_arguments_and_return_its_result(py_profile: aiogaol.Profile, python: str) -> None:
    """A judge gives each problem its own limits: Pool.run and Job take run()'s per-job arguments, and
    every job ends as the aiogaol.Result that run() gives, read by the same rules."""
    async with aiogaol.Pool(py_profile, size=2, limits=aiogaol.Limits(wall_time=30, output=1 << 20),
                            grace_period=0.1, env={"WHO": "pool"}) as pool:
        alone = await aiogaol.run(py_profile, [python, "-c", "print('x' * 100)"], limits=aiogaol.Limits(output=10))
        capped = await pool.run([python, "-c", "print('x' * 100)"], limits=aiogaol.Limits(output=10))
        whole = await pool.run([python, "-c", "print('x' * 100)"])
        quick = await pool.run([python, "-c", "import time; time.sleep(30)"],
                               limits=aiogaol.Limits(wall_time=0.3))
        env = await pool.run([python, "-c", "import os; print(os.environ.get('WHO'), os.getcwd())"],
                             env={"WHO": "job"}, cwd="/usr")
        default_env = await pool.run([python, "-c", "import os; print(os.environ.get('WHO'))"])
        mapped = {r.id: r async for r in pool.map([
            aiogaol.Job([python, "-c", "print('y' * 100)"], id="capped", limits=aiogaol.Limits(output=5)),
            aiogaol.Job([python, "-c", "import time; time.sleep(30)"], id="own-wall", limits=aiogaol.Limits(wall_time=0.3)),
            aiogaol.Job([python, "-c", "import time; time.sleep(30)"], id="timeout-wins", timeout=0.3,
                        limits=aiogaol.Limits(wall_time=60)),
        ])}
    assert type(capped) is type(alone) is aiogaol.Result and aiogaol.JobResult is aiogaol.Result
    assert capped.status is alone.status is aiogaol.Status.OUTPUT_LIMIT
    assert capped.stdout == alone.stdout == b"x" * 10 and capped.stdout_truncated and alone.stdout_truncated
    assert capped.evidence == alone.evidence and capped.enforced_by["output"] == alone.enforced_by["output"]
    assert whole.ok and whole.stdout == b"x" * 100 + b"\n" and whole.limits.output == 1 << 20
    assert quick.status is aiogaol.Status.TIMED_OUT and quick.limits.wall_time == 0.3 and quick.wall_time < 30
    assert env.stdout == b"job /usr\n" and default_env.stdout == b"pool\n"
    assert mapped["capped"].status == "output-limit" and mapped["capped"].stdout == b"y" * 5
    assert mapped["own-wall"].status == "timed-out" and mapped["own-wall"].limits.wall_time == 0.3
    assert mapped["timeout-wins"].status == "timed-out" and mapped["timeout-wins"].limits.wall_time == 0.3
    assert all(r.latency is not None and r.ran for r in [capped, whole, quick, env, *mapped.values()])
    assert zombie_children() == []


async def test_a_job_that_never_ran_is_a_result_without_a_returncode(py_profile: aiogaol.Profile) -> None:
    async with aiogaol.Pool(py_profile, size=1) as pool:
        missing = await pool.run(["/no/such/program"], id="m")
        with pytest.raises(TypeError):
            await pool.run(["/bin/true"], limits={"wall_time": 1})  # type: ignore[arg-type]
        refused = [r async for r in pool.map([aiogaol.Job(["/bin/true"], limits="fast")])]  # type: ignore[arg-type]
    assert missing.status is aiogaol.Status.ERROR and not missing.ran and missing.returncode is None
    assert missing.id == "m" and missing.error and isinstance(missing.exception, FileNotFoundError)
    line = missing.to_dict()
    assert line["returncode"] is None and line["wall_time"] is None and line["argv"] == ["/no/such/program"]
    assert "exception" not in missing.meta() and missing.meta()["status"] == "error"
    with pytest.raises(aiogaol.RunError, match="ENOENT"):
        missing.check()
    assert refused[0].status == "error" and "limits" in (refused[0].error or "")


async def test_a_deadline_that_passes_while_the_jail_is_built(py_profile: aiogaol.Profile, python: str) -> None:
    """The deadline covers the building of the jail too: one too short for any spawn ends the job as
    "timed-out" without a jail, and leaves nothing behind (launch cleans up whatever it had started)."""
    before = open_fds()
    async with aiogaol.Pool(py_profile, size=2) as pool:
        results = [await pool.run([python, "-c", "print('never')"], timeout=1e-6) for _ in range(5)]
        after = await pool.run([python, "-c", "print('fine')"])  # the pool goes on
    for r in results:
        assert r.status is aiogaol.Status.TIMED_OUT and not r.ran and r.returncode is None, r
        assert "while the jail was being built" in r.evidence and r.stdout == b""
    assert after.ok and after.stdout == b"fine\n"
    assert zombie_children() == []
    for _ in range(50):  # a cancelled launch's leftovers are finished by the spawner, without blocking
        if open_fds() <= before:
            break
        await anyio.sleep(0.1)
    assert open_fds() <= before


async def test_cancelling_the_pool_while_jails_are_built(py_profile: aiogaol.Profile, python: str) -> None:
    """aclose(cancel=True) at once after the jobs were handed in: whether a job was still waiting for a
    slot, its jail half built, or its program just started, it ends as "cancelled" and is reaped."""
    marker = f"# build-cancel-{os.getpid()}"
    before = open_fds()
    pool = await aiogaol.Pool(py_profile, size=3, grace_period=0.1).open()
    results: list[aiogaol.Result] = []

    async def user() -> None:
        results.append(await pool.run([python, "-c", f"{SLEEP} {marker}", "30"]))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(user)
        while (pool.stats().running, pool.stats().waiting) != (3, 2):
            await anyio.sleep(0)  # until three jobs hold a slot (their jails being built) and two wait
        await pool.aclose(cancel=True)
    assert [r.status for r in results] == ["cancelled"] * 5
    waited = [r for r in results if r.evidence == "the pool closed before a slot was free"]
    held = [r for r in results if r not in waited]
    assert len(waited) == 2 and all(not r.ran for r in waited)
    assert {r.evidence for r in held} <= {"cancelled while the jail was being built",
                                          "the pool was cancelled; the jail was killed"}, held
    assert _alive(marker) == [] and zombie_children() == []
    for _ in range(50):
        if open_fds() <= before:
            break
        await anyio.sleep(0.1)
    assert open_fds() <= before
