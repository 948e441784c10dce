"""Resource limits: what a jail may consume, and how each limit is enforced.

Policy only: ``Limits`` says the numbers, ``rlimits()`` turns them into setrlimit triples that the C
child applies right before exec.  Wall time and output are enforced by the event-loop layer; memory and
processes also by a cgroup v2 of the jail's own where one can be made (``_cgroup``), which bounds the
jail as a whole instead of each process.
"""

from __future__ import annotations

import math
import resource
from dataclasses import dataclass, fields, replace

from ._errors import ProfileError, ProfileTypeError

# The accepted range of each numeric limit, checked when ``Limits`` is made so that a value the kernel
# cannot take (or a NaN, an infinity, a bool) is refused by name there, not by a spawn much later.
# Seconds stop at a billion (31 years): far beyond any use, and exact in a float.  Byte and count
# limits stop at 2**63 - 1, the largest rlimit/cgroup value that is not RLIM_INFINITY's neighbourhood.
# processes + 1 (init) must fit pids.max, which the kernel caps at PID_MAX_LIMIT (2**22).
MAX_SECONDS = 1e9
MAX_INT = (1 << 63) - 1
MAX_PROCESSES = (1 << 22) - 1
_SECONDS = ("wall_time", "cpu_time")
_INTEGERS = {"memory": MAX_INT, "processes": MAX_PROCESSES, "file_size": MAX_INT, "open_files": MAX_INT,
             "output": MAX_INT}


def _nr_open() -> int:
    """The kernel's ceiling for RLIMIT_NOFILE (fs.nr_open): setrlimit refuses more with EPERM."""
    try:
        with open("/proc/sys/fs/nr_open", "rb") as f:
            return int(f.read().strip() or b"0") or 1 << 20
    except (OSError, ValueError):
        return 1 << 20  # the kernel's default


def check_seconds(value: object, what: str, *, zero: bool = False, optional: bool = False) -> float:
    """A number of seconds, finite and at most MAX_SECONDS, more than 0 (or from 0 with ``zero``): every
    duration the library takes (a wall or CPU time, a pool's deadline, a grace period) is checked here, so
    each refuses the same values with the same words (``optional``: the message says None is allowed)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProfileTypeError(f"{what} must be a number of seconds (int or float){' or None' if optional else ''}, "
                               f"not {type(value).__name__}")
    if not (math.isfinite(value) and (0 <= value if zero else 0 < value) and value <= MAX_SECONDS):
        span = f"from 0 to {MAX_SECONDS:g}" if zero else f"more than 0 and at most {MAX_SECONDS:g}"
        raise ProfileError(f"{what} must be a finite number of seconds, {span}, not {value!r}")
    return float(value)


def check_limit(name: str, value: object) -> None:
    """One field of ``Limits``: its type, then its range; ProfileError (or ProfileTypeError) naming both."""
    if name == "cgroup":
        if not isinstance(value, str) or not value:
            raise ProfileTypeError('Limits.cgroup must be "auto", "none" or the path of a cgroup directory, '
                                   f"not {value!r}")
        if value not in ("auto", "none") and (not value.startswith("/") or "\0" in value):
            raise ProfileError(f"Limits.cgroup must be \"auto\", \"none\" or an absolute path, not {value!r}")
        return
    if name == "core_dumps":
        if not isinstance(value, bool):
            raise ProfileTypeError(f"Limits.core_dumps must be a bool, not {type(value).__name__}")
        return
    if value is None:
        return
    if name == "nice":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProfileTypeError(f"Limits.nice must be an int from 0 to 19 or None, not {type(value).__name__}")
        if not 0 <= value <= 19:
            raise ProfileError(f"Limits.nice must be between 0 and 19, not {value}")
        return
    if name in _SECONDS:
        check_seconds(value, f"Limits.{name}", optional=True)
        return
    top = _INTEGERS[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProfileTypeError(f"Limits.{name} must be an int or None, not {type(value).__name__}")
    if name == "open_files":
        top = _nr_open()
    if not 0 < value <= top:
        where = " (fs.nr_open, the kernel's ceiling)" if name == "open_files" else ""
        raise ProfileError(f"Limits.{name} must be from 1 to {top}{where}, not {value}")


@dataclass(frozen=True)
class Limits:
    """Per-jail limits.  ``None`` means unlimited; the defaults keep a bare spawn from exhausting the host.

    memory caps the jail's memory (cgroup ``memory.max`` where available, else the address space of
    each process, RLIMIT_AS), processes counts the program's processes (cgroup ``pids.max`` and
    RLIMIT_NPROC in the jail's user namespace; the jail's init is not counted), file_size caps any one
    file written, open_files the fd table, cpu_time the CPU seconds of each process (RLIMIT_CPU, which
    rounds up to whole seconds; ``run``, ``Pool`` and ``aiogaol run`` also stop the jail when all its
    processes together used that much, read from the cgroup's cpu.stat or from /proc), wall_time the
    seconds from spawn to exit, output the bytes ``run`` keeps of stdout and of stderr (more ends the
    run: status output-limit).  nice is the jail's CPU niceness, 0 to 19 (``None`` keeps the server's):
    by default 19, as in nsjail, so that untrusted programs and the building of their jails yield the
    CPU to the server that started them (an event loop starved of CPU stalls every task it runs).  It is
    only ever raised: a server already nicer than this keeps its own, and no jail can lower it again.
    A niced jail's processes also run in a 10 ms time slice, so that the server's wakeups preempt them
    at once rather than at the next tick (docs/spawn.md).
    ``cgroup`` says where the jail's cgroup v2 goes: "auto" (detected at run time: ``AIOGAOL_CGROUP``,
    else this process's cgroup when it is a writable root), "none", or the path of a delegated cgroup
    directory (an error if it cannot be used).
    """

    wall_time: float | None = None
    cpu_time: float | None = None
    memory: int | None = 4 << 30
    processes: int | None = 256
    file_size: int | None = 1 << 30
    open_files: int | None = 1024
    output: int | None = 64 << 20
    core_dumps: bool = False
    cgroup: str = "auto"
    nice: int | None = 19

    def __post_init__(self) -> None:
        for f in fields(self):
            check_limit(f.name, getattr(self, f.name))

    def rlimits(self, *, cgroup_memory: bool = False, cgroup_pids: bool = False) -> list[tuple[int, int, int]]:
        """setrlimit triples for the program.  With ``cgroup_memory`` (memory.max holds the jail) no
        RLIMIT_AS: it would trip first, on address space that is reserved but never used (Go, the JVM,
        sanitizers), and turn a certain OOM report into a guess.  Likewise no RLIMIT_NPROC under
        ``cgroup_pids``: pids.max counts the same processes and pids.events says when it refused one."""
        out: list[tuple[int, int, int]] = []
        if self.cpu_time is not None:
            # Soft at the limit (SIGXCPU), hard one second later (SIGKILL) for programs that catch XCPU.
            soft = max(1, int(-(-self.cpu_time // 1)))
            out.append((resource.RLIMIT_CPU, soft, soft + 1))
        for res, value in ((resource.RLIMIT_AS, None if cgroup_memory else self.memory),
                           (resource.RLIMIT_NPROC, None if cgroup_pids else self.processes),
                           (resource.RLIMIT_FSIZE, self.file_size), (resource.RLIMIT_NOFILE, self.open_files)):
            if value is not None:
                out.append((res, value, value))
        if not self.core_dumps:
            out.append((resource.RLIMIT_CORE, 0, 0))
        return out

    def replace(self, **changes: object) -> "Limits":
        """A copy with some limits changed: ``DEFAULT_LIMITS.replace(wall_time=5)``; an unknown name is a
        ProfileTypeError naming it (not dataclasses' bare TypeError)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ProfileTypeError(f"Limits has no field(s) {', '.join(sorted(unknown))}; the fields are "
                                   f"{', '.join(f.name for f in fields(self))}")
        return replace(self, **changes)  # type: ignore[arg-type]


DEFAULT_LIMITS = Limits()
UNLIMITED = Limits(memory=None, processes=None, file_size=None, open_files=None, output=None)


def resolve_limits(limits: Limits | None) -> Limits:
    """``None`` means the defaults: a bare spawn must not be able to exhaust the host."""
    if limits is None:
        return DEFAULT_LIMITS
    if not isinstance(limits, Limits):
        raise ProfileTypeError(f"limits must be an aiogaol.Limits or None, not {type(limits).__name__}")
    return limits
