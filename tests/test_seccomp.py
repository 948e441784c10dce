"""The seccomp filter: compiled once per policy, loaded from a pipe, shaped by the profile."""

from __future__ import annotations

import textwrap

import pytest

import aiogaol
from aiogaol import _seccomp

from .conftest import open_fds
from .jailtools import python_json



def test_filter_is_compiled_once_per_policy(py_profile: aiogaol.Profile) -> None:
    policy = _seccomp.policy_for(py_profile, jail=True)
    first = _seccomp.compile_filter(policy)
    assert _seccomp.compile_filter(policy) is first
    assert len(first) % 8 == 0 and 0 < len(first) // 8 <= 4096


def test_profile_shapes_the_socket_families(py_profile: aiogaol.Profile) -> None:
    assert _seccomp.policy_for(py_profile, jail=True).families == {_seccomp.AF_UNIX}
    net = py_profile + [aiogaol.NetworkOutbound(aiogaol.AllAddresses())]
    assert _seccomp.AF_INET in _seccomp.policy_for(net, jail=True).families
    assert not _seccomp.policy_for(py_profile, jail=False).unix_socket


PERSONALITY = textwrap.dedent("""
    import ctypes, json
    libc = ctypes.CDLL(None, use_errno=True)
    def p(v):
        r = libc.personality(ctypes.c_ulong(v))
        e = ctypes.get_errno()
        libc.personality(0)
        return "ok" if r != -1 else e
    print(json.dumps({"query": p(0xffffffff), "linux32": p(0x0008), "uname26": p(0x0020000),
                      "read_implies_exec": p(0x0400000), "bit31_trick": p(0x80400000),
                      "high_half": p((1 << 32) | 0x0400000)}))
""")


@pytest.mark.asyncio
async def test_personality_allows_the_safe_values_only(py_profile: aiogaol.Profile, python: str) -> None:
    result = await python_json(py_profile, python, PERSONALITY)
    assert result == {"query": "ok", "linux32": "ok", "uname26": "ok", "read_implies_exec": 1,
                      "bit31_trick": 1, "high_half": 1}


FAMILIES = textwrap.dedent("""
    import ctypes, json
    libc = ctypes.CDLL(None, use_errno=True)
    SYS_socket, SYS_socketpair = 41, 53
    def errno_of(nr, family, kind):
        pair = (ctypes.c_int * 2)()
        args = (ctypes.c_long(family), ctypes.c_long(kind), ctypes.c_long(0))
        r = libc.syscall(ctypes.c_long(nr), *args, *( (pair,) if nr == SYS_socketpair else ()))
        return 0 if r >= 0 else ctypes.get_errno()
    out = {}
    for name, nr in (("socket", SYS_socket), ("socketpair", SYS_socketpair)):
        # every family below 64, and the same with garbage in the upper half of the argument
        out[name] = [errno_of(nr, f, 1) for f in range(64)]
        out[name + "_high"] = [errno_of(nr, (1 << 32) | f, 1) for f in range(64)]
    out["tcp_kinds"] = [errno_of(SYS_socket, 2, k) for k in range(16)]
    print(json.dumps(out))
""")


@pytest.mark.asyncio
async def test_every_socket_family_but_the_profiles_is_refused(py_profile: aiogaol.Profile, python: str) -> None:
    """The rules cover families by aligned blocks: check each family below 64 on the real filter."""
    eperm = 1
    plain = await python_json(py_profile, python, FAMILIES)
    for name in ("socket", "socketpair", "socket_high", "socketpair_high"):
        refused = [f for f, e in enumerate(plain[name]) if e == eperm]
        assert refused == [f for f in range(64) if f != _seccomp.AF_UNIX], name
    tcp = await python_json(py_profile + [aiogaol.NetworkOutbound(aiogaol.Tcp(80))], python, FAMILIES)
    allowed = {_seccomp.AF_UNIX, _seccomp.AF_INET, _seccomp.AF_INET6}
    assert [f for f, e in enumerate(tcp["socket"]) if e == eperm] == [f for f in range(64) if f not in allowed]
    # TCP only: SOCK_STREAM (1) is the one AF_INET kind left (the network namespace is the host's here)
    assert [k for k, e in enumerate(tcp["tcp_kinds"]) if e != eperm] == [1]


@pytest.mark.asyncio
async def test_ordinary_processes_and_threads_still_work(py_profile: aiogaol.Profile, python: str) -> None:
    code = textwrap.dedent("""
        import json, os, subprocess, sys, threading
        t = threading.Thread(target=lambda: None); t.start(); t.join()
        out = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True).stdout.decode().strip()
        print(json.dumps([out, os.waitstatus_to_exitcode(os.system("exit 3")) if os.path.exists("/bin/sh") else 3]))
    """)
    assert await python_json(py_profile, python, code) == ["42", 3]


@pytest.mark.asyncio
async def test_no_filter_fd_is_kept_by_the_server(py_profile: aiogaol.Profile, python: str) -> None:
    await python_json(py_profile, python, "print(1)")  # warm the caches
    before = open_fds()
    for _ in range(3):
        await python_json(py_profile, python, "print(1)")
    assert open_fds() == before


@pytest.mark.asyncio
async def test_the_filter_is_loaded_in_the_program(py_profile: aiogaol.Profile, python: str) -> None:
    code = ("import json\nst = dict(l.split(':\\t', 1) for l in open('/proc/self/status') if ':\\t' in l)\n"
            "print(json.dumps([st['Seccomp'].strip(), st['NoNewPrivs'].strip()]))")
    assert await python_json(py_profile, python, code) == ["2", "1"]


NO_LIBSECCOMP = """
import asyncio, sys
sys.path.insert(0, {root!r})
import aiogaol
async def main():
    try:
        await aiogaol.create_sandboxed_subprocess(aiogaol.system_profile(), "/bin/true")
    except OSError as e:
        print("REFUSED:", type(e).__name__, e)
    else:
        print("SPAWNED UNFILTERED")
asyncio.run(main())
"""


def test_missing_libseccomp_refuses_to_spawn_unfiltered() -> None:
    """Hide the real library for real: a bind of /dev/null over it in a private mount namespace."""
    import os
    import subprocess
    import sys

    _seccomp.libseccomp_version()  # loads it here, so /proc/self/maps names the file
    with open("/proc/self/maps", encoding="utf-8") as f:
        paths = {line.split()[-1] for line in f if "libseccomp" in line}
    assert paths, "libseccomp is not loaded in the test process"
    library = os.path.realpath(paths.pop())
    root = os.path.dirname(os.path.dirname(os.path.abspath(aiogaol.__file__)))
    script = f"mount --bind /dev/null {library} && exec {sys.executable} -c \"$0\""
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script,
                           NO_LIBSECCOMP.format(root=root)], capture_output=True, text=True, timeout=60)
    if "unshare failed" in done.stderr:
        pytest.skip(f"cannot create the outer namespaces here: {done.stderr.strip()}")
    assert "REFUSED: SeccompUnavailable" in done.stdout, done.stdout + done.stderr
    assert "libseccomp.so.2" in done.stdout and "apt-get install libseccomp2" in done.stdout
