"""Binds by handle: a bound path swapped for a symlink (by another jail that may write the directory holding
it, or by the host) never widens a jail.

A writer jail with a read-write rule on a shared directory replaces a subdirectory that a reader profile
binds with a symlink (to a secret directory, through an intermediate component, to "/").  The next jail
of the reader must fail to start with ``SandboxSetupError`` naming the path, never bind the link's target;
the same with Landlock off (then the mounts are the only wall), while a thread swaps the path during
spawns, for an init made ahead of time, and for a mount point beneath a read-write bind.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import aiogaol
from aiogaol import _jail, _kernel, _plan, _spawner

SYSTEM = aiogaol.system_profile()
PUBLIC, SECRET = "public", "secret"


def _tree(top: Path) -> dict[str, Path]:
    """shared/ (world-writable, for the writer jail), shared/input/f (what the reader may read), and
    secret/f outside it (what the reader must never see); every mode open, so only the jail stops it."""
    shared, secret = top / "shared", top / "secret"
    for d in (shared, shared / "input", secret, shared / "a" / "b" / "c", secret / "c"):
        d.mkdir(parents=True, exist_ok=True)
    for d in (top, shared / "input", secret, shared / "a", shared / "a" / "b", shared / "a" / "b" / "c",
              secret / "c"):
        os.chmod(d, 0o755)
    os.chmod(shared, 0o777)
    os.chmod(shared / "a", 0o777)
    for path, text in ((shared / "input" / "f", PUBLIC), (secret / "f", SECRET),
                       (shared / "a" / "b" / "c" / "f", PUBLIC), (secret / "c" / "f", SECRET)):
        path.write_text(text)
        os.chmod(path, 0o644)
    return {"shared": shared, "input": shared / "input", "secret": secret}


async def _run(profile: aiogaol.Profile, *argv: str) -> tuple[int, str]:
    proc = await aiogaol.create_sandboxed_subprocess(profile, *argv, stdout=aiogaol.PIPE,
                                                     stderr=aiogaol.DEVNULL)
    out, _ = await proc.communicate()
    return proc.returncode or 0, (out or b"").decode()


async def _writer_swaps(shared: Path, name: str, target: str) -> None:
    """A jail allowed to write shared/ moves shared/<name> aside and puts a symlink to target there
    (relative, so that it names the host's secret whichever root it is resolved in)."""
    writer = SYSTEM + [aiogaol.FileWriteAll(aiogaol.Subpath(str(shared)))]
    code, _ = await _run(writer, "sh", "-c", f'mv "$1" "$1.old" && ln -s "$2" "$1"', "sh",
                         str(shared / name), target)
    assert code == 0
    assert os.path.islink(shared / name)


@pytest.fixture
def landlock_off(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Test-only: plans compiled as on a kernel without Landlock (no --landlock arguments reach the
    helper), so the mounts are the only wall.  Patched in this process only, and the plan cache is
    emptied before and after so that no plan without Landlock outlives the test."""
    _plan.clear_plans()
    monkeypatch.setattr(_kernel, "landlock_abi", lambda: 0)
    yield
    monkeypatch.undo()
    _plan.clear_plans()


@pytest.mark.asyncio
@pytest.mark.parametrize("landlock", ["on", "off"])
async def test_a_bound_directory_swapped_for_a_symlink_to_a_secret_is_refused(
        tmp_path: Path, landlock: str, request: pytest.FixtureRequest) -> None:
    if landlock == "off":
        request.getfixturevalue("landlock_off")
        assert "landlock: absent" in aiogaol.explain(SYSTEM + [aiogaol.FileReadAll(aiogaol.Subpath("/usr"))])
    t = _tree(tmp_path)
    reader = SYSTEM + [aiogaol.FileReadAll(aiogaol.Subpath(str(t["input"])))]
    assert await _run(reader, "cat", f"{t['input']}/f") == (0, PUBLIC)
    await _writer_swaps(t["shared"], "input", "../secret")
    with pytest.raises(aiogaol.SandboxSetupError, match="bind source changed") as e:
        await _run(reader, "cat", f"{t['input']}/f")
    assert e.value.filename == str(t["input"]) and str(t["input"]) in str(e.value)


@pytest.mark.asyncio
@pytest.mark.parametrize("landlock", ["on", "off"])
async def test_a_writable_bind_swapped_for_a_symlink_never_writes_the_target(
        tmp_path: Path, landlock: str, request: pytest.FixtureRequest) -> None:
    if landlock == "off":
        request.getfixturevalue("landlock_off")
    t = _tree(tmp_path)
    os.chmod(t["secret"], 0o777)  # only the jail may stop the write
    os.chmod(t["input"], 0o777)
    rw = SYSTEM + [aiogaol.FileWriteAll(aiogaol.Subpath(str(t["input"])))]
    assert (await _run(rw, "sh", "-c", f"echo ok > {t['input']}/w && cat {t['input']}/w"))[1] == "ok\n"
    await _writer_swaps(t["shared"], "input", "../secret")
    with pytest.raises(aiogaol.SandboxSetupError, match="bind source changed"):
        await _run(rw, "sh", "-c", f"echo pwned > {t['input']}/w")
    assert not (t["secret"] / "w").exists()


@pytest.mark.asyncio
@pytest.mark.parametrize("landlock", ["on", "off"])
async def test_a_bind_swapped_for_a_symlink_to_the_root_is_refused(
        tmp_path: Path, landlock: str, request: pytest.FixtureRequest) -> None:
    """A link to "/" used to bind init's staging root, with the host's whole root under it (oldroot)."""
    if landlock == "off":
        request.getfixturevalue("landlock_off")
    t = _tree(tmp_path)
    rw = SYSTEM + [aiogaol.FileWriteAll(aiogaol.Subpath(str(t["input"])))]
    assert (await _run(rw, "true"))[0] == 0
    await _writer_swaps(t["shared"], "input", "/")
    with pytest.raises(aiogaol.SandboxSetupError, match="bind source changed"):
        await _run(rw, "cat", f"{t['input']}/oldroot{t['secret']}/f")


@pytest.mark.asyncio
async def test_an_intermediate_component_swapped_for_a_symlink_is_refused(tmp_path: Path) -> None:
    t = _tree(tmp_path)
    leaf = t["shared"] / "a" / "b" / "c"
    reader = SYSTEM + [aiogaol.FileReadAll(aiogaol.Subpath(str(leaf)))]
    assert await _run(reader, "cat", f"{leaf}/f") == (0, PUBLIC)
    await _writer_swaps(t["shared"], "a/b", "../../secret")  # a/b -> secret, so a/b/c is secret/c
    with pytest.raises(aiogaol.SandboxSetupError, match="bind source changed") as e:
        await _run(reader, "cat", f"{leaf}/f")
    assert e.value.filename == str(leaf)


@pytest.mark.asyncio
async def test_a_mount_point_beneath_a_writable_bind_swapped_for_a_symlink_is_refused(tmp_path: Path) -> None:
    """Destinations too: a profile writes shared/ and mounts a tmpfs at shared/scratch; shared/scratch
    made a symlink (to the jail's own /etc, say) must not put the tmpfs anywhere else."""
    t = _tree(tmp_path)
    (t["shared"] / "scratch").mkdir()
    profile = SYSTEM + [aiogaol.FileWriteAll(aiogaol.Subpath(str(t["shared"]))),
                        aiogaol.Tmpfs(str(t["shared"] / "scratch"))]
    assert (await _run(profile, "cat", "/etc/ld.so.conf"))[1] != ""
    await _writer_swaps(t["shared"], "scratch", "/newroot/etc")
    with pytest.raises(aiogaol.SandboxSetupError, match="mount point changed") as e:
        await _run(profile, "cat", "/etc/ld.so.conf")
    assert str(t["shared"] / "scratch") in str(e.value)


_libc = ctypes.CDLL(None, use_errno=True)
RENAME_EXCHANGE = 2
AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a))


@pytest.mark.asyncio
@pytest.mark.parametrize("landlock", ["on", "off"])
async def test_a_swap_racing_the_spawns_never_shows_the_target(
        tmp_path: Path, landlock: str, request: pytest.FixtureRequest) -> None:
    """A thread exchanges the bound directory and a symlink to the secret (renameat2 RENAME_EXCHANGE, so
    the path always names one of the two) while jails spawn in a loop: each jail fails naming the path,
    or sees the original directory; never the secret."""
    if landlock == "off":
        request.getfixturevalue("landlock_off")
    t = _tree(tmp_path)
    link = t["shared"] / "link"
    os.symlink("../secret", link)
    reader = SYSTEM + [aiogaol.FileReadAll(aiogaol.Subpath(str(t["input"])))]
    stop = threading.Event()
    flips = 0

    def flip() -> None:
        nonlocal flips
        while not stop.is_set():
            _exchange(t["input"], link)
            flips += 1

    thread = threading.Thread(target=flip)
    thread.start()
    seen: dict[str, int] = {}
    try:
        for _ in range(40):
            try:
                code, out = await _run(reader, "cat", f"{t['input']}/f")
            except aiogaol.SandboxSetupError as e:
                assert e.step == "bind source changed" and e.filename == str(t["input"]), e
                seen["refused"] = seen.get("refused", 0) + 1
            else:
                assert (code, out) == (0, PUBLIC), (code, out)  # the original directory, held by its bind
                seen[out] = seen.get(out, 0) + 1
    finally:
        stop.set()
        thread.join()
    assert flips > 0 and "refused" in seen, seen


@pytest.mark.asyncio
async def test_an_init_made_ahead_of_time_never_binds_a_path_swapped_since(tmp_path: Path) -> None:
    """The spawner's waiting init is made (its copy of the host's mount tree taken) before the path is
    swapped for a symlink to the secret, on the host, by rename, which changes no mount.  The request
    handed to it must not get the secret: its binds are made at the request, by handle, and checked
    against what the profile resolved."""
    t = _tree(tmp_path)
    reader = SYSTEM + [aiogaol.FileReadAll(aiogaol.Subpath(str(t["input"])))]
    aiogaol.shutdown_spawner()
    assert await _run(reader, "cat", f"{t['input']}/f") == (0, PUBLIC)
    for _ in range(1000):
        pids = _spawner.waiting_pids()
        if pids:
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("the spawner never made an init ahead of time")
    (pid,) = pids
    os.rename(t["input"], str(t["input"]) + ".old")
    os.symlink("../secret", t["input"])
    with pytest.raises(aiogaol.SandboxSetupError, match="bind source changed"):
        await _run(reader, "cat", f"{t['input']}/f")
    assert pid not in _spawner.waiting_pids()  # it took the request (nothing on the host's mounts moved)


_MOUNTING = ("ro", "rw", "tmpfs", "proc", "dev", "mask", "ro-self", "shm", "devpts")
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


@pytest.mark.asyncio
@pytest.mark.parametrize("ahead", ["none", "waiting"])
async def test_the_jail_mounts_its_plan_and_nothing_of_the_host(ahead: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The jail's mount table is its root, the plan's mounts and /dev's device nodes: the staging tmpfs
    and the host's tree it was built from (/oldroot) are detached, whether init was cloned for the request
    or made ahead of time."""
    monkeypatch.setenv(_spawner.AHEAD_ENV, ahead)
    aiogaol.shutdown_spawner()
    try:
        allowed = {"/"} | {s.target for s in _plan.compile_profile(SYSTEM).steps if s.kind in _MOUNTING}
        allowed |= {f"/dev/{d}" for d in _DEVICES}
        for i in range(3):  # the first from a fresh spawner, the next ones from what it made ahead
            for _ in range(1000 if i and ahead == "waiting" else 0):
                if _spawner.waiting_pids():
                    break
                await asyncio.sleep(0.01)
            rc, out = await _run(SYSTEM, "cat", "/proc/self/mountinfo")
            assert rc == 0, out
            points = {line.split()[4] for line in out.splitlines()}
            assert "/" in points and "/proc" in points and "/usr" in points, points
            assert points <= allowed, sorted(points - allowed)
    finally:
        aiogaol.shutdown_spawner()
