"""Turning ``stdin=``/``stdout=``/``stderr=`` arguments into pipe ends, as subprocess does."""

from __future__ import annotations

import fcntl
import os
import subprocess
from dataclasses import dataclass, field

from ._errors import is_fd_shortage, out_of_fds

PIPE = subprocess.PIPE
STDOUT = subprocess.STDOUT
DEVNULL = subprocess.DEVNULL


@dataclass
class Stdio:
    """The jail's ends (``child``) and ours (``parent``: -1 where the caller did not ask for a pipe)."""

    child: list[int | None] = field(default_factory=lambda: [None, None, None])
    parent: list[int] = field(default_factory=lambda: [-1, -1, -1])
    _to_close_after_spawn: list[int] = field(default_factory=list)

    def close_child_ends(self) -> None:
        for fd in self._to_close_after_spawn:
            os.close(fd)
        self._to_close_after_spawn.clear()

    def close_all(self) -> None:
        self.close_child_ends()
        for i, fd in enumerate(self.parent):
            if fd >= 0:
                os.close(fd)
                self.parent[i] = -1


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _fileno(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be None, PIPE, DEVNULL, an fd or a file object, not a bool")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{name}={value} is not a valid file descriptor or constant")
        return value
    fileno = getattr(value, "fileno", None)
    if fileno is None:
        raise TypeError(f"{name} must be None, PIPE, DEVNULL, an fd or a file object, not {type(value).__name__}")
    return int(fileno())


def prepare(stdin: object, stdout: object, stderr: object, pipesize: int = -1) -> Stdio:
    s = Stdio()
    try:
        for slot, (value, name) in enumerate(((stdin, "stdin"), (stdout, "stdout"), (stderr, "stderr"))):
            if value is None:
                continue
            if value == PIPE:
                r, w = os.pipe()
                if pipesize > 0:
                    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, pipesize)
                child, parent = (r, w) if slot == 0 else (w, r)
                s.child[slot] = child
                s.parent[slot] = parent
                s._to_close_after_spawn.append(child)
            elif value == DEVNULL:
                fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                s.child[slot] = fd
                s._to_close_after_spawn.append(fd)
            elif value == STDOUT:
                if slot != 2:
                    raise ValueError(f"STDOUT is only valid for stderr, not {name}")
                s.child[2] = s.child[1] if s.child[1] is not None else 1
            else:
                s.child[slot] = _fileno(value, name)
    except BaseException as e:
        s.close_all()
        if isinstance(e, OSError) and is_fd_shortage(e):
            raise out_of_fds(e, "making the jail's stdio pipes") from e
        raise
    return s
