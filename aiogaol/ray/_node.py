"""The actor on each node: a local ``aiogaol.Pool`` (and, from the first Python job, an
``aiogaol.PythonPool``) behind Ray async methods.

The head pins one of these to each node (``NodeAffinitySchedulingStrategy``, hard) and never sends it
more than ``per_node`` jobs at once; the local pools are sized ``per_node`` as well, so the bound also
holds for a caller that reaches the actor some other way.  The jails are this actor's children, tied to
its process by their lifeline: when Ray kills the actor, or its node goes, they die with it.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import ray

from .._pool import Pool
from .._run import Result
from ._records import Spec, Task


class NodeRunner:
    """One node's jails.  Opened with ``open`` and closed with ``aclose``, which may be called from
    different actor tasks (the local pools are not tied to the task that opened them)."""

    def __init__(self, spec: Spec) -> None:
        self._spec = spec
        self._pool: Pool | None = None
        self._python: Any = None  # an aiogaol.PythonPool, from the first Python job on
        self._python_lock = asyncio.Lock()
        self._stop = asyncio.Event()

    async def open(self) -> tuple[str, int]:
        """Open the local pool; returns this node's id and the actor's pid (for the head's records)."""
        spec = self._spec
        self._pool = await Pool(spec.profile, size=spec.per_node, limits=spec.limits, timeout=spec.timeout,
                                env=spec.env, isolation=spec.isolation).open()
        return ray.get_runtime_context().get_node_id(), os.getpid()

    async def run(self, task: Task) -> Result:
        if self._pool is None:
            raise RuntimeError("the node actor is not open")
        return await self._pool.run(task.argv, input=task.input, limits=task.limits, timeout=task.timeout,
                                    env=task.env, cwd=task.cwd, id=task.id)

    async def run_python(self, task: Task) -> Result:
        python = await self._python_pool()
        result: Result = await python.run(task.code, args=task.args, input=task.input, timeout=task.timeout,
                                          env=task.env if task.env is not None else self._spec.env)
        return result

    async def _python_pool(self) -> Any:
        # Warmed on first use: a node that never runs Python code never pays for the interpreter.
        # (The ignore lets this module type-check before and after PythonPool, issue 15, is in the tree.)
        from .._python_pool import PythonPool  # type: ignore[import-not-found, unused-ignore]

        async with self._python_lock:
            if self._python is None:
                spec = self._spec
                self._python = await PythonPool(spec.profile, preload=spec.preload, size=spec.per_node,
                                                limits=spec.limits, python=spec.python).open()
            return self._python

    async def alive(self) -> None:
        """Returns only when the actor closes: the head holds this call open to learn at once (from
        Ray's error) that the actor died, even while it runs no job."""
        await self._stop.wait()

    async def aclose(self) -> None:
        """Finish the running jobs and stop the local pools (every jail reaped when this returns)."""
        self._stop.set()
        if self._python is not None:
            await self._python.aclose()
        if self._pool is not None:
            await self._pool.aclose()
