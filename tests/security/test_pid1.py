"""The jail's PID 1 while the program runs: no capability, no_new_privs, a filter of its own, not
dumpable, and (for a root server) not host root."""

from __future__ import annotations

import asyncio
import os

import pytest

import aiogaol

from ..jailtools import python_json

READ_INIT = r"""
import json, os
status = {}
for line in open("/proc/1/status"):
    key, _, value = line.partition(":")
    status[key] = value.strip()
probes = {}
try:
    with open("/proc/1/mem", "rb") as f:
        f.seek(0x400000)
        f.read(16)
    probes["mem"] = "read"
except OSError as e:
    probes["mem"] = e.errno
try:
    probes["environ"] = len(open("/proc/1/environ", "rb").read())
except OSError as e:
    probes["environ"] = e.errno
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
PTRACE_ATTACH = 16
rc = libc.ptrace(PTRACE_ATTACH, 1, None, None)
probes["ptrace"] = 0 if rc == 0 else ctypes.get_errno()
print(json.dumps({"status": status, "probes": probes}))
"""


@pytest.mark.asyncio
async def test_init_holds_nothing_while_the_program_runs(py_profile: aiogaol.Profile, python: str) -> None:
    got = await python_json(py_profile, python, READ_INIT)
    status = got["status"]
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[key], 16) == 0, f"init's {key} is {status[key]}"
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2", "init runs under no seccomp filter"
    probes = got["probes"]
    assert probes["mem"] != "read", "the program read init's memory"
    assert probes["ptrace"] != 0, "the program attached to init with ptrace"
    assert probes["environ"] == 13, f"the program read init's environment: {probes['environ']}"
    if os.geteuid() == 0:
        # Init took the program's identity (nobody) once the jail was built.
        assert status["Uid"].split()[0] != "0", status["Uid"]


SECUREBITS = r"""
import ctypes, json
libc = ctypes.CDLL(None, use_errno=True)
status = dict(line.rstrip("\n").split(":\t", 1) for line in open("/proc/self/status") if ":\t" in line)
print(json.dumps({"securebits": libc.prctl(27, 0, 0, 0, 0), "CapBnd": status["CapBnd"], "CapAmb": status["CapAmb"]}))
"""
# PR_GET_SECUREBITS: NOROOT, NO_SETUID_FIXUP, KEEP_CAPS (clear), NO_CAP_AMBIENT_RAISE, each with its lock.
LOCKED_SECUREBITS = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80


@pytest.mark.asyncio
async def test_the_program_starts_with_its_capabilities_bounded_and_the_securebits_locked(
        py_profile: aiogaol.Profile, python: str) -> None:
    """Init sets the bounds once, before it clones the program, which inherits them (program.c's drop no
    longer repeats them): an empty bounding and ambient set, and root that can never regain a
    capability at exec."""
    got = await python_json(py_profile, python, SECUREBITS)
    assert got == {"securebits": LOCKED_SECUREBITS, "CapBnd": "0" * 16, "CapAmb": "0" * 16}


@pytest.mark.asyncio
async def test_a_root_servers_init_is_not_host_root(py_profile: aiogaol.Profile, python: str) -> None:
    """Read init's host status from the server's side while the program runs: for a root server, neither
    uid 0 nor any capability in the host's view; for any server, the server's ids or fewer."""
    proc = await aiogaol.create_sandboxed_subprocess(
        py_profile, python, "-c", "import sys; sys.stdin.read()", stdin=aiogaol.PIPE, stdout=aiogaol.DEVNULL)
    try:
        await asyncio.sleep(0.2)  # the program has exec'd (the spawn returned), init has dropped
        with open(f"/proc/{proc.pid}/status", encoding="ascii") as f:
            status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        uids = [int(u) for u in status["Uid"].split()]
        if os.geteuid() == 0:
            assert 0 not in uids, f"init runs as host root: Uid {status['Uid']}"
        else:
            assert set(uids) == {os.geteuid()}
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
        assert status["NoNewPrivs"].strip() == "1"
        assert status["Seccomp"].strip() == "2"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0


@pytest.mark.asyncio
async def test_init_still_kills_forwards_and_reports(py_profile: aiogaol.Profile, python: str) -> None:
    """Its filter leaves init's loop whole: a forwarded signal, the orphans' kill and the exit report."""
    code = ("import os, signal, time\n"
            "if os.fork() == 0:\n    os.setsid(); time.sleep(600)\n"
            "signal.signal(signal.SIGTERM, lambda *a: os._exit(7))\n"
            "print('ready', flush=True); time.sleep(600)\n")
    proc = await aiogaol.create_sandboxed_subprocess(py_profile, python, "-c", code, stdout=aiogaol.PIPE)
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"ready\n"
    proc.terminate()
    assert await asyncio.wait_for(proc.wait(), 30) == 7


@pytest.mark.asyncio
async def test_init_in_the_fallback_has_its_filter(py_profile: aiogaol.Profile, python: str) -> None:
    from aiogaol import _kernel

    if _kernel.landlock_abi() < 6:
        pytest.skip("the landlock isolation needs Landlock ABI 6")
    # cat, not python: a root server's fallback program runs as nobody, who cannot reach /root's python.
    proc = await aiogaol.create_sandboxed_subprocess(
        py_profile, "/usr/bin/cat", stdin=aiogaol.PIPE, stdout=aiogaol.DEVNULL, isolation="landlock")
    try:
        await asyncio.sleep(0.2)
        with open(f"/proc/{proc.pid}/status", encoding="ascii") as f:
            status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
        assert status["NoNewPrivs"].strip() == "1"
        assert status["Seccomp"].strip() == "2"
        if os.geteuid() == 0:
            assert "0" not in status["Uid"].split(), status["Uid"]
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0


def test_inits_filter_allows_its_loop_and_nothing_else() -> None:
    """Load init's filter in a throw-away interpreter: the calls of init's loop pass, anything else is EPERM."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import ctypes, os
        from aiogaol._init_filter import init_filter
        from aiogaol._seccomp import _load
        _, lib = _load()
        nr = {n: lib.seccomp_syscall_resolve_name(n.encode()) for n in ("getuid", "kill", "mount", "ptrace", "setuid")}
        bpf = init_filter()
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(bpf, len(bpf))
        class Prog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
        prog = Prog(len(bpf) // 8, ctypes.cast(buf, ctypes.c_void_p))
        PR_SET_NO_NEW_PRIVS, SECCOMP_SET_MODE_FILTER = 38, 1
        assert libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
        SYS_seccomp = lib.seccomp_syscall_resolve_name(b"seccomp")
        assert libc.syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, ctypes.byref(prog)) == 0
        results = []
        for name, args in (("kill", (os.getpid(), 0)), ("getuid", ()), ("mount", (0, 0, 0, 0, 0)),
                           ("ptrace", (16, 1, 0, 0)), ("setuid", (0,))):
            rc = libc.syscall(nr[name], *args)
            results.append("%s=%d/%d" % (name, rc, ctypes.get_errno() if rc < 0 else 0))
        os.write(1, " ".join(results).encode())
        os._exit(0)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["kill=0/0", "getuid=-1/1", "mount=-1/1", "ptrace=-1/1", "setuid=-1/1"]
