"""Landlock as applied by the jail: metadata-only paths and per-port TCP, precise where gaol refuses."""

from __future__ import annotations

import os
import socket
import textwrap
from collections.abc import Iterator

import pytest

import aiogaol
from aiogaol import FileReadMetadata, Literal, NetworkOutbound, OperationSupportLevel, Subpath, Tcp
from aiogaol import _kernel, _profile

from .jailtools import python_json



def with_args(code: str, *args: str) -> str:
    return f"import sys; sys.argv[1:] = {list(args)!r}\n" + code

needs_landlock = pytest.mark.skipif(_kernel.landlock_abi() < 1, reason="Landlock is absent or disabled here")
needs_abi6 = pytest.mark.skipif(_kernel.landlock_abi() < 6, reason="per-port TCP needs Landlock ABI 6")


@pytest.fixture
def tree(tmp_path: os.PathLike[str]) -> Iterator[str]:
    d = os.path.join(tmp_path, "meta")
    os.mkdir(d)
    with open(os.path.join(d, "file"), "w") as f:
        f.write("content")
    os.chmod(tmp_path, 0o755)  # a root server's program runs as nobody: let file modes allow it
    os.chmod(d, 0o755)
    os.chmod(os.path.join(d, "file"), 0o755)
    yield d


PROBE = textwrap.dedent("""
    import errno, json, os, subprocess, sys
    d = sys.argv[1]
    def go(f):
        try:
            f(); return "ok"
        except OSError as e:
            return errno.errorcode[e.errno]
    print(json.dumps({
        "stat": go(lambda: os.stat(d + "/file")),
        "size": os.stat(d + "/file").st_size,
        "open": go(lambda: open(d + "/file").read()),
        "list": go(lambda: os.listdir(d)),
        "exec": go(lambda: os.execv(d + "/file", ["x"])),
    }))
""")


@needs_landlock
def test_metadata_only_can_be_allowed_on_this_kernel() -> None:
    level, reason = _profile.support(FileReadMetadata(Subpath("/etc")))
    assert level is OperationSupportLevel.CAN_BE_ALLOWED, reason


@needs_landlock
@pytest.mark.asyncio
async def test_metadata_only_stat_works_open_list_and_exec_fail(py_profile: aiogaol.Profile, python: str,
                                                              tree: str) -> None:
    result = await python_json(py_profile + [FileReadMetadata(Subpath(tree))], python, with_args(PROBE, tree))
    assert result == {"stat": "ok", "size": 7, "open": "EACCES", "list": "EACCES", "exec": "EACCES"}


@needs_landlock
@pytest.mark.asyncio
async def test_metadata_of_a_literal_file(py_profile: aiogaol.Profile, python: str, tree: str) -> None:
    code = ("import json, os, sys; f = sys.argv[1]\n"
            "try:\n    open(f).read(); r = 'read'\nexcept PermissionError:\n    r = 'EACCES'\n"
            "print(json.dumps([os.stat(f).st_size, r]))")
    result = await python_json(py_profile + [FileReadMetadata(Literal(tree + "/file"))], python,
                               with_args(code, tree + "/file"))
    assert result == [7, "EACCES"]


@pytest.fixture
def listeners() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socket(), socket.socket()
    for s in (a, b):
        s.bind(("127.0.0.1", 0))
        s.listen(8)
    yield a, b
    a.close()
    b.close()


TCP_PROBE = textwrap.dedent("""
    import errno, json, socket, sys
    allowed, other = int(sys.argv[1]), int(sys.argv[2])
    def go(f):
        try:
            f(); return "ok"
        except OSError as e:
            return errno.errorcode[e.errno]
    def connect(port):
        s = socket.socket(); s.settimeout(5); s.connect(("127.0.0.1", port)); s.close()
    def bind():
        s = socket.socket(); s.bind(("127.0.0.1", 0))
    def listen_unbound():
        s = socket.socket(); s.listen(1)
    print(json.dumps({
        "allowed": go(lambda: connect(allowed)),
        "other": go(lambda: connect(other)),
        "bind": go(bind),
        "listen": go(listen_unbound),
        "udp": go(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)),
        "mptcp": go(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)),
        "sctp": go(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132)),
        "fastopen": go(lambda: socket.socket().sendto(b"x", 0x20000000, ("127.0.0.1", other))),
        "unix_pair": go(lambda: socket.socketpair()),
    }))
""")


@needs_abi6
@pytest.mark.asyncio
async def test_tcp_rule_connects_to_that_port_only(py_profile: aiogaol.Profile, python: str,
                                                   listeners: tuple[socket.socket, socket.socket]) -> None:
    allowed, other = (s.getsockname()[1] for s in listeners)
    result = await python_json(py_profile + [NetworkOutbound(Tcp(allowed))], python,
                               with_args(TCP_PROBE, str(allowed), str(other)))
    assert result == {"allowed": "ok", "other": "EACCES", "bind": "EACCES", "listen": "EPERM", "udp": "EPERM",
                      "mptcp": "EPERM", "sctp": "EPERM", "fastopen": "EPERM", "unix_pair": "ok"}
    conn, _ = listeners[0].accept()
    conn.close()


def test_explain_shows_the_ruleset_and_filter(py_profile: aiogaol.Profile) -> None:
    text = aiogaol.explain(py_profile)
    assert "seccomp:" in text
    if _kernel.landlock_abi() >= 1:
        assert "landlock: fs handled" in text and "beneath /usr" in text
