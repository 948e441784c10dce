"""``aiogaol.PythonPool``: each job as ``python3 -c`` in a fresh jail, forked from a warm interpreter.

Real jails on the real kernel, on asyncio and trio: what a job sees (argv, ``__main__``, stdio, exit
codes, tracebacks, environment), what it cannot reach (other jobs, the warm interpreter), what the pool
survives (a crash, a fork bomb, its warm interpreter killed, the files it was built from changed), and
what it leaves behind (no fd, no zombie).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import textwrap
import uuid
from collections.abc import Callable, Iterator

import anyio
import pytest

import aiogaol
from aiogaol import _python_pool

from .conftest import open_fds, zombie_children

pytestmark = pytest.mark.anyio

HAVE_NUMPY = importlib.util.find_spec("numpy") is not None


@pytest.fixture
def scratch_profile(py_profile: aiogaol.Profile) -> aiogaol.Profile:
    return py_profile + [aiogaol.Tmpfs("/tmp", 16 << 20)]


@pytest.fixture
def site_module() -> Iterator[tuple[str, str]]:
    """A module of our own in this venv's site-packages (where the warm interpreter, started with -I,
    finds modules), removed afterwards: (name, path)."""
    name = f"_aiogaol_test_{uuid.uuid4().hex[:12]}"
    path = os.path.join(sysconfig.get_paths()["purelib"], name + ".py")
    try:
        yield name, path
    finally:
        for p in (path,):
            if os.path.exists(p):
                os.unlink(p)


async def test_a_job_runs_as_python_c_would(py_profile: aiogaol.Profile) -> None:
    code = ("import sys, os\n"
            "print(sys.argv, __name__, sys.path[0] == '', '__file__' in globals())\n"
            "print(sys.stdin.read().upper(), end='')\n"
            "print('to stderr', file=sys.stderr)\n"
            "print(sorted(os.environ.items()))\n")
    async with aiogaol.PythonPool(py_profile, size=2) as pool:
        r = await pool.run(code, args=["a", "b c"], input=b"some input\n", env={"ANSWER": "42"})
    assert r.status == "ok" and r.returncode == 0 and r.signal is None
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "['-c', 'a', 'b c'] __main__ True False"
    assert lines[1] == "SOME INPUT"
    assert lines[2] == str(sorted({"ANSWER": "42", "PATH": "/usr/local/bin:/usr/bin:/bin"}.items()))
    assert r.stderr == b"to stderr\n"
    assert r.args == ("python3", "-c", code, "a", "b c")
    assert r.wall_time > 0 and r.cpu_time > 0 and r.max_rss > 0 and r.isolation == "namespaces"


async def test_exit_codes_and_tracebacks_are_cpythons(py_profile: aiogaol.Profile) -> None:
    async with aiogaol.PythonPool(py_profile, size=2) as pool:
        exit3 = await pool.run("import sys; sys.exit(3)")
        words = await pool.run("raise SystemExit('no good')")
        none = await pool.run("raise SystemExit")
        crash = await pool.run("x = 1\n1 / 0\n")
        flushed = await pool.run("import sys; sys.stdout.write('no newline'); import atexit; "
                                 "atexit.register(print, 'at exit')")
    assert (exit3.returncode, exit3.status) == (3, "nonzero-exit")
    assert (words.returncode, words.stderr) == (1, b"no good\n")
    assert (none.returncode, none.status) == (0, "ok")
    assert crash.returncode == 1 and crash.status == "nonzero-exit"
    assert crash.stderr == (b'Traceback (most recent call last):\n  File "<string>", line 2, in <module>\n'
                            b"ZeroDivisionError: division by zero\n")
    assert flushed.stdout == b"no newlineat exit\n"


async def test_statuses_are_those_of_run(py_profile: aiogaol.Profile) -> None:
    limits = aiogaol.Limits(output=1000, cpu_time=1)
    async with aiogaol.PythonPool(py_profile, size=3, limits=limits) as pool:
        slow, loud, killed, spin = await _gather(
            pool.run("import time; time.sleep(30)", timeout=0.5),
            pool.run("print('x' * 100000)"),
            pool.run("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"),
            pool.run("while True: pass", timeout=20))
    assert slow.status == "timed-out" and slow.wall_time < 20
    assert loud.status == "output-limit" and loud.stdout == b"x" * 1000 and loud.stdout_truncated
    assert killed.status == "signalled" and killed.returncode == -signal.SIGKILL
    assert spin.status == "cpu-limit" and spin.cpu_time > 0.5


async def _gather(*coros: object) -> list[aiogaol.Result]:
    results: list[aiogaol.Result | None] = [None] * len(coros)

    async def one(i: int, coro: object) -> None:
        results[i] = await coro  # type: ignore[misc]

    async with anyio.create_task_group() as tg:
        for i, coro in enumerate(coros):
            tg.start_soon(one, i, coro)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


async def test_preloads_are_imported_already(py_profile: aiogaol.Profile) -> None:
    async with aiogaol.PythonPool(py_profile, preload=["json", "xml.dom.minidom"]) as pool:
        r = await pool.run("import sys; print('json' in sys.modules, 'xml.dom.minidom' in sys.modules)")
        assert pool.stats().preload == ("json", "xml.dom.minidom")
    assert r.stdout == b"True True\n"


@pytest.mark.skipif(not HAVE_NUMPY, reason="numpy is not installed (it is in the test extra)")
async def test_numpy_preloaded_runs_in_the_jail(py_profile: aiogaol.Profile) -> None:
    async with aiogaol.PythonPool(py_profile, preload=["numpy"], size=2,
                                  limits=aiogaol.Limits(wall_time=5)) as pool:
        r = await pool.run("import numpy as np\nprint(np.arange(10).sum())", input=b"", timeout=10)
        assert pool.stats().threads_at_fork == 1
    assert (r.status, r.stdout) == ("ok", b"45\n"), r.stderr


async def test_nothing_of_one_job_reaches_the_next(scratch_profile: aiogaol.Profile) -> None:
    first = ("import json, os, random\n"
             "json.LEFT_BEHIND = 1\n"
             "open('/tmp/left-behind', 'w').write('x')\n"
             "os.environ['LEFT'] = '1'\n"
             "print(os.getpid(), random.random())\n")
    second = ("import json, os, random\n"
              "print(os.getpid(), random.random())\n"
              "print(hasattr(json, 'LEFT_BEHIND'), os.path.exists('/tmp/left-behind'), 'LEFT' in os.environ)\n")
    async with aiogaol.PythonPool(scratch_profile, preload=["json"], size=1) as pool:
        a = await pool.run(first, env={"ONLY_FIRST": "1"})
        b = await pool.run(second)
    pid_a, rand_a = a.stdout.split()
    pid_b, rand_b, *rest = b.stdout.split()
    assert pid_a == pid_b == b"2"  # each its own PID namespace, the job as PID 2 under its init
    assert rand_a != rand_b  # random is reseeded at each fork
    assert rest == [b"False", b"False", b"False"], b.stderr


async def test_a_jail_made_ahead_shows_its_job_what_a_fresh_one_does(py_profile: aiogaol.Profile) -> None:
    # P of a jail made ahead warms up while it waits (compiles aiogaol's own source, clears the
    # environment): its job must see exactly what a job in a jail made for it sees.  The first job of a
    # pool, and the second of four that come together, get jails made for them; after a pause the next
    # one gets the jail made ahead.
    look = ("import sys, os, gc\n"
            "print(sorted(sys.modules), sorted(os.environ.items()), sorted(globals()), sys.argv, sys.path[0],\n"
            "      sorted(k for k in sys.modules['__main__'].__dict__), len(gc.get_referrers(print)))\n")
    async with aiogaol.PythonPool(py_profile, size=4) as pool:
        fresh = [await pool.run(look, args=["a"], env={"ONLY": "this"})]
        async with anyio.create_task_group() as tg:
            async def one() -> None:
                fresh.append(await pool.run(look, args=["a"], env={"ONLY": "this"}))
            for _ in range(4):
                tg.start_soon(one)
        ahead = []
        for _ in range(3):
            await anyio.sleep(0.3)  # the jail for the next job is made ahead meanwhile
            ahead.append(await pool.run(look, args=["a"], env={"ONLY": "this"}))
    for r in fresh + ahead:
        assert r.ok, r.stderr
    assert {r.stdout for r in ahead} == {r.stdout for r in fresh} == {fresh[0].stdout}
    assert b"('ONLY', 'this')" in fresh[0].stdout


async def test_the_compilers_node_types_come_made_in_the_warm_image(py_profile: aiogaol.Profile) -> None:
    # compile() makes the interpreter's AST node types (over a hundred classes) at its first call.  The
    # warm interpreter makes them before it freezes its image, so that they are among the objects that
    # gc.freeze() took out of every generation gc.get_objects() lists; made in a job's own process
    # instead, they would be listed there, and every job would pay for them again (about 1.3 ms of a
    # print(1) job's CPU, docs/benchmarks.md).  Jails made for a job and made ahead alike.
    look = "import gc, _ast\nprint(any(o is _ast.Module for o in gc.get_objects()))"
    async with aiogaol.PythonPool(py_profile, size=2) as pool:
        made_for = await pool.run(look)
        await anyio.sleep(0.3)  # the next jail is made ahead meanwhile
        ahead = await pool.run(look)
    for r in (made_for, ahead):
        assert r.ok, r.stderr
        assert r.stdout == b"False\n"


async def test_a_job_leads_its_own_session_and_the_warm_interpreters_is_weighed_at_its_niceness(
        py_profile: aiogaol.Profile) -> None:
    # The job's code runs in a session of its own (no controlling terminal; the kernel's autogroups then
    # give each job its own share of the CPU beside other jobs), while what aiogaol does for it before
    # (the jail, P's walls and warm-up) runs in the warm interpreter's session, weighed at the jobs'
    # niceness (19 by default) where the kernel has autogroups.
    async with aiogaol.PythonPool(py_profile, size=2) as pool:
        r = await pool.run("import os; print(os.getsid(0) == os.getpid(), os.getpid())")
        assert r.stdout == b"True 2\n", r.stderr
        zygote = pool.stats().zygote_pid
        assert zygote is not None
        path = f"/proc/{zygote}/autogroup"
        if not os.path.exists(path):
            pytest.skip("this kernel has no autogroups (CONFIG_SCHED_AUTOGROUP): nothing to weigh")
        for _ in range(100):  # the kernel takes an unprivileged change at most every 100 ms, machine-wide
            with open(path) as f:
                weighed = f.read().split()
            if weighed[-1:] == ["19"]:
                break
            await pool.run("pass")  # the warm interpreter asks again at each request
            await anyio.sleep(0.05)
        with open("/proc/self/autogroup") as f:
            # Empty where the server runs in the kernel's root group (init's session, as a CI runner may).
            ours = f.read().split() or ["the root group"]
    assert weighed[1:] == ["nice", "19"], weighed
    assert weighed[0].startswith("/autogroup-") and weighed[0] != ours[0]  # its own session, not the server's


async def test_a_job_sees_nothing_of_other_jobs_or_the_warm_interpreter(py_profile: aiogaol.Profile) -> None:
    peek = ("import os, sys, signal\n"
            "pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
            "print(pids)\n"
            "for pid in map(int, sys.argv[1:]):\n"
            "    try:\n"
            "        os.kill(pid, signal.SIGKILL)\n"
            "        print('signalled', pid)\n"
            "    except OSError as e:\n"
            "        print(type(e).__name__)\n")
    async with aiogaol.PythonPool(py_profile, size=2) as pool:
        zygote = pool.stats().zygote_pid
        assert zygote is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.run, "import time; time.sleep(30)")  # a neighbour, running meanwhile
            while pool.stats().started < 1:
                await anyio.sleep(0.01)
            r = await pool.run(peek, args=[str(zygote), str(os.getpid())])
            tg.cancel_scope.cancel()
        assert pool.stats().zygote_pid == zygote  # untouched
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "[1, 2]"  # init and the job itself: no other job, no zygote, no server
    assert lines[1:] == ["ProcessLookupError", "ProcessLookupError"]


async def test_a_job_cannot_ptrace_its_init(py_profile: aiogaol.Profile) -> None:
    code = ("import ctypes, os\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "rc = libc.ptrace(16, 1, 0, 0)\n"  # PTRACE_ATTACH to init
            "print(rc, os.strerror(ctypes.get_errno()))\n"
            "try:\n"
            "    open('/proc/1/mem', 'rb')\n"
            "    print('opened')\n"
            "except OSError as e:\n"
            "    print(type(e).__name__)\n")
    async with aiogaol.PythonPool(py_profile, size=1) as pool:
        r = await pool.run(code)
    assert r.status == "ok", r.stderr
    rc, _, err = r.stdout.decode().splitlines()[0].partition(" ")
    assert rc == "-1" and err in ("Operation not permitted", "Function not implemented")
    assert r.stdout.decode().splitlines()[1] == "PermissionError"


async def test_a_crashing_job_harms_only_itself(py_profile: aiogaol.Profile) -> None:
    async with aiogaol.PythonPool(py_profile, size=2) as pool:
        zygote = pool.stats().zygote_pid
        segv = await pool.run("import ctypes; ctypes.string_at(0)")
        abort = await pool.run("import os; os.abort()")
        corrupt = await pool.run("import sys; sys.modules.clear(); import gc; gc.collect(); del __builtins__.print")
        after = await pool.run("print('fine')")
        assert pool.stats().zygote_pid == zygote and pool.stats().restarts == 0
    assert segv.returncode == -signal.SIGSEGV and segv.status == "signalled"
    assert abort.returncode == -signal.SIGABRT
    assert corrupt.status in ("ok", "nonzero-exit", "signalled")
    assert after.stdout == b"fine\n"


async def test_a_fork_bomb_stays_in_its_jail(py_profile: aiogaol.Profile) -> None:
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    async with aiogaol.PythonPool(py_profile, size=2, limits=aiogaol.Limits(processes=32)) as pool:
        zygote = pool.stats().zygote_pid
        r = await pool.run(bomb, timeout=2)
        after = await pool.run("print('fine')")
        assert pool.stats().zygote_pid == zygote
    assert r.status == "timed-out"
    assert after.stdout == b"fine\n"


async def test_a_dead_warm_interpreter_is_replaced(py_profile: aiogaol.Profile) -> None:
    async with aiogaol.PythonPool(py_profile, size=1) as pool:
        first = pool.stats().zygote_pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        r = await pool.run("print('again')")
        stats = pool.stats()
    assert r.stdout == b"again\n"
    assert stats.restarts == 1 and stats.zygote_pid not in (None, first) and stats.zygote_starts == 2


async def test_a_preload_that_fails_is_an_error_at_start(py_profile: aiogaol.Profile,
                                                         site_module: tuple[str, str]) -> None:
    with pytest.raises(aiogaol.PreloadError, match="no_such_module_aiogaol") as missing:
        async with aiogaol.PythonPool(py_profile, preload=["json", "no_such_module_aiogaol"]):
            pass
    assert missing.value.name == "no_such_module_aiogaol"
    name, path = site_module
    with open(path, "w") as f:
        f.write("raise RuntimeError('broken on purpose')\n")
    pool = aiogaol.PythonPool(py_profile, preload=[name])
    with pytest.raises(aiogaol.PreloadError, match="RuntimeError: broken on purpose") as broken:
        await pool.open()
    assert broken.value.name == name
    assert zombie_children() == []


async def test_a_changed_preload_rebuilds_the_warm_image(py_profile: aiogaol.Profile, site_module: tuple[str, str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_python_pool, "CHECK_EVERY", 0.0)
    name, path = site_module
    with open(path, "w") as f:
        f.write("VALUE = 'old'\n")
    async with aiogaol.PythonPool(py_profile, preload=[name]) as pool:
        code = f"import sys; print(sys.modules[{name!r}].VALUE)"
        before = await pool.run(code)
        with open(path, "w") as f:
            f.write("VALUE = 'new!'\n")  # another size, whatever the clock's resolution
        after = await pool.run(code)
        stats = pool.stats()
    assert (before.stdout, after.stdout) == (b"old\n", b"new!\n")
    assert stats.rebuilds == 1 and stats.restarts == 0


async def test_open_run_and_close_from_different_tasks(py_profile: aiogaol.Profile) -> None:
    fds = open_fds()
    pool = aiogaol.PythonPool(py_profile, size=2)
    results: list[aiogaol.Result] = []

    async def opener() -> None:
        await pool.open()

    async def runner() -> None:
        results.append(await pool.run("print(6 * 7)"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(opener)
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(runner)
    async with anyio.create_task_group() as tg:
        tg.start_soon(pool.aclose)
    await pool.aclose()  # again: harmless
    assert [r.stdout for r in results] == [b"42\n"] * 4
    assert pool.stats().zygote_pid is None and pool.stats().finished == 4
    with pytest.raises(RuntimeError, match="not open"):
        await pool.run("print(1)")
    assert open_fds() == fds and zombie_children() == []


async def test_cancelling_a_job_leaves_nothing_behind(py_profile: aiogaol.Profile) -> None:
    fds = open_fds()
    async with aiogaol.PythonPool(py_profile, size=4) as pool:
        with anyio.move_on_after(0.5):
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(pool.run, "import time; time.sleep(30)")
        r = await pool.run("print('next')")
        assert pool.stats().running == 0
    assert r.stdout == b"next\n"
    assert open_fds() == fds and zombie_children() == []


async def test_many_jobs_at_once(py_profile: aiogaol.Profile) -> None:
    fds = open_fds()
    async with aiogaol.PythonPool(py_profile, size=8) as pool:
        results = await _gather(*(pool.run("import sys, os; print(sys.argv[1], os.getpid())", args=[str(i)])
                                  for i in range(24)))
        stats = pool.stats()
    assert [r.stdout for r in results] == [f"{i} 2\n".encode() for i in range(24)]
    assert stats.started == stats.finished == 24 and stats.setup_failures == 0
    assert open_fds() == fds and zombie_children() == []


async def test_bad_arguments_are_named_errors(py_profile: aiogaol.Profile) -> None:
    with pytest.raises(aiogaol.ProfileTypeError):
        aiogaol.PythonPool("not a profile")  # type: ignore[arg-type]
    with pytest.raises(aiogaol.ProfileTypeError, match="not a string"):
        aiogaol.PythonPool(py_profile, preload="numpy")
    with pytest.raises(aiogaol.ProfileError, match="not a module name"):
        aiogaol.PythonPool(py_profile, preload=["os; import sys"])
    with pytest.raises(aiogaol.ProfileError, match="size"):
        aiogaol.PythonPool(py_profile, size=0)
    with pytest.raises(aiogaol.ProfileError, match="cgroup"):
        aiogaol.PythonPool(py_profile, limits=aiogaol.Limits(cgroup="/sys/fs/cgroup/x"))
    with pytest.raises(aiogaol.ProfileError, match="python"):
        aiogaol.PythonPool(py_profile, python="python3")
    async with aiogaol.PythonPool(py_profile, size=1) as pool:
        with pytest.raises(aiogaol.ProfileTypeError, match="code"):
            await pool.run(b"print(1)")  # type: ignore[arg-type]
        with pytest.raises(aiogaol.ProfileTypeError, match="args"):
            await pool.run("print(1)", args="ab")
        with pytest.raises(aiogaol.ProfileError, match="timeout"):
            await pool.run("print(1)", timeout=-1)
        with pytest.raises(aiogaol.ProfileTypeError, match="input"):
            await pool.run("print(1)", input="text")  # type: ignore[arg-type]
        with pytest.raises(aiogaol.ProfileError):
            await pool.run("print(1)", env={"A=B": "c"})
        assert (await pool.run("print('still fine')")).stdout == b"still fine\n"


async def test_cwd_is_every_jobs_working_directory(scratch_profile: aiogaol.Profile) -> None:
    with pytest.raises(aiogaol.ProfileError, match="cwd"):
        aiogaol.PythonPool(scratch_profile, cwd="tmp")
    async with aiogaol.PythonPool(scratch_profile, size=1, cwd="/tmp") as pool:
        # /tmp may also hold the mount points of the profile's binds beneath it (a tree cloned into /tmp).
        code = "import os\nopen('here.txt', 'w').write('x')\nprint(os.getcwd(), os.path.isfile('/tmp/here.txt'))"
        result = await pool.run(code)
    assert result.stdout == b"/tmp True\n", result
    async with aiogaol.PythonPool(scratch_profile, size=1) as pool:
        assert (await pool.run("import os; print(os.getcwd())")).stdout == b"/\n"


async def test_no_byte_of_an_earlier_job_is_in_the_next_ones_memory(py_profile: aiogaol.Profile) -> None:
    secret = uuid.uuid4().hex
    # The secret comes spelt backwards and is searched for with one character class per letter, so that
    # this job never holds it in one piece itself.
    scan = ("import re, sys\n"
            "needle = re.compile(''.join('[%s]' % c for c in reversed(sys.argv[1])).encode())\n"
            "found = 0\n"
            "with open('/proc/self/maps') as maps, open('/proc/self/mem', 'rb', 0) as mem:\n"
            "    for line in maps:\n"
            "        span, perms = line.split()[:2]\n"
            "        if not perms.startswith('r') or '[vvar' in line or '[vsyscall' in line:\n"
            "            continue\n"
            "        lo, hi = (int(x, 16) for x in span.split('-'))\n"
            "        try:\n"
            "            mem.seek(lo)\n"
            "            found += len(needle.findall(mem.read(hi - lo)))\n"
            "        except OSError:\n"
            "            pass\n"
            "print(found)\n")
    async with aiogaol.PythonPool(py_profile, size=1) as pool:
        # The scan finds the secret where it is (a positive control), then not in the next job.
        first = await pool.run(f"secret = {secret!r}\n" + scan, args=[secret[::-1]], env={"TOKEN": secret},
                               input=secret.encode())
        later = await pool.run(scan, args=[secret[::-1]])
    assert first.ok and later.ok, later.stderr
    assert int(first.stdout) >= 1 and later.stdout == b"0\n"


def _bound_file(py_profile: aiogaol.Profile, tmp_path: object) -> tuple[aiogaol.Profile, str, Callable[[], None]]:
    """A profile that binds one file holding "one", the code that prints it, and what replaces that file
    by rename (another inode, which changes no mount: every jail of the profile then refuses the bind)."""
    import pathlib

    assert isinstance(tmp_path, pathlib.Path)
    os.chmod(tmp_path, 0o755)
    target = tmp_path / "data.txt"
    target.write_text("one")
    os.chmod(target, 0o644)

    def replace() -> None:
        fresh = tmp_path / "new.txt"
        fresh.write_text("two")
        os.chmod(fresh, 0o644)
        os.rename(fresh, target)

    return (py_profile + [aiogaol.FileReadAll(aiogaol.Literal(str(target)))],
            f"print(open({str(target)!r}).read())", replace)


async def test_a_jail_made_ahead_never_shows_a_replaced_file(py_profile: aiogaol.Profile, tmp_path: object) -> None:
    # The next job's jail is built while the pool waits for it; a bound file replaced since (by rename,
    # which changes no mount) must not show in it as it was: the job fails as a fresh jail would.
    profile, code, replace = _bound_file(py_profile, tmp_path)
    async with aiogaol.PythonPool(profile, size=1) as pool:
        first = await pool.run(code)
        await anyio.sleep(0.2)  # the next jail is made ahead meanwhile, with the file as it is
        replace()
        with pytest.raises(aiogaol.SandboxSetupError, match="bind source changed"):
            await pool.run(code)
    assert first.stdout == b"one\n"


async def test_jobs_that_come_together_are_each_answered_when_their_jails_fail(
        py_profile: aiogaol.Profile, tmp_path: object) -> None:
    # Jails for jobs that come together are built side by side; each failure reaches its own job (as a
    # SandboxSetupError naming the step), none hangs the others, and a job alone afterwards is refused the same way.
    profile, code, replace = _bound_file(py_profile, tmp_path)
    fds = open_fds()
    async with aiogaol.PythonPool(profile, size=6) as pool:
        assert (await pool.run(code)).stdout == b"one\n"
        replace()  # every jail of this profile now refuses its bind
        errors: list[BaseException] = []

        async def one() -> None:
            try:
                await pool.run(code, timeout=30)
            except aiogaol.SandboxSetupError as exc:
                errors.append(exc)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for _ in range(6):
                    tg.start_soon(one)
        assert len(errors) == 6 and all("bind source changed" in str(e) for e in errors), errors
        with pytest.raises(aiogaol.SandboxSetupError, match="bind source changed"):
            await pool.run("print(2)")  # and the next one alone, as before
    assert open_fds() == fds and zombie_children() == []


def _sleeping_job_init() -> int:
    """The host PID of the init (K) of the one job asleep in time.sleep: its program's parent."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/wchan") as f:
                wchan = f.read()
            with open(f"/proc/{name}/status") as f:
                status = f.read()
        except OSError:
            continue
        nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
        if "nanosleep" in wchan and nspid[-1:] == ["2"]:
            return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
    return 0


async def test_a_job_whose_init_is_killed_from_outside_reports_the_kill(py_profile: aiogaol.Profile) -> None:
    # The job's first fork (J) waits for its init (K) and reports K's own end when K never reported
    # the job's: here K is SIGKILLed from the host while the job sleeps.
    async with aiogaol.PythonPool(py_profile, size=1) as pool:
        async with anyio.create_task_group() as tg:
            results: list[aiogaol.Result] = []

            async def run() -> None:
                results.append(await pool.run("import time; time.sleep(30)", timeout=60))

            tg.start_soon(run)
            with anyio.fail_after(20):
                while not (init := _sleeping_job_init()):
                    await anyio.sleep(0.05)
            os.kill(init, signal.SIGKILL)
    (r,) = results
    assert r.returncode == -signal.SIGKILL and r.status == "signalled", r


async def test_a_server_that_drops_privileges_gets_a_new_warm_interpreter(py_profile: aiogaol.Profile) -> None:
    # Jobs carry the server's current privileges: a change of groups (what a root server can do to
    # itself without losing the right to undo it) retires the warm interpreter started before it.
    if os.geteuid() != 0:
        pytest.skip("needs root: an unprivileged server cannot change its groups")
    groups = os.getgroups()
    async with aiogaol.PythonPool(py_profile, size=1) as pool:
        first = pool.stats().zygote_pid
        os.setgroups([*groups, 4242])
        try:
            r = await pool.run("print('after')")
        finally:
            os.setgroups(groups)
        stats = pool.stats()
    assert r.stdout == b"after\n"
    assert stats.zygote_pid != first and stats.restarts == 1


async def test_a_job_runs_only_once_its_init_holds_nothing(py_profile: aiogaol.Profile) -> None:
    """The job's process is made (and walled) before the job comes; its fds, and so its code, come only
    after its init has dropped its capabilities, set no_new_privs and loaded its own filter."""
    code = ("import re\n"
            "for pid in (1, 'self'):\n"
            "    s = open(f'/proc/{pid}/status').read()\n"
            "    print(pid, *(re.search(k + r':\\s*(\\S+)', s).group(1) for k in ('CapEff', 'NoNewPrivs', 'Seccomp')))\n")
    async with aiogaol.PythonPool(py_profile, size=1) as pool:
        for _ in range(3):  # the first job's jail is made for it, the next ones' ahead of time
            r = await pool.run(code)
            assert r.status == "ok", r.stderr
            assert r.stdout.decode().split("\n")[:2] == ["1 0000000000000000 1 2", "self 0000000000000000 1 2"]


async def test_a_job_has_the_limits_rlimits_even_a_tight_fd_limit(py_profile: aiogaol.Profile) -> None:
    """The rlimits are set once the job's fds have come (so an fd limit below the numbers the hand-over
    uses does not break it), before any of its code runs."""
    code = ("import resource\n"
            "print(resource.getrlimit(resource.RLIMIT_NOFILE), resource.getrlimit(resource.RLIMIT_FSIZE))\n"
            "import os\n"
            "try:\n"
            "    fds = [os.open('/dev/null', os.O_RDONLY) for _ in range(16)]\n"
            "except OSError as e:\n"
            "    print('EMFILE' if e.errno == 24 else e)\n")
    limits = aiogaol.Limits(open_files=8, file_size=1 << 20)
    async with aiogaol.PythonPool(py_profile, size=1, limits=limits) as pool:
        for _ in range(2):
            r = await pool.run(code)
            assert r.status == "ok", r.stderr
            assert r.stdout.decode().splitlines() == [f"(8, 8) ({1 << 20}, {1 << 20})", "EMFILE"]


def test_a_mount_change_drops_the_jail_made_ahead(tmp_path: object) -> None:
    """The jail made ahead for the next job holds binds of the host's filesystems: a change of the host's
    mount table drops it at once, so that a filesystem unmounted on the host is not kept alive in it.
    Run in a user and mount namespace of its own, where mounting a tmpfs needs no privilege."""
    import pathlib

    assert isinstance(tmp_path, pathlib.Path)
    if shutil.which("unshare") is None:
        pytest.fail("util-linux's unshare is needed (Debian: apt-get install util-linux)")
    base = str(tmp_path / "m")
    os.mkdir(base)
    os.chmod(tmp_path, 0o755)
    code = textwrap.dedent(f"""
        import asyncio, os, subprocess, time, aiogaol
        tag = "aiogaol-test-" + str(os.getpid())
        def held():
            found = 0
            for name in os.listdir("/proc"):
                if name.isdigit():
                    try:
                        with open(f"/proc/{{name}}/mountinfo") as f:
                            found += sum(1 for line in f if tag in line.split(" - ", 1)[-1])
                    except OSError:
                        pass
            return found
        async def main():
            subprocess.run(["mount", "-t", "tmpfs", tag, {base!r}], check=True)
            with open({base!r} + "/f", "w") as f:
                f.write("on tmpfs")
            os.chmod({base!r}, 0o755)
            os.chmod({base!r} + "/f", 0o644)
            profile = aiogaol.python_profile() + [aiogaol.FileReadAll(aiogaol.Subpath({base!r}))]
            async with aiogaol.PythonPool(profile, size=1) as pool:
                r = await pool.run("print(open({base!r} + '/f').read())")
                deadline = time.monotonic() + 20
                while held() < 2 and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)  # the next jail, made ahead, binds the tmpfs too
                ahead = held() >= 2
                subprocess.run(["umount", {base!r}], check=True)
                deadline = time.monotonic() + 20
                while held() and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                print(r.stdout, ahead, held())
        asyncio.run(main())
    """)
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (0, "b'on tmpfs\\n' True 0\n"), done.stderr
