"""Sandboxes across calls (issue 14), on the real kernel, under asyncio and trio.

Every test opens real sandboxes: one jail each, its resident agent, programs exec'd in it, files moved
through the agent, a Python kernel for the cells.  Nothing is mocked; no test asserts a wall-clock time
(the sleeps below only give a timer something to be past).
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

import aiogaol
from aiogaol import _spawner

from .conftest import open_fds, zombie_children
from .test_reliability import _strays


SOAK_SANDBOXES = int(os.environ.get("AIOGAOL_SOAK_SANDBOXES", "1000"))


@pytest.fixture(scope="module")
def profile() -> aiogaol.Profile:
    return aiogaol.python_profile()


PY = aiogaol.python_executable()


def test_the_wire_matches_the_agent() -> None:
    """The server's struct formats have the sizes of agent.h's structs (the compiler's, through cffi)."""
    from aiogaol import _agent
    from aiogaol._native import _core

    formats = [_agent.REQ, _agent.EXEC, _agent.RLIM, _agent.FILE, _agent.REPLY]
    assert [f.size for f in formats] == [_core.lib.aiogaol_agent_wire_size(i) for i in range(5)]


# -- one jail across calls ------------------------------------------------------------------------

@pytest.mark.anyio
async def test_execs_share_the_jail(profile: aiogaol.Profile) -> None:
    """Files, processes, the PID namespace and the loopback are the sandbox's, not the call's."""
    async with await aiogaol.open_sandbox(profile) as sb:
        r = await sb.exec(["/bin/sh", "-c", "echo one > made.txt; pwd"])
        assert r.status is aiogaol.Status.OK and r.stdout == b"/work\n", r
        r = await sb.exec(["cat", "made.txt"])
        assert r.stdout == b"one\n"
        # A server started by one call answers another call on the sandbox's own loopback.
        server = await sb.spawn([PY, "-c", (
            "import socket\n"
            "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
            "print(s.getsockname()[1], flush=True)\n"
            "c, _ = s.accept(); c.sendall(b'from the server'); c.close()\n")])
        assert server.stdout is not None
        port = int((await server.stdout.receive()).decode())
        r = await sb.exec([PY, "-c", (
            "import socket, os\n"
            f"c = socket.create_connection(('127.0.0.1', {port})); print(c.recv(100).decode())\n"
            "print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n")])
        assert r.status is aiogaol.Status.OK, r
        lines = r.stdout.decode().splitlines()
        assert lines[0] == "from the server"
        pids = eval(lines[1])
        assert 1 in pids and server.pid in pids  # one PID namespace: init, the agent, both calls
        assert await server.wait() == 0
        # the cwd, the environment and the input are per call
        assert (await sb.exec(["mkdir", "sub"])).ok
        r = await sb.exec(["/bin/sh", "-c", "pwd; echo $GREETING; cat"], cwd="sub",
                          env={"GREETING": "hello"}, input=b"fed\n")
        assert r.stdout == b"/work/sub\nhello\nfed\n"
        r = await sb.exec(["pwd"], cwd="/")
        assert r.stdout == b"/\n"
        with pytest.raises(FileNotFoundError, match="chdir /nowhere"):
            await sb.exec(["pwd"], cwd="/nowhere")


@pytest.mark.anyio
async def test_concurrent_calls_in_one_sandbox(profile: aiogaol.Profile) -> None:
    """Many calls at once share the agent's one socket: each gets its own replies."""
    async with await aiogaol.open_sandbox(profile) as sb:
        results: dict[int, aiogaol.Result] = {}
        cells: list[str | None] = []

        async def one(k: int) -> None:
            results[k] = await sb.exec(["/bin/sh", "-c", f"sleep 0.{k % 3}; echo {k}; echo e{k} >&2"],
                                       input=b"ignored")

        async def cell(k: int) -> None:
            cells.append((await sb.run_code(f"{k} * 2")).value)

        async with anyio.create_task_group() as tg:
            for k in range(24):
                tg.start_soon(one, k)
            for k in range(4):
                tg.start_soon(cell, k)
            tg.start_soon(sb.write_file, "w.txt", b"w" * 100000)
        for k, r in results.items():
            assert r.ok and r.stdout == f"{k}\n".encode() and r.stderr == f"e{k}\n".encode(), r
        assert len(results) == 24 and sorted(c or "" for c in cells) == ["0", "2", "4", "6"]
        assert len(await sb.read_file("w.txt")) == 100000


@pytest.mark.anyio
async def test_a_waiting_reader_does_not_hold_up_other_calls(profile: aiogaol.Profile) -> None:
    """One task parked on the socket for a long call reads the other calls' replies for them: a short call
    started later ends first."""
    async with await aiogaol.open_sandbox(profile) as sb:
        order: list[str] = []
        proc = await sb.spawn(["sleep", "3"], stdin=aiogaol.DEVNULL, stdout=aiogaol.DEVNULL,
                              stderr=aiogaol.DEVNULL)

        async def long() -> None:
            await proc.wait()
            order.append("long")

        async def short() -> None:
            await anyio.sleep(0.2)
            assert (await sb.exec(["true"])).ok
            await sb.write_file("x", b"x")
            order.append("short")

        async with anyio.create_task_group() as tg:
            tg.start_soon(long)
            tg.start_soon(short)
        assert order == ["short", "long"]


@pytest.mark.anyio
async def test_two_sandboxes_see_nothing_of_each_other(profile: aiogaol.Profile) -> None:
    async with await aiogaol.open_sandbox(profile) as a, await aiogaol.open_sandbox(profile) as b:
        await a.write_file("secret.txt", b"a's")
        sleeper = await a.spawn(["sleep", "31.4159"], stdin=aiogaol.DEVNULL, stdout=aiogaol.DEVNULL,
                                stderr=aiogaol.DEVNULL)
        with pytest.raises(FileNotFoundError):
            await b.read_file("secret.txt")
        r = await b.exec([PY, "-c", (
            "import os\n"
            "names = []\n"
            "for p in os.listdir('/proc'):\n"
            "    if p.isdigit():\n"
            "        try: names.append(open(f'/proc/{p}/cmdline','rb').read())\n"
            "        except OSError: pass\n"
            "print(any(b'31.41' + b'59' in n for n in names), os.path.exists('/work/secret.txt'))\n")])
        assert r.stdout == b"False False\n", r
        sleeper.kill()
        assert await sleeper.wait() == -signal.SIGKILL


# -- files ----------------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_files_in_and_out(profile: aiogaol.Profile) -> None:
    async with await aiogaol.open_sandbox(profile) as sb:
        await sb.write_file("main.txt", "héllo")  # str as UTF-8
        assert await sb.read_file("/work/main.txt") == "héllo".encode()
        blob = os.urandom(1 << 20)
        await sb.write_file("blob", blob)
        r = await sb.exec(["/bin/sh", "-c", "wc -c < blob; cp blob copy"])
        assert r.stdout.strip() == str(len(blob)).encode()
        assert await sb.read_file("copy") == blob
        await sb.write_file("main.txt", b"short")  # replaced, not appended
        assert await sb.read_file("main.txt") == b"short"
        with pytest.raises(FileNotFoundError):
            await sb.read_file("missing")
        with pytest.raises(FileNotFoundError):
            await sb.write_file("no/such/dir/file", b"x")
        with pytest.raises(OSError) as e:
            await sb.read_file(".cache" if False else "main.txt/..x")
        assert e.value.errno in (errno.ENOTDIR, errno.ENOENT)


@pytest.mark.anyio
async def test_paths_outside_the_workspace_are_refused(profile: aiogaol.Profile) -> None:
    async with await aiogaol.open_sandbox(profile) as sb:
        for bad in ("/etc/passwd", "../etc/passwd", "a/../../etc/passwd", "", ".", "/work", "x\0y"):
            with pytest.raises(ValueError):
                await sb.read_file(bad)
            with pytest.raises(ValueError):
                await sb.write_file(bad, b"x")
        with pytest.raises(TypeError):
            await sb.read_file(3)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_a_planted_symlink_never_leads_outside(profile: aiogaol.Profile, tmp_path: object) -> None:
    """A program plants symlinks to / and to a file outside; the file calls refuse to follow them out,
    whether the link is the last component or a directory on the way."""
    async with await aiogaol.open_sandbox(profile) as sb:
        r = await sb.exec(["/bin/sh", "-c", "ln -s /etc/passwd pw; ln -s / root; ln -s /tmp tmpdir; "
                                            "mkdir d; ln -s ../../etc d/up; ln -s inside.txt rel; echo ok > inside.txt"])
        assert r.ok, r
        for path in ("pw", "root/etc/passwd", "d/up/passwd"):
            with pytest.raises(PermissionError, match="outside the workspace"):
                await sb.read_file(path)
        for path in ("pw", "tmpdir/planted", "root/tmp/planted"):
            with pytest.raises(PermissionError, match="outside the workspace"):
                await sb.write_file(path, b"escaped")
        r = await sb.exec(["/bin/sh", "-c", "ls /tmp; cat /etc/passwd | head -c 0"])
        assert b"planted" not in r.stdout
        # a link that stays inside is followed, as a program would follow it
        assert await sb.read_file("rel") == b"ok\n"
        # a FIFO planted in the workspace does not hang the file calls
        assert (await sb.exec(["mkfifo", "fifo"])).ok
        with pytest.raises(OSError, match="not a regular file"):
            await sb.read_file("fifo")
        with pytest.raises(OSError, match="not a regular file"):
            await sb.write_file("fifo", b"x")


@pytest.mark.anyio
async def test_file_sizes_are_capped(profile: aiogaol.Profile) -> None:
    limits = aiogaol.Limits(file_size=1 << 20)
    async with await aiogaol.open_sandbox(profile, limits=limits, workspace_size=4 << 20) as sb:
        with pytest.raises(ValueError, match="more than a sandbox file may hold"):
            await sb.write_file("big", b"x" * ((1 << 20) + 1))
        # a program makes a file larger than read_file takes
        r = await sb.exec(["/bin/sh", "-c", "head -c 1048576 /dev/zero > ok; "
                                            "head -c 1048577 /dev/zero > big"])
        assert r.status is aiogaol.Status.FILE_SIZE_LIMIT or not r.ok  # RLIMIT_FSIZE: one byte too many
        assert len(await sb.read_file("ok")) == 1 << 20
    # the workspace is a size-capped tmpfs: filling it is ENOSPC, named
    async with await aiogaol.open_sandbox(profile, workspace_size=1 << 20) as sb:
        await sb.write_file("a", b"x" * (600 << 10))
        with pytest.raises(OSError, match="workspace is full") as e:
            await sb.write_file("b", b"x" * (600 << 10))
        assert e.value.errno == errno.ENOSPC
        r = await sb.exec(["/bin/sh", "-c", "head -c 2000000 /dev/zero > c"])
        assert r.status is aiogaol.Status.DISK_LIMIT, r


# -- per-call limits ------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_per_call_timeout_cpu_and_output(profile: aiogaol.Profile) -> None:
    async with await aiogaol.open_sandbox(profile) as sb:
        r = await sb.exec(["sleep", "30"], timeout=0.3)
        assert r.status is aiogaol.Status.TIMED_OUT, r
        r = await sb.exec([PY, "-c", "while True: pass"], limits=aiogaol.Limits(cpu_time=1))
        assert r.status is aiogaol.Status.CPU_LIMIT, r
        assert r.cpu_time >= 0.5  # RLIMIT_CPU counts in ticks
        # a call that forks is held to cpu_time as a whole (its process tree, read from /proc)
        r = await sb.exec(["/bin/sh", "-c", "for i in 1 2 3 4; do (while :; do :; done) & done; wait"],
                          limits=aiogaol.Limits(cpu_time=0.5), timeout=30)
        assert r.status is aiogaol.Status.CPU_LIMIT and "together" in r.evidence, r
        r = await sb.exec([PY, "-c", "import sys\nwhile True: sys.stdout.write('x' * 4096)"],
                          limits=aiogaol.Limits(output=10000))
        assert r.status is aiogaol.Status.OUTPUT_LIMIT and r.stdout_truncated and len(r.stdout) == 10000, r
        r = await sb.exec(["/bin/sh", "-c", "exit 3"])
        assert r.status is aiogaol.Status.NONZERO_EXIT and r.returncode == 3
        # a call's background children end with it (its process group); the sandbox serves on
        r = await sb.exec(["/bin/sh", "-c", "sleep 30 & echo started"], timeout=10)
        assert r.ok and r.stdout == b"started\n"
        for _ in range(100):  # SIGKILLed at once; gone once the scheduler has run it (nice 19, busy host)
            r = await sb.exec(["/bin/sh", "-c", "ps -e -o stat=,comm= | grep -v '^Z'"])
            if b"sleep" not in r.stdout:
                break
            await anyio.sleep(0.05)
        assert b"sleep" not in r.stdout
        with pytest.raises(aiogaol.ProgramNotFoundError):
            await sb.exec(["no-such-program"])
        with pytest.raises(ValueError):
            await sb.exec([])
        with pytest.raises(TypeError):
            await sb.exec("echo hi")  # type: ignore[arg-type]
        assert (await sb.exec(["true"])).ok


@pytest.mark.anyio
async def test_the_sandboxs_memory_and_process_limits(profile: aiogaol.Profile) -> None:
    """Without a cgroup (cgroup v1 here) memory is RLIMIT_AS of each process and processes RLIMIT_NPROC of
    the sandbox's user; a hog and a fork bomb are stopped and reported, and the sandbox serves on."""
    limits = aiogaol.Limits(memory=256 << 20, processes=24)
    async with await aiogaol.open_sandbox(profile, limits=limits) as sb:
        r = await sb.exec([PY, "-c", "x = bytearray(512 << 20)"])
        assert r.status is aiogaol.Status.MEMORY_LIMIT, r
        r = await sb.exec([PY, "-c", "import os, time\nkids = 0\nwhile True:\n    try:\n        if os.fork() == 0:\n"
                               "            time.sleep(30)\n            os._exit(0)\n        kids += 1\n"
                               "    except OSError as e:\n        print('refused after', kids, e); break"],
                          timeout=20)
        assert r.ok and b"refused after" in r.stdout, r
        assert int(r.stdout.split()[2]) < 24
        # The bomb's processes went with the call; until init has reaped them they still count against
        # RLIMIT_NPROC, so a start may be refused (EAGAIN, named) for a moment on a busy host.
        for _ in range(100):
            try:
                assert (await sb.exec(["true"])).ok
                break
            except aiogaol.SandboxSetupError as e:
                assert e.errno == errno.EAGAIN, e
                await anyio.sleep(0.05)
        else:
            raise AssertionError("the sandbox did not recover from the fork bomb")
        assert (await sb.run_code("1 + 1")).value == "2"


@pytest.mark.anyio
async def test_cancelled_exec_kills_the_call(profile: aiogaol.Profile) -> None:
    async with await aiogaol.open_sandbox(profile) as sb:
        pid = b""
        async with anyio.create_task_group() as tg:
            tg.start_soon(sb.exec, ["/bin/sh", "-c", "echo $$ > pid.tmp; mv pid.tmp pid; exec sleep 30"])
            while not pid:  # running for sure, then cancelled
                try:
                    pid = (await sb.read_file("pid")).strip()
                except FileNotFoundError:
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        r = await sb.exec(["/bin/sh", "-c", f"test -e /proc/{pid.decode()} && echo alive || echo gone"])
        assert r.stdout == b"gone\n"


# -- spawn ----------------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_spawn_is_an_anyio_process_in_the_same_jail(profile: aiogaol.Profile) -> None:
    async with await aiogaol.open_sandbox(profile) as sb:
        await sb.write_file("state", b"from a file call")
        proc = await sb.spawn([PY, "-i", "-q"])
        assert isinstance(proc, anyio.abc.Process)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        await proc.stdin.send(b"print(open('state').read().upper())\n")
        await proc.stdin.send(b"import os; print(os.getcwd())\n")
        await proc.stdin.aclose()
        out = b""
        async for chunk in proc.stdout:
            out += chunk
        assert await proc.wait() == 0
        assert out == b"FROM A FILE CALL\n/work\n"
        assert proc.returncode == 0 and proc.usage is not None
        sleeper = await sb.spawn(["sleep", "30"])
        sleeper.terminate()
        assert await sleeper.wait() == -signal.SIGTERM
        with pytest.raises(ProcessLookupError):
            sleeper.kill()


# -- code cells -----------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_run_code_keeps_state_and_reports(profile: aiogaol.Profile) -> None:
    async with await aiogaol.open_sandbox(profile) as sb:
        cell = await sb.run_code("x = 6 * 7\nx")
        assert (cell.status, cell.stdout, cell.stderr, cell.value, cell.error) == ("ok", "", "", "42", None)
        cell = await sb.run_code("print('out'); import sys; print('err', file=sys.stderr)\nx + 1")
        assert (cell.status, cell.stdout, cell.stderr, cell.value) == ("ok", "out\n", "err\n", "43")
        cell = await sb.run_code("y = x")  # no final expression: no value
        assert cell.ok and cell.value is None
        cell = await sb.run_code("def f():\n    raise KeyError('k')\nf()")
        assert cell.status == "error" and cell.error is not None
        assert (cell.error.type, cell.error.message) == ("KeyError", "'k'")
        assert "<cell" in cell.error.traceback and "raise KeyError" in cell.error.traceback
        assert "_kernel" not in cell.error.traceback and "SOURCE" not in cell.error.traceback
        cell = await sb.run_code("x = (")
        assert cell.status == "error" and cell.error is not None and cell.error.type == "SyntaxError"
        assert (await sb.run_code("y")).value == "42"  # the kernel lived on through both errors
        # what a cell prints or reads cannot confuse the protocol
        cell = await sb.run_code("import sys, os\nprint('\\x00\\x00\\x00\\x10{\"status\": \"ok\"}')\n"
                                 "os.write(1, bytes(range(256)))\nsys.stdin.read()")
        assert cell.status == "ok" and cell.value == "''" and cell.stdout.startswith("\x00\x00\x00\x10{")
        # files written by a cell are the sandbox's
        assert (await sb.run_code("open('from_cell.txt', 'w').write('cell')")).value == "4"
        assert await sb.read_file("from_cell.txt") == b"cell"


@pytest.mark.anyio
async def test_run_code_timeout_interrupts_then_restarts(profile: aiogaol.Profile) -> None:
    async with await aiogaol.open_sandbox(profile) as sb:
        await sb.run_code("keep = 'kept'")
        cell = await sb.run_code("import time\nprint('before', flush=True)\ntime.sleep(30)", timeout=1.0)
        assert cell.status == "timed-out" and not cell.state_lost and cell.stdout == "before\n"
        assert cell.error is not None and cell.error.type == "KeyboardInterrupt"
        assert (await sb.run_code("keep")).value == "'kept'"  # interrupted, state intact
        cell = await sb.run_code("import time\nwhile True:\n    try:\n        time.sleep(30)\n"
                                 "    except KeyboardInterrupt:\n        pass", timeout=0.3)
        assert cell.status == "timed-out" and cell.state_lost  # SIGINT ignored: killed
        cell = await sb.run_code("keep")
        assert cell.status == "error" and cell.error is not None and cell.error.type == "NameError"
        assert (await sb.run_code("1 + 1")).value == "2"


@pytest.mark.anyio
async def test_run_code_output_limit(profile: aiogaol.Profile) -> None:
    async with await aiogaol.open_sandbox(profile) as sb:
        cell = await sb.run_code("while True: print('x' * 1000)", output_limit=5000, timeout=30)
        assert cell.status == "output-limit" and cell.stdout_truncated and len(cell.stdout) == 5000
        assert (await sb.run_code("'still here'")).value == "'still here'"
        cell = await sb.run_code("import os\nos._exit(3)")
        assert cell.status == "error" and cell.state_lost and cell.error is not None
        assert (await sb.run_code("2")).value == "2"


# -- the sandbox's end ----------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.anyio
async def test_idle_timeout_ends_the_sandbox(profile: aiogaol.Profile) -> None:
    sb = await aiogaol.open_sandbox(profile, idle_timeout=0.5)
    try:
        assert (await sb.exec(["sleep", "1"])).ok  # a running call is not idle
        cell = await sb.run_code("import time\ntime.sleep(1)\n'done'")  # a running cell is not idle
        assert cell.value == "'done'", cell
        # but the kernel alone does not keep it alive
        pid = sb.pid
        await anyio.sleep(1.5)
        assert not _alive(pid) or not (await _wait_dead(pid))
        with pytest.raises(aiogaol.SandboxClosed, match="idle"):
            await sb.exec(["true"])
        assert sb.closed
    finally:
        await sb.aclose()


async def _wait_dead(pid: int) -> bool:
    for _ in range(100):
        if not _alive(pid):
            return False
        await anyio.sleep(0.05)
    return True


@pytest.mark.anyio
async def test_lifetime_ends_the_sandbox_even_mid_call(profile: aiogaol.Profile) -> None:
    sb = await aiogaol.open_sandbox(profile, lifetime=1)
    try:
        with pytest.raises(aiogaol.SandboxClosed, match="lifetime"):
            await sb.exec(["sleep", "30"])
        with pytest.raises(aiogaol.SandboxClosed):
            await sb.read_file("x")
    finally:
        await sb.aclose()


@pytest.mark.anyio
async def test_close_from_another_task(profile: aiogaol.Profile) -> None:
    sb = await aiogaol.open_sandbox(profile)
    pid = sb.pid
    errors: list[BaseException] = []

    async def busy() -> None:
        try:
            await sb.exec(["sleep", "30"])
        except aiogaol.SandboxClosed as e:
            errors.append(e)

    async with anyio.create_task_group() as tg:
        tg.start_soon(busy)
        tg.start_soon(busy)
        await anyio.sleep(0.3)
        tg.start_soon(sb.aclose)  # two closers at once: both return once it is closed
        await sb.aclose()
    assert len(errors) == 2 and "aclose" in str(errors[0])
    assert not _alive(pid)
    await sb.aclose()  # twice is fine
    with pytest.raises(aiogaol.SandboxClosed):
        await sb.run_code("1")


@pytest.mark.anyio
async def test_close_while_a_cell_and_a_file_call_run(profile: aiogaol.Profile) -> None:
    sb = await aiogaol.open_sandbox(profile)
    raised: list[BaseException] = []

    async def cell() -> None:
        try:
            await sb.run_code("import time\nprint('working', flush=True)\ntime.sleep(30)")
        except aiogaol.SandboxClosed as e:
            raised.append(e)

    async def spawned() -> None:
        proc = await sb.spawn(["sleep", "30"])
        try:
            await proc.wait()
        except aiogaol.SandboxClosed as e:
            raised.append(e)

    async with anyio.create_task_group() as tg:
        tg.start_soon(cell)
        tg.start_soon(spawned)
        await anyio.sleep(0.5)
        await sb.aclose()
    assert len(raised) == 2 and all("aclose" in str(e) for e in raised), raised


@pytest.mark.anyio
async def test_a_dead_agent_ends_the_sandbox(profile: aiogaol.Profile) -> None:
    """A program may kill the agent (same uid); the sandbox then ends, and says so."""
    sb = await aiogaol.open_sandbox(profile)
    try:
        r = await sb.exec(["/bin/sh", "-c", "ls /proc/2/fd 2>&1; cat /proc/2/environ 2>&1 | head -c 0; echo"])
        assert b"Permission denied" in r.stdout  # non-dumpable: its fds are not the programs'
        with pytest.raises(aiogaol.SandboxError, match="agent"):
            await sb.exec(["kill", "-KILL", "2"])
        with pytest.raises(aiogaol.SandboxClosed):
            await sb.exec(["true"])
    finally:
        await sb.aclose()


@pytest.mark.anyio
async def test_a_stopped_agent_ends_the_sandbox(profile: aiogaol.Profile, monkeypatch: pytest.MonkeyPatch) -> None:
    """A program can SIGSTOP the agent; the server does not wait on it for ever: the sandbox is ended
    with a named error once an answer is overdue."""
    from aiogaol import _agent

    monkeypatch.setattr(_agent, "AGENT_TIMEOUT", 1.0)
    sb = await aiogaol.open_sandbox(profile)
    pid = sb.pid
    try:
        with pytest.raises(aiogaol.SandboxError, match="did not answer|not reported dead"):
            await sb.exec(["/bin/sh", "-c", "kill -STOP 2; sleep 30"], timeout=0.5)
        with pytest.raises(aiogaol.SandboxClosed):
            await sb.exec(["true"])
    finally:
        await sb.aclose()
    assert not _alive(pid)


@pytest.mark.anyio
async def test_a_cancelled_cell_kills_its_kernel(profile: aiogaol.Profile) -> None:
    async with await aiogaol.open_sandbox(profile) as sb:
        await sb.run_code("state = 1")
        with anyio.move_on_after(0.3):
            await sb.run_code("import time\ntime.sleep(30)")
        cell = await sb.run_code("'state' in globals()")
        assert cell.ok and cell.value == "False"


@pytest.mark.anyio
async def test_run_code_with_a_given_python(profile: aiogaol.Profile) -> None:
    async with await aiogaol.open_sandbox(profile, python=PY) as sb:
        cell = await sb.run_code("import sys\nsys.executable")
        assert cell.ok and cell.value == repr(PY)
    async with await aiogaol.open_sandbox(profile, python="/no/such/python") as sb:
        with pytest.raises(aiogaol.ProgramNotFoundError, match="/no/such/python"):
            await sb.run_code("1")
        assert (await sb.exec(["true"])).ok  # the sandbox is fine


def test_a_sandbox_dies_with_its_server(tmp_path: Path) -> None:
    """SIGKILL of the server: the sandbox's init (and with it every program in it) goes too."""
    script = tmp_path / "server.py"
    script.write_text(
        "import anyio, aiogaol, sys\n"
        "async def main():\n"
        "    sb = await aiogaol.open_sandbox(aiogaol.python_profile())\n"
        "    await sb.spawn(['sleep', '300'])\n"
        "    await sb.run_code('1')\n"
        "    print(sb.pid, flush=True)\n"
        "    await anyio.sleep(300)\n"
        "anyio.run(main)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    try:
        assert proc.stdout is not None
        init = int(proc.stdout.readline())
        assert _alive(init)
        proc.kill()
        proc.wait(30)
        for _ in range(200):
            if not _alive(init):
                break
            time.sleep(0.05)
        assert not _alive(init)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.anyio
async def test_bad_arguments_are_named(profile: aiogaol.Profile) -> None:
    with pytest.raises(TypeError):
        await aiogaol.open_sandbox("not a profile")  # type: ignore[arg-type]
    for kw in ({"workspace": "relative"}, {"workspace": "/"}, {"idle_timeout": -1}, {"lifetime": float("nan")},
               {"workspace_size": 0}):
        with pytest.raises(ValueError):
            await aiogaol.open_sandbox(profile, **kw)  # type: ignore[arg-type]
    async with await aiogaol.open_sandbox(profile) as sb:
        with pytest.raises(TypeError):
            await sb.run_code(b"1")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await sb.run_code("1", timeout=0)
        with pytest.raises(ValueError):
            await sb.exec(["true"], timeout=-1)


# -- the soak -------------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_open_close_soak_leaves_nothing_behind(profile: aiogaol.Profile) -> None:
    """SOAK_SANDBOXES sandboxes opened (one exec each) and closed, 16 at a time, about a third cancelled at
    a random point: no new fd, zombie or process afterwards."""
    rng = random.Random(14)
    async with await aiogaol.open_sandbox(profile) as sb:  # the spawner and its caches, before counting
        await sb.exec(["true"])
    zombies, fds, strays = len(zombie_children()), open_fds(), set(pid for pid, _, _ in _strays())
    limit = anyio.Semaphore(16)
    counts = {"done": 0, "cancelled": 0}

    async def one() -> None:
        async with limit:
            with anyio.move_on_after(rng.uniform(0, 0.05) if rng.random() < 0.35 else 60) as scope:
                async with await aiogaol.open_sandbox(profile) as sb:
                    await sb.exec(["true"])
            counts["cancelled" if scope.cancelled_caught else "done"] += 1

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        for _ in range(SOAK_SANDBOXES):
            tg.start_soon(one)
    seconds = time.monotonic() - started
    for k in range(200):
        if k % 10 == 0:
            async with await aiogaol.open_sandbox(profile) as sb:
                pass
        _spawner.settle()
        now = len(zombie_children()), open_fds(), set(pid for pid, _, _ in _strays())
        if now[0] <= zombies and now[1] == fds and now[2] <= strays:
            break
        await anyio.sleep(0.05)
    print(f"\nsandbox soak: {SOAK_SANDBOXES} opened, {counts['cancelled']} cancelled, {seconds:.1f} s")
    assert len(zombie_children()) <= zombies
    assert open_fds() == fds
    assert set(pid for pid, _, _ in _strays()) <= strays
