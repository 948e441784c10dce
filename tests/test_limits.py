"""Limits and the report: real programs hit real limits, under asyncio and trio."""

from __future__ import annotations

import os
import signal

import pytest

import aiogaol
from aiogaol import Limits, Status

from .conftest import zombie_children

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def scratch_profile() -> aiogaol.Profile:
    return aiogaol.python_profile([aiogaol.Tmpfs("/tmp", 4 << 20)])


async def run_py(profile: aiogaol.Profile, python: str, code: str, limits: Limits | None = None,
                 **kwargs: object) -> aiogaol.Result:
    return await aiogaol.run(profile, [python, "-c", code], limits=limits, **kwargs)  # type: ignore[arg-type]


async def test_cpu_spin_is_stopped_by_cpu_time(scratch_profile: aiogaol.Profile, python: str) -> None:
    r = await run_py(scratch_profile, python, "while True: pass", Limits(cpu_time=1.0, wall_time=30))
    assert r.status is Status.CPU_LIMIT
    assert r.signal == signal.SIGXCPU
    assert 0.8 <= r.cpu_time <= 2.5  # the spin's CPU time is close to its limit
    assert "RLIMIT_CPU" in r.enforced_by["cpu_time"]


async def test_sleep_is_stopped_by_wall_time(scratch_profile: aiogaol.Profile, python: str) -> None:
    r = await run_py(scratch_profile, python, "import time; time.sleep(60)", Limits(wall_time=0.5))
    assert r.status is Status.TIMED_OUT
    assert r.returncode == -signal.SIGTERM
    assert r.cpu_time < 0.45  # it slept: the wall clock, not the CPU, stopped it
    assert r.wall_time >= 0.5
    assert "event loop" in r.enforced_by["wall_time"]


async def test_a_sigterm_ignoring_sleeper_is_killed_after_the_grace(scratch_profile: aiogaol.Profile,
                                                                   python: str) -> None:
    code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)"
    r = await run_py(scratch_profile, python, code, Limits(wall_time=0.3), grace_period=0.2)
    assert r.status is Status.TIMED_OUT
    assert r.returncode == -signal.SIGKILL


async def test_memory_hog_is_stopped_and_reported(scratch_profile: aiogaol.Profile, python: str) -> None:
    r = await run_py(scratch_profile, python, "x = bytearray(1 << 30)", Limits(memory=256 << 20))
    assert r.status is Status.MEMORY_LIMIT
    assert r.returncode != 0 and b"MemoryError" in r.stderr
    assert r.max_rss < 256 << 20
    assert "inferred" in r.evidence


async def test_max_rss_of_a_known_allocation(scratch_profile: aiogaol.Profile, python: str) -> None:
    code = "b = bytearray(100 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1"
    r = await run_py(scratch_profile, python, code)
    assert r.status is Status.OK
    assert 100 << 20 <= r.max_rss <= 160 << 20  # 100 MiB touched, plus the interpreter


async def test_fork_bomb_stops_at_the_process_limit(scratch_profile: aiogaol.Profile, python: str) -> None:
    r = await run_py(scratch_profile, python, "import os\nwhile True: os.fork()",
                     Limits(processes=32, wall_time=20))
    assert r.status in (Status.PROCESS_LIMIT, Status.TIMED_OUT)
    assert r.status is Status.PROCESS_LIMIT, r.evidence
    assert zombie_children() == []
    # The host is unaffected: it still starts processes, and nothing of the bomb is left.
    after = await aiogaol.run(aiogaol.system_profile(), ["/bin/true"])
    assert after.ok


async def test_disk_filler_hits_the_tmpfs_size(scratch_profile: aiogaol.Profile, python: str) -> None:
    code = "f = open('/tmp/fill', 'wb')\nwhile True:\n    f.write(b'x' * 65536); f.flush()"
    r = await run_py(scratch_profile, python, code)
    assert r.status is Status.DISK_LIMIT
    assert b"No space left on device" in r.stderr


async def test_file_size_limit(scratch_profile: aiogaol.Profile, python: str) -> None:
    r = await run_py(scratch_profile, python, "open('/tmp/big', 'wb').write(b'x' * (2 << 20))",
                     Limits(file_size=1 << 20))
    assert r.status is Status.FILE_SIZE_LIMIT
    assert b"File too large" in r.stderr  # CPython ignores SIGXFSZ, so it sees EFBIG


async def test_file_size_limit_kills_a_plain_program(tmp_path: os.PathLike[str]) -> None:
    profile = aiogaol.system_profile([aiogaol.Tmpfs("/tmp", 8 << 20)])
    r = await aiogaol.run(profile, ["/bin/sh", "-c", "head -c 3000000 /dev/zero > /tmp/big"],
                          limits=Limits(file_size=1 << 20))
    assert r.status is Status.FILE_SIZE_LIMIT
    # The shell reports its child's SIGXFSZ death as 128 + 25 and says so on stderr.
    assert r.returncode == 128 + signal.SIGXFSZ and b"File size limit exceeded" in r.stderr


async def test_fd_hog_hits_open_files(scratch_profile: aiogaol.Profile, python: str) -> None:
    r = await run_py(scratch_profile, python, "import os\nfds = [os.open('/dev/null', 0) for _ in range(100000)]",
                     Limits(open_files=64))
    assert r.status is Status.OPEN_FILES_LIMIT


async def test_hundred_megabytes_of_output_are_capped(scratch_profile: aiogaol.Profile, python: str) -> None:
    code = "import sys\nfor _ in range(1600): sys.stdout.buffer.write(b'y' * 65536)"
    r = await run_py(scratch_profile, python, code, Limits(output=1 << 20))
    assert r.status is Status.OUTPUT_LIMIT
    assert len(r.stdout) == 1 << 20 and r.stdout_truncated
    assert r.cpu_time > 0  # the program was killed through init, so the jail's usage is whole


async def test_input_and_output_round_trip(scratch_profile: aiogaol.Profile, python: str) -> None:
    r = await run_py(scratch_profile, python, "import sys; print(sys.stdin.read()[::-1])", input=b"abc")
    assert (r.status, r.stdout, r.returncode) == (Status.OK, b"cba\n", 0)
    assert r.check() is r


async def test_nonzero_exit_and_check(scratch_profile: aiogaol.Profile, python: str) -> None:
    r = await run_py(scratch_profile, python, "raise SystemExit(3)")
    assert r.status is Status.NONZERO_EXIT and r.returncode == 3
    with pytest.raises(aiogaol.RunError, match="nonzero-exit"):
        r.check()


async def test_defaults_apply_to_a_bare_run(scratch_profile: aiogaol.Profile, python: str) -> None:
    r = await run_py(scratch_profile, python, "import resource, json; print(json.dumps("
                     "[resource.getrlimit(resource.RLIMIT_NPROC)[0], resource.getrlimit(resource.RLIMIT_AS)[0],"
                     " resource.getrlimit(resource.RLIMIT_CORE)[0]]))")
    import json

    assert json.loads(r.stdout) == [aiogaol.DEFAULT_LIMITS.processes, aiogaol.DEFAULT_LIMITS.memory, 0]
    meta = r.meta()
    assert meta["status"] == "ok" and "memory" in meta["enforced_by"] and "stdout" not in meta


async def test_limits_are_validated() -> None:
    with pytest.raises(aiogaol.ProfileError):
        Limits(memory=-1)
    with pytest.raises(TypeError):
        Limits(processes=2.5)  # type: ignore[arg-type]
