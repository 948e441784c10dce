"""The seccomp filter: compiled once per policy, loaded from a pipe, shaped by the profile."""

from __future__ import annotations

import errno
import json
import os
import platform
import textwrap
import types
from typing import cast

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
    private = _seccomp.policy_for(py_profile, jail=True)
    # a private network namespace with its own loopback: IP sockets reach nothing else; netlink for routes only
    assert private.families == {_seccomp.AF_UNIX, _seccomp.AF_INET, _seccomp.AF_INET6, _seccomp.AF_NETLINK}
    assert private.netlink_route_only and not private.tcp_only
    # Profile(loopback=False) (read with getattr until that field lands): AF_UNIX only, as before
    no_lo = types.SimpleNamespace(operations=py_profile.operations, loopback=False)
    assert _seccomp.policy_for(cast(aiogaol.Profile, no_lo), jail=True).families == {_seccomp.AF_UNIX}
    net = py_profile + [aiogaol.NetworkOutbound(aiogaol.AllAddresses())]
    assert _seccomp.policy_for(net, jail=True).families == private.families
    assert not _seccomp.policy_for(net, jail=True).netlink_route_only
    tcp = _seccomp.policy_for(py_profile + [aiogaol.NetworkOutbound(aiogaol.Tcp(80))], jail=True)
    assert tcp.families == {_seccomp.AF_UNIX, _seccomp.AF_INET, _seccomp.AF_INET6} and tcp.tcp_only
    # the fallback shares the host's network: the loopback opens nothing there, and AF_UNIX is refused
    fallback = _seccomp.policy_for(py_profile, jail=False)
    assert fallback.families == {_seccomp.AF_UNIX} and not fallback.unix_socket and fallback.host_ipc_denied


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
    # Every other value falls to the filter's default, ENOSYS (as in Docker's profile, which lists only
    # the allowed values).
    assert result == {"query": "ok", "linux32": "ok", "uname26": "ok", "read_implies_exec": errno.ENOSYS,
                      "bit31_trick": errno.ENOSYS, "high_half": errno.ENOSYS}


FAMILIES = textwrap.dedent("""
    import ctypes, json
    libc = ctypes.CDLL(None, use_errno=True)
    SYS_socket, SYS_socketpair = 41, 53
    def errno_of(nr, family, kind, proto=0):
        pair = (ctypes.c_int * 2)()
        args = (ctypes.c_long(family), ctypes.c_long(kind), ctypes.c_long(proto))
        r = libc.syscall(ctypes.c_long(nr), *args, *( (pair,) if nr == SYS_socketpair else ()))
        return 0 if r >= 0 else ctypes.get_errno()
    FAMILIES = list(range(64)) + [64, 100, 1000, 0x7fffffff, 0x80000000, 0xffffffff]
    out = {"families": FAMILIES}
    for name, nr in (("socket", SYS_socket), ("socketpair", SYS_socketpair)):
        # every family below 64 and some above, and the same with garbage in the upper half of the argument
        out[name] = [errno_of(nr, f, 1) for f in FAMILIES]
        out[name + "_high"] = [errno_of(nr, (1 << 32) | f, 1) for f in FAMILIES]
    out["tcp_kinds"] = [errno_of(SYS_socket, 2, k) for k in range(16)]
    out["tcp_protocols"] = {p: errno_of(SYS_socket, 2, 1, p) for p in (0, 6, 132, 262, 17, (1 << 32) | 6)}
    out["netlink_protocols"] = [errno_of(SYS_socket, 16, 3, p) for p in range(32)]
    print(json.dumps(out))
""")

EPERM = errno.EPERM


def _fallback_python(python: str) -> str:
    """In the Landlock fallback a root server's program runs as nobody on the host's tree, where an
    interpreter under /root is out of its reach; Debian's is not."""
    system = "/usr/bin/python3"
    if os.geteuid() == 0 and not python.startswith("/usr/") and os.access(system, os.X_OK):
        return os.path.realpath(system)
    return python


def _refused(result: dict[str, list[int]], name: str) -> list[int]:
    return [f for f, e in zip(result["families"], result[name]) if e == EPERM]


@pytest.mark.asyncio
async def test_every_socket_family_but_the_profiles_is_refused(py_profile: aiogaol.Profile, python: str) -> None:
    """The rules cover families by aligned blocks below 64 and one comparison above: check each family
    below 64, and some above, on the real filter, for each kind of profile."""
    plain = await python_json(py_profile, python, FAMILIES)
    families = plain["families"]
    # The private network namespace with its own loopback: AF_INET, AF_INET6 and AF_NETLINK too.
    allowed = {_seccomp.AF_UNIX, _seccomp.AF_INET, _seccomp.AF_INET6, _seccomp.AF_NETLINK}
    assert _refused(plain, "socket") == [f for f in families if f not in allowed]
    assert _refused(plain, "socketpair") == [f for f in families if f != _seccomp.AF_UNIX]
    # a family with garbage in the upper half of the argument is refused, whatever its lower half says
    for name in ("socket_high", "socketpair_high"):
        assert _refused(plain, name) == families, name
    # Netlink of NETLINK_ROUTE only (getifaddrs): audit, sock_diag, uevents and the rest are refused.
    assert [p for p, e in enumerate(plain["netlink_protocols"]) if e == EPERM] == list(range(1, 32))
    assert plain["netlink_protocols"][0] == 0
    tcp = await python_json(py_profile + [aiogaol.NetworkOutbound(aiogaol.Tcp(80))], python, FAMILIES)
    allowed = {_seccomp.AF_UNIX, _seccomp.AF_INET, _seccomp.AF_INET6}
    assert _refused(tcp, "socket") == [f for f in families if f not in allowed]
    # TCP only: SOCK_STREAM (1) is the one AF_INET kind left (the network namespace is the host's here)
    assert [k for k, e in enumerate(tcp["tcp_kinds"]) if e != EPERM] == [1]
    # ... of protocol 0 or IPPROTO_TCP: SCTP and MPTCP are refused, other protocols are not in the filter
    protocols = tcp["tcp_protocols"]
    assert [protocols[str(p)] for p in (0, 6, 132, 262)] == [0, 0, EPERM, EPERM]
    assert protocols["17"] == errno.ENOSYS and protocols[str((1 << 32) | 6)] == 0
    net = await python_json(py_profile + [aiogaol.NetworkOutbound(aiogaol.AllAddresses())], python, FAMILIES)
    assert _refused(net, "socket") == [f for f in families if f not in allowed | {_seccomp.AF_NETLINK}]
    assert all(e != EPERM for e in net["netlink_protocols"])


@pytest.mark.asyncio
async def test_the_private_loopback_takes_ip_sockets(py_profile: aiogaol.Profile, python: str) -> None:
    """In the jail's own network namespace IP sockets and route netlink work (they reach nothing but the
    jail's loopback); with Profile(loopback=False) and in the fallback they are refused."""
    code = textwrap.dedent("""
        import json, socket
        out = {}
        for name, make in (("inet", lambda: socket.socket()), ("inet6", lambda: socket.socket(socket.AF_INET6)),
                           ("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)),
                           ("route", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)),
                           ("names", lambda: socket.if_nameindex())):
            try:
                make(); out[name] = "ok"
            except OSError as e:
                out[name] = e.errno
        print(json.dumps(out))
    """)
    assert await python_json(py_profile, python, code) == dict.fromkeys(("inet", "inet6", "udp", "route", "names"), "ok")
    refused = {"inet": EPERM, "inet6": EPERM, "udp": EPERM, "route": EPERM}
    if aiogaol.check().landlock_abi >= 6:
        fallback = await python_json(py_profile, _fallback_python(python), code, isolation="landlock")
        assert {k: fallback[k] for k in refused} == refused
    no_lo = aiogaol.Profile(py_profile.operations, loopback=False)
    result = await python_json(no_lo, python, code)
    assert {k: result[k] for k in refused} == refused


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


NATIVE_64 = platform.machine() in ("x86_64", "aarch64")
needs_known_arch = pytest.mark.skipif(not NATIVE_64, reason="the filter and these numbers are for x86_64 and aarch64")


@needs_known_arch
def test_every_listed_name_is_resolved_or_numbered() -> None:
    """No silent skip: each name the lists rely on is resolved by libseccomp or numbered by the module
    (or is known to libseccomp as absent on this architecture); where both know it they agree."""
    names = (*_seccomp.allowed_names(), *_seccomp.eperm_names(), *_seccomp.enosys_names())
    assert len(names) == len(set(names)), "a name is in two lists"
    how = {name: _seccomp.resolve(name) for name in names}
    assert [n for n, (kind, _) in how.items() if kind == "unknown"] == []
    ffi, lib = _seccomp._load()
    for name, nr in _seccomp._NUMBERS[_seccomp.native_arch()].items():
        by_lib = lib.seccomp_syscall_resolve_name(name.encode())
        assert by_lib in (-1, nr), f"{name}: libseccomp says {by_lib}, the module {nr}"
    # the calls the brief of this filter names as needed are really in it
    for name in ("rseq", "close_range", "faccessat2", "epoll_pwait2", "futex_waitv", "cachestat", "fchmodat2"):
        assert how[name][0] in ("libseccomp", "number") and name in _seccomp.allowed_names(), name
    if platform.machine() == "x86_64":
        assert how["map_shadow_stack"][0] in ("libseccomp", "number")
    # the allow list is in the class of Docker's default profile (about 300 calls)
    assert 250 <= len(_seccomp.allowed_names()) <= 350


# The calls libseccomp 2.5.4 does not know, by their x86-64 number (the same on aarch64: from 424 on every
# architecture shares the numbers), with harmless arguments; uretprobe and uprobe are left out since the
# kernel itself lets only its uprobe trampoline call them (and from 6.14/6.17 seccomp never sees them).
NEW_CALLS = {"statmount": 457, "listmount": 458, "lsm_get_self_attr": 459, "lsm_set_self_attr": 460,
             "lsm_list_modules": 461, "mseal": 462, "setxattrat": 463, "getxattrat": 464, "listxattrat": 465,
             "removexattrat": 466, "open_tree_attr": 467, "file_getattr": 468, "file_setattr": 469}

NEW_CALLS_PROBE = textwrap.dedent("""
    import ctypes, json, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    def call(nr, *args):
        r = libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))
        return ["ok", r] if r >= 0 else ["err", ctypes.get_errno()]
    out = {name: call(nr, -1, 0, 0, 0, 0) for name, nr in json.loads(sys.argv[1]).items()}
    # open_tree_attr(AT_FDCWD, "/", 0, NULL, 0): without OPEN_TREE_CLONE no privilege is needed, and the
    # kernel hands out a handle on the jail's root mount
    root = ctypes.c_char_p(b"/")
    r = libc.syscall(ctypes.c_long(467), ctypes.c_long(-100), root, ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0))
    out["open_tree_attr_root"] = ["ok", r] if r >= 0 else ["err", ctypes.get_errno()]
    print(json.dumps(out))
""")


@needs_known_arch
@pytest.mark.asyncio
async def test_calls_newer_than_libseccomp_are_refused(py_profile: aiogaol.Profile, python: str) -> None:
    proc = await aiogaol.create_sandboxed_subprocess(py_profile, python, "-c", NEW_CALLS_PROBE,
                                                     json.dumps(NEW_CALLS), stdout=aiogaol.PIPE,
                                                     stderr=aiogaol.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode(errors="replace")
    result = json.loads(out)
    expected = {name: ["err", errno.EPERM if name == "open_tree_attr" else errno.ENOSYS] for name in NEW_CALLS}
    expected["open_tree_attr_root"] = ["err", errno.EPERM]
    assert result == expected


RANGE_PROBE = textwrap.dedent("""
    import ctypes, json, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    out = {}
    for nr in json.loads(sys.argv[1]):
        r = libc.syscall(ctypes.c_long(nr), *([ctypes.c_long(0)] * 6))
        out[nr] = ctypes.get_errno() if r == -1 else "returned %d" % r
    print(json.dumps(out))
""")


def _numbers(names: tuple[str, ...]) -> set[int]:
    return {nr for nr in (_seccomp.resolve(n)[1] for n in names) if nr is not None}


@needs_known_arch
@pytest.mark.asyncio
@pytest.mark.parametrize("isolation", ["namespaces", "landlock"])
async def test_every_number_outside_the_allow_list_is_refused(py_profile: aiogaol.Profile, python: str,
                                                              isolation: str) -> None:
    """Each number below 1024 that the allow list does not name, allocated or not (470..1023 are free
    today; a later kernel fills them): EPERM for the calls refused by name, ENOSYS for every other."""
    if isolation == "landlock":
        if aiogaol.check().landlock_abi < 6:
            pytest.skip("the landlock isolation needs Landlock ABI 6; this kernel has less")
        python = _fallback_python(python)
    allowed = _numbers(_seccomp.allowed_names())
    eperm = _numbers(_seccomp.eperm_names())
    if isolation == "landlock":
        allowed -= _numbers(_seccomp.HOST_NAMESPACED)
        eperm |= _numbers(_seccomp.HOST_NAMESPACED)
    probe = sorted(set(range(1024)) - allowed)
    assert set(range(470, 521)) | {1000} <= set(probe)
    proc = await aiogaol.create_sandboxed_subprocess(py_profile, python, "-c", RANGE_PROBE, json.dumps(probe),
                                                     stdout=aiogaol.PIPE, stderr=aiogaol.PIPE,
                                                     isolation=isolation)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode(errors="replace")
    result = {int(k): v for k, v in json.loads(out).items()}
    wrong = {nr: got for nr, got in result.items() if got != (errno.EPERM if nr in eperm else errno.ENOSYS)}
    assert wrong == {}
    assert len(result) == len(probe)


CLONE_PROBE = textwrap.dedent("""
    import ctypes, json, os, signal
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    SYS_clone, SYS_unshare, SYS_clone3 = 56, 272, 435
    def clone(flags):
        r = libc.syscall(ctypes.c_long(SYS_clone), ctypes.c_long(flags), *([ctypes.c_long(0)] * 4))
        if r == 0:
            os._exit(7)
        if r < 0:
            return ctypes.get_errno()
        return "child %d" % os.waitstatus_to_exitcode(os.waitpid(r, 0)[1])
    def unshare(flags):
        r = libc.syscall(ctypes.c_long(SYS_unshare), ctypes.c_long(flags))
        return "ok" if r == 0 else ctypes.get_errno()
    NS = {"mnt": 0x00020000, "cgroup": 0x02000000, "uts": 0x04000000, "ipc": 0x08000000,
          "user": 0x10000000, "pid": 0x20000000, "net": 0x40000000}
    out = {"fork": clone(signal.SIGCHLD), "fork_high_half": clone((1 << 32) | signal.SIGCHLD)}
    for name, flag in NS.items():
        out["clone_" + name] = clone(flag | signal.SIGCHLD)
        out["clone_high_" + name] = clone((1 << 32) | flag | signal.SIGCHLD)
        out["unshare_" + name] = unshare(flag)
    out["unshare_time"] = unshare(0x80)
    out["unshare_files"] = unshare(0x00000400)  # CLONE_FILES: no namespace, allowed
    r = libc.syscall(ctypes.c_long(SYS_clone3), ctypes.c_long(0), ctypes.c_long(0))
    out["clone3"] = ctypes.get_errno() if r < 0 else r
    print(json.dumps(out))
""")


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the probe uses x86-64 system call numbers")
@pytest.mark.asyncio
async def test_clone_and_unshare_make_no_namespace(py_profile: aiogaol.Profile, python: str) -> None:
    result = await python_json(py_profile, python, CLONE_PROBE)
    expected: dict[str, object] = {"fork": "child 7", "fork_high_half": "child 7", "unshare_time": errno.EPERM,
                                   "unshare_files": "ok", "clone3": errno.ENOSYS}
    for name in ("mnt", "cgroup", "uts", "ipc", "user", "pid", "net"):
        expected.update({"clone_" + name: errno.EPERM, "clone_high_" + name: errno.EPERM,
                         "unshare_" + name: errno.EPERM})
    assert result == expected


def test_the_filter_stays_small() -> None:
    """Well under BPF_MAXINSNS for every kind of policy (the number is printed in ``aiogaol check``-style
    plan descriptions too)."""
    policies = [_seccomp.SeccompPolicy(frozenset({1})),
                _seccomp.SeccompPolicy(frozenset({1, 2, 10, 16}), netlink_route_only=True),
                _seccomp.SeccompPolicy(frozenset({1, 2, 10}), tcp_only=True),
                _seccomp.SeccompPolicy(frozenset({1, 2, 10, 16})),
                _seccomp.SeccompPolicy(frozenset({1}), unix_socket=False, host_ipc_denied=True)]
    for policy in policies:
        assert len(_seccomp.compile_filter(policy)) // 8 < 2048, policy


def test_the_docs_hold_the_filters_tables() -> None:
    """docs/security.md's seccomp tables are the module's own lists (regenerate them with
    ``aiogaol._seccomp.describe()`` after changing a list)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "security.md").read_text()
    begin = "<!-- seccomp-table: generated by aiogaol._seccomp.describe(); tests/test_seccomp.py checks it -->\n"
    end = "<!-- end seccomp-table -->"
    assert begin in text and end in text
    assert text.split(begin, 1)[1].split(end, 1)[0] == _seccomp.describe()
