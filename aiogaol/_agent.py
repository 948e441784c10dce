"""The server's side of the sandbox agent's wire (``aiogaol/_native/agent.h``), and its errors.

Plain data: the request and reply layouts, as ``struct`` formats in native byte order (the agent and the
server are one machine), the numbers of ops, reply kinds and failure stages, and the spawn of a sandbox's
jail (a plain spawn plus ``--agent``).  Nothing here does I/O but closing a
call's fds.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._errors import AiogaolError
from ._spawnargs import SpawnArgs

MAX_MSG = 65536  # the agent's receive buffer: a request is at most this long
REQ = struct.Struct("=II")  # op, id
EXEC = struct.Struct("=IIIIiI")  # flags, n_rlimits, argc, envc, umask, pad
RLIM = struct.Struct("=iiQQ")
FILE = struct.Struct("=IIQ")  # mode, pad, max bytes
SIG = struct.Struct("=IiI")  # call id, signal, group
REPLY = struct.Struct("=IIiiQQQ")  # kind, id, a, b, utime ns, stime ns, maxrss bytes
OP_EXEC, OP_SIGNAL, OP_WRITE, OP_READ = 1, 2, 3, 4
STARTED, FAILED, EXITED, ACK, IDLE = 1, 2, 3, 4, 5
BACKGROUND = 1
STAGES = {1: "sandbox request", 2: "fork program", 3: "setsid", 4: "setrlimit", 5: "place fds", 6: "chdir",
           7: "exec", 8: "exec (program found, its ELF interpreter or script interpreter is not in the jail)"}



class SandboxError(AiogaolError, RuntimeError):
    """The sandbox cannot serve this call: its agent misbehaved, stopped answering or died, so the
    sandbox was ended; the message says what happened."""


class SandboxClosed(SandboxError):
    """The sandbox has ended (``aclose``, its ``idle_timeout`` or its ``lifetime``, or an earlier
    failure); the message says which."""


@dataclass(frozen=True)
class Reply:
    """One reply of the agent, decoded (times in seconds)."""

    kind: int
    id: int
    a: int
    b: int
    utime: float
    stime: float
    maxrss: int


@dataclass(frozen=True)
class SandboxSpawn(SpawnArgs):
    """The spawn of a sandbox's jail: a plain spawn's arguments plus the agent's own."""

    agent_args: tuple[str, ...] = ()

    def helper_argv(self, err_fd: int, lifeline_fd: int, seccomp_fd: int | None = None, cgroup: Any = None,
                    umask: int | None = None, inherited_rlimits: Sequence[tuple[int, int, int]] = ()) -> list[bytes]:
        argv = super().helper_argv(err_fd, lifeline_fd, seccomp_fd, cgroup, umask, inherited_rlimits)
        return argv[:1] + [os.fsencode(a) for a in self.agent_args] + argv[1:]




def close_fds(fds: list[int]) -> None:
    for fd in fds:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
    fds.clear()
