"""``RayPool``: the caller's handle on a pool of jails spread over a Ray cluster.

The handle is small and picklable (the head actor's handle and nothing else), so it can be passed to
Ray tasks and other actors as an argument, or found there by name (``RayPool.connect(name)``) when the
pool was opened with one.  Arguments are checked here, before anything crosses the cluster, so a bad
call fails at once with aiogaol's own exceptions; the work happens in the head (``_head``) and the node
actors (``_node``).

Async methods await Ray's object refs on the caller's asyncio loop (Ray's refs are asyncio awaitables,
so this face is asyncio's, not trio's); the ``*_sync`` methods are for driver code and Ray tasks that
have no loop, and block on ``ray.get``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Union

import ray
from ray.exceptions import RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .._errors import ProfileError, ProfileTypeError
from .._fallback import check_isolation
from .._limits import Limits, resolve_limits
from .._pool import Job, _check_timeout
from .._profile import Profile
from .._run import Result, Status, not_run
from .._spawnargs import check_argv
from ._head import MAX_CALLS, PoolHead
from ._records import NodeLost, PythonJob, RayPoolError, RayPoolStats, Spec, Task

Argv = Sequence[Union[str, bytes, "os.PathLike[str]"]]
_MAX_PER_NODE = 1 << 12
_END = object()


class RayPool:
    """Jails on every node of a Ray cluster, at most ``per_node`` at once on each.

    Open with ``await RayPool.open(profile, ...)`` (or ``RayPool.open_sync``); run jobs with ``run``,
    ``run_python`` and ``map``; read ``stats``; close with ``aclose`` (or ``close_sync``).  See
    docs/scale-out.md.
    """

    def __init__(self, head: Any, *, name: str | None = None) -> None:
        # Built by ``open``/``connect``; holds only the head's actor handle, so it pickles.
        self._head = head
        self.name = name

    # -- opening and closing ------------------------------------------------------------------------

    @classmethod
    def _create(cls, profile: Profile, *, per_node: int = 8, limits: Limits | None = None, retries: int = 1,
                timeout: float | None = None, env: Mapping[str, str] | None = None,
                preload: Iterable[str] = (), python: str | None = None, isolation: str = "namespaces",
                name: str | None = None, watch_interval: float = 1.0, start_timeout: float = 120.0,
                actor_options: Mapping[str, Any] | None = None) -> tuple["RayPool", Any]:
        if not isinstance(profile, Profile):
            raise ProfileTypeError(f"profile must be an aiogaol.Profile, not {type(profile).__name__}")
        if isinstance(per_node, bool) or not isinstance(per_node, int):
            raise ProfileTypeError(f"per_node must be a positive int, not {type(per_node).__name__}")
        if not 1 <= per_node <= _MAX_PER_NODE:
            raise ProfileError(f"per_node must be from 1 to {_MAX_PER_NODE}, not {per_node}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ProfileError(f"retries must be an int >= 0, not {retries!r}")
        resolved = resolve_limits(limits)
        timeout = _check_timeout(timeout, "timeout")
        if env is not None and not isinstance(env, Mapping):
            raise ProfileTypeError(f"env must be a mapping or None, not {type(env).__name__}")
        if isinstance(preload, (str, bytes)):
            raise ProfileTypeError("preload takes an iterable of module names, not a string")
        check_isolation(isolation)
        for what, value in (("watch_interval", watch_interval), ("start_timeout", start_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e6:
                raise ProfileError(f"{what} must be a positive number of seconds, not {value!r}")
        if name is not None and (not isinstance(name, str) or not name):
            raise ProfileTypeError(f"name must be a non-empty str or None, not {name!r}")
        spec = Spec(profile, per_node, resolved, timeout, dict(env) if env is not None else None,
                    tuple(preload), python, isolation)
        options: dict[str, Any] = {"num_cpus": 0, "max_concurrency": MAX_CALLS, "max_restarts": 0}
        if name is not None:
            options["name"] = name
        if ray.is_initialized():
            # The head lives beside the caller (its loss is the pool's end; see docs/scale-out.md).
            here = ray.get_runtime_context().get_node_id()
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(here, soft=True)
        head_class: Any = ray.remote(PoolHead)  # Ray's stubs type remote methods as plain functions
        head = head_class.options(**options).remote(spec, retries, float(watch_interval),
                                                             float(start_timeout), dict(actor_options or {}))
        return cls(head, name=name), head.start.remote()

    @classmethod
    async def open(cls, profile: Profile, *, per_node: int = 8, limits: Limits | None = None, retries: int = 1,
                   timeout: float | None = None, env: Mapping[str, str] | None = None,
                   preload: Iterable[str] = (), python: str | None = None, isolation: str = "namespaces",
                   name: str | None = None, watch_interval: float = 1.0, start_timeout: float = 120.0,
                   actor_options: Mapping[str, Any] | None = None) -> "RayPool":
        """Start the pool: one actor per alive node (later nodes get one when they join), each with a
        local ``aiogaol.Pool`` of ``per_node`` jails.

        ``limits``, ``timeout`` and ``env`` are every job's defaults (a job's own override them);
        ``retries`` is how many other nodes a job whose node is lost is tried on before ``NodeLost``;
        ``preload``/``python`` configure the nodes' ``PythonPool`` for ``run_python``; ``name`` makes the
        pool reachable with ``RayPool.connect(name)``; ``actor_options`` go to the node actors'
        ``.options()`` (``num_cpus`` is 0 unless given: jails are not Ray tasks).  Returns once every
        node actor is ready.
        """
        pool, started = cls._create(profile, per_node=per_node, limits=limits, retries=retries, timeout=timeout,
                                    env=env, preload=preload, python=python, isolation=isolation, name=name,
                                    watch_interval=watch_interval, start_timeout=start_timeout,
                                    actor_options=actor_options)
        try:
            await _awaited(started)
        except BaseException:
            ray.kill(pool._head)  # a pool that did not open leaves no head behind
            raise
        return pool

    @classmethod
    def open_sync(cls, profile: Profile, **options: Any) -> "RayPool":
        """``open`` for code without an event loop (a driver script, a Ray task): blocks until ready."""
        pool, started = cls._create(profile, **options)
        try:
            _got(started)
        except BaseException:
            ray.kill(pool._head)
            raise
        return pool

    @classmethod
    def connect(cls, name: str, *, namespace: str | None = None) -> "RayPool":
        """The pool opened elsewhere with ``name=name`` (from a Ray task or actor of the same cluster)."""
        return cls(ray.get_actor(name, namespace=namespace), name=name)

    async def aclose(self) -> None:
        """Refuse new jobs, let the running ones finish, then stop every node actor and the head."""
        await _awaited(self._head.close.remote())
        ray.kill(self._head)

    def close_sync(self) -> None:
        _got(self._head.close.remote())
        ray.kill(self._head)

    async def __aenter__(self) -> "RayPool":
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    # -- jobs ---------------------------------------------------------------------------------------

    async def run(self, argv: Argv, *, input: bytes | None = None, timeout: float | None = None,
                  limits: Limits | None = None, env: Mapping[str, str] | None = None, cwd: str | None = None,
                  id: Any = None) -> Result:
        """Run ``argv`` in a jail on the node with the most free places; its ``aiogaol.Result``.

        Waits while every place is taken.  Raises ``NodeLost`` when the job's node died under it and no
        retry was left; bad arguments raise ``ValueError``/``TypeError`` here, before anything is sent.
        """
        return await self._call(_argv_task(argv, input, timeout, limits, env, cwd, id))

    async def run_python(self, code: str, *, args: Sequence[str] = (), input: bytes | None = None,
                         timeout: float | None = None, env: Mapping[str, str] | None = None,
                         id: Any = None) -> Result:
        """Run ``code`` as ``python3 -c code *args`` in a fresh jail, through the node's warm
        ``aiogaol.PythonPool``."""
        return await self._call(_python_task(PythonJob(code, tuple(args), input, timeout, env, id)))

    def run_sync(self, argv: Argv, **kwargs: Any) -> Result:
        """``run`` for code without an event loop; blocks on ``ray.get``."""
        return self._call_sync(_argv_task(argv, kwargs.pop("input", None), kwargs.pop("timeout", None),
                                          kwargs.pop("limits", None), kwargs.pop("env", None),
                                          kwargs.pop("cwd", None), kwargs.pop("id", None), **kwargs))

    def run_python_sync(self, code: str, **kwargs: Any) -> Result:
        """``run_python`` for code without an event loop; blocks on ``ray.get``."""
        return self._call_sync(_python_task(PythonJob(code, **kwargs)))

    def map(self, jobs: Iterable[Job | PythonJob | Argv] | AsyncIterable[Job | PythonJob | Argv], *,
            window: int | None = None) -> "RayResults":
        """Run many jobs over the cluster and iterate their results as they finish.

        ``jobs`` (``aiogaol.Job``, ``PythonJob`` or an argv) is pulled lazily: at most ``window`` jobs
        (default: the pool's capacity when the iteration starts) are out at once, and the next is taken
        when a result has been consumed.  A job without an ``id`` gets its index.  A job whose node was
        lost with no retry left comes back as a result with status "error" and ``exception`` set to the
        ``NodeLost``, so its neighbours go on.  Leave early with ``async with pool.map(...)``: unfinished
        jobs are cancelled.
        """
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ProfileError(f"window must be a positive int or None, not {window!r}")
        return RayResults(self, jobs, window)

    def map_sync(self, jobs: Iterable[Job | PythonJob | Argv], *, window: int | None = None) -> Iterator[Result]:
        """``map`` for code without an event loop: the results as they finish (``ray.wait``), at most
        ``window`` jobs out at once, ``jobs`` pulled lazily.  Closing the generator early (``break``)
        cancels the jobs still out."""
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ProfileError(f"window must be a positive int or None, not {window!r}")
        return self._map_sync(iter(jobs), window)

    def _map_sync(self, jobs: Iterator[Job | PythonJob | Argv], window: int | None) -> Iterator[Result]:
        size = window if window is not None else max(1, self.stats_sync().capacity)
        out: dict[Any, Task] = {}
        index = 0
        try:
            while True:
                while len(out) < size:
                    job = next(jobs, _END)
                    if job is _END:
                        break
                    task = _job_task(job, index)  # type: ignore[arg-type]
                    index += 1
                    out[self._head.run.remote(task)] = task
                if not out:
                    return
                (ready,), _ = ray.wait(list(out), num_returns=1)
                task = out.pop(ready)
                try:
                    yield _got(ready)
                except NodeLost as e:
                    yield _lost(task, e)
        finally:
            for ref in out:
                ray.cancel(ref)

    # -- observing ----------------------------------------------------------------------------------

    async def stats(self) -> RayPoolStats:
        """Per node and in total: running, free, done, failed, waiting, retried, lost, replaced."""
        stats: RayPoolStats = await _awaited(self._head.stats.remote())
        return stats

    def stats_sync(self) -> RayPoolStats:
        stats: RayPoolStats = _got(self._head.stats.remote())
        return stats

    # -- plumbing -----------------------------------------------------------------------------------

    async def _call(self, task: Task) -> Result:
        ref = self._head.run.remote(task)
        try:
            result: Result = await _awaited(ref)
        except asyncio.CancelledError:
            ray.cancel(ref)  # the head cancels the job on its node, whose pool ends the jail
            raise
        return result

    def _call_sync(self, task: Task) -> Result:
        result: Result = _got(self._head.run.remote(task))
        return result

    def __reduce__(self) -> tuple[Any, ...]:
        return (RayPool, (self._head,), {"name": self.name})

    def __repr__(self) -> str:
        return f"<RayPool {self.name or ''}>".replace(" >", ">")


class RayResults:
    """The results of ``RayPool.map`` as they finish: an async iterator, and an async context manager
    that cancels the unfinished jobs when left early."""

    def __init__(self, pool: RayPool, jobs: Iterable[Job | PythonJob | Argv] | AsyncIterable[Job | PythonJob | Argv],
                 window: int | None) -> None:
        self._pool = pool
        self._jobs = _aiter(jobs)
        self._window = window
        self._pending: set[asyncio.Task[Result]] = set()
        self._index = 0
        self._exhausted = False

    def __aiter__(self) -> AsyncIterator[Result]:
        return self

    async def __anext__(self) -> Result:
        if self._window is None:
            self._window = max(1, (await self._pool.stats()).capacity)
        while not self._exhausted and len(self._pending) < self._window:
            try:
                job = await anext(self._jobs)
            except StopAsyncIteration:
                self._exhausted = True
                break
            task = _job_task(job, self._index)
            self._index += 1
            self._pending.add(asyncio.ensure_future(self._one(task)))
        if not self._pending:
            raise StopAsyncIteration
        done, _ = await asyncio.wait(self._pending, return_when=asyncio.FIRST_COMPLETED)
        finished = done.pop()
        self._pending.discard(finished)
        return finished.result()

    async def _one(self, task: Task) -> Result:
        try:
            return await self._pool._call(task)
        except NodeLost as e:
            return _lost(task, e)

    async def aclose(self) -> None:
        for pending in self._pending:
            pending.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        self._pending.clear()
        self._exhausted = True

    async def __aenter__(self) -> "RayResults":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _lost(task: Task, e: NodeLost) -> Result:
    """A job of ``map`` whose node was lost with no retry left: a result, so its neighbours go on."""
    return not_run(task.argv or ("python3", "-c", task.code), Status.ERROR, "the job's node was lost",
                   task.limits or resolve_limits(None), error=str(e), exception=e, id=task.id)


# -- checking and packing jobs ----------------------------------------------------------------------

def _argv_task(argv: Argv, input: bytes | None, timeout: float | None, limits: Limits | None,
               env: Mapping[str, str] | None, cwd: str | None, id: Any, **unknown: Any) -> Task:
    if unknown:
        raise ProfileTypeError(f"run() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    if isinstance(argv, (str, bytes)):
        raise ProfileTypeError("argv must be a sequence of arguments, not a single string")
    items = check_argv(argv)
    if not all(isinstance(a, (str, bytes, os.PathLike)) for a in items):
        raise ProfileTypeError("argv's items must be str, bytes or path-like")
    args = tuple(os.fsdecode(a) for a in items)  # type: ignore[arg-type]
    return Task("argv", argv=args, input=_check_input(input), timeout=_check_timeout(timeout, "timeout"),
                limits=_check_limits(limits), env=_check_env(env), cwd=_check_cwd(cwd), id=id)


def _python_task(job: PythonJob) -> Task:
    if not isinstance(job.code, str):
        raise ProfileTypeError(f"code must be a str, not {type(job.code).__name__}")
    if isinstance(job.args, (str, bytes)) or not all(isinstance(a, str) for a in job.args):
        raise ProfileTypeError("args must be a sequence of str")
    return Task("python", code=job.code, args=tuple(job.args), input=_check_input(job.input),
                timeout=_check_timeout(job.timeout, "timeout"), env=_check_env(job.env), id=job.id)


def _job_task(job: Job | PythonJob | Argv, index: int) -> Task:
    if isinstance(job, PythonJob):
        task = _python_task(job)
    elif isinstance(job, Job):
        task = _argv_task(job.argv, job.input, job.timeout, job.limits, job.env, job.cwd, job.id)
    else:
        task = _argv_task(job, None, None, None, None, None, None)
    return task if task.id is not None else dataclasses.replace(task, id=index)


def _check_input(data: bytes | None) -> bytes | None:
    if data is not None and not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProfileTypeError(f"input must be bytes or None, not {type(data).__name__}")
    return bytes(data) if data is not None else None


def _check_limits(limits: Limits | None) -> Limits | None:
    return resolve_limits(limits) if limits is not None else None


def _check_env(env: Mapping[str, str] | None) -> dict[str, str] | None:
    if env is None:
        return None
    if not isinstance(env, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ProfileTypeError("env must be a mapping of str to str, or None")
    return dict(env)


def _check_cwd(cwd: str | None) -> str | None:
    if cwd is not None and (not isinstance(cwd, str) or not os.path.isabs(cwd)):
        raise ProfileError(f"cwd must be an absolute path or None, not {cwd!r}")
    return cwd


async def _aiter(jobs: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(jobs, AsyncIterable):
        async for job in jobs:
            yield job
    else:
        for job in jobs:
            yield job


# -- Ray's refs, unwrapped ----------------------------------------------------------------------------

async def _awaited(ref: Any) -> Any:
    try:
        return await ref
    except RayTaskError as e:
        raise _unwrapped(e) from None
    except RayActorError as e:
        raise _head_gone(e) from e


def _got(ref: Any) -> Any:
    try:
        return ray.get(ref)
    except RayTaskError as e:
        raise _unwrapped(e) from None
    except RayActorError as e:
        raise _head_gone(e) from e


def _head_gone(e: RayActorError) -> RayPoolError:
    return RayPoolError("the RayPool's head actor is gone: the pool was closed, or the head's node died "
                        f"({type(e).__name__})")


def _unwrapped(e: RayTaskError) -> BaseException:
    """A remote method's own exception (``NodeLost``, ``RayPoolError``, aiogaol's errors), as itself."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) else e


__all__ = ["NodeLost", "PythonJob", "RayPool", "RayPoolError", "RayPoolStats", "RayResults"]
