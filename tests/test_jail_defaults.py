"""What programs expect of a machine, inside the jail only: its own loopback, a /dev/shm, ptys.

The socket tests need the program's seccomp filter to allow AF_INET/AF_INET6 (and AF_NETLINK route) when
the profile's ``loopback`` is on, which the filter's allow-list rewrite brings.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest

import aiogaol
from aiogaol import ProfileError, Tmpfs

from .jailtools import python_json, run_python

MiB = 1 << 20

LOOPBACK = textwrap.dedent(r"""
    import json, socket, sys
    out = {}
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            srv = socket.socket(family)
            srv.bind((host, 0))
            srv.listen(1)
            cli = socket.create_connection(srv.getsockname()[:2], timeout=5)
            conn, _ = srv.accept()
            cli.sendall(b"ping")
            out[host] = conn.recv(4).decode()
        except OSError as e:
            out[host] = "error %d" % e.errno
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
        out["host"] = "reached"
    except OSError as e:
        out["host"] = "error %d" % e.errno
    print(json.dumps(out))
""")


def _ipv6_on_host() -> bool:
    return os.path.exists("/proc/sys/net/ipv6") and socket.has_ipv6


@pytest.mark.asyncio
async def test_own_loopback_up_and_the_hosts_out_of_reach(py_profile: aiogaol.Profile, python: str) -> None:
    with socket.socket() as host_server:
        host_server.bind(("127.0.0.1", 0))
        host_server.listen(4)
        port = host_server.getsockname()[1]
        code = f"import sys; sys.argv[1:] = [{str(port)!r}]\n" + LOOPBACK
        got = await python_json(py_profile, python, code)
    assert got["127.0.0.1"] == "ping", got
    if _ipv6_on_host():
        assert got["::1"] == "ping", got
    # The jail's 127.0.0.1 is its own: the host's server there is not the one it finds.
    assert got["host"] != "reached"


@pytest.mark.asyncio
async def test_loopback_off(py_profile: aiogaol.Profile, python: str) -> None:
    profile = aiogaol.Profile(py_profile.operations, loopback=False)
    assert "no interface up" in aiogaol.explain(profile)
    got = await python_json(profile, python, "import sys; sys.argv[1:] = ['1']\n" + LOOPBACK)
    assert got["127.0.0.1"].startswith("error"), got


@pytest.mark.asyncio
async def test_multiprocessing_queue_and_lock(py_profile: aiogaol.Profile, python: str) -> None:
    code = textwrap.dedent("""
        import json, multiprocessing as mp
        def work(q, lock):
            with lock:
                q.put(21 * 2)
        if __name__ == "__main__":
            ctx = mp.get_context("fork")
            q, lock = ctx.Queue(), ctx.Lock()
            p = ctx.Process(target=work, args=(q, lock))
            p.start()
            value = q.get(timeout=20)
            p.join(20)
            print(json.dumps({"value": value, "exit": p.exitcode}))
    """)
    got = await python_json(py_profile, python, code)
    assert got == {"value": 42, "exit": 0}


SHM = textwrap.dedent(r"""
    import json, os
    out = {}
    try:
        st = os.statvfs("/dev/shm")
        out["size"] = st.f_blocks * st.f_frsize
    except OSError as e:
        out["size"] = None
    try:
        with open("/dev/shm/fill", "wb") as f:
            chunk = b"x" * 65536
            written = 0
            while written < 4 * 1024 * 1024:
                f.write(chunk)
                f.flush()
                written += len(chunk)
        out["fill"] = "fit"
    except OSError as e:
        out["fill"] = e.errno
    print(json.dumps(out))
""")


@pytest.mark.asyncio
async def test_shm_is_capped(py_profile: aiogaol.Profile, python: str) -> None:
    got = await python_json(aiogaol.Profile(py_profile.operations, shm_size=MiB), python, SHM)
    assert got["size"] == MiB
    assert got["fill"] == 28, f"writing past /dev/shm's size: {got['fill']} (expected ENOSPC)"
    got = await python_json(py_profile, python, SHM)
    assert got["size"] == 64 * MiB


@pytest.mark.asyncio
async def test_shm_off_and_an_explicit_tmpfs_wins(py_profile: aiogaol.Profile, python: str) -> None:
    got = await python_json(aiogaol.Profile(py_profile.operations, shm_size=0), python, SHM)
    assert got["fill"] != "fit", "no /dev/shm was asked for, yet it is writable"
    profile = py_profile + [Tmpfs("/dev/shm", 2 * MiB)]
    assert "shm     /dev/shm" not in aiogaol.explain(profile)
    got = await python_json(profile, python, SHM)
    assert got["size"] == 2 * MiB


PTY = textwrap.dedent(r"""
    import json, os, pty
    out = {}
    try:
        master, slave = pty.openpty()
        out["name"] = os.ttyname(slave)
        os.write(master, b"hi\n")
        out["echo"] = os.read(slave, 3).decode()
    except OSError as e:
        out["name"] = "error %s" % e
    out["pts"] = sorted(os.listdir("/dev/pts")) if os.path.isdir("/dev/pts") else None
    print(json.dumps(out))
""")


@pytest.mark.asyncio
async def test_pty_works_and_is_private(py_profile: aiogaol.Profile, python: str) -> None:
    # A pty of the host's own, open while the jail looks at /dev/pts: it must not show there.
    host_master, host_slave = os.openpty()
    try:
        got = await python_json(py_profile, python, PTY)
    finally:
        os.close(host_master)
        os.close(host_slave)
    assert got["name"] == "/dev/pts/0", got
    assert got["echo"] == "hi\n"
    assert got["pts"] == ["0", "ptmx"], got


@pytest.mark.asyncio
async def test_devpts_off(py_profile: aiogaol.Profile, python: str) -> None:
    got = await python_json(aiogaol.Profile(py_profile.operations, devpts=False), python, PTY)
    assert got["name"].startswith("error"), got
    assert got["pts"] == []


def test_profile_options_validated_compared_and_shown() -> None:
    base = aiogaol.Profile()
    assert (base.loopback, base.shm_size, base.devpts) == (True, 64 * MiB, True)
    assert aiogaol.Profile(shm_size=MiB) != base
    assert aiogaol.Profile(shm_size=MiB) == aiogaol.Profile(shm_size=MiB)
    assert hash(aiogaol.Profile(loopback=False)) == hash(aiogaol.Profile(loopback=False))
    assert aiogaol.Profile(devpts=False) != base
    assert (aiogaol.Profile(devpts=False) + []).devpts is False
    assert "devpts=False" in repr(aiogaol.Profile(devpts=False))
    for bad in ({"loopback": 1}, {"devpts": "yes"}, {"shm_size": -1}, {"shm_size": "64M"},
                {"shm_size": True}, {"shm_size": 100}, {"shm_size": 1.5}):
        with pytest.raises(ProfileError):
            aiogaol.Profile(**bad)  # type: ignore[arg-type]
    explained = aiogaol.explain(aiogaol.Profile(shm_size=MiB))
    assert f"shm     /dev/shm (tmpfs, {MiB} bytes" in explained
    assert "devpts  /dev/pts" in explained
    assert "its own loopback" in explained
    assert "identity:" in explained


def test_profile_file_and_cli_options(tmp_path: os.PathLike[str]) -> None:
    from aiogaol import _cli

    path = os.path.join(tmp_path, "p.toml")
    with open(path, "w") as f:
        f.write('extends = "none"\nloopback = false\nshm_size = "1M"\ndevpts = false\n')
    spec = _cli.load_profile_file(path)
    assert spec.options == {"loopback": False, "shm_size": MiB, "devpts": False}
    with open(path, "w") as f:
        f.write('loopback = "no"\n')
    with pytest.raises(_cli.UsageError):
        _cli.load_profile_file(path)
    out = subprocess.run([sys.executable, "-m", "aiogaol", "run", "--profile", "none", "--no-loopback",
                          "--shm-size", "0", "--no-devpts", "--explain", "--", "/bin/true"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "no interface up" in out.stdout
    assert "shm " not in out.stdout and "devpts " not in out.stdout
    out = subprocess.run([sys.executable, "-m", "aiogaol", "run", "--profile", "none", "--shm-size", "2M",
                          "--explain", "--", "/bin/true"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"shm     /dev/shm (tmpfs, {2 * MiB} bytes" in out.stdout
