"""gaol's own test scenarios, ported, and each weakness gaol showed on Linux, shown gone.

Every test runs a real program in a real jail on this kernel.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

import aiogaol
from aiogaol import AllAddresses, FileReadAll, Literal, NetworkOutbound, Subpath

from .conftest import open_fds, zombie_children
from .jailtools import python_json, run_python

pytestmark = pytest.mark.asyncio

SECRET = b"super secret\n"


@pytest.fixture
def secret_file(tmp_path: os.PathLike[str]) -> str:
    path = os.path.join(tmp_path, "gaoltest.secret")
    with open(path, "wb") as f:
        f.write(SECRET)
    return path


# ---------------------------------------------------------------- gaol's tests/file-read-all.rs


async def test_reading_an_allowed_literal_works(py_profile: aiogaol.Profile, python: str, secret_file: str) -> None:
    profile = py_profile + [FileReadAll(Literal(secret_file))]
    rc, out, err = await run_python(profile, python, f"print(open({secret_file!r}).read(), end='')")
    assert (rc, out) == (0, SECRET), err


async def test_reading_outside_the_profile_fails(py_profile: aiogaol.Profile, python: str, secret_file: str) -> None:
    profile = py_profile + [FileReadAll(Subpath("/bogus"))]
    result = await python_json(profile, python, textwrap.dedent(f"""
        import json
        try:
            open({secret_file!r}).read(); print(json.dumps("read"))
        except OSError as e:
            print(json.dumps(e.errno))
    """))
    assert result == 2  # ENOENT: the file is simply not in the jail


# ---------------------------------------------------------------- gaol's tests/network-outbound.rs


@pytest.fixture
def listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s
    s.close()


CONNECT = """
import json, socket, sys
s = socket.socket()
s.settimeout(5)
try:
    s.connect(("127.0.0.1", int(sys.argv[1]))); print(json.dumps("connected"))
except OSError as e:
    print(json.dumps(e.errno))
"""


async def test_network_is_cut_unless_allowed(py_profile: aiogaol.Profile, python: str, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    proc = await aiogaol.create_sandboxed_subprocess(py_profile, python, "-c", CONNECT, str(port),
                                                     stdout=aiogaol.PIPE)
    out, _ = await proc.communicate()
    assert out.strip() != b'"connected"'  # a fresh network namespace: no route to the host's loopback


async def test_network_outbound_all_reaches_a_host_listener(py_profile: aiogaol.Profile, python: str,
                                                            listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    profile = py_profile + [NetworkOutbound(AllAddresses())]
    proc = await aiogaol.create_sandboxed_subprocess(profile, python, "-c", CONNECT, str(port),
                                                     stdout=aiogaol.PIPE)
    out, _ = await proc.communicate()
    assert out.strip() == b'"connected"'
    conn, _addr = listener.accept()
    conn.close()


# ---------------------------------------------------------------- gaol's weaknesses, gone


async def test_working_directory_cannot_escape(py_profile: aiogaol.Profile, python: str, tmp_path: os.PathLike[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    deep = os.path.join(tmp_path, "a", "b", "c")
    os.makedirs(deep)
    monkeypatch.chdir(deep)  # gaol left the program in the caller's directory, outside the chroot
    result = await python_json(py_profile, python, textwrap.dedent("""
        import json, os
        try:
            open("../" * 12 + "etc/hostname").read(); escaped = True
        except OSError:
            escaped = False
        print(json.dumps([os.getcwd(), escaped]))
    """))
    assert result == ["/", False]


async def test_read_binds_are_read_only(py_profile: aiogaol.Profile, python: str, secret_file: str) -> None:
    profile = py_profile + [FileReadAll(Literal(secret_file))]
    result = await python_json(profile, python, textwrap.dedent(f"""
        import json
        try:
            open({secret_file!r}, "w").write("owned"); print(json.dumps("written"))
        except OSError as e:
            print(json.dumps(e.errno))
    """))
    assert result == 30  # EROFS
    with open(secret_file, "rb") as f:
        assert f.read() == SECRET


async def test_nothing_can_be_created_in_the_jail_root(py_profile: aiogaol.Profile, python: str) -> None:
    result = await python_json(py_profile, python, textwrap.dedent("""
        import json, os
        errs = []
        for path in ("/i-was-created-in-jail-root", "/usr/i-was-here", "/dev/owned", "/proc/owned"):
            try:
                open(path, "w").close(); errs.append("created")
            except OSError as e:
                errs.append(e.errno)
        print(json.dumps(errs))
    """))
    assert "created" not in result
    assert not os.path.exists("/usr/i-was-here")


async def test_only_standard_fds_reach_the_program(py_profile: aiogaol.Profile, python: str) -> None:
    """gaol leaked its handshake pipe and every inheritable fd of the caller into the sandbox."""
    leaky = os.open("/dev/null", os.O_RDONLY)
    os.set_inheritable(leaky, True)  # what a careless server might have lying around
    try:
        result = await python_json(py_profile, python, textwrap.dedent("""
            import json, os
            fds = {}
            for fd in os.listdir("/proc/self/fd"):
                try:
                    fds[fd] = os.readlink("/proc/self/fd/" + fd)
                except OSError:
                    pass
            print(json.dumps(fds))
        """))
    finally:
        os.close(leaky)
    extra = {fd: target for fd, target in result.items() if fd not in ("0", "1", "2")}
    # The only other fd is the directory listing /proc/self/fd itself.
    assert all(target.startswith("/proc/") for target in extra.values()), extra
    assert len(extra) <= 1, extra


async def test_pass_fds_are_the_exception(py_profile: aiogaol.Profile, python: str) -> None:
    r, w = os.pipe()
    try:
        rc, _, err = await run_python(py_profile, python, f"import os; os.write({w}, b'through')", pass_fds=[w])
        assert rc == 0, err
        assert os.read(r, 100) == b"through"
    finally:
        os.close(r)
        os.close(w)


async def test_server_environment_does_not_flow_in(py_profile: aiogaol.Profile, python: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVER_SECRET_TOKEN", "hunter2")
    result = await python_json(py_profile, python, "import json, os; print(json.dumps(dict(os.environ)))",
                               env={"ONLY_THIS": "yes"})
    assert "SERVER_SECRET_TOKEN" not in result
    assert result["ONLY_THIS"] == "yes"
    assert set(result) <= {"ONLY_THIS", "PATH", "LC_CTYPE"}  # CPython may set LC_CTYPE itself
    assert result["PATH"] == "/usr/local/bin:/usr/bin:/bin"


async def test_no_leftovers_on_the_host() -> None:
    before = set(os.listdir("/tmp"))
    procs = [await aiogaol.create_sandboxed_subprocess(aiogaol.system_profile(), "/bin/true") for _ in range(5)]
    for p in procs:
        assert await p.wait() == 0
    after = set(os.listdir("/tmp"))
    assert after - before == set()  # gaol left a /tmp/gaol.XXXXXX per run


async def test_terminate_gives_minus_sigterm(py_profile: aiogaol.Profile, python: str) -> None:
    proc = await aiogaol.create_sandboxed_subprocess(
        py_profile, python, "-c", "import sys, time; print('ready', flush=True); time.sleep(60)",
        stdout=aiogaol.PIPE)
    assert proc.stdout is not None
    assert await proc.stdout.readline() == b"ready\n"
    proc.terminate()
    assert await asyncio.wait_for(proc.wait(), 30) == -signal.SIGTERM


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV, signal.SIGUSR1, signal.SIGINT])
async def test_death_by_signal_n_gives_minus_n(py_profile: aiogaol.Profile, python: str, sig: int) -> None:
    rc, _, _ = await run_python(py_profile, python, f"import os, signal\nif {int(sig)} != 9: signal.signal({int(sig)}, signal.SIG_DFL)\nos.kill(os.getpid(), {int(sig)})")
    assert rc == -sig


async def test_a_handled_sigterm_is_the_programs_business(py_profile: aiogaol.Profile, python: str) -> None:
    proc = await aiogaol.create_sandboxed_subprocess(py_profile, python, "-c", textwrap.dedent("""
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(42))
        print("ready", flush=True)
        time.sleep(60)
    """), stdout=aiogaol.PIPE)
    assert proc.stdout is not None
    await proc.stdout.readline()
    proc.terminate()
    assert await asyncio.wait_for(proc.wait(), 30) == 42


SERVER = """
import asyncio, os, sys, threading, time
sys.path.insert(0, {root!r})
import aiogaol

kept = []

def spawn_in_a_thread():
    async def go():
        proc = await aiogaol.create_sandboxed_subprocess(aiogaol.system_profile(), "/bin/sleep", "120")
        print(proc.pid, flush=True)
        kept.append(proc)  # the process object lives on; this thread and its loop end now
    asyncio.run(go())

t = threading.Thread(target=spawn_in_a_thread)
t.start(); t.join()
print("thread gone", flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_jail_outlives_the_spawning_thread_but_not_the_server() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(aiogaol.__file__)))
    server = subprocess.Popen([sys.executable, "-c", SERVER.format(root=root)], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        pid = int(server.stdout.readline())
        assert server.stdout.readline() == b"thread gone\n"
        await asyncio.sleep(0.5)
        assert _alive(pid), "the jail died with the thread that spawned it (PR_SET_PDEATHSIG's trap)"
        server.kill()
        server.wait()
        for _ in range(200):
            if not _alive(pid):
                break
            await asyncio.sleep(0.05)
        assert not _alive(pid), "the jail outlived its server"
    finally:
        server.kill()
        server.wait()


async def test_other_childrens_exit_status_is_not_stolen() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    before = signal.getsignal(signal.SIGCHLD)
    plain = await asyncio.create_subprocess_exec("/bin/sh", "-c", "sleep 0.3; exit 7")
    jails = [await aiogaol.create_sandboxed_subprocess(aiogaol.system_profile(), "/bin/true") for _ in range(10)]
    for j in jails:
        assert await j.wait() == 0
    assert await plain.wait() == 7
    flag = ctypes.c_int(-1)
    assert libc.prctl(37, ctypes.byref(flag), 0, 0, 0) == 0  # PR_GET_CHILD_SUBREAPER
    assert flag.value == 0
    assert signal.getsignal(signal.SIGCHLD) == before


# ---------------------------------------------------------------- the jail's own properties


async def test_host_pids_are_invisible(py_profile: aiogaol.Profile, python: str) -> None:
    result = await python_json(py_profile, python, textwrap.dedent("""
        import json, os
        pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        print(json.dumps([os.getpid(), pids, open("/proc/1/cmdline", "rb").read().split(b"\\0")[0].decode()]))
    """))
    mypid, pids, init = result
    assert mypid == 2 and pids == [1, 2]
    assert init == "aiogaol-jail"


async def test_capabilities_are_all_zero(py_profile: aiogaol.Profile, python: str) -> None:
    result = await python_json(py_profile, python, textwrap.dedent("""
        import json
        fields = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
        print(json.dumps({k: fields[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs")}))
    """))
    assert result == {"CapInh": "0" * 16, "CapPrm": "0" * 16, "CapEff": "0" * 16, "CapBnd": "0" * 16,
                      "CapAmb": "0" * 16, "NoNewPrivs": "1"}


async def test_the_program_leads_its_own_session(py_profile: aiogaol.Profile, python: str) -> None:
    result = await python_json(py_profile, python, "import json, os; print(json.dumps([os.getsid(0), os.getpid()]))")
    assert result[0] == result[1]


async def test_hostname_and_tmp_are_the_jails_own(py_profile: aiogaol.Profile, python: str) -> None:
    profile = py_profile + [aiogaol.Tmpfs("/tmp", 1 << 20)]
    result = await python_json(profile, python, textwrap.dedent("""
        import json, os, socket
        open("/tmp/scratch", "w").write("x" * 10)
        print(json.dumps([socket.gethostname(), sorted(os.listdir("/tmp"))]))
    """))
    assert result == ["aiogaol", ["scratch"]]
    assert not os.path.exists("/tmp/scratch") or open("/tmp/scratch").read() != "x" * 10


async def test_literal_directory_is_the_entry_not_its_contents(py_profile: aiogaol.Profile, python: str,
                                                               tmp_path: os.PathLike[str]) -> None:
    d = os.path.join(tmp_path, "dir")
    os.mkdir(d)
    with open(os.path.join(d, "inside"), "w") as f:
        f.write("hidden")
    result = await python_json(py_profile + [FileReadAll(Literal(d))], python,
                               f"import json, os; print(json.dumps([os.path.isdir({d!r}), os.listdir({d!r})]))")
    assert result == [True, []]


async def test_write_bind_writes_through(py_profile: aiogaol.Profile, python: str, tmp_path: os.PathLike[str]) -> None:
    d = os.path.join(tmp_path, "out")
    os.mkdir(d)
    os.chmod(d, 0o777)
    profile = py_profile + [aiogaol.FileWriteAll(Subpath(d))]
    rc, _, err = await run_python(profile, python, f"open({d!r} + '/result', 'w').write('done')")
    assert rc == 0, err
    with open(os.path.join(d, "result")) as f:
        assert f.read() == "done"


async def test_a_hundred_concurrent_jails() -> None:
    import threading

    fds = open_fds()
    threads = threading.active_count()
    profile = aiogaol.system_profile()

    async def one(i: int) -> bytes:
        proc = await aiogaol.create_sandboxed_subprocess(profile, "/bin/echo", str(i), stdout=aiogaol.PIPE)
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        return out

    outs = await asyncio.gather(*(one(i) for i in range(100)))
    assert outs == [f"{i}\n".encode() for i in range(100)]
    assert zombie_children() == []
    assert len(open_fds()) <= len(fds) + 2  # the loop may grow a self-pipe; no jail fd remains
    assert threading.active_count() == threads  # no watcher thread, ever


async def test_program_never_holds_a_root_servers_identity(py_profile: aiogaol.Profile, python: str,
                                                           tmp_path: os.PathLike[str]) -> None:
    """As root, the program runs as nobody with no groups; otherwise as the caller.  Never as root."""
    private = os.path.join(tmp_path, "owner-only")
    with open(private, "w") as f:
        f.write("owner's eyes only")
    os.chmod(private, 0o600)
    profile = py_profile + [FileReadAll(Literal(private))]
    result = await python_json(profile, python, textwrap.dedent(f"""
        import json, os
        try:
            open({private!r}).read(); readable = True
        except PermissionError:
            readable = False
        print(json.dumps([os.getuid(), os.geteuid(), os.getgid(), os.getgroups(), readable]))
    """))
    uid, euid, gid, groups, readable = result
    if os.geteuid() == 0:
        assert (uid, euid, gid, groups, readable) == (65534, 65534, 65534, [], False)
    else:
        assert (uid, euid, gid) == (os.getuid(), os.getuid(), os.getgid())
        assert readable  # the caller's own file: the jail is never more than the caller
