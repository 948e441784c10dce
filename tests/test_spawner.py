"""The spawner: one long-lived helper per server process that starts every jail on request.

What it must never do to its server: hold a jail's fds, outlive the server, serve a forked child or a
server whose identity changed, or leave a zombie behind.  Each test checks one of those on the real
kernel.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import pytest

import aiogaol
from aiogaol import _jail, _spawner

from .conftest import zombie_children

TRUE_PROFILE = aiogaol.system_profile()


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _gone(pid: int) -> bool:
    """True once pid is no process at all (not even a zombie)."""
    return not os.path.exists(f"/proc/{pid}")


def _exited(pid: int) -> bool:
    """Gone, or a zombie waiting for its parent."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _wait_until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        time.sleep(0.01)


async def _true() -> aiogaol.SandboxedProcess:
    proc = await aiogaol.create_sandboxed_subprocess(TRUE_PROFILE, "true", stdin=aiogaol.DEVNULL,
                                                     stdout=aiogaol.DEVNULL, stderr=aiogaol.DEVNULL)
    return proc


@pytest.mark.asyncio
async def test_one_spawner_serves_every_jail_and_init_is_still_our_child() -> None:
    first = await _true()
    spawner = _spawner.spawner_pid()
    assert spawner is not None and _ppid(spawner) == os.getpid()
    assert _ppid(first.pid) == os.getpid()  # CLONE_PARENT from the spawner: init is the server's child
    assert await first.wait() == 0
    second = await _true()
    assert _spawner.spawner_pid() == spawner
    assert await second.wait() == 0


@pytest.mark.asyncio
async def test_a_spawner_per_niceness_each_at_its_own() -> None:
    """Default jails are served by a spawner at niceness 19, jails at the server's niceness by another at
    that niceness (an init cannot be less nice than its creator); the kernel says so of each, and of the
    programs; a shutdown lets both go."""
    assert os.getpriority(os.PRIO_PROCESS, 0) == 0, "the test server itself must run at nice 0"
    nice_code = "import os; print(os.getpriority(os.PRIO_PROCESS, 0))"
    profile = aiogaol.python_profile()
    python = aiogaol.python_executable()
    got = {}
    for limits in (aiogaol.Limits(nice=None), None, aiogaol.Limits(nice=19), aiogaol.Limits(nice=None)):
        proc = await aiogaol.create_sandboxed_subprocess(profile, python, "-c", nice_code, limits=limits,
                                                         stdout=aiogaol.PIPE)
        out, _ = await proc.communicate()
        got[limits] = int(out)
    assert got == {aiogaol.Limits(nice=None): 0, None: 19, aiogaol.Limits(nice=19): 19}
    default, server_nice = _spawner.spawner_pid(), _spawner.spawner_pid(0)
    assert default is not None and server_nice is not None and default != server_nice
    assert _spawner.spawner_pid(19) == default
    assert os.getpriority(os.PRIO_PROCESS, default) == 19
    assert os.getpriority(os.PRIO_PROCESS, server_nice) == 0
    aiogaol.shutdown_spawner()
    assert _gone(default) and _gone(server_nice)
    assert _spawner.spawner_pid() is None and _spawner.spawner_pid(0) is None
    assert zombie_children() == []


@pytest.mark.asyncio
async def test_the_spawner_keeps_no_fd_of_a_running_jail(py_profile: aiogaol.Profile, python: str) -> None:
    # A jail of the same profile first, so that the one we look at is handed to an init made ahead of time.
    assert await (await aiogaol.create_sandboxed_subprocess(py_profile, python, "-c", "pass")).wait() == 0
    (ahead,) = await _waiting()
    proc = await aiogaol.create_sandboxed_subprocess(py_profile, python, "-c", "import time; time.sleep(30)",
                                                     stdin=aiogaol.PIPE, stdout=aiogaol.PIPE, stderr=aiogaol.PIPE)
    assert proc.pid == ahead
    spawner = _spawner.spawner_pid()
    assert spawner is not None

    def fds_of(pid: int) -> list[str]:
        out = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                out.append(os.readlink(f"/proc/{pid}/fd/{fd}").split("[")[0])
            except FileNotFoundError:
                out.append("(closed while we looked)")  # never equal to what is waited for: look again
        return sorted(out)

    def held() -> list[str]:
        return fds_of(spawner)

    # /dev/null as stdio, its end of the server's socket, the host's mount table (watched for changes)
    # and the socket of the next init it made ahead of time; and of the running jail, its init's pidfd
    # and its mount namespace (let go when init exits, so that init's exit does not wait for the
    # teardown): no pipe or lifeline of a jail.  (It may be making that init when we look, with a sync
    # pipe of its own: look again then.)
    idle = ["/dev/null"] * 3 + ["/proc/%d/mountinfo" % spawner, "socket:", "socket:"]
    running = sorted(idle + ["anon_inode:", "mnt:"])
    try:
        _wait_until(lambda: held() == running, f"the spawner to hold only {running}, not {held()}")
        for waiting in _spawner.waiting_pids():
            # The waiting init holds the spawner's /dev/null as stdio and its socket to the spawner, nothing
            # else of anyone's (once it has closed what it inherited, its first step).
            # It may be closing what it inherited as we look: fds_of counts that as a mismatch.
            expected = ["/dev/null"] * 3 + ["socket:"]
            _wait_until(lambda: fds_of(waiting) == expected,
                        f"the waiting init to hold only {expected}, not {fds_of(waiting)}")
    finally:
        proc.kill()
        await proc.wait()
    # Its init gone, the jail's namespace goes too.
    _wait_until(lambda: held() == idle, f"the spawner to hold only {idle} once the jail ended, not {held()}")


@pytest.mark.asyncio
async def test_a_killed_spawner_is_replaced_and_reaped() -> None:
    assert await (await _true()).wait() == 0
    old = _spawner.spawner_pid()
    assert old is not None
    os.kill(old, signal.SIGKILL)
    _wait_until(lambda: _exited(old), "the killed spawner to be a zombie")
    proc = await _true()  # the send fails with EPIPE: a new spawner takes the request
    assert await proc.wait() == 0
    new = _spawner.spawner_pid()
    assert new is not None and new != old
    assert await (await _true()).wait() == 0  # the next spawn reaps the retired one
    assert _gone(old) and zombie_children() == []


@pytest.mark.asyncio
async def test_shutdown_lets_it_go_and_the_next_spawn_starts_another() -> None:
    assert await (await _true()).wait() == 0
    old = _spawner.spawner_pid()
    _spawner.shutdown()
    assert _spawner.spawner_pid() is None
    assert old is not None
    _wait_until(lambda: _exited(old), "the spawner to exit at EOF")
    assert await (await _true()).wait() == 0
    assert _spawner.spawner_pid() not in (None, old)
    assert _gone(old) and zombie_children() == []


@pytest.mark.asyncio
async def test_a_malformed_request_fails_alone_and_the_spawner_serves_on() -> None:
    """A request the spawner cannot parse is answered on its error pipe; the spawner does not die."""
    assert await (await _true()).wait() == 0
    pid = _spawner.spawner_pid()
    assert pid is not None
    sock = _spawner._get(_spawner.server_state()[0], _spawner.jail_niceness(aiogaol.DEFAULT_LIMITS.nice)).sock
    assert sock is not None
    r, w = os.pipe()
    try:
        import array
        import socket

        bad = _spawner._message([b"aiogaol-jail", b"--no-such-option"], [], [w])
        sock.sendmsg([bad], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w]))])
        os.close(w)
        w = -1
        data = b""
        while chunk := os.read(r, 4096):
            data += chunk
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    records = aiogaol._jail._parse_records(data)
    assert [(aiogaol._ffi.step_name(rec.step), rec.detail) for rec in records] == \
        [("parse helper arguments", "--no-such-option")]
    assert _spawner.spawner_pid() == pid and not _gone(pid)
    assert await (await _true()).wait() == 0


@pytest.mark.asyncio
async def test_a_request_too_large_for_one_message_goes_to_the_spawner_in_a_memfd(
        py_profile: aiogaol.Profile, python: str, monkeypatch: pytest.MonkeyPatch) -> None:
    answers: list[object] = []
    real = _spawner.submit

    async def spy(*args: object, **kwargs: object) -> object:
        answers.append(await real(*args, **kwargs))  # type: ignore[arg-type]
        return answers[-1]

    monkeypatch.setattr(_spawner, "submit", spy)
    # 1 MB of arguments: more than any socket buffer takes in one message (128 KiB a string at most).
    big = ["x" * 100_000] * 10
    proc = await aiogaol.create_sandboxed_subprocess(py_profile, python, "-c",
                                                     "import sys; print(sum(map(len, sys.argv[1:])))", *big,
                                                     stdout=aiogaol.PIPE)
    out, _ = await proc.communicate()
    assert (proc.returncode, out) == (0, b"1000000\n")
    assert len(answers) == 1 and answers[0] is not None and answers[0].pid == _spawner.spawner_pid()
    assert zombie_children() == []
    # The memfd is closed once sent: the server keeps nothing of the request.
    def target(fd: str) -> str:
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            return ""  # the fd listdir itself used
    assert not [fd for fd in os.listdir("/proc/self/fd") if target(fd).startswith("/memfd:aiogaol-request")]


@pytest.mark.asyncio
async def test_more_fds_than_one_message_carries_is_refused_by_name(py_profile: aiogaol.Profile, python: str) -> None:
    r, w = os.pipe()
    fds = [os.dup(r) for _ in range(_spawner.MAX_FDS)]
    try:
        with pytest.raises(aiogaol.ProfileError, match="pass fewer pass_fds"):
            await aiogaol.create_sandboxed_subprocess(py_profile, python, "-c", "pass", pass_fds=fds)
        assert zombie_children() == []
        # One fewer than the limit leaves room for the jail's own fds: it runs.
        proc = await aiogaol.create_sandboxed_subprocess(
            py_profile, python, "-c", "import os; print(len(os.listdir('/proc/self/fd')))",
            pass_fds=fds[:_spawner.MAX_FDS - 10], stdout=aiogaol.PIPE)
        out, _ = await proc.communicate()
        assert proc.returncode == 0 and int(out) >= _spawner.MAX_FDS - 10
    finally:
        for fd in (r, w, *fds):
            os.close(fd)


def _run_server(code: str) -> subprocess.CompletedProcess[str]:
    """A separate server process, so that its stdio, fork and exit are its own and not pytest's."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_the_spawner_exits_with_its_server() -> None:
    done = _run_server("""
        import asyncio, aiogaol
        from aiogaol import _spawner
        async def main():
            p = await aiogaol.create_sandboxed_subprocess(aiogaol.system_profile(), "true")
            await p.wait()
            print(_spawner.spawner_pid())
        asyncio.run(main())
    """)
    assert done.returncode == 0, done.stderr
    spawner = int(done.stdout)
    # Its socket reached EOF when the server exited; reparented, it is reaped by whoever adopted it.
    _wait_until(lambda: _exited(spawner), "the orphaned spawner to exit")


def test_inherited_stdio_reaches_the_jail_through_the_spawner(tmp_path: "os.PathLike[str]") -> None:
    out = os.path.join(os.fspath(tmp_path), "out.txt")
    done = _run_server(f"""
        import asyncio, os, aiogaol
        fd = os.open({out!r}, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        async def main():
            p = await aiogaol.create_sandboxed_subprocess(aiogaol.system_profile(), "echo", "inherited")
            assert await p.wait() == 0
        asyncio.run(main())
    """)
    assert done.returncode == 0, done.stderr
    with open(out, encoding="utf-8") as f:
        assert f.read() == "inherited\n"


def test_a_forked_child_gets_a_spawner_of_its_own() -> None:
    done = _run_server("""
        import asyncio, os, aiogaol
        from aiogaol import _spawner
        def ppid(pid):
            with open(f"/proc/{pid}/stat") as f:
                return int(f.read().rsplit(")", 1)[1].split()[1])
        async def one():
            p = await aiogaol.create_sandboxed_subprocess(aiogaol.system_profile(), "true")
            parent = ppid(p.pid)
            assert await p.wait() == 0
            return parent
        assert asyncio.run(one()) == os.getpid()
        parent_spawner = _spawner.spawner_pid()
        child = os.fork()
        if child == 0:
            ok = _spawner.spawner_pid() is None  # the inherited one is not ours
            ok = ok and asyncio.run(one()) == os.getpid()  # init is the child's own child
            mine = _spawner.spawner_pid()
            ok = ok and mine not in (None, parent_spawner) and ppid(mine) == os.getpid()
            os._exit(0 if ok else 1)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert _spawner.spawner_pid() == parent_spawner and asyncio.run(one()) == os.getpid()
        print("ok")
    """)
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr


def test_a_server_that_changes_identity_gets_a_new_spawner() -> None:
    """Init must carry the server's current ids: after setresgid the spawner is replaced."""
    if os.geteuid() != 0:
        # The premise cannot arise unprivileged: an ordinary server cannot change its ids at all.
        with pytest.raises(PermissionError):
            os.setresgid(4242, 4242, 4242)
        return
    done = _run_server("""
        import asyncio, os, aiogaol
        from aiogaol import _spawner
        async def gid_map():
            p = await aiogaol.create_sandboxed_subprocess(aiogaol.system_profile(), "cat", "/proc/self/gid_map",
                                                          stdout=aiogaol.PIPE)
            out, _ = await p.communicate()
            return [x.decode() for x in out.split()[:3]]
        before = asyncio.run(gid_map())
        first = _spawner.spawner_pid()
        os.setresgid(4242, 4242, 4242)
        after = asyncio.run(gid_map())
        print(*before, *after, first != _spawner.spawner_pid())
    """)
    assert done.returncode == 0, done.stderr
    # The first line maps the server's own gid (as 0, beside nobody for the program): 0, then 4242.
    assert done.stdout.split() == ["0", "0", "1", "0", "4242", "1", "True"]


async def _waiting() -> set[int]:
    """The inits the spawner made ahead of time, once it has made one (it waits for a quiet moment)."""
    deadline = time.monotonic() + 20
    while not (found := _spawner.waiting_pids()):
        assert time.monotonic() < deadline, "the spawner made no init ahead of time"
        await asyncio.sleep(0.005)
    return found



def _spawner_fds(kind: str) -> int:
    """How many of the spawner's fds are of kind (an fd it closes while we look is not counted)."""
    spawner = _spawner.spawner_pid()
    assert spawner is not None
    found = 0
    for fd in os.listdir(f"/proc/{spawner}/fd"):
        try:
            found += os.readlink(f"/proc/{spawner}/fd/{fd}").startswith(kind)
        except FileNotFoundError:
            pass
    return found


@pytest.mark.asyncio
async def test_the_spawner_holds_at_most_64_jails_namespaces_and_lets_each_go() -> None:
    """Past 64 running jails the spawner holds no more namespaces (those jails' inits tear theirs down
    themselves, as before); every one it holds goes when its init exits."""
    procs = []
    try:
        for _ in range(70):
            procs.append(await aiogaol.create_sandboxed_subprocess(TRUE_PROFILE, "sleep", "60"))
        assert _spawner_fds("mnt:") == 64
        for proc in procs:
            proc.kill()
        for proc in procs:
            await proc.wait()
        _wait_until(lambda: _spawner_fds("mnt:") == 0, "the spawner to let every jail's namespace go")
        # And it holds them again for the jails that come next.
        proc = await aiogaol.create_sandboxed_subprocess(TRUE_PROFILE, "sleep", "60")
        procs.append(proc)
        _wait_until(lambda: _spawner_fds("mnt:") == 1, "the spawner to hold the new jail's namespace")
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert [p.returncode for p in procs] == [-9] * 71
    _wait_until(lambda: _spawner_fds("mnt:") == 0, "the spawner to let the last namespace go")
    assert zombie_children() == []

@pytest.mark.asyncio
async def test_an_init_made_ahead_of_time_serves_the_next_jail() -> None:
    assert await (await _true()).wait() == 0
    waiting = await _waiting()
    (pid,) = waiting
    assert _ppid(pid) == os.getpid()  # the server's child from birth, like any init
    proc = await aiogaol.create_sandboxed_subprocess(TRUE_PROFILE, "echo", "warm", stdout=aiogaol.PIPE)
    out, _ = await proc.communicate()
    assert (proc.pid, proc.returncode, out) == (pid, 0, b"warm\n")
    assert pid not in _spawner.waiting_pids()


async def _cat(profile: aiogaol.Profile, path: str) -> tuple[bytes, bool]:
    """What cat prints of path in a jail, and whether that jail's init was made ahead of time (step
    timers: the spawner marks the hand-over)."""
    proc = await aiogaol.create_sandboxed_subprocess(profile, "cat", path, stdout=aiogaol.PIPE,
                                                     stderr=aiogaol.DEVNULL)
    out, _ = await proc.communicate()
    timings = proc.step_timings or {}
    return out, "hand the request to a waiting init" in timings


def _readable_tree(root: "os.PathLike[str]", name: str, text: str) -> str:
    """A directory with one file, readable by nobody (a root server's programs run as nobody)."""
    d = os.path.join(root, name)
    os.mkdir(d)
    os.chmod(d, 0o755)
    with open(os.path.join(d, "f"), "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(os.path.join(d, "f"), 0o644)
    return d


@pytest.mark.asyncio
async def test_an_init_made_ahead_of_time_builds_each_profile_its_own_jail(
        tmp_path: "os.PathLike[str]", monkeypatch: pytest.MonkeyPatch) -> None:
    """A waiting init holds only what every jail shares (/proc, /dev); each request's own mounts are made
    when it comes.  So after jails of one profile, a jail of another, handed the same kind of init, sees
    that profile's files and not the first one's."""
    monkeypatch.setattr(_jail, "STEP_TIMINGS", True)
    a, b = _readable_tree(tmp_path, "a", "A"), _readable_tree(tmp_path, "b", "B")
    profile_a, profile_b = TRUE_PROFILE + [aiogaol.FileReadAll(aiogaol.Subpath(a))], \
        TRUE_PROFILE + [aiogaol.FileReadAll(aiogaol.Subpath(b))]
    aiogaol.shutdown_spawner()  # a spawner that has seen no request yet
    handed = []
    for _ in range(3):
        out, waited = await _cat(profile_a, f"{a}/f")
        assert out == b"A"
        handed.append(waited)
        await _waiting()
    assert handed == [False, True, True], handed
    assert await _cat(profile_b, f"{b}/f") == (b"B", True)
    await _waiting()
    assert await _cat(profile_b, f"{a}/f") == (b"", True)  # a's tree is not in b's jail
    assert await (await _true()).wait() == 0
    assert zombie_children() == []


@pytest.mark.asyncio
async def test_an_init_made_ahead_of_time_has_the_masks_of_the_profile_it_serves(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A waiting init builds the kernel's part of the last request's plan ahead (/proc, /dev, the masks
    over /proc, /dev/shm, devpts).  A profile whose part differs (SystemInfoRead unmasks /proc/sys) must
    never be handed one built with other masks: it is served from scratch, and the next init made ahead
    is built with its part; and back again."""
    monkeypatch.setattr(_jail, "STEP_TIMINGS", True)
    masked, unmasked = TRUE_PROFILE, TRUE_PROFILE + [aiogaol.SystemInfoRead()]
    aiogaol.shutdown_spawner()
    seen = []
    for profile in (masked, masked, unmasked, unmasked, masked, masked):
        out, handed = await _cat(profile, "/proc/sys/kernel/ostype")
        seen.append((out, handed))
        await _waiting()
    assert seen == [(b"", False), (b"", True), (b"Linux\n", False), (b"Linux\n", True), (b"", False),
                    (b"", True)], seen
    assert zombie_children() == []


@pytest.mark.asyncio
async def test_an_init_made_ahead_of_time_has_the_loopback_of_the_profile_it_serves(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A waiting init brings its lo up ahead when the last jail had a loopback.  A profile without one
    must never be handed such an init (its jail would reach an interface it was told it has none of):
    it is served from scratch, the next init made ahead has lo down; and back again.  The kernel lists
    an address in /proc/net/fib_trie only for an interface that is up."""
    monkeypatch.setattr(_jail, "STEP_TIMINGS", True)
    with_lo, without = TRUE_PROFILE, aiogaol.Profile(TRUE_PROFILE.operations, loopback=False)
    aiogaol.shutdown_spawner()
    seen = []
    for profile in (with_lo, with_lo, without, without, with_lo, with_lo):
        out, handed = await _cat(profile, "/proc/net/fib_trie")
        seen.append((b"127.0.0.1" in out, handed))
        await _waiting()
    assert seen == [(True, False), (True, True), (False, False), (False, True), (True, False),
                    (True, True)], seen
    assert zombie_children() == []


@pytest.mark.asyncio
async def test_an_init_made_ahead_of_time_never_shows_a_host_file_replaced_since(
        tmp_path: "os.PathLike[str]", monkeypatch: pytest.MonkeyPatch) -> None:
    """A waiting init's copy of the host's mount tree is taken before the file is replaced by rename
    (which changes no mount, so the spawner keeps it) or removed.  The request it is handed binds the
    path then, by handle: it refuses a file that is not the one the profile resolved, and a profile made
    again binds the new one."""
    monkeypatch.setattr(_jail, "STEP_TIMINGS", True)
    a = _readable_tree(tmp_path, "a", "old")
    path = os.path.join(a, "f")
    profile = TRUE_PROFILE + [aiogaol.FileReadAll(aiogaol.Literal(path))]
    aiogaol.shutdown_spawner()
    assert await _cat(profile, path) == (b"old", False)
    await _waiting()
    assert await _cat(profile, path) == (b"old", True)
    (pid,) = await _waiting()
    new = path + ".new"
    with open(new, "w", encoding="utf-8") as f:
        f.write("new")
    os.chmod(new, 0o644)
    os.rename(new, path)
    with pytest.raises(aiogaol.SandboxSetupError, match="bind source changed.*ESTALE"):
        await _cat(profile, path)
    assert pid not in _spawner.waiting_pids()  # the init made before the rename took it, and refused
    await _waiting()
    profile = TRUE_PROFILE + [aiogaol.FileReadAll(aiogaol.Literal(path))]  # resolved again: the new file
    assert await _cat(profile, path) == (b"new", True)
    await _waiting()
    os.unlink(path)
    with pytest.raises(aiogaol.SandboxSetupError, match="bind mount.*ENOENT"):
        await _cat(profile, path)
    assert zombie_children() == []


@pytest.mark.asyncio
async def test_a_jail_on_the_host_network_does_not_take_the_waiting_init() -> None:
    assert await (await _true()).wait() == 0
    (pid,) = await _waiting()
    net = TRUE_PROFILE + [aiogaol.NetworkOutbound(aiogaol.AllAddresses())]
    proc = await aiogaol.create_sandboxed_subprocess(net, "true")
    assert proc.pid != pid and await proc.wait() == 0
    assert pid in _spawner.waiting_pids()


@pytest.mark.asyncio
async def test_shutdown_kills_and_reaps_the_waiting_init() -> None:
    assert await (await _true()).wait() == 0
    (pid,) = await _waiting()
    aiogaol.shutdown_spawner()  # the public name
    assert _gone(pid) and zombie_children() == []


@pytest.mark.asyncio
async def test_a_killed_spawners_waiting_init_is_reaped() -> None:
    assert await (await _true()).wait() == 0
    (pid,) = await _waiting()
    old = _spawner.spawner_pid()
    assert old is not None
    os.kill(old, signal.SIGKILL)
    _wait_until(lambda: _exited(old), "the killed spawner to exit")
    assert await (await _true()).wait() == 0
    # That spawn retires the dead spawner: its waiting init is SIGKILLed, and reaped at once if it is
    # dead by then, else at a later spawn (never waited for on the loop; its namespaces take a moment).
    deadline = time.monotonic() + 20
    while not (_gone(pid) and _gone(old)):
        assert time.monotonic() < deadline, "the killed spawner or its waiting init was never reaped"
        await asyncio.sleep(0.01)
        assert await (await _true()).wait() == 0
    assert zombie_children() == []


def test_a_mount_made_after_the_waiting_init_is_seen_by_the_jail(tmp_path: "os.PathLike[str]") -> None:
    """The waiting init's mount namespace is a copy taken when it was made; when the host's mount table
    changes the spawner has it let go of that copy and never hands it a request, so a jail never binds
    from a stale view and an unmounted filesystem is not held.  Run in a user and mount
    namespace of its own, where mounting a tmpfs needs no privilege."""
    if shutil.which("unshare") is None:
        pytest.fail("util-linux's unshare is needed (Debian: apt-get install util-linux)")
    base = os.path.join(os.fspath(tmp_path), "m")
    os.mkdir(base)
    os.chmod(tmp_path, 0o755)
    code = textwrap.dedent(f"""
        import asyncio, os, subprocess, time, aiogaol
        from aiogaol import _spawner
        async def cat():
            # Made each time: a mount over the path is another object, which a profile made before it
            # refuses to bind ("bind source changed"); a profile made now binds the fresh mount.
            profile = aiogaol.system_profile() + [aiogaol.FileReadAll(aiogaol.Subpath({base!r}))]
            p = await aiogaol.create_sandboxed_subprocess(profile, "cat", {base!r} + "/f", stdout=aiogaol.PIPE,
                                                          stderr=aiogaol.PIPE)
            out, err = await p.communicate()
            return p.pid, out.decode() + err.decode()
        async def main():
            await cat()
            while not _spawner.waiting_pids():
                await asyncio.sleep(0.005)
            (waiting,) = _spawner.waiting_pids()
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", {base!r}], check=True)
            with open({base!r} + "/f", "w") as f:
                f.write("fresh mount")
            pid, text = await cat()
            # And the other way: a filesystem unmounted on the host does not stay held by an idle copy
            # of the mount tree.  The waiting init made while it was mounted lets go of the host's tree
            # at once, and lives on (never a zombie of an idle server) until the next request drops it.
            while not _spawner.waiting_pids():
                await asyncio.sleep(0.005)
            (holder,) = _spawner.waiting_pids()
            def holds():
                try:
                    with open(f"/proc/{{holder}}/mountinfo") as f:
                        return any(line.split()[4].endswith({base!r}) for line in f)
                except FileNotFoundError:
                    return False
            assert holds()
            subprocess.run(["umount", {base!r}], check=True)
            deadline = time.monotonic() + 20
            while holds() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            released = not holds()
            # More changes while the server is idle make no new init and leave no zombie.
            for _ in range(20):
                subprocess.run(["mount", "-t", "tmpfs", "tmpfs", {base!r}], check=True)
                subprocess.run(["umount", {base!r}], check=True)
            time.sleep(0.2)
            me = str(os.getpid())
            children = []
            for name in os.listdir("/proc"):
                try:
                    with open(f"/proc/{{name}}/stat") as f:
                        rest = f.read().rsplit(")", 1)[1].split()
                except (OSError, IndexError):
                    continue
                if rest[1] == me:
                    children.append((int(name), rest[0]))
            state = dict(children)[holder]
            assert [c for c in children if c[1] == "Z"] == [], children
            assert _spawner.waiting_pids() == {{holder}}, (_spawner.waiting_pids(), holder)
            nxt, _ = await cat()
            deadline = time.monotonic() + 20
            while os.path.exists(f"/proc/{{holder}}") and time.monotonic() < deadline:
                _spawner.waiting_pids()  # takes in the spawner's reports; a dropped init is reaped
                await asyncio.sleep(0.005)
            print(pid != waiting, text, released, state, nxt != holder, os.path.exists(f"/proc/{{holder}}"))
        asyncio.run(main())
    """)
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (0, "True fresh mount True S True False\n"), done.stderr


@pytest.mark.asyncio
async def test_a_dead_waiting_init_is_passed_over_and_reaped() -> None:
    assert await (await _true()).wait() == 0
    (pid,) = await _waiting()
    os.kill(pid, signal.SIGKILL)
    _wait_until(lambda: _exited(pid), "the waiting init to die")
    proc = await _true()  # the hand-over fails; the usual path serves the request
    assert proc.pid != pid and await proc.wait() == 0
    assert _gone(pid) and zombie_children() == []


def test_a_fork_while_another_thread_holds_the_spawner_lock_does_not_deadlock_the_child() -> None:
    done = _run_server("""
        import asyncio, os, threading, aiogaol
        from aiogaol import _spawner
        async def one():
            p = await aiogaol.create_sandboxed_subprocess(aiogaol.system_profile(), "true")
            return await p.wait()
        assert asyncio.run(one()) == 0
        held, release = threading.Event(), threading.Event()
        def hold():
            with _spawner._lock:
                held.set()
                release.wait()
        t = threading.Thread(target=hold)
        t.start()
        held.wait()
        child = os.fork()
        if child == 0:
            os._exit(asyncio.run(one()))  # the lock was held at the fork: the child has a fresh one
        _, status = os.waitpid(child, 0)
        release.set()
        t.join()
        print(os.waitstatus_to_exitcode(status))
    """)
    assert (done.returncode, done.stdout) == (0, "0\n"), done.stderr


@pytest.mark.asyncio
async def test_a_stopped_spawner_is_retired_later_and_nothing_leaks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A spawner that cannot answer (stopped) is not waited for beyond RETIRE_TIMEOUT, and none of its
    inits is touched while it might still hand them out; the retirement is finished at a later spawn."""
    assert await (await _true()).wait() == 0
    (waiting,) = await _waiting()
    old = _spawner.spawner_pid()
    assert old is not None
    monkeypatch.setattr(_spawner, "RETIRE_TIMEOUT", 0.2)
    os.kill(old, signal.SIGSTOP)
    try:
        _spawner.shutdown()
        assert not _exited(waiting) and not _exited(old)
    finally:
        os.kill(old, signal.SIGCONT)
    _wait_until(lambda: _exited(old), "the spawner to read EOF and exit")
    assert await (await _true()).wait() == 0  # this spawn finishes the retirement
    assert _gone(waiting) and _gone(old) and zombie_children() == []


def test_spawner_shut_down_and_killed_under_load_leaves_nothing_behind() -> None:
    """Three event loops in three threads spawn while the main thread shuts the spawner down, then kills
    it and its waiting inits, again and again.  Spawns caught by a kill fail with SandboxSetupError, or
    end with SIGKILL when the init killed had just taken them; nothing else may fail, and at the end the server has no child, no zombie and no extra fd."""
    done = _run_server("""
        import asyncio, os, threading, time, aiogaol
        from aiogaol import _spawner
        profile = aiogaol.system_profile()
        other = []
        async def worker():
            for _ in range(30):
                try:
                    p = await aiogaol.create_sandboxed_subprocess(profile, "true")
                    # -9: an init killed below as waiting had taken this spawn by the time the kill
                    # came, so its program was running and died with it (seen once in 40 runs).
                    if await p.wait() not in (0, -9):
                        other.append(("nonzero", p.returncode))
                except aiogaol.SandboxSetupError:
                    pass  # caught by a kill
                except BaseException as e:
                    other.append(repr(e))
        async def main():
            await asyncio.gather(*[worker() for _ in range(4)])
        fds = set(os.listdir("/proc/self/fd"))
        threads = [threading.Thread(target=lambda: asyncio.run(main())) for _ in range(3)]
        for t in threads:
            t.start()
        for k in range(8):
            time.sleep(0.1)
            if k % 2:
                _spawner.shutdown()
            else:
                for pid in [_spawner.spawner_pid(), *_spawner.waiting_pids()]:
                    if pid:
                        try:
                            os.kill(pid, 9)
                        except ProcessLookupError:
                            pass
        for t in threads:
            t.join()
        _spawner.shutdown()
        me = str(os.getpid())
        children = []
        for n in os.listdir("/proc"):
            if n.isdigit():
                try:
                    with open(f"/proc/{n}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if fields[1] == me:
                    children.append((n, fields[0]))
        print(other, children, set(os.listdir("/proc/self/fd")) - fds)
    """)
    assert (done.returncode, done.stdout) == (0, "[] [] set()\n"), done.stderr


@pytest.mark.asyncio
async def test_the_program_gets_the_servers_umask_of_the_moment() -> None:
    """A program the server started itself would inherit its current umask; the spawner, started with
    the umask of its own moment, passes the server's current one on."""
    async def umask() -> bytes:
        proc = await aiogaol.create_sandboxed_subprocess(TRUE_PROFILE, "sh", "-c", "umask", stdout=aiogaol.PIPE)
        out, _ = await proc.communicate()
        return out

    assert await (await _true()).wait() == 0  # the spawner exists, with the umask of now
    old = os.umask(0o077)
    try:
        assert await umask() == b"0077\n"
        os.umask(0o027)
        assert await umask() == b"0027\n"
    finally:
        os.umask(old)


def test_a_server_that_sets_no_new_privs_gets_a_new_spawner() -> None:
    """Capabilities, no_new_privs and seccomp are part of what a spawner freezes: a server that gives up
    privileges after its first spawn must not have its jails made with the old ones.  no_new_privs is the
    one an ordinary user can change, so that is what this sets."""
    done = _run_server("""
        import asyncio, ctypes, aiogaol
        from aiogaol import _spawner
        async def nnp():
            p = await aiogaol.create_sandboxed_subprocess(aiogaol.system_profile(), "true")
            assert await p.wait() == 0
            with open(f"/proc/{_spawner.spawner_pid()}/status") as f:
                return [l.split()[1] for l in f if l.startswith("NoNewPrivs:")][0]
        before = asyncio.run(nnp())
        first = _spawner.spawner_pid()
        PR_SET_NO_NEW_PRIVS = 38
        assert ctypes.CDLL(None).prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
        after = asyncio.run(nnp())
        print(before, after, first != _spawner.spawner_pid())
    """)
    assert (done.returncode, done.stdout) == (0, "0 1 True\n"), done.stderr
