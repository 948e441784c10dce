"""The service's warm Python: ``aiogaol.PythonPool``s that run the python requests without files.

A python request whose code comes in ``code`` alone (no ``files``, no ``fetch_files``) is a job of a
PythonPool: the interpreter's start-up is paid once per pool, not per request, and each job is still
in a fresh jail of the language's profile (the same profile, limits and environment as the cold path's
``python -c``; its cwd is the jail's private ``/tmp``, as there).  A request with files keeps the cold
path (``aiogaol.run`` in a jail with the request's working directory), since a PythonPool job runs
code from a string in a jail of the pool's profile, which holds no request's directory.

A pool's limits are fixed when it is made (``RLIMIT_AS``, ``RLIMIT_NPROC``... are the jail plan's), so
there is one pool per distinct limits a request needs, in practice per ``memory_limit_MB``: the default
one is opened with the service, others when a request first needs them, at most ``MAX_POOLS`` (past
that a request takes the cold path, which has no warm interpreter to keep).  Each pool's ``size`` is
the service's ``--concurrency``, which admission control already holds, so a pool never makes a
request wait.  All are closed with the service.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import anyio

from .._errors import AiogaolError
from .._limits import Limits
from .._profile import Profile
from .._python_pool import PythonPool
from .._run import Result

log = logging.getLogger("aiogaol.serve")

MAX_POOLS = 4  # warm interpreters the service keeps (one per distinct limits)
CWD = "/tmp"   # every job's working directory: the jail's private, size-capped /tmp


class WarmPython:
    """The pools, keyed by the limits of their jobs (``wall_time`` aside: it is each job's ``timeout``)."""

    def __init__(self, profile: Profile, size: int, max_pools: int = MAX_POOLS) -> None:
        self.profile = profile
        self.size = size
        self.max_pools = max_pools
        self._pools: dict[Limits, PythonPool] = {}
        self._failed: set[Limits] = set()  # limits whose pool would not open: the cold path serves them
        self._lock = anyio.Lock()
        self._closed = False
        self.jobs = 0  # requests run on a warm pool (the pools' own counts are lost when a pool closes)

    @staticmethod
    def key(limits: Limits) -> Limits:
        return limits.replace(wall_time=None)

    async def open(self, limits: Limits) -> bool:
        """Open the pool of ``limits`` (the service's default), so the first request finds it warm."""
        return await self._pool(self.key(limits)) is not None

    async def _pool(self, key: Limits) -> PythonPool | None:
        pool = self._pools.get(key)
        if pool is not None or key in self._failed:
            return pool
        async with self._lock:
            pool = self._pools.get(key)
            if pool is not None or self._closed or key in self._failed or len(self._pools) >= self.max_pools:
                return pool
            try:
                pool = await PythonPool(self.profile, size=self.size, limits=key, cwd=CWD).open()
            except (AiogaolError, OSError, ValueError) as e:
                # The interpreter cannot be warmed here (it cannot import cffi, say): the cold path,
                # which needs nothing of it, serves these limits; said once in the log.
                log.warning("no warm python for %s: %s; python requests run cold", key, e)
                self._failed.add(key)
                return None
            self._pools[key] = pool
            return pool

    async def run(self, limits: Limits, code: str, *, input: bytes | None,
                  env: Mapping[str, str]) -> Result | None:
        """The job's result, or None when no warm pool serves these limits (the caller runs it cold).
        Raises what ``PythonPool.run`` raises (``SandboxSetupError``...)."""
        pool = await self._pool(self.key(limits))
        if pool is None:
            return None
        assert limits.wall_time is not None
        result = await pool.run(code, input=input, timeout=limits.wall_time, env=env)
        self.jobs += 1
        return result

    def stats(self) -> dict[str, int]:
        """What /metrics and /health show of the warm python."""
        pools = list(self._pools.values())
        return {"pools": len(pools), "jobs": self.jobs,
                "running": sum(p.stats().running for p in pools),
                "zygote_starts": sum(p.stats().zygote_starts for p in pools),
                "restarts": sum(p.stats().restarts for p in pools)}

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            async with self._lock:
                self._closed = True
                pools, self._pools = list(self._pools.values()), {}
            for pool in pools:
                await pool.aclose()

