"""A bounded pool of jails for servers and batch runners: ``async with aiogaol.Pool(profile, size=N)``.

Each job runs through ``aiogaol.run``'s own path (``_run.steered_run``) and ends as an ``aiogaol.Result``:
the pool decides when a job runs and until when, never how it is run or read.  What a pool adds over
calling ``run`` in a loop is control over the server's own resources:

- at most ``size`` jails run at once; a caller that finds the pool full waits (backpressure), so a flood
  of requests queues as awaiting tasks the caller already owns, never as an unbounded list inside;
- every job has a deadline (``timeout``), an output cap (``limits.output``) and its own jail, so a
  hostile job (a loop, a fork bomb, a flood of output, a crash) ends as a result with a status, never as
  an exception that takes down its neighbours or the pool;
- ``map`` feeds an iterable of jobs, pulling the next one only when a slot frees up, and yields results
  as they finish;
- closing the pool finishes what runs (or cancels it when the block is left by an exception), and every
  jail is reaped before ``async with`` (or ``aclose``, from any task) returns;
- ``stats()`` says what is running, waiting and done, and the latency percentiles.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Union

import anyio
import anyio.abc

from ._background import Background
from ._errors import PoolClosedError, ProfileError, ProfileTypeError
from ._fallback import check_isolation
from ._limits import MAX_SECONDS, Limits, resolve_limits
from ._profile import Profile
from ._run import Result, Status, Steering, not_run, steered_run
from ._spawnargs import check_grace

Argv = Sequence[Union[str, bytes, "os.PathLike[str]"]]

# The pool's results are run()'s: one type, one status spelling, one output cap, one reading of an
# ending.  ``JobResult`` is kept as a second name of ``Result`` only so that code written against the
# pool's old result type still imports (its fields are now Result's: ``args``, ``wall_time``...).
JobResult = Result

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
    limits: Limits | None = None  # this job's own limits (a judge gives each problem its own)


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


class Pool:
    """At most ``size`` jails at once from one profile; see the module docstring for the contract.

    Each job runs through ``aiogaol.run``'s own path and ends as an ``aiogaol.Result``.  ``limits`` apply
    to every job that brings none of its own (default ``aiogaol.DEFAULT_LIMITS``); ``timeout`` is the
    default deadline of a job in seconds (``limits.wall_time`` when not given); ``grace_period`` the
    seconds between SIGTERM and SIGKILL for a job past its deadline.
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
        self._steerings: set[Steering] = set()
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
        for steering in list(self._steerings):
            steering.stop()

    # -- observing ----------------------------------------------------------------------------------

    def stats(self) -> PoolStats:
        ordered = sorted(self._latencies)
        return PoolStats(self.size, self._running, self._waiting, self._done, self._failed,
                         _percentile(ordered, 0.50), _percentile(ordered, 0.90), _percentile(ordered, 0.99))

    # -- running ------------------------------------------------------------------------------------

    async def run(self, argv: Argv, *, input: bytes | None = None, limits: Limits | None = None,
                  timeout: float | None = None, env: Mapping[str, str] | None = None, cwd: str | None = None,
                  id: Any = None) -> Result:
        """Run one job, waiting for a free slot first; return its ``Result`` whatever the program did.

        Takes ``aiogaol.run``'s per-job arguments: ``limits`` (the pool's when None), ``env`` (the
        pool's when None), ``cwd``, ``input``, and ``timeout``, the job's deadline (else
        ``limits.wall_time`` of the job's own limits, else the pool's ``timeout``).  The deadline runs
        from the moment the job has a slot and covers the building of its jail.

        Arguments that could never work (an empty argv, a relative cwd) raise ``ValueError``/
        ``TypeError``; a jail that fails to start (the program is missing, say) is a result with
        status "error", as it is a fact about the job, not a bug in the caller.
        """
        return await self._run(Job(argv, input, timeout, env, cwd, id, limits), raise_invalid=True)

    def map(self, jobs: Iterable[Job | Argv] | AsyncIterable[Job | Argv], *,
            timeout: float | None = None) -> "JobResults":
        """Run many jobs, at most ``size`` at a time, and iterate their results as they finish.

        ``jobs`` is pulled lazily (an endless generator is fine): the next job is taken only when one of
        this iteration's ``size`` places frees up, i.e. when a result has been consumed.  Use as
        ``async for result in pool.map(jobs)``, or inside ``async with`` to stop it early and cleanly.
        """
        self._check_open()
        send, receive = anyio.create_memory_object_stream[Result](self.size)
        results = JobResults(receive, anyio.Semaphore(self.size), anyio.CancelScope())
        assert self._background is not None
        self._background.start_soon(self._feed, jobs, timeout, send, results)
        return results

    async def _feed(self, jobs: Iterable[Job | Argv] | AsyncIterable[Job | Argv], timeout: float | None,
                    send: anyio.abc.ObjectSendStream[Result], results: "JobResults") -> None:
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
                            job = dataclasses.replace(job, id=index)
                        if job.timeout is None and timeout is not None:
                            job = dataclasses.replace(job, timeout=timeout)
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

    async def _run(self, job: Job, *, raise_invalid: bool) -> Result:
        submitted = time.monotonic()
        argv = _text_argv(job.argv) if not isinstance(job.argv, (str, bytes)) else (os.fsdecode(job.argv),)
        if not raise_invalid and self._closed:  # a map feeder's job that lost the race with aclose
            return self._record(not_run(argv, Status.CANCELLED, "the pool closed before the job started",
                                        self.limits, isolation=self.isolation, error="the pool closed",
                                        id=job.id), submitted)
        self._check_open()
        assert self._slots is not None
        try:
            limits = resolve_limits(job.limits) if job.limits is not None else self.limits
            own = limits.wall_time if job.limits is not None else None
            deadline = _check_timeout(job.timeout, "timeout") or own or self.timeout
            if job.input is not None and not isinstance(job.input, (bytes, bytearray, memoryview)):
                raise ProfileTypeError(f"input must be bytes or None, not {type(job.input).__name__}")
        except (TypeError, ValueError) as e:
            if raise_invalid:
                raise
            return self._record(not_run(argv, Status.ERROR, "the job's arguments were refused", self.limits,
                                        isolation=self.isolation, error=f"{type(e).__name__}: {e}", exception=e,
                                        id=job.id), submitted)
        # The deadline is the job's wall time: enforced by run's own SIGTERM, grace, SIGKILL, and
        # reported in Result.limits as the limit the job really had.
        limits = dataclasses.replace(limits, wall_time=deadline)
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            if self._closed:
                # Closing finishes what runs; what was still waiting for a slot is turned away.
                return self._record(not_run(argv, Status.CANCELLED, "the pool closed before a slot was free",
                                            limits, isolation=self.isolation, error="the pool closed",
                                            id=job.id), submitted)
            self._running += 1
            try:
                return self._record(await self._execute(job, argv, limits, raise_invalid), submitted)
            finally:
                self._running -= 1
                if not self._running and self._idle is not None:
                    self._idle.set()
                    self._idle = None
        finally:
            self._slots.release()

    def _record(self, result: Result, submitted: float) -> Result:
        latency = time.monotonic() - submitted
        result = dataclasses.replace(result, latency=latency)
        self._done += 1
        if result.status is not Status.OK:
            self._failed += 1
        self._latencies.append(latency)
        return result

    async def _execute(self, job: Job, argv: tuple[str, ...], limits: Limits, raise_invalid: bool) -> Result:
        """The job through ``run``'s own path (``steered_run``): the pool adds only the deadline from
        the slot and the stop that ``aclose(cancel=True)`` gives every running job."""
        steering = Steering(anyio.current_time() + limits.wall_time if limits.wall_time else math.inf)
        self._steerings.add(steering)
        if self._cancelling:
            steering.stop()
        try:
            result = await steered_run(self.profile, job.argv, input=job.input or None, limits=limits,
                                       env=job.env if job.env is not None else self.env, cwd=job.cwd,
                                       isolation=self.isolation, grace_period=self.grace_period,
                                       steering=steering)
        except (TypeError, ValueError) as e:
            if raise_invalid:
                raise
            return not_run(argv, Status.ERROR, "the job's arguments were refused", limits, isolation=self.isolation,
                           error=f"{type(e).__name__}: {e}", exception=e, id=job.id)
        except OSError as e:
            return not_run(argv, Status.ERROR, "the jail could not be built", limits, isolation=self.isolation,
                           error=str(e) or type(e).__name__, exception=e, id=job.id)
        finally:
            self._steerings.discard(steering)
        return dataclasses.replace(result, id=job.id)


class JobResults:
    """The results of ``Pool.map``, in the order they finish: an async iterator (and async context
    manager, to stop early: leaving it cancels this iteration's unfinished jobs)."""

    def __init__(self, receive: anyio.abc.ObjectReceiveStream[Result], window: anyio.Semaphore,
                 scope: anyio.CancelScope) -> None:
        self._receive = receive
        self._window = window
        self._scope = scope
        self._error: Exception | None = None

    def __aiter__(self) -> AsyncIterator[Result]:
        return self

    async def __anext__(self) -> Result:
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
