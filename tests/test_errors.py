"""Bad input gets a clear, named error, before anything is spawned or from the step that failed."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys

import pytest

import aiogaol

from .conftest import zombie_children

pytestmark = pytest.mark.asyncio


async def test_missing_program_is_file_not_found() -> None:
    with pytest.raises(FileNotFoundError) as info:
        await asyncio.wait_for(aiogaol.create_sandboxed_subprocess(aiogaol.system_profile(), "/usr/bin/no-such-program"), 10)
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == "/usr/bin/no-such-program"
    assert "exec /usr/bin/no-such-program: ENOENT" in str(info.value)
    assert zombie_children() == []


async def test_program_outside_the_profile_is_not_found() -> None:
    with pytest.raises(FileNotFoundError):
        await aiogaol.create_sandboxed_subprocess(aiogaol.Profile([]), "/bin/true")


async def test_program_found_on_path_inside_the_jail() -> None:
    proc = await aiogaol.create_sandboxed_subprocess(aiogaol.system_profile(), "echo", "via PATH", stdout=aiogaol.PIPE)
    out, _ = await proc.communicate()
    assert out == b"via PATH\n"
    with pytest.raises(FileNotFoundError):
        await aiogaol.create_sandboxed_subprocess(aiogaol.system_profile(), "no-such-program-anywhere")


async def test_non_executable_program_is_permission_error(tmp_path: os.PathLike[str]) -> None:
    script = os.path.join(tmp_path, "not-executable")
    with open(script, "w") as f:
        f.write("#!/bin/sh\necho hi\n")
    os.chmod(script, 0o644)
    profile = aiogaol.system_profile([aiogaol.FileReadAll(aiogaol.Literal(script))])
    with pytest.raises(PermissionError) as info:
        await aiogaol.create_sandboxed_subprocess(profile, script)
    assert "EACCES" in str(info.value)


async def test_missing_cwd_names_the_step_and_path() -> None:
    with pytest.raises(FileNotFoundError) as info:
        await aiogaol.create_sandboxed_subprocess(aiogaol.system_profile(), "/bin/true", cwd="/no/such/dir")
    assert isinstance(info.value, aiogaol.SandboxSetupError)
    assert info.value.step == "chdir" and info.value.filename == "/no/such/dir"
    assert str(info.value).startswith("chdir /no/such/dir: ENOENT")


async def test_a_failing_setup_step_is_named_with_errno_and_path() -> None:
    # /usr is read-only in the jail, so a scratch directory cannot be created inside it.
    profile = aiogaol.system_profile([aiogaol.Tmpfs("/usr/aiogaol-no-such-dir", 1 << 20)])
    with pytest.raises(aiogaol.SandboxSetupError) as info:
        await aiogaol.create_sandboxed_subprocess(profile, "/bin/true")
    assert info.value.step == "mkdir"
    assert info.value.errno == errno.EROFS
    assert info.value.filename == "/usr/aiogaol-no-such-dir"
    assert str(info.value).startswith("mkdir /usr/aiogaol-no-such-dir: EROFS")
    assert zombie_children() == []


@pytest.mark.parametrize("program, args, exc", [
    ("/bin/tr\0ue", (), ValueError),
    ("/bin/true", ("a\0b",), ValueError),
    (42, (), TypeError),
    ("/bin/true", (3.5,), TypeError),
    ("", (), ValueError),
])
async def test_bad_argv_fails_before_spawn(program: object, args: tuple[object, ...], exc: type[Exception]) -> None:
    with pytest.raises(exc):
        await aiogaol.create_sandboxed_subprocess(aiogaol.system_profile(), program, *args)  # type: ignore[arg-type]


async def test_bad_env_cwd_profile_and_fds_fail_before_spawn() -> None:
    p = aiogaol.system_profile()
    with pytest.raises(ValueError, match="NUL"):
        await aiogaol.create_sandboxed_subprocess(p, "/bin/true", env={"A": "b\0c"})
    with pytest.raises(ValueError, match="="):
        await aiogaol.create_sandboxed_subprocess(p, "/bin/true", env={"A=B": "c"})
    with pytest.raises(ValueError, match="relative"):
        await aiogaol.create_sandboxed_subprocess(p, "/bin/true", cwd="relative")
    with pytest.raises(TypeError, match="Profile"):
        await aiogaol.create_sandboxed_subprocess("not a profile", "/bin/true")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not an open file descriptor"):
        await aiogaol.create_sandboxed_subprocess(p, "/bin/true", pass_fds=[987654])
    with pytest.raises(TypeError):
        await aiogaol.create_sandboxed_subprocess(p, "/bin/true", stdout="pipe")


FORBIDDEN = """
import asyncio, sys
sys.path.insert(0, {root!r})
import aiogaol
async def main():
    try:
        await aiogaol.create_sandboxed_subprocess(aiogaol.system_profile(), "/bin/true")
    except aiogaol.UserNamespacesUnavailable as e:
        print("REFUSED:", e)
    else:
        print("SPAWNED")
asyncio.run(main())
"""


async def test_forbidden_user_namespaces_raise_a_named_error() -> None:
    """Forbid them for real: a user namespace whose user.max_user_namespaces is 0."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(aiogaol.__file__)))
    code = FORBIDDEN.format(root=root)
    script = f"echo 0 > /proc/sys/user/max_user_namespaces && exec {sys.executable} -c \"$0\""
    done = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c", script, code],
                          capture_output=True, text=True, timeout=60)
    if "unshare failed" in done.stderr:
        pytest.skip(f"cannot create the outer user namespace here: {done.stderr.strip()}")
    assert "REFUSED:" in done.stdout, done.stdout + done.stderr
    assert "user.max_user_namespaces is 0" in done.stdout


NO_NETNS = """
import asyncio, sys
sys.path.insert(0, {root!r})
import aiogaol
async def main():
    try:
        await aiogaol.run(aiogaol.system_profile(), ["/bin/true"])
    except aiogaol.UserNamespacesUnavailable as e:
        print("WRONG:", e)
    except aiogaol.SandboxSetupError as e:
        print("REFUSED:", e.step, "|", e)
    else:
        print("SPAWNED")
    # A profile that keeps the host's network needs no network namespace of its own.
    shared = aiogaol.system_profile([aiogaol.NetworkOutbound(aiogaol.Tcp(80))])
    r = await aiogaol.run(shared, ["/bin/true"])
    print("SHARED:", r.status.value)
asyncio.run(main())
"""


async def test_no_network_namespace_left_is_a_setup_error_naming_the_sysctl() -> None:
    """Exhaust network namespaces for real: a user namespace whose user.max_net_namespaces is 0.  Init
    makes the jail's network namespace itself, so this fails there, and must not pass for forbidden
    user namespaces (those still work)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(aiogaol.__file__)))
    script = f"echo 0 > /proc/sys/user/max_net_namespaces && exec {sys.executable} -c \"$0\""
    done = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c", script, NO_NETNS.format(root=root)],
                          capture_output=True, text=True, timeout=60)
    if "unshare failed" in done.stderr:
        pytest.skip(f"cannot create the outer user namespace here: {done.stderr.strip()}")
    assert "REFUSED: unshare namespaces |" in done.stdout, done.stdout + done.stderr
    assert "network namespace" in done.stdout and "max_net_namespaces" in done.stdout
    assert "SHARED: ok" in done.stdout, done.stdout + done.stderr
