"""Ready-made profiles, so a user does not have to discover which libraries the loader needs."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from ._profile import FileReadAll, Literal, Operation, Profile, Subpath

# The read-only system a dynamically linked program needs on common distributions (merged-/usr or
# not); entries missing on this host are skipped when the profile is compiled.
SYSTEM_TREES = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime", "/etc/alternatives")


def system_operations() -> list[Operation]:
    ops: list[Operation] = [FileReadAll(Subpath(p)) for p in SYSTEM_TREES]
    ops += [FileReadAll(Subpath(p)) for p in SYSTEM_FILES]
    return ops


def system_profile(extra: Iterable[Operation] = ()) -> Profile:
    """The host's programs and libraries, read-only; nothing else (no /etc, /home, /tmp, network)."""
    return Profile([*system_operations(), *extra])


def python_executable() -> str:
    """The real interpreter behind this process (a venv's python is only a symlink to it)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(base)


def python_profile(extra: Iterable[Operation] = ()) -> Profile:
    """Everything the host's own Python (``python_executable()``) needs to start and import its stdlib."""
    ops = system_operations()
    for prefix in {sys.base_prefix, sys.base_exec_prefix}:
        ops.append(FileReadAll(Subpath(os.path.realpath(prefix))))
    ops.append(FileReadAll(Literal(python_executable())))
    return Profile([*ops, *extra])
