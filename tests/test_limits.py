"""Limits and the report: real programs hit real limits, under asyncio and trio."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

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
    # RLIMIT_CPU's SIGXCPU, or the event loop's watch of the jail's CPU time (SIGKILL), whichever is first
    assert r.signal in (signal.SIGXCPU, signal.SIGKILL), r.evidence
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
    nproc, address_space, core = json.loads(r.stdout)
    assert core == 0
    # Where a cgroup holds the jail, memory.max and pids.max replace these two rlimits.
    if r.enforced_by["processes"].startswith("rlimit"):
        assert nproc == aiogaol.DEFAULT_LIMITS.processes
    if r.enforced_by["memory"].startswith("rlimit"):
        assert address_space == aiogaol.DEFAULT_LIMITS.memory
    meta = r.meta()
    assert meta["status"] == "ok" and "memory" in meta["enforced_by"] and "stdout" not in meta


async def test_limits_are_validated() -> None:
    with pytest.raises(aiogaol.ProfileError):
        Limits(memory=-1)
    with pytest.raises(aiogaol.ProfileError):
        Limits(cgroup="relative/path")
    with pytest.raises(TypeError):
        Limits(processes=2.5)  # type: ignore[arg-type]


async def test_nice_is_validated() -> None:
    for bad in (-1, 20):
        with pytest.raises(aiogaol.ProfileError, match="between 0 and 19"):
            Limits(nice=bad)
    for wrong in (True, 1.5, "10"):
        with pytest.raises(TypeError, match="nice"):
            Limits(nice=wrong)  # type: ignore[arg-type]



async def test_jails_run_at_nice_19_by_default_or_as_asked(scratch_profile: aiogaol.Profile, python: str) -> None:
    """What the kernel says of the program's niceness (and that of what it starts, which inherits it)."""
    assert os.getpriority(os.PRIO_PROCESS, 0) == 0, "the test server itself must run at nice 0"
    cases = {None: b"19", Limits(nice=5): b"5", Limits(nice=0): b"0", Limits(nice=None): b"0"}
    for limits, want in cases.items():
        r = await run_py(scratch_profile, python,
                         "import os, subprocess, sys; print(os.getpriority(os.PRIO_PROCESS, 0));"
                         "sys.stdout.flush(); subprocess.run([sys.executable, '-c', "
                         "'import os; print(os.getpriority(os.PRIO_PROCESS, 0))'])", limits=limits)
        assert r.stdout.split() == [want, want], (limits, r.stdout, r.stderr)
        # Lowering it again needs CAP_SYS_NICE in the host's user namespace, which no jail has.
        if want != b"0":
            r = await run_py(scratch_profile, python, "import os; os.setpriority(os.PRIO_PROCESS, 0, 0)",
                             limits=limits)
            assert b"PermissionError" in r.stderr, r.stderr


SLICE = ("import subprocess, sys\n"
         "mine = [l.split()[-1] for l in open('/proc/self/sched') if l.startswith('se.slice')]\n"
         "kid = subprocess.run([sys.executable, '-c', \"print([l.split()[-1] for l in open('/proc/self/sched') "
         "if l.startswith('se.slice')])\"], capture_output=True, text=True).stdout\n"
         "print(mine, kid.strip())")


def our_slice() -> str:
    """This process's slice in ns, as the kernel shows it; skips where it shows none."""
    if not os.path.exists("/proc/self/sched"):
        pytest.skip("no /proc/PID/sched here (CONFIG_SCHED_DEBUG)")
    with open("/proc/self/sched") as f:
        for line in f:
            if line.startswith("se.slice"):
                return line.split()[-1]
    pytest.skip("this kernel has no per-task slice (EEVDF custom slices came in Linux 6.12)")


async def test_a_niced_jail_runs_in_a_long_slice_that_its_children_keep(scratch_profile: aiogaol.Profile,
                                                                         python: str) -> None:
    """A niced jail's processes take a 10 ms slice (init.c's lengthen_slice), so that the server's wakeups
    preempt them rather than wait for the next tick; a jail at the server's own niceness keeps its slice."""
    ours = our_slice()
    assert int(ours) < 10_000_000, "the test server itself must run in a default slice"
    cases = {None: "10000000", Limits(nice=5): "10000000", Limits(nice=None): ours, Limits(nice=0): ours}
    for limits, want in cases.items():
        r = await run_py(scratch_profile, python, SLICE, limits=limits)
        assert r.stdout.decode().split("\n")[0] == f"['{want}'] ['{want}']", (limits, r.stdout, r.stderr)
    async with aiogaol.PythonPool(scratch_profile, python=python, size=1) as pool:
        r = await pool.run(SLICE)
    assert r.stdout.decode().strip() == "['10000000'] ['10000000']", (r.stdout, r.stderr)


NICER_SERVER = """
import asyncio, os, sys
sys.path.insert(0, {root!r})
import aiogaol
os.nice(12)
async def main():
    r = await aiogaol.run(aiogaol.python_profile(), [{python!r}, "-c", "import os; print(os.getpriority(os.PRIO_PROCESS, 0))"],
                          limits=aiogaol.Limits(nice=5))
    print("JAIL", r.stdout.decode().strip(), r.stderr.decode()[-300:])
asyncio.run(main())
"""


async def test_a_nicer_server_keeps_its_own_niceness(python: str) -> None:
    """nice is only ever raised: a server at 12 asking for 5 gets 12, not an error."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(aiogaol.__file__)))
    done = subprocess.run([sys.executable, "-c", NICER_SERVER.format(root=root, python=python)],
                          capture_output=True, text=True, timeout=60)
    assert "JAIL 12 " in done.stdout, done.stdout + done.stderr


async def test_a_c_program_out_of_address_space_is_memory_limit() -> None:
    # tail keeps the last "line" of an endless stream without newlines: it grows until malloc fails.
    r = await aiogaol.run(aiogaol.system_profile(), ["/usr/bin/tail", "-n1", "/dev/zero"],
                          limits=Limits(memory=128 << 20, wall_time=30))
    assert r.status is Status.MEMORY_LIMIT, r.evidence
    assert b"memory exhausted" in r.stderr and r.evidence.startswith("inferred")
    assert 64 << 20 <= r.max_rss <= 128 << 20  # it held most of its address space when it failed


async def test_a_crash_near_the_memory_limit_is_attributed_to_it(scratch_profile: aiogaol.Profile,
                                                                 python: str) -> None:
    # How C programs die when malloc returns NULL: SIGSEGV (or SIGABRT) with the heap nearly full.
    crash = "import os, signal\nb = bytearray({} << 20)\nos.kill(os.getpid(), signal.SIGSEGV)"
    r = await run_py(scratch_profile, python, crash.format(220), Limits(memory=256 << 20))
    assert (r.status, r.signal) == (Status.MEMORY_LIMIT, signal.SIGSEGV)
    assert "max RSS" in r.evidence and r.evidence.startswith("inferred")
    # The same crash far below the limit is only a crash: the report never claims more than it saw.
    r = await run_py(scratch_profile, python, crash.format(8), Limits(memory=256 << 20))
    assert (r.status, r.signal) == (Status.SIGNALLED, signal.SIGSEGV)


async def test_bare_run_reports_why_there_is_no_cgroup_or_which_one(scratch_profile: aiogaol.Profile,
                                                                    python: str) -> None:
    r = await run_py(scratch_profile, python, "pass")
    assert r.enforced_by["cgroup"].startswith(("none: ", "cgroup v2 "))
    r = await run_py(scratch_profile, python, "pass", Limits(cgroup="none"))
    assert r.enforced_by["cgroup"] == "none: cgroups not wanted (Limits.cgroup='none')" and r.cgroup is None
    assert "RLIMIT_AS" in r.enforced_by["memory"]


# cgroup v2, for real: this host mounts only cgroup v1 controllers, so the test mounts a cgroup2
# hierarchy in a mount and cgroup namespace of its own (unshare -Cm) and runs jails with Limits(cgroup=
# that mount).  What the kernel lends that hierarchy (here: no memory, pids or cpu controller, which are
# bound to v1) decides which parts can be checked; the rest is skipped with the reason.
_CGROUP_SCRIPT = r'''
import ctypes, errno, json, os, struct, sys
import anyio, aiogaol
from aiogaol import Limits

mnt, backend = sys.argv[1], sys.argv[2]

async def main():
    profile, py = aiogaol.python_profile(), aiogaol.python_executable()
    try:
        parent = aiogaol._cgroup.parent_at(mnt, enable=True)
    except OSError as e:
        print(json.dumps({"skip": f"cannot create cgroups in a cgroup2 mount here: {e}"}))
        return
    out = {"controllers": sorted(parent.controllers)}
    # Four spinners: RLIMIT_CPU would give each its own 1 s; the cgroup counts them together.
    spin = "import os\nfor i in range(4):\n  if os.fork() == 0:\n    while True: pass\nos.wait()"
    r = await aiogaol.run(profile, [py, "-c", spin], limits=Limits(cgroup=mnt, cpu_time=1.0, wall_time=30))
    out["spin"] = r.meta()
    if "memory" in parent.controllers:
        hog = "b = bytearray(512 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1"
        out["hog"] = (await aiogaol.run(profile, [py, "-c", hog], limits=Limits(cgroup=mnt, memory=128 << 20))).meta()
    if "pids" in parent.controllers:
        bomb = "import os, time\nwhile True:\n  try: os.fork()\n  except OSError: time.sleep(0.01); os._exit(3)"
        out["bomb"] = (await aiogaol.run(profile, [py, "-c", bomb],
                                         limits=Limits(cgroup=mnt, processes=16, wall_time=30))).meta()
    # The jail's cgroup namespace is rooted in its own cgroup, from clone3 CLONE_INTO_CGROUP.
    cat = [py, "-c", "print(open('/proc/self/cgroup').read().strip())"]
    r = await aiogaol.run(profile, cat, limits=Limits(cgroup=mnt))
    out["ns"] = [r.stdout.decode(), r.enforced_by["cgroup"], r.cgroup is not None]
    # Where clone3 is refused (ENOSYS, as old kernels and some seccomp policies answer), the spawner
    # moves init into the cgroup before letting it go, and init makes its cgroup namespace after: the
    # same view.  The filter (no_new_privs first) makes the next spawn start a new spawner, which
    # inherits it.
    libc = ctypes.CDLL(None, use_errno=True)
    insns = [(0x20, 0, 0, 0), (0x15, 0, 1, 435), (0x06, 0, 0, 0x00050000 | errno.ENOSYS), (0x06, 0, 0, 0x7FFF0000)]
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in insns))
    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    prog = Prog(len(insns), ctypes.addressof(code))
    assert libc.prctl(38, 1, 0, 0, 0) == 0 and libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0
    spin2 = "import os\nfor i in range(2):\n  if os.fork() == 0:\n    while True: pass\nos.wait()"
    r = await aiogaol.run(profile, [py, "-c", spin2], limits=Limits(cgroup=mnt, cpu_time=0.5, wall_time=30))
    out["no_clone3_spin"] = r.meta()
    r = await aiogaol.run(profile, cat, limits=Limits(cgroup=mnt))
    out["no_clone3_ns"] = [r.stdout.decode(), r.enforced_by["cgroup"], r.cgroup is not None]
    out["left"] = sorted(d for d in os.listdir(mnt) if d.startswith("aiogaol-"))
    print(json.dumps(out))

anyio.run(main, backend=backend)
'''


@pytest.fixture(scope="module")
def cgroup2_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The script's report per backend, run once for the module (each run mounts its own cgroup2)."""
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path_factory.mktemp("cg") / "cgroup_script.py"
    script.write_text(_CGROUP_SCRIPT)
    reports: dict[str, object] = {}
    for backend in ("asyncio", "trio"):
        mnt = tmp_path_factory.mktemp("cgroup2")
        # Root gets a mount and cgroup namespace; anyone else needs a user namespace too, and then owns
        # nothing in the hierarchy (the script says so and the tests skip).
        prefix = ["unshare", "-Cm"] if os.geteuid() == 0 else ["unshare", "-Ucm", "--map-root-user"]
        cmd = [*prefix, "sh", "-c", 'mount -t cgroup2 none "$1" && exec "$2" "$3" "$1" "$4"', "sh",
               str(mnt), sys.executable, str(script), backend]
        proc = subprocess.run(cmd, capture_output=True, timeout=60, cwd=root,
                              env={**os.environ, "PYTHONPATH": root})
        if proc.returncode != 0:
            pytest.skip(f"cannot mount cgroup2 in a namespace of our own: {proc.stderr.decode()[-300:]}")
        reports[backend] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    return reports


def _cgroup_report(runs: dict[str, object], backend: str) -> dict[str, Any]:
    report = runs[backend]
    assert isinstance(report, dict)
    if "skip" in report:
        print(report["skip"])
        pytest.skip(str(report["skip"]))
    return report


def _controller_run(runs: dict[str, object], backend: str, key: str, controller: str) -> dict[str, Any]:
    """The run that needed ``controller``, or a skip that names what the hierarchy lends instead."""
    report = _cgroup_report(runs, backend)
    if key not in report:
        reason = f"the cgroup2 hierarchy here lends no {controller} controller (it has: {report['controllers']})"
        print(reason)
        pytest.skip(reason)
    run = report[key]
    assert isinstance(run, dict)
    return run


async def test_cgroup2_holds_the_whole_jail_and_bounds_its_cpu(cgroup2_runs: dict[str, object],
                                                               anyio_backend: str) -> None:
    report = _cgroup_report(cgroup2_runs, anyio_backend)
    spin = report["spin"]
    # Every process of the jail was in the cgroup from its start: its cpu.stat saw all four spinners,
    # and the event loop stopped them at 1 s together, where RLIMIT_CPU alone allows 4 s.
    assert spin["status"] == "cpu-limit", spin["evidence"]
    assert "cgroup cpu.stat" in spin["evidence"]
    assert 0.9 <= spin["cgroup"]["cpu_time"] <= 2.0
    assert spin["cpu_time"] == spin["cgroup"]["cpu_time"]
    assert spin["enforced_by"]["cgroup"].startswith("cgroup v2 ")
    assert report["left"] == []  # each jail's cgroup is removed after the reap
    # The jail sees its own cgroup as its root, placed by clone3 or, without it, moved in by the spawner.
    for key in ("ns", "no_clone3_ns"):
        view, enforced, placed = report[key]
        assert (view.splitlines()[-1], placed) == ("0::/", True) and enforced.startswith("cgroup v2 "), (key, report[key])
    spin2 = report["no_clone3_spin"]
    assert "cgroup cpu.stat" in spin2["evidence"] and 0.4 <= spin2["cgroup"]["cpu_time"] <= 1.5, spin2
    assert spin2["cpu_time"] == spin2["cgroup"]["cpu_time"]


async def test_cgroup2_memory_max_reports_the_oom_kill(cgroup2_runs: dict[str, object], anyio_backend: str) -> None:
    hog = _controller_run(cgroup2_runs, anyio_backend, "hog", "memory")
    assert hog["status"] == "memory-limit" and hog["cgroup"]["oom_kills"] >= 1
    assert hog["enforced_by"]["memory"].startswith("cgroup memory.max")
    assert hog["cgroup"]["memory_peak"] is None or hog["cgroup"]["memory_peak"] <= (128 << 20) + (1 << 20)


async def test_cgroup2_pids_max_stops_a_fork_bomb(cgroup2_runs: dict[str, object], anyio_backend: str) -> None:
    bomb = _controller_run(cgroup2_runs, anyio_backend, "bomb", "pids")
    assert bomb["status"] == "process-limit" and bomb["cgroup"]["pids_max_hits"] >= 1
