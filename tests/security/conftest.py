"""Host-side targets for the attacks (a secret, a victim process, a host socket...), and the closing table."""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from . import harness

IPC_CREAT, IPC_RMID = 0o1000, 0


@pytest.fixture(scope="session")
def host() -> Iterator[dict[str, Any]]:
    """What a jailed program must not reach, set up once: every file world-readable or writable and
    every process the test user's own, so that only the sandbox (not file modes) can stop the probes."""
    top = tempfile.mkdtemp(prefix="aiogaol-probe-", dir="/tmp")
    os.chmod(top, 0o755)
    secret = os.path.join(top, "secret")
    with open(secret, "w") as f:
        f.write("host secret")
    os.chmod(secret, 0o644)
    writable = os.path.join(top, "writable")
    os.mkdir(writable)
    os.chmod(writable, 0o777)
    victim = os.path.join(top, "victim")
    with open(victim, "w") as f:
        f.write("untouched")
    os.chmod(victim, 0o666)
    shm_file = f"/dev/shm/aiogaol-probe-{os.getpid()}"
    with open(shm_file, "w") as f:
        f.write("shm secret")
    os.chmod(shm_file, 0o644)
    sleeper = subprocess.Popen(["sleep", "600"])
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract_name = f"aiogaol-probe-{os.getpid()}"
    abstract.bind("\0" + abstract_name)
    abstract.listen(16)
    tcp = [socket.socket(), socket.socket()]
    for s in tcp:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    libc = ctypes.CDLL(None, use_errno=True)
    shm_key = 0x41000000 | (os.getpid() & 0xFFFFFF)
    shm_id = libc.shmget(shm_key, 4096, IPC_CREAT | 0o666)
    old_env = os.environ.get("AIOGAOL_PROBE_SECRET")
    os.environ["AIOGAOL_PROBE_SECRET"] = "server secret"
    try:
        yield {
            "secret": secret, "secret_dir": top, "writable": writable, "victim": victim, "shm_file": shm_file,
            "sleeper": sleeper.pid, "abstract": abstract_name, "tcp_port": tcp[0].getsockname()[1],
            "tcp_port2": tcp[1].getsockname()[1], "udp_port": udp.getsockname()[1], "shm_key": shm_key,
            "host_pid": os.getpid(), "udp": udp,
        }
    finally:
        if old_env is None:
            os.environ.pop("AIOGAOL_PROBE_SECRET", None)
        else:
            os.environ["AIOGAOL_PROBE_SECRET"] = old_env
        if shm_id >= 0:
            libc.shmctl(shm_id, IPC_RMID, None)
        sleeper.kill()
        sleeper.wait()
        for s in (abstract, udp, *tcp):
            s.close()
        os.unlink(shm_file)
        shutil.rmtree(top, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = harness.summary()
    if lines:
        terminalreporter.section("adversarial corpus")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def probe_python(python: str) -> str:
    """An interpreter every mode can run: in the Landlock fallback a root server's program runs as nobody
    on the host's tree, where an interpreter under /root is out of its reach; Debian's is not."""
    system = "/usr/bin/python3"
    if os.geteuid() == 0 and not python.startswith("/usr/") and os.access(system, os.X_OK):
        return os.path.realpath(system)
    return python
