"""The CPU time a jail has used so far, read from /proc, for a jail without a cgroup.

RLIMIT_CPU counts whole seconds of one process (0.5 s is enforced at about 1 s) and each process of a
forking program has its own.  Where no cgroup counts the jail as a whole (``cpu.stat``), the event loop
adds up the process tree under the jail's init instead: init's own and reaped children's time
(``utime stime cutime cstime`` of /proc/PID/stat) plus that of every live descendant (found through
/proc/PID/task/TID/children).  Every process is counted once: a live one by itself, a reaped one in its
reaper's ``c`` fields.  Reading these files never blocks (procfs answers from memory), and the init's PID
cannot be reused while we poll: it is our child and stays unreaped until the watch stops.
"""

from __future__ import annotations

import functools
import os

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_ticks(pid: int) -> int | None:
    """utime + stime + cutime + cstime of one process, in clock ticks (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: the fields proper follow the last ')'.
    fields = data[data.rfind(b")") + 2:].split()
    try:
        return int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    except (IndexError, ValueError):
        return None


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return out


children = _children  # a process's children: _sandbox finds a call's first process, the agent's child


@functools.cache
def available() -> bool:
    """Whether this kernel lists children in /proc (CONFIG_PROC_CHILDREN), which the sum needs."""
    pid = os.getpid()
    return os.path.exists(f"/proc/{pid}/task/{pid}/children")


def tree_cpu_seconds(pid: int, budget: int = 100_000) -> float | None:
    """The CPU seconds used by ``pid`` and all its descendants, dead or alive; None if ``pid`` is gone.
    ``budget`` bounds the walk (a fork bomb cannot make one reading unbounded; ``processes`` caps it
    anyway)."""
    total = _stat_ticks(pid)
    if total is None:
        return None
    todo = _children(pid)
    seen = {pid}
    while todo and budget > 0:
        child = todo.pop()
        if child in seen:
            continue
        seen.add(child)
        budget -= 1
        ticks = _stat_ticks(child)
        if ticks is not None:
            total += ticks
            todo += _children(child)
    return total / _TICK
