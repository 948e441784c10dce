"""Shared fixtures: real jails on the real kernel, a profile that runs the host's Python, both backends."""

from __future__ import annotations

import os
import resource

import pytest

import aiogaol

# 100 concurrent jails with three pipes each need more than the common soft limit of 1024 fds.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _soft < min(4096, _hard):
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, _hard), _hard))


@pytest.fixture(params=[pytest.param("asyncio", id="asyncio"), pytest.param("trio", id="trio")])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def python() -> str:
    """The host's own interpreter, as it will be seen inside a jail built from ``py_profile``."""
    return aiogaol.python_executable()


@pytest.fixture(scope="session")
def py_profile() -> aiogaol.Profile:
    return aiogaol.python_profile()


def open_fds() -> set[int]:
    """Our open fds, less the spawner's socket, which stays open on purpose (see aiogaol/_spawner.py)."""
    from aiogaol import _spawner

    return {int(n) for n in os.listdir("/proc/self/fd")} - _spawner.owned_fds()


def zombie_children() -> list[int]:
    """Our children in state Z: a leak of unreaped processes."""
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="utf-8", errors="replace") as f:
                data = f.read()
        except OSError:
            continue
        rest = data.rsplit(")", 1)[1].split()
        if rest[0] == "Z" and int(rest[1]) == me:
            found.append(int(name))
    return found
