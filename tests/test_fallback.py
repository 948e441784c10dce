"""The fallback where user namespaces are forbidden, tested where they really are forbidden.

A child runs in a user namespace whose ``user.max_user_namespaces`` is 0, so no namespace can be made
below it (the kernel's own limit, as on hosts with the sysctl at 0).  There the default isolation must
raise ``UserNamespacesUnavailable``, and ``isolation="landlock"`` must run the program walled in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

import aiogaol
from aiogaol import FileWriteAll, LocalSocket, NetworkOutbound, Subpath, Tmpfs, UnsupportedOperation
from aiogaol import _fallback, _kernel

from .security import harness

needs_abi6 = pytest.mark.skipif(_kernel.landlock_abi() < _fallback.MIN_ABI,
                                reason=f"the landlock isolation needs Landlock ABI {_fallback.MIN_ABI}")

@pytest.fixture
def fallback_python(python: str) -> str:
    """In the fallback a root server's program runs as nobody on the host's tree, where an interpreter
    under /root is out of its reach: Debian's own is used then."""
    if os.geteuid() == 0 and not python.startswith("/usr/") and os.access("/usr/bin/python3", os.X_OK):
        return os.path.realpath("/usr/bin/python3")
    return python


FORBIDDEN = textwrap.dedent("""
    import asyncio, json, os, sys
    sys.path.insert(0, {root!r})
    import aiogaol
    from tests.security import harness
    secret = {secret!r}
    PROBE = "import json, os\\ntry:\\n    open(%r).read(); r = 'read'\\nexcept OSError as e:\\n    r = e.errno\\nprint(json.dumps([r, os.getpid()]))" % secret
    async def main():
        out = {{}}
        profile = aiogaol.python_profile()
        py = aiogaol.python_executable()
        try:
            await harness._spawn(profile, [py, "-c", "1"], "namespaces")
            out["default"] = "ran"
        except aiogaol.UserNamespacesUnavailable as e:
            out["default"] = "UserNamespacesUnavailable: " + str(e)
        for mode in ("landlock", "auto"):
            proc = await harness._spawn(profile, [py, "-c", PROBE], mode, stdout=aiogaol.PIPE, stderr=aiogaol.PIPE)
            o, e = await proc.communicate()
            out[mode] = [proc.returncode, proc._jail.isolation, o.decode(), e.decode()[-500:]]
        out["check"] = aiogaol.check().user_namespaces
        print(json.dumps(out))
    asyncio.run(main())
""")


@needs_abi6
def test_forbidden_user_namespaces_fall_back_only_when_asked(tmp_path: os.PathLike[str]) -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(aiogaol.__file__)))
    secret = os.path.join(tmp_path, "secret")
    with open(secret, "w") as f:
        f.write("host secret")
    code = FORBIDDEN.format(root=root, secret=secret)
    script = f"echo 0 > /proc/sys/user/max_user_namespaces && exec {sys.executable} -c \"$0\""
    done = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c", script, code],
                          capture_output=True, text=True, timeout=60)
    if "unshare failed" in done.stderr:
        pytest.skip(f"cannot create the outer user namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["default"].startswith("UserNamespacesUnavailable") and "max_user_namespaces is 0" in out["default"]
    assert out["check"] is False
    for mode in ("landlock", "auto"):
        rc, isolation, stdout, stderr = out[mode]
        assert rc == 0, stderr
        assert isolation == "landlock"
        assert json.loads(stdout)[0] == 13  # EACCES: Landlock, not the mount jail, refused the host file


def test_the_fallback_refuses_what_it_cannot_enforce(py_profile: aiogaol.Profile, tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(UnsupportedOperation, match="mount namespace"):
        _fallback.compile_fallback(py_profile + [Tmpfs("/tmp")])
    import socket

    path = os.path.join(tmp_path, "sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    try:
        with pytest.raises(UnsupportedOperation, match="Unix socket"):
            _fallback.compile_fallback(py_profile + [NetworkOutbound(LocalSocket(path))])
    finally:
        s.close()


def test_isolation_is_checked() -> None:
    with pytest.raises(ValueError, match="isolation must be one of"):
        _fallback.check_isolation("chroot")


@needs_abi6
@pytest.mark.asyncio
async def test_fallback_kills_what_the_program_detached(py_profile: aiogaol.Profile, fallback_python: str) -> None:
    python = fallback_python
    code = textwrap.dedent("""
        import os, sys, time
        r, w = os.pipe()
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.write(w, str(os.getpid()).encode()); os.close(w)
                time.sleep(300)
            os._exit(0)
        os.close(w)
        print(os.read(r, 32).decode())
    """)
    proc = await harness._spawn(py_profile, [python, "-c", code], "landlock", stdout=aiogaol.PIPE,
                                stderr=aiogaol.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert proc._jail.isolation == "landlock"
    orphan = int(out)
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{orphan}") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not os.path.exists(f"/proc/{orphan}"), "a detached grandchild outlived the jail"


@needs_abi6
@pytest.mark.asyncio
async def test_fallback_writes_only_where_granted(py_profile: aiogaol.Profile, fallback_python: str,
                                                 request: pytest.FixtureRequest) -> None:
    python = fallback_python
    import shutil
    import tempfile

    top = tempfile.mkdtemp(dir="/tmp")  # reachable by nobody, so only Landlock decides
    request.addfinalizer(lambda: shutil.rmtree(top, ignore_errors=True))
    os.chmod(top, 0o777)
    tmp_path = top
    granted = os.path.join(top, "granted")
    os.mkdir(granted)
    os.chmod(granted, 0o777)
    code = textwrap.dedent(f"""
        import json
        def go(p):
            try:
                open(p, "w").write("x"); return "ok"
            except OSError as e:
                return e.errno
        print(json.dumps([go({granted!r} + "/f"), go({str(tmp_path)!r} + "/g")]))
    """)
    proc = await harness._spawn(py_profile + [FileWriteAll(Subpath(granted))], [python, "-c", code], "landlock",
                                stdout=aiogaol.PIPE, stderr=aiogaol.PIPE)
    out, err = await proc.communicate()
    assert json.loads(out) == ["ok", 13], err
