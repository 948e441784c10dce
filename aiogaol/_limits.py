"""Resource limits: what a jail may consume, and how each limit is enforced.

Policy only: ``Limits`` says the numbers, ``rlimits()`` turns them into setrlimit triples that the C
child applies right before exec.  Wall time and output are enforced by the event-loop layer.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, fields, replace

from ._errors import ProfileError


@dataclass(frozen=True)
class Limits:
    """Per-jail limits.  ``None`` means unlimited; the defaults keep a bare spawn from exhausting the host.

    memory caps the address space (RLIMIT_AS), processes counts the jail's own processes (RLIMIT_NPROC in
    the jail's user namespace), file_size caps any one file written, open_files the fd table, cpu_time
    the CPU seconds of each process (RLIMIT_CPU), wall_time the seconds from spawn to exit, output the
    bytes ``run`` keeps of stdout and of stderr.
    """

    wall_time: float | None = None
    cpu_time: float | None = None
    memory: int | None = 4 << 30
    processes: int | None = 256
    file_size: int | None = 1 << 30
    open_files: int | None = 1024
    output: int | None = 64 << 20
    core_dumps: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "core_dumps":
                if not isinstance(value, bool):
                    raise TypeError("core_dumps must be a bool")
                continue
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"Limits.{f.name} must be a number or None, not {type(value).__name__}")
            if value <= 0:
                raise ProfileError(f"Limits.{f.name} must be positive, not {value}")
            if f.name not in ("wall_time", "cpu_time") and not isinstance(value, int):
                raise TypeError(f"Limits.{f.name} must be an int")

    def rlimits(self) -> list[tuple[int, int, int]]:
        out: list[tuple[int, int, int]] = []
        if self.cpu_time is not None:
            # Soft at the limit (SIGXCPU), hard one second later (SIGKILL) for programs that catch XCPU.
            soft = max(1, int(-(-self.cpu_time // 1)))
            out.append((resource.RLIMIT_CPU, soft, soft + 1))
        for res, value in ((resource.RLIMIT_AS, self.memory), (resource.RLIMIT_NPROC, self.processes),
                           (resource.RLIMIT_FSIZE, self.file_size), (resource.RLIMIT_NOFILE, self.open_files)):
            if value is not None:
                out.append((res, value, value))
        if not self.core_dumps:
            out.append((resource.RLIMIT_CORE, 0, 0))
        return out

    def replace(self, **changes: object) -> "Limits":
        return replace(self, **changes)  # type: ignore[arg-type]


DEFAULT_LIMITS = Limits()
UNLIMITED = Limits(memory=None, processes=None, file_size=None, open_files=None, output=None)


def resolve_limits(limits: Limits | None) -> Limits:
    if limits is None:
        return DEFAULT_LIMITS
    if not isinstance(limits, Limits):
        raise TypeError(f"limits must be an aiogaol.Limits, not {type(limits).__name__}")
    return limits
