"""The spawner under stress: a stopped spawner, fd and process limits, and a cancellation soak.

Each test runs real jails on the real kernel.  Nothing here asserts a wall-clock time: that the event loop
is not blocked is shown by a ticker task that must keep ticking, and leaks by counting zombies, fds and
processes before and after.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable

import anyio
import pytest

import aiogaol
from aiogaol import _spawner

from .conftest import open_fds, zombie_children

TRUE_PROFILE = aiogaol.system_profile()


def _server(code: str, timeout: float = 240) -> dict[str, object]:
    """Run ``code`` as a separate server (its own fds, limits and children, not pytest's); it prints one
    JSON document last."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert isinstance(result, dict)
    return result


def _descendants() -> list[tuple[int, str]]:
    """Every process whose parent chain leads to this one: (pid, state)."""
    parent: dict[int, int] = {}
    state: dict[int, str] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="utf-8", errors="replace") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(name)], state[int(name)] = int(rest[1]), rest[0]
    me = os.getpid()
    out = []
    for pid in parent:
        p = pid
        while p > 1 and p != me:
            p = parent.get(p, 0)
        if p == me and pid != me:
            out.append((pid, state[pid]))
    return out


def _strays() -> list[tuple[int, str, str]]:
    """Our descendants other than the spawners themselves and the inits they keep made ahead of time."""
    keep = {pid for pid in (_spawner.spawner_pid(n) for n in range(-20, 20)) if pid}
    keep |= _spawner.waiting_pids()
    keep |= {old.pid for old in _spawner._retired}  # retired, still finishing: tracked, reaped later
    out = []
    for pid, st in _descendants():
        if pid not in keep:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")[:60]
            except OSError:
                cmd = "?"
            out.append((pid, st, cmd))
    return out


def _pids(found: list[tuple[int, str, str]]) -> list[int]:
    return [pid for pid, _, _ in found]


def _our_fds() -> tuple[int, int]:
    """How many fds the server holds besides the spawners' sockets, and how many of those: a spawner
    replaced after a stall has a new socket under whatever number is free then, and the fds opened
    meanwhile take the numbers freed, so after a replacement the numbers move while the counts stay.
    A leak (a pipe, a pidfd or a lifeline of a jail left open) grows the first count; a socket of the
    stalled spawner kept open grows the second."""
    owned = _spawner.owned_fds()
    return len(open_fds() - owned), len(owned)


async def _settled(spawn_true: Callable[[], Awaitable[None]], start_fds: tuple[int, int],
                   start_strays: list[tuple[int, str, str]]) -> None:
    """Let later spawns finish what cancelled ones left (that is when it is done, never by blocking), until
    nothing is left over, for 20 s at most.  ``start_strays``: what earlier tests of the session left
    running (not ours to count)."""
    for k in range(200):
        if k % 10 == 0:
            await spawn_true()
        _spawner.settle()  # what a spawn does first; polled here without spawning (a spawn starts the
        # making of the next waiting init, which is not reported for a moment)
        if zombie_children() == [] and _our_fds() == start_fds and set(_pids(_strays())) <= set(_pids(start_strays)):
            return
        await anyio.sleep(0.1)
    state = (_spawner._abandoned, _spawner._doomed, [(r.pid, r.retiring, r.reaped) for r in _spawner._retired])
    assert zombie_children() == [], (_strays(), state)
    assert set(_pids(_strays())) <= set(_pids(start_strays)), (_strays(), start_strays, state)
    assert _our_fds() == start_fds, state


def _stop_spawner() -> int:
    """SIGSTOP the spawner right after a spawn: often while it clones its next init ahead of time, before
    it has reported it (the old retirement took the ECONNRESET a killed spawner leaves for the end of its
    reports, and lost that init's own report: a zombie until the server exited)."""
    pid = _spawner.spawner_pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    return pid


async def _true() -> None:
    proc = await aiogaol.create_sandboxed_subprocess(TRUE_PROFILE, "true", stdin=aiogaol.DEVNULL,
                                                     stdout=aiogaol.DEVNULL, stderr=aiogaol.DEVNULL)
    assert await proc.wait() == 0


async def _true_anyio() -> None:
    async with await aiogaol.spawn(TRUE_PROFILE, ["true"], stdin=None, stdout=None, stderr=None) as proc:
        assert await proc.wait() == 0


# -- 1. cancelling spawns while the spawner is stopped ------------------------------------------------

@pytest.mark.anyio
@pytest.mark.parametrize("then", ["sigcont", "replaced"])
async def test_cancelling_spawns_while_the_spawner_is_stopped_never_blocks_the_loop(
        anyio_backend: str, then: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spawns sent to a SIGSTOPped spawner, then cancelled: the loop keeps running throughout (a ticker
    task ticks while the cancellation is in progress), and afterwards, once the spawner is continued or,
    having not answered for STALL_TIMEOUT, replaced, everything is reaped: no zombie, no stray process,
    no extra fd.  (The old code read the init's PID with a blocking read while cleaning up: the loop froze
    until the spawner ran again.)"""
    monkeypatch.setattr(_spawner, "STALL_TIMEOUT", 1.0, raising=False)
    spawn_true = _true_anyio if anyio_backend == "trio" else _true
    await spawn_true()
    start_fds, start_strays = _our_fds(), _strays()
    stopped = _stop_spawner()
    # Continued from another thread after 3 s whatever happens, so that old code cannot hang the test.
    timer = threading.Timer(3.0, _cont, (stopped,))
    timer.start()
    ticks = 0
    cancelling = False
    ticks_while_cancelling = 0

    async def ticker() -> None:
        nonlocal ticks, ticks_while_cancelling
        while True:
            await anyio.sleep(0.005)
            ticks += 1
            if cancelling:
                ticks_while_cancelling += 1

    try:
        async with anyio.create_task_group() as ticking:
            ticking.start_soon(ticker)
            async with anyio.create_task_group() as spawns:
                for _ in range(8):
                    spawns.start_soon(spawn_true)
                while ticks < 40:  # the requests are sent, and wait for the stopped spawner
                    await anyio.sleep(0.01)
                assert _exited_or_stopped(stopped)
                cancelling = True
                spawns.cancel_scope.cancel()
            cancelling = False
            ticking.cancel_scope.cancel()
        assert ticks_while_cancelling >= 5, f"the loop ticked {ticks_while_cancelling} times while cancelling"
        if then == "sigcont":
            os.kill(stopped, signal.SIGCONT)
        else:
            await anyio.sleep(1.2)  # past STALL_TIMEOUT: the next spawn kills it and starts another
        await _settled(spawn_true, start_fds, start_strays)
        if then == "replaced":
            assert _spawner.spawner_pid() != stopped
            assert not os.path.exists(f"/proc/{stopped}"), "the stalled spawner was not reaped"
    finally:
        timer.cancel()
        try:
            os.kill(stopped, signal.SIGCONT)
        except ProcessLookupError:
            pass


def _cont(pid: int) -> None:
    """SIGCONT, for the timers: the spawner may be dead (and reaped) by then."""
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def _exited_or_stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
        return f.read().rsplit(")", 1)[1].split()[0] in "TtZ"


@pytest.mark.anyio
async def test_a_spawn_whose_spawner_never_answers_fails_by_name_and_the_next_one_works(
        anyio_backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not cancelled, just left waiting on a stopped spawner: after STALL_TIMEOUT it fails with a named
    error, the spawner is replaced, and nothing is left behind."""
    monkeypatch.setattr(_spawner, "STALL_TIMEOUT", 0.5, raising=False)
    spawn_true = _true_anyio if anyio_backend == "trio" else _true
    await spawn_true()
    start_fds, start_strays = _our_fds(), _strays()
    stopped = _stop_spawner()
    timer = threading.Timer(10.0, _cont, (stopped,))
    timer.start()
    try:
        with anyio.fail_after(8):  # old code waited for ever (here: until the timer)
            with pytest.raises(aiogaol.SandboxSetupError, match="did not answer") as info:
                await spawn_true()
        assert info.value.step == "start helper"
        await _settled(spawn_true, start_fds, start_strays)
        assert _spawner.spawner_pid() != stopped
        assert not os.path.exists(f"/proc/{stopped}")
    finally:
        timer.cancel()
        try:
            os.kill(stopped, signal.SIGCONT)
        except ProcessLookupError:
            pass


# -- 2. and 3. fd and process limits -----------------------------------------------------------------

_SWEEP = """
    import asyncio, errno, json, os, resource, sys
    import aiogaol
    from aiogaol import _spawner
    PROFILE = aiogaol.system_profile()

    def nfds():
        return len(os.listdir("/proc/self/fd"))

    async def once(limits=None, script="echo hi"):
        p = await aiogaol.create_sandboxed_subprocess(PROFILE, "sh", "-c", script, stdout=aiogaol.PIPE,
                                                      stderr=aiogaol.PIPE, limits=limits)
        out, err = await p.communicate()
        return p.returncode, out.decode(), err.decode()
"""


def test_spawns_failing_near_the_fd_limit_leak_nothing_and_say_which_limit() -> None:
    """The soft fd limit swept from just above the lowest free fd upwards, a spawn at each level: a spawn
    that fails leaves no fd behind, and says EMFILE and RLIMIT_NOFILE; once one succeeds, so does every
    spawn after the limit is restored.  (The old code leaked 1 to 3 fds per failure.)"""
    result = _server(_SWEEP + """
    async def main():
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        await once()  # the spawner exists: its socket is one of the fds from here on
        start = nfds()
        lowest = os.open("/dev/null", os.O_RDONLY)
        os.close(lowest)
        failures, bad, leaks, ok_at = 0, [], [], None
        for lim in range(lowest + 1, lowest + 40):
            before = nfds()
            resource.setrlimit(resource.RLIMIT_NOFILE, (lim, hard))
            try:
                rc, out, err = await once()
                if (rc, out) != (0, "hi\\n"):
                    bad.append((lim, rc, out, err))
                ok_at = ok_at or lim
            except aiogaol.SandboxSetupError as e:
                failures += 1
                if e.errno != errno.EMFILE or "RLIMIT_NOFILE" not in str(e):
                    bad.append((lim, repr(e)))
            except BaseException as e:
                bad.append((lim, repr(e)))
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            if nfds() != before:
                leaks.append((lim, before, nfds()))
        after = [await once() for _ in range(3)]
        print(json.dumps({"failures": failures, "bad": bad, "leaks": leaks, "ok_at": ok_at, "after": after,
                          "start": start, "end": nfds()}))
    asyncio.run(main())
    """)
    assert result["failures"], result  # the sweep did start below what a spawn needs
    assert result["ok_at"] is not None, result
    assert result["bad"] == [] and result["leaks"] == [], result
    assert result["after"] == [[0, "hi\n", ""]] * 3, result
    assert result["start"] == result["end"], result


def test_a_spawner_started_under_a_low_fd_limit_serves_on_once_it_is_raised() -> None:
    """The first spawn made with the soft fd limit barely high enough: later spawns, with the limit raised
    again and the request's fds numbered high, still work, and each jail gets the server's fd limit of
    its own spawn (not the one the spawner started under).  (The old code failed with place fds: EINVAL
    and froze the jail's limit at the first spawn's.)"""
    result = _server(_SWEEP + """
    async def main():
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        lowest = os.open("/dev/null", os.O_RDONLY)
        os.close(lowest)
        first = None
        for lim in range(lowest + 1, lowest + 60):
            resource.setrlimit(resource.RLIMIT_NOFILE, (lim, hard))
            try:
                first = (lim, await once())
                break
            except aiogaol.SandboxSetupError:
                pass
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        held = [os.open("/dev/null", os.O_RDONLY) for _ in range(200)]  # the next requests' fds are > 200
        free = aiogaol.DEFAULT_LIMITS.replace(open_files=None)
        later = []
        for lim in (300, 500):
            resource.setrlimit(resource.RLIMIT_NOFILE, (lim, hard))
            later.append(await once(free, "ulimit -n"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        later.append(await once(aiogaol.DEFAULT_LIMITS.replace(open_files=64), "ulimit -n"))
        for fd in held:
            os.close(fd)
        print(json.dumps({"first": first, "later": later}))
    asyncio.run(main())
    """)
    assert result["first"] is not None and result["first"][1] == [0, "hi\n", ""], result  # type: ignore[index]
    assert result["later"] == [[0, "300\n", ""], [0, "500\n", ""], [0, "64\n", ""]], result


def test_a_jail_whose_init_cannot_take_its_fds_fails_by_name_never_a_bare_127() -> None:
    """A spawner whose own fd limit is too low for a request (lowered from outside here, with prlimit):
    each spawn either works or fails with a named error; never a jail that "started" and exits 127 with
    no output and no error (the old code: a waiting init that could not receive the request's fds had no
    error pipe to say so on, and the spawner had already written its PID)."""
    result = _server(_SWEEP + """
    async def main():
        await once()
        spawner = _spawner.spawner_pid()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        seen = []
        for lim in range(8, 40):
            resource.prlimit(spawner, resource.RLIMIT_NOFILE, (lim, hard))
            try:
                seen.append(["ran", lim, *(await once())])
            except aiogaol.SandboxSetupError as e:
                seen.append(["error", lim, e.errno, str(e)])
        print(json.dumps({"seen": seen}))
    asyncio.run(main())
    """)
    seen = result["seen"]
    assert isinstance(seen, list)
    bare = [s for s in seen if s[0] == "ran" and s[2:] != [0, "hi\n", ""]]
    assert bare == [], seen
    assert any(s[0] == "error" for s in seen), seen  # the limit did bite


@pytest.mark.skipif(os.geteuid() == 0, reason="RLIMIT_NPROC is not enforced for root (CAP_SYS_RESOURCE)")
def test_a_process_limit_says_so_and_a_spawner_started_under_it_serves_on() -> None:
    """An ordinary user at RLIMIT_NPROC: the spawn fails naming RLIMIT_NPROC (not "reinstall aiogaol");
    a spawner started just under the limit serves on once the limit is raised again, and a brief shortage
    does not leave the server with a broken spawner."""
    result = _server(_SWEEP + """
    def procs():
        # RLIMIT_NPROC counts tasks, threads included: a many-threaded process of this user (a Ray
        # worker of an earlier test, still ending) counts as many.
        uid = os.getuid()
        n = 0
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    if os.stat(f"/proc/{name}").st_uid == uid:
                        n += len(os.listdir(f"/proc/{name}/task"))
                except OSError:
                    pass
        return n

    async def main():
        soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
        if hard != resource.RLIM_INFINITY and hard < procs() + 50:
            print(json.dumps({"skip": f"hard RLIMIT_NPROC {hard} too close to the {procs()} processes"}))
            return
        resource.setrlimit(resource.RLIMIT_NPROC, (1, hard))  # below what this user runs already
        try:
            await once()
            refused = None
        except aiogaol.SandboxSetupError as e:
            refused = [e.errno, str(e)]
        finally:
            resource.setrlimit(resource.RLIMIT_NPROC, (soft, hard))
        first = None
        for extra in range(1, 12):
            resource.setrlimit(resource.RLIMIT_NPROC, (procs() + extra, hard))
            try:
                first = await once()
                break
            except aiogaol.SandboxSetupError:
                pass
            finally:
                resource.setrlimit(resource.RLIMIT_NPROC, (soft, hard))
        later = [await once() for _ in range(3)]
        print(json.dumps({"refused": refused, "first": first, "later": later}))
    asyncio.run(main())
    """)
    if "skip" in result:
        pytest.skip(str(result["skip"]))
    refused = result["refused"]
    assert isinstance(refused, list) and refused[0] == 11 and "RLIMIT_NPROC" in refused[1], result
    assert "reinstall" not in refused[1], result
    assert result["first"] == [0, "hi\n", ""], result
    assert result["later"] == [[0, "hi\n", ""]] * 3, result


# -- 4. errors that name their cause -----------------------------------------------------------------

@pytest.mark.asyncio
async def test_an_argv_over_arg_max_says_so_not_reinstall() -> None:
    start = open_fds()
    for args in (["x" * 200_000], ["x" * 100_000] * 40):
        with pytest.raises(aiogaol.SandboxSetupError) as info:
            await aiogaol.create_sandboxed_subprocess(TRUE_PROFILE, "true", *args)
        assert info.value.errno == 7  # E2BIG
        assert "arguments and environment are too long" in str(info.value)
        assert "reinstall" not in str(info.value)
    assert open_fds() == start and zombie_children() == []


def test_only_a_missing_helper_says_reinstall() -> None:
    from aiogaol._errors import helper_start_error

    assert "reinstall" in str(helper_start_error(2, "/x/aiogaol-jail", 10))
    for err in (7, 11, 12, 24):  # E2BIG, EAGAIN, ENOMEM, EMFILE
        assert "reinstall" not in str(helper_start_error(err, "/x/aiogaol-jail", 10))


# -- 5. the cancellation soak ------------------------------------------------------------------------

SOAK_SPAWNS = int(os.environ.get("AIOGAOL_SOAK_SPAWNS", "2000"))
SOAK_CONCURRENCY = 64
SOAK_CANCELLED = 0.3


def _soak_state() -> tuple[int, set[int], list[int]]:
    return len(zombie_children()), open_fds(), [pid for pid, _, _ in _strays()]


async def _soak(one: Callable[[], Awaitable[None]], sleep: Callable[[float], Awaitable[None]],
                run_all: Callable[[list[Callable[[], Awaitable[None]]]], Awaitable[None]]) -> dict[str, float]:
    rng = random.Random(12)
    done = cancelled = 0
    started = time.monotonic()
    limit = anyio.Semaphore(SOAK_CONCURRENCY)

    async def worker(k: int) -> None:
        nonlocal done, cancelled
        async with limit:
            if rng.random() < SOAK_CANCELLED:
                with anyio.move_on_after(rng.uniform(0, 0.5)) as scope:  # waiting, being built or running
                    await one()
                if scope.cancelled_caught:
                    cancelled += 1
                else:
                    done += 1
            else:
                await one()
                done += 1

    await run_all([lambda k=k: worker(k) for k in range(SOAK_SPAWNS)])  # type: ignore[misc]
    return {"spawns": SOAK_SPAWNS, "done": done, "cancelled": cancelled,
            "seconds": round(time.monotonic() - started, 1)}


async def _task_group_all(jobs: list[Callable[[], Awaitable[None]]]) -> None:
    async with anyio.create_task_group() as tg:
        for job in jobs:
            tg.start_soon(job)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop", "trio"])
def test_a_cancellation_soak_leaves_nothing_behind(loop: str) -> None:
    """SOAK_SPAWNS spawns, 64 at a time, 30 % of them cancelled at a random point of their start: no
    zombie, no stray process and no extra fd afterwards.  The asyncio mirror runs on asyncio and uvloop,
    the anyio face on trio.  Prints the figures."""
    async def one_mirror() -> None:
        proc = await aiogaol.create_sandboxed_subprocess(TRUE_PROFILE, "true", stdin=aiogaol.DEVNULL,
                                                         stdout=aiogaol.DEVNULL, stderr=aiogaol.DEVNULL)
        async with proc:  # cancelled while it runs: killed and reaped on the way out
            assert await proc.wait() == 0

    async def one_anyio() -> None:
        async with await aiogaol.spawn(TRUE_PROFILE, ["true"], stdin=None, stdout=None, stderr=None) as proc:
            assert await proc.wait() == 0

    async def main() -> dict[str, float]:
        one = one_anyio if loop == "trio" else one_mirror
        spawn_true = _true_anyio if loop == "trio" else _true
        await spawn_true()
        zombies, fds, strays = _soak_state()
        figures = await _soak(one, anyio.sleep, _task_group_all)
        for k in range(200):  # what cancelled spawns left is finished by later spawns
            if k % 10 == 0:
                await spawn_true()
            _spawner.settle()
            now = _soak_state()
            if now[:2] == (zombies, fds) and set(now[2]) <= set(strays):
                break
            await anyio.sleep(0.1)
        now = _soak_state()
        assert now[:2] == (zombies, fds) and set(now[2]) <= set(strays), (now, (zombies, fds, strays))
        return figures

    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed (the test extra has it)")
        figures = anyio.run(main, backend="asyncio", backend_options={"loop_factory": uvloop.new_event_loop})
    else:
        figures = anyio.run(main, backend=loop)
    print(f"\nsoak on {loop}: {figures}")
    assert figures["done"] + figures["cancelled"] == SOAK_SPAWNS
    assert figures["cancelled"] > 0
