"""Policy: profiles are plain, immutable, validated data; nothing is spawned here."""

from __future__ import annotations

import os

import pytest

import aiogaol
from aiogaol import (AllAddresses, FileReadAll, FileReadMetadata, FileWriteAll, Literal, LocalSocket,
                     NetworkOutbound, OperationSupportLevel, Profile, Subpath, SystemInfoRead, Tcp, Tmpfs)
from aiogaol._profile import support


def test_profile_is_immutable_and_hashable() -> None:
    a = Profile([FileReadAll(Subpath("/usr")), SystemInfoRead()])
    b = Profile([FileReadAll(Subpath("/usr/")), SystemInfoRead()])
    assert a == b and hash(a) == hash(b)
    assert {a: 1}[b] == 1
    with pytest.raises(AttributeError):
        a.operations = ()  # type: ignore[misc]


def test_paths_are_normalised() -> None:
    assert Subpath("/usr//lib/../share/").path == "/usr/share"
    assert Literal("//etc/./hostname").path == "/etc/hostname"


@pytest.mark.parametrize("bad", ["relative/path", "", "./x"])
def test_relative_paths_are_refused(bad: str) -> None:
    with pytest.raises(aiogaol.ProfileError, match="relative"):
        Subpath(bad)


def test_nul_in_path_is_refused() -> None:
    with pytest.raises(ValueError, match="NUL"):
        Literal("/etc/\0passwd")


def test_wrong_types_are_refused() -> None:
    with pytest.raises(TypeError):
        Literal(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        FileReadAll("/usr")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Profile(["/usr"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        Profile("/usr")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Tcp("80")  # type: ignore[arg-type]
    with pytest.raises(aiogaol.ProfileError):
        Tcp(70000)
    with pytest.raises(aiogaol.ProfileError):
        Tmpfs("/tmp", 0)


def test_symlinks_are_resolved_on_the_host(tmp_path: os.PathLike[str]) -> None:
    real = os.path.join(tmp_path, "real")
    os.mkdir(real)
    link = os.path.join(tmp_path, "link")
    os.symlink("real", link)
    profile = Profile([FileReadAll(Subpath(link))])
    resolved = profile.resolved[link]
    assert resolved.real == real
    assert resolved.links == ((link, "real"),)
    plan = aiogaol.explain(profile)
    assert f"bind    {real} -> {real}" in plan
    assert f"symlink {link} -> real" in plan


def test_write_rules_need_an_existing_path() -> None:
    with pytest.raises(aiogaol.ProfileError, match="does not exist"):
        Profile([FileWriteAll(Subpath("/nonexistent/aiogaol"))])


def test_local_socket_must_be_a_socket() -> None:
    with pytest.raises(aiogaol.ProfileError, match="not a Unix socket"):
        Profile([NetworkOutbound(LocalSocket("/usr"))])


def test_every_refused_operation_is_named() -> None:
    """Profile() refuses exactly what support() says this kernel cannot enforce, naming it."""
    candidates = [FileReadAll(Subpath("/usr")), FileReadMetadata(Literal("/etc/hostname")),
                  NetworkOutbound(AllAddresses()), NetworkOutbound(Tcp(80)), SystemInfoRead(),
                  Tmpfs("/tmp")]
    for op in candidates:
        level, reason = support(op)
        if level is OperationSupportLevel.CAN_BE_ALLOWED:
            Profile([op])
        else:
            with pytest.raises(aiogaol.UnsupportedOperation) as info:
                Profile([op])
            assert repr(op) in str(info.value) and reason in str(info.value)


def test_binding_the_host_root_is_refused() -> None:
    with pytest.raises(aiogaol.ProfileError, match="whole host root"):
        aiogaol.explain(Profile([FileReadAll(Subpath("/"))]))


def test_plan_unshares_the_network_unless_allowed() -> None:
    assert "net" in aiogaol.explain(Profile([]))
    assert "host network" in aiogaol.explain(Profile([NetworkOutbound(AllAddresses())]))
