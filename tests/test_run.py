"""``aiogaol.run``: feeding, collecting, wall time, cancellation and the report, under asyncio and trio."""

from __future__ import annotations

import json
import signal

import anyio
import pytest

import aiogaol
from aiogaol import Limits, Status

from .conftest import open_fds, zombie_children

pytestmark = pytest.mark.anyio


async def test_input_reaches_the_program_and_both_streams_come_back(py_profile: aiogaol.Profile,
                                                                    python: str) -> None:
    code = "import sys\nd = sys.stdin.buffer.read()\nsys.stdout.buffer.write(d[::-1])\nsys.stderr.write('e')"
    r = await aiogaol.run(py_profile, [python, "-c", code], input=b"abc")
    assert (r.status, r.returncode, r.signal, r.stdout, r.stderr) == (Status.OK, 0, None, b"cba", b"e")
    assert r.evidence == "exit status 0" and r.check() is r


async def test_megabytes_each_way_do_not_deadlock(py_profile: aiogaol.Profile, python: str) -> None:
    # More than a pipe holds, in and out at once: the feed and the pumps must run side by side.
    data = bytes(range(256)) * (8 << 12)  # 8 MiB
    code = "import sys, shutil\nshutil.copyfileobj(sys.stdin.buffer, sys.stdout.buffer)"
    r = await aiogaol.run(py_profile, [python, "-c", code], input=data)
    assert r.status is Status.OK and r.stdout == data


async def test_a_program_that_ignores_its_input_is_not_an_error(py_profile: aiogaol.Profile, python: str) -> None:
    r = await aiogaol.run(py_profile, [python, "-c", "pass"], input=b"x" * (4 << 20))
    assert r.status is Status.OK


async def test_env_and_cwd_are_the_callers_choice(py_profile: aiogaol.Profile, python: str) -> None:
    code = "import os, json; print(json.dumps([os.getcwd(), os.environ.get('ANSWER')]))"
    r = await aiogaol.run(py_profile, [python, "-c", code], env={"ANSWER": "42"}, cwd="/usr")
    assert json.loads(r.stdout) == ["/usr", "42"]


async def test_exit_status_and_signal_are_reported(py_profile: aiogaol.Profile, python: str) -> None:
    r = await aiogaol.run(py_profile, [python, "-c", "raise SystemExit(7)"])
    assert (r.status, r.returncode, r.signal) == (Status.NONZERO_EXIT, 7, None)
    r = await aiogaol.run(py_profile, [python, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGUSR1)"])
    assert (r.status, r.returncode, r.signal) == (Status.SIGNALLED, -signal.SIGUSR1, signal.SIGUSR1)
    with pytest.raises(aiogaol.RunError, match="signalled"):
        r.check()


async def test_wall_time_ends_a_whole_tree_that_ignores_sigterm(py_profile: aiogaol.Profile, python: str) -> None:
    code = ("import os, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "for _ in range(3):\n    os.fork()\ntime.sleep(60)")
    r = await aiogaol.run(py_profile, [python, "-c", code], limits=Limits(wall_time=0.5), grace_period=0.1)
    assert r.status is Status.TIMED_OUT and r.returncode == -signal.SIGKILL
    assert zombie_children() == []


async def test_cancelling_run_kills_and_reaps_the_jail(py_profile: aiogaol.Profile, python: str) -> None:
    before = open_fds()
    with anyio.move_on_after(0.5) as scope:
        await aiogaol.run(py_profile, [python, "-c", "import time; time.sleep(60)"])
    assert scope.cancelled_caught
    assert zombie_children() == []
    assert open_fds() <= before  # pipes, pidfd and lifeline all closed


async def test_runs_leak_no_fds(py_profile: aiogaol.Profile, python: str) -> None:
    await aiogaol.run(py_profile, [python, "-c", "print(1)"], input=b"x")
    before = open_fds()
    for _ in range(5):
        await aiogaol.run(py_profile, [python, "-c", "print(1)"], input=b"x")
    assert open_fds() == before


async def test_many_runs_at_once(py_profile: aiogaol.Profile, python: str) -> None:
    results: list[aiogaol.Result] = []

    async def one(i: int) -> None:
        results.append(await aiogaol.run(py_profile, [python, "-c", f"print({i})"]))

    async with anyio.create_task_group() as tg:
        for i in range(16):
            tg.start_soon(one, i)
    assert sorted(int(r.stdout) for r in results) == list(range(16))


async def test_stderr_is_capped_too(py_profile: aiogaol.Profile, python: str) -> None:
    code = "import sys\nwhile True: sys.stderr.buffer.write(b'e' * 65536)"
    r = await aiogaol.run(py_profile, [python, "-c", code], limits=Limits(output=100_000))
    assert r.status is Status.OUTPUT_LIMIT and r.stderr_truncated and not r.stdout_truncated
    assert len(r.stderr) == 100_000


async def test_meta_is_json_and_names_every_mechanism(py_profile: aiogaol.Profile, python: str) -> None:
    r = await aiogaol.run(py_profile, [python, "-c", "pass"], limits=Limits(wall_time=10, cpu_time=5))
    meta = json.loads(json.dumps(r.meta()))
    assert meta["status"] == "ok" and "stdout" not in meta
    by = meta["enforced_by"]
    assert by["wall_time"].startswith("event loop") and by["output"].startswith("event loop")
    assert "RLIMIT_CPU" in by["cpu_time"] and "RLIMIT_FSIZE" in by["file_size"]
    assert by["memory"].startswith(("rlimit", "cgroup")) and by["cgroup"].startswith(("none:", "cgroup v2"))
    assert r.wall_time > 0 and r.max_rss > 1 << 20


async def test_bad_arguments_fail_before_anything_starts(py_profile: aiogaol.Profile, python: str) -> None:
    with pytest.raises(TypeError):
        await aiogaol.run(py_profile, python)  # a string, not a list: no shell here
    with pytest.raises(TypeError):
        await aiogaol.run(py_profile, [python], input="text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await aiogaol.run(py_profile, [python], grace_period=-1)
    with pytest.raises(FileNotFoundError):
        await aiogaol.run(py_profile, ["/no/such/program"])
    assert zombie_children() == []
