"""``aiogaol.run``: start, feed, collect, time-limit and report, like ``subprocess.run`` for a jail.

Runs on anyio, so it works unchanged under asyncio and trio.  The rlimits travel with the spawn (the C
child applies them before exec); wall time and output caps are enforced here, from the event loop,
without a blocking sleep.  The report says which mechanism enforced each limit and how the status was
decided, because an rlimit hit is seen from outside only through the way the program died.
"""

from __future__ import annotations

import enum
import os
import signal as _signal
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio

from . import _kernel, _stdio
from ._anyio_process import JailedProcess, spawn
from ._limits import Limits, resolve_limits
from ._profile import Profile

DEFAULT_GRACE = 0.5  # seconds between SIGTERM and SIGKILL when the wall time runs out


class Status(str, enum.Enum):
    """How a run ended, in the manner of isolate's status codes."""

    OK = "ok"
    NONZERO_EXIT = "nonzero-exit"
    SIGNALLED = "signalled"
    TIMED_OUT = "timed-out"
    CPU_LIMIT = "cpu-limit"
    MEMORY_LIMIT = "memory-limit"
    OUTPUT_LIMIT = "output-limit"
    FILE_SIZE_LIMIT = "file-size-limit"
    DISK_LIMIT = "disk-limit"
    PROCESS_LIMIT = "process-limit"
    OPEN_FILES_LIMIT = "open-files-limit"


class RunError(Exception):
    """Raised by ``Result.check()`` for any status but ``ok``."""

    def __init__(self, result: "Result") -> None:
        self.result = result
        super().__init__(f"{result.args[0] if result.args else 'program'}: {result.status.value} "
                         f"(returncode {result.returncode}; {result.evidence})")


@dataclass(frozen=True)
class Result:
    """What a jailed run did and used: isolate's meta file as a value."""

    args: tuple[str, ...]
    returncode: int
    signal: int | None
    stdout: bytes
    stderr: bytes
    status: Status
    evidence: str  # how the status was decided
    wall_time: float
    cpu_time: float
    max_rss: int
    limits: Limits
    enforced_by: Mapping[str, str] = field(default_factory=dict)
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    isolation: str = "namespaces"

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def check(self) -> "Result":
        if not self.ok:
            raise RunError(self)
        return self

    def meta(self) -> dict[str, Any]:
        """The report as plain data (JSON-ready), without the output itself."""
        data = asdict(self)
        for key in ("stdout", "stderr"):
            data.pop(key)
        data["status"] = self.status.value
        data["stdout_bytes"] = len(self.stdout)
        data["stderr_bytes"] = len(self.stderr)
        data["enforced_by"] = dict(self.enforced_by)
        return data


def enforcement(limits: Limits) -> dict[str, str]:
    """Which mechanism enforces each limit that is set (rlimits here; cgroup v2 is not wired yet)."""
    out: dict[str, str] = {}
    if limits.wall_time is not None:
        out["wall_time"] = "event loop (SIGTERM, grace, SIGKILL)"
    if limits.cpu_time is not None:
        out["cpu_time"] = "rlimit RLIMIT_CPU (per process: SIGXCPU, then SIGKILL a second later)"
    if limits.memory is not None:
        out["memory"] = "rlimit RLIMIT_AS (allocations fail; per process address space)"
    if limits.processes is not None:
        out["processes"] = "rlimit RLIMIT_NPROC (counted in the jail's own user namespace)"
    if limits.file_size is not None:
        out["file_size"] = "rlimit RLIMIT_FSIZE (SIGXFSZ)"
    if limits.open_files is not None:
        out["open_files"] = "rlimit RLIMIT_NOFILE"
    if limits.output is not None:
        out["output"] = "event loop (reading stops and the jail is killed at the cap)"
    if _kernel.cgroup2_root() is None:
        out["cgroup"] = "none: no cgroup v2 hierarchy with memory, pids and cpu controllers on this host"
    return out


# What a program's stderr says when an rlimit refused it something.  rlimits leave no other trace the
# server can see: an allocation that fails is the program's business, so the status is an inference,
# and ``Result.evidence`` says so.
_MEMORY_SIGNS = (b"MemoryError", b"Cannot allocate memory", b"std::bad_alloc", b"out of memory",
                 b"Out of memory", b"cannot allocate", b"memory exhausted")
_PROCESS_SIGNS = (b"Resource temporarily unavailable", b"fork: retry", b"can't fork", b"Cannot fork")
_FILES_SIGNS = (b"Too many open files",)
_DISK_SIGNS = (b"No space left on device",)
# EFBIG for programs that ignore SIGXFSZ (CPython does); the shell's words for a child SIGXFSZ killed.
_FSIZE_SIGNS = (b"File too large", b"File size limit exceeded")
_CPU_SIGNS = (b"CPU time limit exceeded",)  # the shell's words for a child SIGXCPU killed


def _classify(limits: Limits, returncode: int, stderr: bytes, cpu_time: float, timed_out: bool,
              output_capped: bool) -> tuple[Status, str]:
    sig = -returncode if returncode < 0 else None
    if timed_out:
        return Status.TIMED_OUT, f"wall time {limits.wall_time} s ran out; the event loop ended the jail"
    if output_capped:
        return Status.OUTPUT_LIMIT, f"more than {limits.output} bytes on one stream; the jail was killed"
    if sig == _signal.SIGXCPU or (sig == _signal.SIGKILL and limits.cpu_time is not None
                                  and cpu_time >= limits.cpu_time * 0.9):
        return Status.CPU_LIMIT, f"killed by {_signal.Signals(sig).name} after {cpu_time:.2f} s of CPU"
    if sig == _signal.SIGXFSZ:
        return Status.FILE_SIZE_LIMIT, "killed by SIGXFSZ: a file reached RLIMIT_FSIZE"
    if returncode != 0:
        for status, signs, wanted in ((Status.CPU_LIMIT, _CPU_SIGNS, limits.cpu_time),
                                      (Status.MEMORY_LIMIT, _MEMORY_SIGNS, limits.memory),
                                      (Status.PROCESS_LIMIT, _PROCESS_SIGNS, limits.processes),
                                      (Status.OPEN_FILES_LIMIT, _FILES_SIGNS, limits.open_files),
                                      (Status.FILE_SIZE_LIMIT, _FSIZE_SIGNS, limits.file_size),
                                      (Status.DISK_LIMIT, _DISK_SIGNS, True)):
            hit = next((s for s in signs if s in stderr), None)
            if wanted is not None and hit is not None:
                return status, f"inferred: exit {returncode} and stderr says {hit.decode()!r}"
    if sig is not None:
        name = _signal.Signals(sig).name if sig in _signal.Signals._value2member_map_ else str(sig)
        return Status.SIGNALLED, f"killed by {name}"
    if returncode != 0:
        return Status.NONZERO_EXIT, f"exit status {returncode}"
    return Status.OK, "exit status 0"


def _kill_program(proc: JailedProcess) -> None:
    try:
        proc._jail.kill_program()
    except ProcessLookupError:
        pass


async def run(
    profile: Profile,
    argv: Sequence[str | bytes | os.PathLike[str] | os.PathLike[bytes]],
    *,
    input: bytes | None = None,
    limits: Limits | None = None,
    env: Mapping[Any, Any] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    pass_fds: Sequence[int] = (),
    isolation: str = "namespaces",
    grace_period: float = DEFAULT_GRACE,
) -> Result:
    """Run ``argv`` in a jail to the end and report it; ``subprocess.run`` to ``spawn``'s ``Popen``.

    ``limits`` defaults to ``DEFAULT_LIMITS`` (so a bare run cannot exhaust the host).  Never raises for
    what the program did; ``Result.check()`` turns a bad status into ``RunError``.  Cancelling ``run``
    kills and reaps the jail before the cancellation propagates.
    """
    if input is not None and not isinstance(input, (bytes, bytearray, memoryview)):
        raise TypeError(f"input must be bytes, not {type(input).__name__}")
    limits = resolve_limits(limits)
    proc = await spawn(profile, argv, stdin=_stdio.PIPE if input is not None else _stdio.DEVNULL,
                       stdout=_stdio.PIPE, stderr=_stdio.PIPE, env=env, cwd=cwd, pass_fds=pass_fds,
                       limits=limits, isolation=isolation, grace_period=grace_period)
    outputs = {"stdout": bytearray(), "stderr": bytearray()}
    capped = {"stdout": False, "stderr": False}
    timed_out = False

    async with proc:
        async def pump(name: str, stream: anyio.abc.ByteReceiveStream) -> None:
            buf = outputs[name]
            cap = limits.output
            while True:
                try:
                    chunk = await stream.receive()
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    return
                if cap is not None and len(buf) + len(chunk) > cap:
                    buf += chunk[:cap - len(buf)]
                    capped[name] = True
                    _kill_program(proc)  # stop reading: a program writing forever must not fill our memory
                    return
                buf += chunk

        async def feed(data: bytes) -> None:
            assert proc.stdin is not None
            try:
                await proc.stdin.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # the program stopped reading: as subprocess.run, not an error
            finally:
                await proc.stdin.aclose()

        async with anyio.create_task_group() as tg:
            assert proc.stdout is not None and proc.stderr is not None
            tg.start_soon(pump, "stdout", proc.stdout)
            tg.start_soon(pump, "stderr", proc.stderr)
            if input is not None:
                tg.start_soon(feed, bytes(input))
            with anyio.move_on_after(limits.wall_time if limits.wall_time is not None else float("inf")) as scope:
                await proc.wait()
            if scope.cancelled_caught:
                timed_out = True
                proc.terminate()
                with anyio.move_on_after(grace_period):
                    await proc.wait()
                _kill_program(proc)
                with anyio.move_on_after(grace_period):
                    await proc.wait()
                proc.kill()  # init itself did not answer: SIGKILL takes the whole namespace down
                await proc.wait()
            # The program is gone and init took its orphans with it, so the pumps reach EOF now.

    returncode = proc.returncode
    usage = proc.usage
    assert returncode is not None and usage is not None
    stderr = bytes(outputs["stderr"])
    status, evidence = _classify(limits, returncode, stderr, usage.cpu_time, timed_out,
                                 capped["stdout"] or capped["stderr"])
    return Result(
        args=tuple(os.fsdecode(a) for a in argv),
        returncode=returncode,
        signal=-returncode if returncode < 0 else None,
        stdout=bytes(outputs["stdout"]),
        stderr=stderr,
        status=status,
        evidence=evidence,
        wall_time=usage.wall_time,
        cpu_time=usage.cpu_time,
        max_rss=usage.max_rss,
        limits=limits,
        enforced_by=enforcement(limits),
        stdout_truncated=capped["stdout"],
        stderr_truncated=capped["stderr"],
        isolation=proc.isolation,
    )

