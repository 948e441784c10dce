"""The thin layer over the cffi module: converts types and errors, decides nothing."""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

from ._native import _core  # type: ignore[attr-defined]

ffi = _core.ffi
lib = _core.lib

RECORD_SIZE: int = lib.aiogaol_record_size()
# The head of each record the C core writes (struct aiogaol_record in jail.h): kind, step, errno, value.
RECORD = struct.Struct("iiii")
RECORD_PID, RECORD_FAILURE, RECORD_EXIT, RECORD_TIME = 1, 2, 3, 4
HELPER_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_native", "aiogaol-jail")
_HELPER_PATH_BYTES = os.fsencode(HELPER_PATH)


def step_name(step: int) -> str:
    return str(ffi.string(lib.aiogaol_step_name(step)).decode())


def spawn_helper(argv: Sequence[bytes], envp: Sequence[bytes], fd_map: Sequence[tuple[int, int]]) -> int:
    """posix_spawn the helper; its PID, or OSError (e.g. when the helper executable is missing).

    argv and envp cross as one NUL-separated buffer each: one copy instead of a cffi object per string.
    """
    argblob = b"\0".join(argv) + b"\0"
    envblob = b"\0".join(envp) + b"\0" if envp else b"\0"
    flat = [fd for pair in fd_map for fd in pair]
    c_map = ffi.new("int[]", flat or [0])
    rc = lib.aiogaol_spawn_helper(_HELPER_PATH_BYTES, argblob, len(argblob), len(argv), envblob, len(envblob),
                                  len(envp), c_map, len(fd_map))
    if rc < 0:
        from ._errors import helper_start_error

        raise helper_start_error(-rc, HELPER_PATH, len(argblob) + len(envblob) + 8 * (len(argv) + len(envp)))
    return int(rc)


def probe_userns() -> int:
    return int(lib.aiogaol_probe_userns())


def landlock_abi() -> int:
    return int(lib.aiogaol_landlock_abi())
