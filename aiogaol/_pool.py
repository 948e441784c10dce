"""A bounded pool of jails for servers and batch runners: ``async with aiogaol.Pool(profile, size=N)``.

What a pool adds over calling ``spawn`` in a loop is control over the server's own resources:

- at most ``size`` jails run at once; a caller that finds the pool full waits (backpressure), so a flood
  of requests queues as awaiting tasks the caller already owns, never as an unbounded list inside;
- every job has a deadline (``timeout``), an output cap (``limits.output``) and its own jail, so a
  hostile job (a loop, a fork bomb, a flood of output, a crash) ends as a result with a status, never as
  an exception that takes down its neighbours or the pool;
- ``map`` feeds an iterable of jobs, pulling the next one only when a slot frees up, and yields results
  as they finish;
- closing the pool finishes what runs (or cancels it when the block is left by an exception), and every
  jail is reaped before ``async with`` returns;
- ``stats()`` says what is running, waiting and done, and the latency percentiles.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Union

import anyio
import anyio.abc

from . import _cputime, _stdio
from ._run import Status, _classify, _Outcome, _watch_cpu
from ._anyio_process import JailedProcess, spawn
from ._jail import Usage
from ._background import Background
from ._errors import PoolClosedError, ProfileError, ProfileTypeError
from ._fallback import check_isolation
from ._limits import MAX_SECONDS, Limits, resolve_limits
from ._spawnargs import check_grace
from ._profile import Profile

Argv = Sequence[Union[str, bytes, "os.PathLike[str]"]]

OK, NONZERO_EXIT, SIGNALLED = Status.OK, Status.NONZERO_EXIT, Status.SIGNALLED
TIMED_OUT, OUTPUT_LIMIT, CANCELLED, ERROR = Status.TIMED_OUT, Status.OUTPUT_LIMIT, Status.CANCELLED, Status.ERROR
STATUSES = tuple(Status)  # every status a job can end in: run's, plus cancelled and error

DEFAULT_POOL_GRACE = 0.5  # a job past its deadline has had its chance; do not wait long for it
_MAX_SIZE = 1 << 16  # jails at once; far more than any host runs, and a bound for anyio's Semaphore
_LATENCY_WINDOW = 10_000  # percentiles over the most recent jobs, so a long-lived pool stays cheap


@dataclass(frozen=True)
class Job:
    """One program to run in the pool; ``id`` comes back on its result (``map`` uses the input index
    when it is None)."""

    argv: Argv
    input: bytes | None = None
    timeout: float | None = None
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    id: Any = None


@dataclass(frozen=True)
class JobResult:
    """What became of one job.  ``status`` is a ``Status`` (a str: ``str(status) == "ok"``); ``error``
    says why for "error"; ``evidence`` how the status was decided, as ``Result.evidence`` does
    ("inferred: ..." when it rests on the program's words or its death, not on a kernel counter).

    ``returncode`` is -N when signal N ended the program (``signal`` is then N); ``wall_time`` is the
    jail's life, ``latency`` the time from the call (including any wait for a free slot) to the result.
    """

    id: Any
    argv: tuple[str, ...]
    status: Status
    returncode: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    usage: Usage | None = None
    latency: float = 0.0
    error: str | None = None
    # The exception behind an "error" (``ProgramNotFoundError``, ``SandboxSetupError``...), for callers
    # that react to its type; not part of ``to_dict``.
    exception: Exception | None = field(default=None, repr=False, compare=False)
    evidence: str = ""

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def signal(self) -> int | None:
        return -self.returncode if self.returncode is not None and self.returncode < 0 else None

    @property
    def wall_time(self) -> float | None:
        return self.usage.wall_time if self.usage else None

    @property
    def cpu_time(self) -> float | None:
        return self.usage.cpu_time if self.usage else None

    @property
    def max_rss(self) -> int | None:
        return self.usage.max_rss if self.usage else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (output decoded as UTF-8 with replacement), as ``aiogaol batch`` prints it."""
        return {
            "id": self.id, "argv": list(self.argv), "status": self.status, "returncode": self.returncode,
            "signal": self.signal, "stdout": self.stdout.decode(errors="replace"),
            "stderr": self.stderr.decode(errors="replace"), "wall_time": self.wall_time,
            "cpu_time": self.cpu_time, "max_rss": self.max_rss, "latency": self.latency, "error": self.error,
            "evidence": self.evidence,
        }


@dataclass(frozen=True)
class PoolStats:
    """A snapshot: jails running, callers waiting for a slot, jobs done (and how many not ``ok``), and
    latency percentiles in seconds over the most recent jobs (None before the first)."""

    size: int
    running: int
    waiting: int
    done: int
    failed: int
    p50: float | None
    p90: float | None
    p99: float | None


def _percentile(ordered: Sequence[float], q: float) -> float | None:
    if not ordered:
        return None
    rank = max(0, math.ceil(q * len(ordered)) - 1)  # nearest-rank: always a latency that happened
    return ordered[rank]


def _text_argv(argv: Argv) -> tuple[str, ...]:
    return tuple(os.fsdecode(a) for a in argv)


def _check_timeout(timeout: object, what: str) -> float | None:
    """A deadline: None, or a finite number of seconds in (0, MAX_SECONDS], the range of Limits.wall_time."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ProfileTypeError(f"{what} must be a number of seconds or None, not {type(timeout).__name__}")
    if not (math.isfinite(timeout) and 0 < timeout <= MAX_SECONDS):
        raise ProfileError(f"{what} must be a finite number of seconds, more than 0 and at most "
                           f"{MAX_SECONDS:g}, not {timeout!r}")
    return float(timeout)


@dataclass
class _Capture:
    """Output kept from one stream, up to the cap; ``overflowed`` once the program went past it."""

    cap: int | None
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    overflowed: bool = False

    def value(self) -> bytes:
        return b"".join(self.chunks)


class Pool:
    """At most ``size`` jails at once from one profile; see the module docstring for the contract.

    ``limits`` apply to every job (default ``aiogaol.DEFAULT_LIMITS``); ``timeout`` is the default
    deadline of a job in seconds (``limits.wall_time`` when not given); ``grace_period`` the seconds
    between SIGTERM and SIGKILL for a job past its deadline.
    """

    def __init__(self, profile: Profile, *, size: int | None = None, limits: Limits | None = None,
                 timeout: float | None = None, grace_period: float = DEFAULT_POOL_GRACE,
                 env: Mapping[str, str] | None = None, isolation: str = "namespaces") -> None:
        if not isinstance(profile, Profile):
            raise ProfileTypeError(f"profile must be an aiogaol.Profile, not {type(profile).__name__}")
        if size is None:
            size = os.cpu_count() or 4
        if isinstance(size, bool) or not isinstance(size, int):
            raise ProfileTypeError(f"size must be a positive int, not {type(size).__name__}")
        if not 1 <= size <= _MAX_SIZE:
            raise ProfileError(f"size must be from 1 to {_MAX_SIZE}, not {size}")
        if env is not None and not isinstance(env, Mapping):
            raise ProfileTypeError(f"env must be a mapping or None, not {type(env).__name__}")
        grace_period = check_grace(grace_period)
        check_isolation(isolation)
        self.profile = profile
        self.size = size
        self.limits = resolve_limits(limits)
        self.timeout = _check_timeout(timeout if timeout is not None else self.limits.wall_time, "timeout")
        self.grace_period = grace_period
        self.env = env
        self.isolation = isolation
        self._slots: anyio.Semaphore | None = None
        self._background: Background | None = None  # where ``map`` feeders run; see open()
        self._closed = False
        self._cancelling = False
        self._running = 0
        self._waiting = 0
        self._done = 0
        self._failed = 0
        self._latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._job_scopes: set[anyio.CancelScope] = set()
        self._idle: anyio.Event | None = None

    # -- life cycle ---------------------------------------------------------------------------------

    async def open(self) -> "Pool":
        """Make the pool ready for jobs and return it: ``pool = await Pool(...).open()``.

        Nothing of the pool is tied to the opening task: ``run``, ``map`` and ``aclose`` may come from
        any task of the same event loop (a Ray actor opens its pool in one method and closes it in
        another), so the task group that runs ``map``'s feeders lives in a host task of its own
        (``_background``), not in the caller's.  ``async with Pool(...)`` is ``open`` and ``aclose``.
        """
        if self._background is not None or self._closed:
            raise RuntimeError("a Pool can be opened once")
        self._slots = anyio.Semaphore(self.size)
        background = Background()
        await background.start()
        self._background = background
        return self

    async def __aenter__(self) -> "Pool":
        return await self.open()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        # Left normally: let running jobs finish.  Left by an exception (cancellation included):
        # cancel them; either way each jail is terminated, killed and reaped before we return, and the
        # block's exception propagates as it is (the pool's task group is not the caller's to wrap it).
        await self.aclose(cancel=exc_type is not None)

    async def aclose(self, *, cancel: bool = False) -> None:
        """Refuse new jobs; then wait for the running ones (``cancel=False``) or cancel them, and stop
        the feeders of abandoned ``map`` iterations.  From any task, any number of times.

        When it returns every jail of the pool has been reaped.  A closer that is itself cancelled
        while it waits cancels the running jobs instead and still waits for them (shielded), so it
        never leaves a jail behind.
        """
        self._closed = True
        if cancel:
            self._cancel_running()
        try:
            await self._wait_idle()
        except BaseException:
            self._cancel_running()
            with anyio.CancelScope(shield=True):
                await self._wait_idle()
                if self._background is not None:
                    await self._background.aclose()
            raise
        if self._background is not None:
            await self._background.aclose()

    async def _wait_idle(self) -> None:
        while self._running:
            if self._idle is None:
                self._idle = anyio.Event()  # one event for every closer: _run sets it at the last job
            await self._idle.wait()

    def _cancel_running(self) -> None:
        self._cancelling = True
        for scope in list(self._job_scopes):
            scope.cancel()

    # -- observing ----------------------------------------------------------------------------------

    def stats(self) -> PoolStats:
        ordered = sorted(self._latencies)
        return PoolStats(self.size, self._running, self._waiting, self._done, self._failed,
                         _percentile(ordered, 0.50), _percentile(ordered, 0.90), _percentile(ordered, 0.99))

    # -- running ------------------------------------------------------------------------------------

    async def run(self, argv: Argv, *, input: bytes | None = None, timeout: float | None = None,
                  env: Mapping[str, str] | None = None, cwd: str | None = None, id: Any = None) -> JobResult:
        """Run one job, waiting for a free slot first; return its result whatever the program did.

        Arguments that could never work (an empty argv, a relative cwd) raise ``ValueError``/
        ``TypeError``; a jail that fails to start (the program is missing, say) is a result with
        status "error", as it is a fact about the job, not a bug in the caller.
        """
        return await self._run(Job(argv, input, timeout, env, cwd, id), raise_invalid=True)

    def map(self, jobs: Iterable[Job | Argv] | AsyncIterable[Job | Argv], *,
            timeout: float | None = None) -> "JobResults":
        """Run many jobs, at most ``size`` at a time, and iterate their results as they finish.

        ``jobs`` is pulled lazily (an endless generator is fine): the next job is taken only when one of
        this iteration's ``size`` places frees up, i.e. when a result has been consumed.  Use as
        ``async for result in pool.map(jobs)``, or inside ``async with`` to stop it early and cleanly.
        """
        self._check_open()
        send, receive = anyio.create_memory_object_stream[JobResult](self.size)
        results = JobResults(receive, anyio.Semaphore(self.size), anyio.CancelScope())
        assert self._background is not None
        self._background.start_soon(self._feed, jobs, timeout, send, results)
        return results

    async def _feed(self, jobs: Iterable[Job | Argv] | AsyncIterable[Job | Argv], timeout: float | None,
                    send: anyio.abc.ObjectSendStream[JobResult], results: "JobResults") -> None:
        async def deliver(job: Job) -> None:
            result = await self._run(job, raise_invalid=False)
            try:
                await send.send(result)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # the consumer stopped listening

        with results._scope:
            async with send, anyio.create_task_group() as tg:
                index = 0
                try:
                    async for item in _aiter(jobs):
                        job = item if isinstance(item, Job) else Job(item)
                        if job.id is None:
                            job = Job(job.argv, job.input, job.timeout, job.env, job.cwd, index)
                        if job.timeout is None and timeout is not None:
                            job = Job(job.argv, job.input, timeout, job.env, job.cwd, job.id)
                        index += 1
                        await results._window.acquire()
                        if self._closed:
                            break
                        tg.start_soon(deliver, job)
                except Exception as e:
                    results._error = e  # the jobs iterable itself failed: tell the consumer

    def _check_open(self) -> None:
        if self._closed:
            raise PoolClosedError("the pool is closed: open a new Pool for more jobs")
        if self._background is None:
            raise PoolClosedError("the pool is not open yet: 'await pool.open()' or 'async with Pool(...)' first")

    async def _run(self, job: Job, *, raise_invalid: bool) -> JobResult:
        submitted = time.monotonic()
        argv = _text_argv(job.argv) if not isinstance(job.argv, (str, bytes)) else (os.fsdecode(job.argv),)
        if not raise_invalid and self._closed:  # a map feeder's job that lost the race with aclose
            return self._record(JobResult(job.id, argv, CANCELLED, error="the pool closed",
                                          evidence="the pool closed before the job started"), submitted)
        self._check_open()
        assert self._slots is not None
        try:
            deadline = _check_timeout(job.timeout, "timeout") or self.timeout
            if job.input is not None and not isinstance(job.input, (bytes, bytearray, memoryview)):
                raise ProfileTypeError(f"input must be bytes or None, not {type(job.input).__name__}")
        except (TypeError, ValueError) as e:
            if raise_invalid:
                raise
            return self._record(JobResult(job.id, argv, ERROR, error=f"{type(e).__name__}: {e}",
                                          evidence="the job's arguments were refused"), submitted)
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            if self._closed:
                # Closing finishes what runs; what was still waiting for a slot is turned away.
                return self._record(JobResult(job.id, argv, CANCELLED, error="the pool closed",
                                              evidence="the pool closed before a slot was free"), submitted)
            self._running += 1
            try:
                return self._record(await self._execute(job, argv, deadline, raise_invalid), submitted)
            finally:
                self._running -= 1
                if not self._running and self._idle is not None:
                    self._idle.set()
                    self._idle = None
        finally:
            self._slots.release()

    def _record(self, result: JobResult, submitted: float) -> JobResult:
        latency = time.monotonic() - submitted
        result = dataclasses.replace(result, latency=latency)
        self._done += 1
        if result.status != OK:
            self._failed += 1
        self._latencies.append(latency)
        return result

    async def _execute(self, job: Job, argv: tuple[str, ...], deadline: float | None,
                       raise_invalid: bool) -> JobResult:
        env = job.env if job.env is not None else self.env
        out, err = _Capture(self.limits.output), _Capture(self.limits.output)
        proc: JailedProcess | None = None
        outcome, watch = _Outcome(), anyio.CancelScope()
        scope = anyio.CancelScope(deadline=anyio.current_time() + deadline if deadline else math.inf)
        self._job_scopes.add(scope)
        if self._cancelling:
            scope.cancel()
        try:
            with scope:
                try:
                    proc = await spawn(self.profile, job.argv, stdin=_stdio.PIPE if job.input else _stdio.DEVNULL,
                                       env=env, cwd=job.cwd, limits=self.limits, isolation=self.isolation,
                                       grace_period=self.grace_period)
                except (TypeError, ValueError) as e:
                    if raise_invalid:
                        raise
                    return JobResult(job.id, argv, ERROR, error=f"{type(e).__name__}: {e}", exception=e,
                                     evidence="the job's arguments were refused")
                except OSError as e:
                    return JobResult(job.id, argv, ERROR, error=str(e) or type(e).__name__, exception=e,
                                     evidence="the jail could not be built")
                async with proc, anyio.create_task_group() as watching:
                    # The jail's CPU time as a whole and to the tick (RLIMIT_CPU: whole seconds, per
                    # process), read as aiogaol.run reads it, until the program has exited.
                    jail = proc._jail
                    if self.limits.cpu_time is not None and (jail.cgroup is not None or _cputime.available()):
                        watching.start_soon(_watch_cpu, jail, self.limits.cpu_time, outcome, watch)
                    async with anyio.create_task_group() as tg:
                        if job.input and proc.stdin is not None:
                            tg.start_soon(_feed_stdin, proc, bytes(job.input))
                        assert proc.stdout is not None and proc.stderr is not None
                        tg.start_soon(_capture, proc, proc.stdout, out)
                        tg.start_soon(_capture, proc, proc.stderr, err)
                    await proc.wait()
                    watch.cancel()
        finally:
            self._job_scopes.discard(scope)
        if proc is None:  # cancelled or timed out while the jail was being built
            return (JobResult(job.id, argv, CANCELLED, evidence="cancelled while the jail was being built")
                    if self._cancelling else
                    JobResult(job.id, argv, TIMED_OUT, evidence=f"the deadline of {deadline} s passed while the "
                                                               "jail was being built"))
        # ``async with proc`` has reaped the jail whichever way the block was left.
        returncode = proc.returncode
        if scope.cancelled_caught:
            status, evidence = ((CANCELLED, "the pool was cancelled; the jail was ended") if self._cancelling else
                                (TIMED_OUT, f"deadline {deadline} s ran out; the pool ended the jail"))
        elif out.overflowed or err.overflowed:
            status, evidence = OUTPUT_LIMIT, f"more than {self.limits.output} bytes on one stream; the jail was killed"
        else:
            # The same reading of an ending as aiogaol.run's: cpu-limit, memory-limit, ... or plain exits.
            assert returncode is not None and proc.usage is not None
            cg = proc._jail.cgroup
            status, evidence = _classify(self.limits, returncode, err.value(), proc.usage.cpu_time, False, False,
                                         max_rss=proc.usage.max_rss, cgroup=cg.report if cg is not None else None,
                                         jail_cpu_capped=outcome.jail_cpu_capped, cpu_source=outcome.cpu_source)
        return JobResult(job.id, argv, status, returncode, out.value(), err.value(), proc.usage,
                         evidence=evidence)


class JobResults:
    """The results of ``Pool.map``, in the order they finish: an async iterator (and async context
    manager, to stop early: leaving it cancels this iteration's unfinished jobs)."""

    def __init__(self, receive: anyio.abc.ObjectReceiveStream[JobResult], window: anyio.Semaphore,
                 scope: anyio.CancelScope) -> None:
        self._receive = receive
        self._window = window
        self._scope = scope
        self._error: Exception | None = None

    def __aiter__(self) -> AsyncIterator[JobResult]:
        return self

    async def __anext__(self) -> JobResult:
        try:
            result = await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            if self._error is not None:
                raise self._error
            raise StopAsyncIteration from None
        self._window.release()  # one place free: the feeder may take the next job
        return result

    async def aclose(self) -> None:
        self._scope.cancel()
        await self._receive.aclose()

    async def __aenter__(self) -> "JobResults":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _aiter(jobs: Iterable[Job | Argv] | AsyncIterable[Job | Argv]) -> AsyncIterator[Job | Argv]:
    if isinstance(jobs, AsyncIterable):
        async for job in jobs:
            yield job
    else:
        for job in jobs:
            yield job


async def _feed_stdin(proc: JailedProcess, data: bytes) -> None:
    assert proc.stdin is not None
    try:
        await proc.stdin.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass  # the program did not want it all; that is its business
    await proc.stdin.aclose()


async def _capture(proc: JailedProcess, stream: anyio.abc.ByteReceiveStream, into: _Capture) -> None:
    """Keep what the program writes up to the cap; past it, kill the jail so it cannot flood us."""
    try:
        async for chunk in stream:
            if into.cap is not None and into.size + len(chunk) > into.cap:
                into.chunks.append(chunk[:into.cap - into.size])
                into.size = into.cap
                into.overflowed = True
                proc.kill()
                return
            into.chunks.append(chunk)
            into.size += len(chunk)
    except anyio.ClosedResourceError:
        pass
