"""``aiogaol.run``: start, feed, collect, time-limit and report, like ``subprocess.run`` for a jail.

Written on anyio, so it works unchanged under asyncio and trio, and directly on the shared core
(``_jail.launch`` and ``RunningJail``) rather than on a process face: ``run`` owns its pipes, its pidfd
wait and its kill sequence, so that every limit is enforced in one place that can report it.

Who enforces what: rlimits travel with the spawn (the C child applies them before exec); a cgroup v2 of
the jail's own bounds memory and processes where one can be made (``_cgroup``); wall time, output caps
and the jail-wide CPU time (cgroup cpu.stat, else the jail's process tree in /proc: ``_cputime``) are
enforced here, from the event loop, never with a blocking sleep.  The report says which mechanism enforced each limit and how the status was decided, because an
rlimit hit is seen from outside only through the way the program died.
"""

from __future__ import annotations

import enum
import math
import os
import signal as _signal
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import anyio

from . import _cputime, _pacing
from ._cgroup import CgroupReport
from ._jail import RunningJail, launch
from ._errors import ProfileTypeError
from ._limits import Limits, resolve_limits
from ._profile import Profile
from ._spawnargs import SpawnArgs, check_argv, check_grace

DEFAULT_GRACE = 0.5  # seconds between SIGTERM and SIGKILL when the wall time runs out
# After the jail is reaped every writer of our pipes is dead, so the pipes reach EOF as soon as their
# buffers are drained; this only bounds the wait should a write end have leaked (a caller's pass_fds).
_DRAIN_TIMEOUT = 5.0
_READ_SIZE = 65536


class Status(enum.StrEnum):
    """How a run ended, in the manner of isolate's status codes.

    A str-valued enum with one spelling everywhere: ``str(Status.OK) == "ok" == Status.OK``, as
    ``aiogaol batch``, ``Result.meta()`` and the pool's results print it.  ``run`` never ends in the
    last two: ``cancelled`` (a pool job that never ran, or was cancelled) and ``error`` (a pool job whose
    jail could not be built) are the pool's.
    """

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
    CANCELLED = "cancelled"
    ERROR = "error"


class RunError(Exception):
    """Raised by ``Result.check()`` for any status but ``ok``."""

    def __init__(self, result: "Result") -> None:
        self.result = result
        super().__init__(f"{result.args[0] if result.args else 'program'}: {result.status.value} "
                         f"(returncode {result.returncode}; {result.error or result.evidence})")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.result,))  # from the result, not the message: it crosses Ray's object store


@dataclass(frozen=True)
class Result:
    """What a jailed run did and used: isolate's meta file as a value.

    ``cpu_time`` and ``max_rss`` come from the rusage of the jail (``wait4`` on its init, which reaps the
    processes of the jail), or for ``cpu_time`` from the cgroup's cpu.stat when there is one (it also
    counts orphans killed at the end); ``max_rss`` is the largest resident set of any one process.
    ``cgroup`` holds the kernel's own counters when the jail had a cgroup (``memory_peak`` is then the
    whole jail's peak).  ``evidence`` says how ``status`` was decided ("inferred" when it rests on the
    program's own words); ``enforced_by`` names the mechanism behind each limit.
    """

    args: tuple[str, ...]
    returncode: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    status: Status
    evidence: str
    wall_time: float
    cpu_time: float
    max_rss: int
    limits: Limits
    enforced_by: Mapping[str, str] = field(default_factory=dict)
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    isolation: str = "namespaces"
    cgroup: CgroupReport | None = None
    # A pool's job: the ``id`` it was given, the ``latency`` from the call (including any wait for a free
    # slot) to the result, and for status "error" why (``error``) and the exception behind it
    # (``ProgramNotFoundError``, ``SandboxSetupError``...; not part of ``meta`` or ``to_dict``).
    id: Any = None
    latency: float | None = None
    error: str | None = None
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def ran(self) -> bool:
        """False for a pool's job that never started ("error", or "cancelled"/"timed-out" before its
        jail was built): ``returncode`` is then None and the usage figures are zero."""
        return self.returncode is not None

    @property
    def memory_peak(self) -> int | None:
        """Peak memory of the whole jail (cgroup memory.peak), where the kernel counted it."""
        return self.cgroup.memory_peak if self.cgroup is not None else None

    def check(self) -> "Result":
        """Return self when the status is ok, else raise ``RunError`` (``subprocess.run(check=True)``)."""
        if not self.ok:
            raise RunError(self)
        return self

    def meta(self) -> dict[str, Any]:
        """The report as plain data (JSON-ready), without the output itself."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("stdout", "stderr", "exception")}
        data["limits"] = asdict(self.limits)
        data["cgroup"] = asdict(self.cgroup) if self.cgroup is not None else None
        data["status"] = self.status.value
        data["stdout_bytes"] = len(self.stdout)
        data["stderr_bytes"] = len(self.stderr)
        data["enforced_by"] = dict(self.enforced_by)
        if data["cgroup"] is not None:
            data["cgroup"]["controllers"] = sorted(data["cgroup"]["controllers"])
        return data

    def to_dict(self) -> dict[str, Any]:
        """One line of ``aiogaol batch`` (JSON-ready; output decoded as UTF-8 with replacement): the
        job's id, argv, status and output, and its usage (None where it never ran)."""
        ran = self.ran
        return {
            "id": self.id, "argv": list(self.args), "status": self.status, "returncode": self.returncode,
            "signal": self.signal, "stdout": self.stdout.decode(errors="replace"),
            "stderr": self.stderr.decode(errors="replace"), "wall_time": self.wall_time if ran else None,
            "cpu_time": self.cpu_time if ran else None, "max_rss": self.max_rss if ran else None,
            "latency": self.latency, "error": self.error, "evidence": self.evidence,
        }


def not_run(args: tuple[str, ...], status: Status, evidence: str, limits: Limits, *, isolation: str = "namespaces",
            error: str | None = None, exception: BaseException | None = None, id: Any = None) -> Result:
    """The result of a job that never started: refused, cancelled or out of time before its jail existed,
    or whose jail could not be built.  A result, not an exception, because in a pool or a batch it is a
    fact about that job, and its neighbours go on."""
    return Result(args=args, returncode=None, signal=None, stdout=b"", stderr=b"", status=status, evidence=evidence,
                  wall_time=0.0, cpu_time=0.0, max_rss=0, limits=limits, isolation=isolation, id=id, error=error,
                  exception=exception)


def enforcement(limits: Limits, jail: RunningJail | None = None) -> dict[str, str]:
    """Which mechanism enforces each limit that is set: "rlimit ...", "cgroup ..." or "event loop ..."."""
    cg = jail.cgroup if jail is not None else None
    controllers = cg.controllers if cg is not None else frozenset()
    out: dict[str, str] = {}
    if limits.wall_time is not None:
        out["wall_time"] = "event loop (SIGTERM, grace, SIGKILL)"
    if limits.cpu_time is not None:
        out["cpu_time"] = "rlimit RLIMIT_CPU (per process: SIGXCPU, then SIGKILL a second later)"
        if cg is not None:
            out["cpu_time"] += "; event loop on cgroup cpu.stat (the whole jail)"
        elif _cputime.available():
            out["cpu_time"] += "; event loop on /proc/PID/stat of the jail's processes (the whole jail, to the tick)"
    if limits.memory is not None:
        out["memory"] = ("cgroup memory.max (the whole jail; OOM kills counted in memory.events)"
                         if "memory" in controllers else
                         "rlimit RLIMIT_AS (allocations fail; per process address space)")
    if limits.processes is not None:
        out["processes"] = ("cgroup pids.max (the whole jail; refused forks counted in pids.events)"
                            if "pids" in controllers else
                            "rlimit RLIMIT_NPROC (counted in the jail's own user namespace)")
    if limits.file_size is not None:
        out["file_size"] = "rlimit RLIMIT_FSIZE (SIGXFSZ)"
    if limits.open_files is not None:
        out["open_files"] = "rlimit RLIMIT_NOFILE"
    if limits.output is not None:
        out["output"] = "event loop (reading stops and the jail is killed at the cap)"
    if cg is not None:
        out["cgroup"] = f"cgroup v2 {cg.path} (controllers: {' '.join(sorted(controllers)) or 'none'})"
    else:
        reason = jail.cgroup_reason if jail is not None and jail.cgroup_reason else "not asked"
        out["cgroup"] = f"none: {reason}"
    return out


# What a program's stderr says when an rlimit refused it something.  rlimits leave no other trace the
# server can see: an allocation that fails is the program's business, so the status is an inference,
# and ``Result.evidence`` says so.
# V8 (node) cannot even reserve its code range under a small RLIMIT_AS: it prints "Fatal process OOM in
# Failed to reserve virtual memory for CodeRange" and dies of SIGTRAP; Go says "runtime: out of memory".
_MEMORY_SIGNS = (b"MemoryError", b"Cannot allocate memory", b"std::bad_alloc", b"out of memory",
                 b"Out of memory", b"cannot allocate", b"memory exhausted", b"Fatal process OOM",
                 b"Failed to reserve virtual memory")
_PROCESS_SIGNS = (b"Resource temporarily unavailable", b"fork: retry", b"can't fork", b"Cannot fork")
_FILES_SIGNS = (b"Too many open files",)
_DISK_SIGNS = (b"No space left on device",)
# EFBIG for programs that ignore SIGXFSZ (CPython does); the shell's words for a child SIGXFSZ killed.
_FSIZE_SIGNS = (b"File too large", b"File size limit exceeded")
_CPU_SIGNS = (b"CPU time limit exceeded",)  # the shell's words for a child SIGXCPU killed
# How a C program usually dies when malloc returns NULL under RLIMIT_AS: it uses the NULL (SIGSEGV),
# its runtime aborts (SIGABRT, or SIGTRAP for V8's and some runtimes' fatal-error traps), or a touched
# mapping cannot be backed (SIGBUS).
_MEMORY_DEATHS = (_signal.SIGSEGV, _signal.SIGABRT, _signal.SIGBUS, _signal.SIGTRAP)
_RSS_NEAR_LIMIT = 0.8


def _signame(sig: int) -> str:
    try:
        return _signal.Signals(sig).name
    except ValueError:
        return str(sig)


def _classify(limits: Limits, returncode: int, stderr: bytes, cpu_time: float, timed_out: bool,
              output_capped: bool, *, max_rss: int = 0, cgroup: CgroupReport | None = None,
              jail_cpu_capped: bool = False, cpu_source: str = "cgroup cpu.stat",
              stopped: bool = False) -> tuple[Status, str]:
    """The status and the evidence for it: certain causes first (our own kills, the kernel's counters,
    the rlimit signals), then inferences from the program's stderr and its last resident size."""
    sig = -returncode if returncode < 0 else None
    if stopped:
        return Status.CANCELLED, "the pool was cancelled; the jail was killed"
    if timed_out:
        return Status.TIMED_OUT, (f"the deadline (wall time {limits.wall_time} s) ran out; the event loop ended "
                                  "the jail")
    if output_capped:
        return Status.OUTPUT_LIMIT, f"more than {limits.output} bytes on one stream; the jail was killed"
    if jail_cpu_capped:
        return Status.CPU_LIMIT, (f"the jail's processes used {cpu_time:.2f} s of CPU together ({cpu_source}), "
                                  f"past cpu_time = {limits.cpu_time}; the event loop killed it")
    if cgroup is not None and cgroup.oom_kills and returncode != 0:
        return Status.MEMORY_LIMIT, (f"cgroup memory.events: {cgroup.oom_kills} process(es) killed at "
                                     f"memory.max = {limits.memory}")
    if cgroup is not None and cgroup.pids_max_hits and returncode != 0:
        return Status.PROCESS_LIMIT, f"cgroup pids.events: {cgroup.pids_max_hits} fork(s) refused at pids.max"
    if sig == _signal.SIGXCPU or (sig == _signal.SIGKILL and limits.cpu_time is not None
                                  and cpu_time >= limits.cpu_time * 0.9):
        return Status.CPU_LIMIT, f"killed by {_signame(sig)} after {cpu_time:.2f} s of CPU (RLIMIT_CPU)"
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
                ending = f"killed by {_signame(sig)}" if sig is not None else f"exit {returncode}"
                under = (" under RLIMIT_AS" if status is Status.MEMORY_LIMIT and cgroup is None
                         else "")
                return status, f"inferred: {ending}{under} and stderr says {hit.decode()!r}"
    if (sig in _MEMORY_DEATHS and limits.memory is not None and cgroup is None
            and max_rss >= _RSS_NEAR_LIMIT * limits.memory):
        return Status.MEMORY_LIMIT, (f"inferred: killed by {_signame(sig)} with max RSS {max_rss >> 20} MiB, "
                                     f"{max_rss * 100 // limits.memory}% of the RLIMIT_AS limit")
    if sig is not None:
        return Status.SIGNALLED, f"killed by {_signame(sig)}"
    if returncode != 0:
        return Status.NONZERO_EXIT, f"exit status {returncode}"
    return Status.OK, "exit status 0"


@dataclass
class _Outcome:
    """What the event loop did to the jail, for the report."""

    timed_out: bool = False
    stopped: bool = False
    jail_cpu_capped: bool = False
    cpu_source: str = "cgroup cpu.stat"
    capped: dict[str, bool] = field(default_factory=lambda: {"stdout": False, "stderr": False})


async def _wait_exit(jail: RunningJail) -> None:
    """Until init is reaped: its pidfd turns readable when it exits, then wait4 takes it and the usage."""
    while True:
        async with _pacing.paced():  # reaping is paced like spawning (see _pacing)
            if jail.try_reap():
                return
        assert jail.pidfd is not None
        await anyio.wait_readable(jail.pidfd)


def _signal_quietly(jail: RunningJail, sig: int) -> None:
    try:
        if sig == _signal.SIGKILL:
            jail.kill_quietly()
        elif sig == _signal.SIGRTMAX:
            jail.kill_program()
        else:
            jail.send_signal(sig)
    except ProcessLookupError:
        pass


async def _supervise(jail: RunningJail, expires: float, grace: float, outcome: _Outcome) -> None:
    """Wait for the exit until ``expires`` (the event loop's clock); past it: SIGTERM, grace, SIGKILL of
    the program through init (usage stays whole), grace, SIGKILL of init (the namespace goes with it).
    Whatever ends this early (cancellation, an error) kills and reaps the jail before it propagates."""
    try:
        with anyio.CancelScope(deadline=expires):
            await _wait_exit(jail)
        if jail.try_reap():
            return
        outcome.timed_out = True
        for sig, wait in ((_signal.SIGTERM, grace), (_signal.SIGRTMAX, grace), (_signal.SIGKILL, math.inf)):
            _signal_quietly(jail, sig)
            with anyio.move_on_after(wait):
                await _wait_exit(jail)
            if jail.try_reap():
                return
    finally:
        if jail.returncode is None:
            jail.kill_quietly()
            with anyio.CancelScope(shield=True), anyio.move_on_after(_DRAIN_TIMEOUT):
                await _wait_exit(jail)
            jail.reap_blocking()  # returns at once when reaped above; bounded by SIGKILL otherwise


async def capture(fd: int, name: str, cap: int | None, buf: bytearray, capped: dict[str, bool],
                  stop: Callable[[], None], scope: anyio.CancelScope) -> None:
    """Read one stream to EOF into ``buf``.  Past the cap: keep the first ``cap`` bytes, mark
    ``capped[name]``, call ``stop()`` (which kills the program: status output-limit) and read on,
    discarding, so that nothing of the jail blocks on a full pipe while it dies and our memory stays
    bounded.  ``run``, ``PythonPool.run`` and ``Sandbox.exec`` each pass their own way to stop."""
    with scope:
        while True:
            try:
                chunk = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                await anyio.wait_readable(fd)
                continue
            if not chunk:
                return
            if capped[name]:
                continue
            if cap is not None and len(buf) + len(chunk) > cap:
                buf += chunk[:cap - len(buf)]
                capped[name] = True
                stop()
                continue
            buf += chunk


async def _feed(ours: list[int], data: bytes, scope: anyio.CancelScope) -> None:
    """Write the input to ``ours[0]`` and close it (the program sees EOF); a program that stops reading
    is not an error (as ``subprocess.run``)."""
    fd = ours[0]
    view = memoryview(data)
    with scope:
        try:
            while view:
                try:
                    view = view[os.write(fd, view[:_READ_SIZE]):]
                except BlockingIOError:
                    await anyio.wait_writable(fd)
        except (BrokenPipeError, ConnectionResetError):
            pass
    ours[0] = -1
    os.close(fd)


async def watch_cpu(limit: float, used: Callable[[], float | None], stop: Callable[[], None],
                    scope: anyio.CancelScope) -> bool:
    """Poll ``used()`` (the CPU seconds of all of a jail's or a call's processes together; None while it
    cannot be read) until it reaches ``limit``, then ``stop()`` and return True; False if ``scope`` is
    cancelled first (the program ended).  RLIMIT_CPU alone lets a program that forks spend
    ``processes × cpu_time``, and counts whole seconds only (0.5 s would be enforced at about 1 s)."""
    period = min(0.1, max(0.01, limit / 20))
    with scope:
        while True:
            seconds = used()
            if seconds is not None and seconds >= limit:
                stop()
                return True
            await anyio.sleep(period)
    return False


async def _watch_jail_cpu(jail: RunningJail, limit: float, outcome: _Outcome, scope: anyio.CancelScope) -> None:
    """A jail's CPU time from its cgroup's cpu.stat or, without one, from /proc (``_cputime``)."""
    if jail.cgroup is not None:
        cgroup, outcome.cpu_source = jail.cgroup, "cgroup cpu.stat"
        used: Callable[[], float | None] = cgroup.cpu_time
    else:
        outcome.cpu_source = "/proc/PID/stat of the jail's processes"
        used = lambda: _cputime.tree_cpu_seconds(jail.pid)  # noqa: E731
    outcome.jail_cpu_capped = await watch_cpu(limit, used, lambda: _signal_quietly(jail, _signal.SIGRTMAX),
                                              scope)


def stdio_pipes(with_input: bool, ours: list[int], theirs: list[int]) -> None:
    """The captured stdio of one program: stdin a pipe (with input) or /dev/null, stdout and stderr pipes.
    The program's ends go on ``theirs`` (stdin, stdout, stderr), ours on ``ours`` in the same order (-1
    for no stdin), non-blocking.  Each fd is appended as soon as it exists, so that a caller that closes
    both lists on failure closes whatever was made before an OSError (out of fds, say)."""
    if with_input:
        r, w = os.pipe2(os.O_CLOEXEC)
        theirs.append(r)
        ours.append(w)
    else:
        theirs.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        ours.append(-1)
    for _ in range(2):
        r, w = os.pipe2(os.O_CLOEXEC)
        ours.append(r)
        theirs.append(w)
    for fd in ours:
        if fd >= 0:
            os.set_blocking(fd, False)


def _close(fds: list[int]) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)
    fds.clear()


class Steering:
    """How a pool steers one run through ``run``'s own path: a ``deadline`` on the event loop's clock
    that bounds the whole job, the building of its jail included (past it: "timed-out", by the same
    SIGTERM, grace, SIGKILL as a wall time), and ``stop()``, which ends the job as "cancelled" with its
    jail killed and reaped and what it had written so far kept.  ``stop`` may come from any task and at
    any moment: before the job starts, while its jail is built, or while it runs."""

    def __init__(self, deadline: float = math.inf) -> None:
        self.deadline = deadline
        self.stopped = False
        self._scope: anyio.CancelScope | None = None

    def stop(self) -> None:
        self.stopped = True
        if self._scope is not None:
            self._scope.cancel()

    def scope(self, deadline: float = math.inf) -> anyio.CancelScope:
        """The cancel scope of the next phase (building, then running): ``stop`` cancels it."""
        scope = anyio.CancelScope(deadline=deadline)
        if self.stopped:
            scope.cancel()
        self._scope = scope
        return scope


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
    what the program did; ``Result.check()`` turns a bad status into ``RunError``.  Raises, before
    anything starts, for bad arguments, and ``OSError`` subclasses naming the step when the jail cannot
    be built.  Cancelling ``run`` kills and reaps the jail before the cancellation propagates.
    """
    return await steered_run(profile, argv, input=input, limits=limits, env=env, cwd=cwd, pass_fds=pass_fds,
                             isolation=isolation, grace_period=grace_period)


async def steered_run(
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
    steering: Steering | None = None,
) -> Result:
    """``run`` itself, and the pool's way in: with ``steering`` the wall time runs to
    ``steering.deadline`` instead of ``limits.wall_time`` from the start of the program, and a job
    stopped or out of time before its jail exists is a result ("cancelled", "timed-out") without one."""
    check_argv(argv)
    if input is not None and not isinstance(input, (bytes, bytearray, memoryview)):
        raise ProfileTypeError(f"input must be bytes or None, not {type(input).__name__}")
    grace = check_grace(grace_period)
    limits = resolve_limits(limits)
    args = tuple(os.fsdecode(a) for a in argv)
    ours: list[int] = []  # our ends: stdin (write) or -1, stdout, stderr
    theirs: list[int] = []  # the jail's ends, closed as soon as the helper has them
    building = steering.scope(steering.deadline) if steering is not None else nullcontext()
    jail: RunningJail | None = None
    with building:
        async with _pacing.starting() as ticket:
            spawn = SpawnArgs.build(profile, argv[0], argv[1:], env=env, cwd=cwd, pass_fds=pass_fds,
                                    limits=limits, isolation=isolation)
            try:
                stdio_pipes(input is not None, ours, theirs)
                jail = await launch(spawn, stdio=list(theirs), wait_readable=anyio.wait_readable, ticket=ticket)
            except BaseException:
                _close(ours)
                _close(theirs)
                raise
    if jail is None:  # only a steered run gets here: stopped, or out of time, before its jail existed
        _close(ours)
        _close(theirs)
        assert steering is not None
        if steering.stopped:
            return not_run(args, Status.CANCELLED, "cancelled while the jail was being built", limits,
                           isolation=isolation)
        return not_run(args, Status.TIMED_OUT, f"the deadline of {limits.wall_time} s passed while the jail "
                       "was being built", limits, isolation=isolation)
    _close(theirs)

    outcome = _Outcome()
    outputs = {"stdout": bytearray(), "stderr": bytearray()}
    pump_scopes = [anyio.CancelScope(), anyio.CancelScope()]
    helper_scopes = [anyio.CancelScope(), anyio.CancelScope()]  # the feed and the CPU watch
    if steering is not None:
        expires = steering.deadline
    else:
        expires = anyio.current_time() + limits.wall_time if limits.wall_time is not None else math.inf
    try:
        async with anyio.create_task_group() as tg:
            for fd, name, scope in zip(ours[1:], ("stdout", "stderr"), pump_scopes):
                tg.start_soon(capture, fd, name, limits.output, outputs[name], outcome.capped,
                              lambda: _signal_quietly(jail, _signal.SIGRTMAX), scope)
            if input is not None:
                tg.start_soon(_feed, ours, bytes(input), helper_scopes[0])
            if limits.cpu_time is not None and (jail.cgroup is not None or _cputime.available()):
                tg.start_soon(_watch_jail_cpu, jail, limits.cpu_time, outcome, helper_scopes[1])
            running = steering.scope() if steering is not None else nullcontext()
            with running:
                await _supervise(jail, expires, grace, outcome)
            outcome.stopped = isinstance(running, anyio.CancelScope) and running.cancelled_caught
            # The jail is gone and init took its orphans with it: the pumps reach EOF once drained.
            for scope in helper_scopes:
                scope.cancel()
            deadline = anyio.current_time() + _DRAIN_TIMEOUT
            for scope in pump_scopes:
                scope.deadline = deadline
    finally:
        if jail.returncode is None:  # a failure before _supervise took charge
            jail.reap_blocking()
        _close(ours)

    returncode = jail.returncode
    usage = jail.usage
    assert returncode is not None and usage is not None
    report = jail.cgroup.report if jail.cgroup is not None else None
    stderr = bytes(outputs["stderr"])
    # The cgroup counts every process of the jail as it runs, so it also catches a tree that outlived the
    # wall time and had to be killed with init, whose rusage then misses the children.
    cpu_time = report.cpu_time if report is not None and report.cpu_time is not None else usage.cpu_time
    status, evidence = _classify(limits, returncode, stderr, cpu_time, outcome.timed_out,
                                 outcome.capped["stdout"] or outcome.capped["stderr"], max_rss=usage.max_rss,
                                 cgroup=report, jail_cpu_capped=outcome.jail_cpu_capped,
                                 cpu_source=outcome.cpu_source, stopped=outcome.stopped)
    return Result(
        args=args,
        returncode=returncode,
        signal=-returncode if returncode < 0 else None,
        stdout=bytes(outputs["stdout"]),
        stderr=stderr,
        status=status,
        evidence=evidence,
        wall_time=usage.wall_time,
        cpu_time=cpu_time,
        max_rss=usage.max_rss,
        limits=limits,
        enforced_by=enforcement(limits, jail),
        stdout_truncated=outcome.capped["stdout"],
        stderr_truncated=outcome.capped["stderr"],
        isolation=jail.isolation,
        cgroup=report,
    )
