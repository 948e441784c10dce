"""The pool's head: one async actor that owns the placement, the node actors and the retries.

Every handle of a ``RayPool`` (the driver's, and the copies pickled into tasks and other actors) calls
this one actor, so the per-node bound and the choice of node are cluster-wide, not per caller.  The head:

- starts a ``NodeRunner`` on each alive node, pinned there, and on each node that joins later (it looks
  at ``ray.nodes()`` every ``watch_interval`` seconds);
- holds one ``alive()`` call open on each actor, so that an actor's death (``ray.kill``, a crash, its
  node removed) is known at once; a lost actor is replaced while its node is alive;
- gives each job a place on the node with the most free places (``_placement``), or makes its caller
  wait for one; a job whose actor died under it is retried elsewhere up to ``retries`` times, then
  fails with ``NodeLost``.

Callers that wait are coroutines parked in this actor, at most ``MAX_CALLS`` at once (the actor's
``max_concurrency``); Ray keeps calls beyond that with each caller until one ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import math
import time
import uuid
from collections import deque
from typing import Any

import ray
from ray.exceptions import ObjectLostError, RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .._run import Result
from ._node import NodeRunner
from ._placement import Member, Places
from ._records import NodeLost, NodeStats, RayPoolError, RayPoolStats, Spec, Task

MAX_CALLS = 4096  # callers in the head at once (running and waiting); a bound, not a target
_LATENCY_WINDOW = 10_000
_NODE_CALLS = 8  # a node actor's calls besides its jobs: alive(), aclose(), open()
_log = logging.getLogger("aiogaol.ray")

# An actor's death, as Ray reports it to a call that was running on it (its node's death included),
# or as the loss of a result that lived in the dead node's object store.
_LOSSES: tuple[type[BaseException], ...] = (RayActorError, ObjectLostError)


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclasses.dataclass(eq=False)
class _Actor:
    """A node actor the head started, with what it needs to replace or close it."""

    member: Member
    handle: Any
    name: str
    sentinel: asyncio.Task[None] | None = None


class PoolHead:
    def __init__(self, spec: Spec, retries: int, watch_interval: float, start_timeout: float,
                 actor_options: dict[str, Any]) -> None:
        self._spec = spec
        self._retries = retries
        self._interval = watch_interval
        self._start_timeout = start_timeout
        self._actor_options = actor_options
        self._uid = uuid.uuid4().hex[:8]
        self._places = Places(spec.per_node)
        self._actors: dict[str, _Actor] = {}  # by node id: the current actor of each node
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._generations = itertools.count(1)
        self._changed: asyncio.Condition | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._closed = False
        self._running = 0
        self._waiting = 0
        self._done = 0
        self._failed = 0
        self._retried = 0
        self._lost = 0
        self._replaced = 0
        self._latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._start_error = ""

    # -- life of the pool ---------------------------------------------------------------------------

    async def start(self) -> RayPoolStats:
        """Start an actor on each alive node and wait for them; then watch the cluster."""
        self._changed = asyncio.Condition()
        await self._sync_nodes()
        if self._starting:
            await asyncio.gather(*self._starting.values(), return_exceptions=True)
        if not self._places.live:
            raise RayPoolError(f"no node actor could be started: {self._start_error or 'the cluster has no alive node'}")
        self._watcher = asyncio.get_running_loop().create_task(self._watch())
        return await self.stats()

    async def close(self) -> None:
        """Refuse new jobs, let the running ones finish, then close and kill every node actor."""
        self._closed = True
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()  # waiters learn that the pool is closed
            await self._changed.wait_for(lambda: self._running == 0)
        if self._watcher is not None:
            self._watcher.cancel()
        for task in self._starting.values():
            task.cancel()
        actors = list(self._actors.values())
        for actor in actors:
            if actor.sentinel is not None:
                actor.sentinel.cancel()
        await asyncio.gather(*(self._close_actor(a) for a in actors), return_exceptions=True)

    async def _close_actor(self, actor: _Actor) -> None:
        try:
            await actor.handle.aclose.remote()
        finally:
            ray.kill(actor.handle)

    # -- the cluster --------------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._sync_nodes()
            except Exception:  # a GCS hiccup: look again next round
                _log.exception("aiogaol.ray: reading the cluster's nodes failed")

    async def _sync_nodes(self) -> None:
        nodes = await asyncio.to_thread(ray.nodes)
        alive = {n["NodeID"] for n in nodes if n.get("Alive")}
        gone = [a for node_id, a in self._actors.items() if node_id not in alive and not a.member.lost]
        for actor in gone:
            self._lose(actor, "its node is no longer alive")
        if gone:
            await self._notify()  # a retry that avoided the other nodes may now take a place on any
        for node_id in alive:
            current = self._actors.get(node_id)
            if (current is None or current.member.lost) and node_id not in self._starting and not self._closed:
                task = asyncio.get_running_loop().create_task(self._start_actor(node_id, current is not None))
                self._starting[node_id] = task

    async def _start_actor(self, node_id: str, replacing: bool) -> None:
        generation = next(self._generations)
        name = f"aiogaol-{self._uid}-{node_id[:12]}-{generation}"
        options: dict[str, Any] = {"num_cpus": 0, **self._actor_options}
        runner: Any = ray.remote(NodeRunner)  # Ray's stubs type remote methods as plain functions
        handle = runner.options(
            name=name, max_restarts=0, max_concurrency=self._spec.per_node + _NODE_CALLS,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False), **options,
        ).remote(self._spec)
        try:
            where, _ = await asyncio.wait_for(handle.open.remote(), self._start_timeout)
            if where != node_id:
                raise RayPoolError(f"the actor pinned to node {node_id[:12]} runs on {where[:12]}")
        except Exception as e:  # the node died meanwhile, or the actor could not start: next round
            self._start_error = f"node {node_id[:12]}: {_reason(_cause(e) if isinstance(e, RayTaskError) else e)}"
            _log.warning("aiogaol.ray: the actor did not start on %s", self._start_error)
            ray.kill(handle)
            return
        finally:
            self._starting.pop(node_id, None)
        if self._closed:
            ray.kill(handle)
            return
        actor = _Actor(self._places.add(node_id, generation), handle, name)
        self._actors[node_id] = actor
        self._replaced += replacing
        actor.sentinel = asyncio.get_running_loop().create_task(self._hold(actor))
        await self._notify()

    async def _hold(self, actor: _Actor) -> None:
        try:
            await actor.handle.alive.remote()
        except _LOSSES as e:
            self._lose(actor, _reason(e))
            await self._notify()

    def _lose(self, actor: _Actor, reason: str) -> None:
        if not self._places.lose(actor.member):
            return
        self._lost += 1
        _log.warning("aiogaol.ray: lost the actor %s: %s", actor.name, reason)
        if actor.sentinel is not None and actor.sentinel is not asyncio.current_task():
            actor.sentinel.cancel()
        ray.kill(actor.handle)  # a lost actor that still half-lives must not hold jails
        # The next look at the nodes starts its successor while the node lives.

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    # -- jobs ---------------------------------------------------------------------------------------

    async def run(self, task: Task) -> Result:
        """Run one job on the node with the most free places, retrying it elsewhere if its actor dies."""
        if self._closed:
            raise RayPoolError("the RayPool is closed")
        begun = time.monotonic()
        avoid: set[str] = set()
        attempts = 0
        while True:
            actor = await self._take(frozenset(avoid))
            attempts += 1
            self._running += 1
            ok: bool | None = None
            try:
                method = actor.handle.run if task.kind == "argv" else actor.handle.run_python
                ref = method.remote(task)
                try:
                    result: Result = await ref
                except asyncio.CancelledError:
                    ray.cancel(ref)  # the node's coroutine is cancelled: its pool ends the jail
                    raise
                ok = result.ok
            except _LOSSES as e:
                self._lose(actor, _reason(e))
                avoid.add(actor.member.node_id)
                if attempts > self._retries:
                    self._done += 1
                    self._failed += 1
                    raise NodeLost(actor.member.node_id, attempts, _reason(e)) from None
                self._retried += 1
                continue
            except RayTaskError as e:
                raise _cause(e) from None
            finally:
                self._running -= 1
                self._places.give(actor.member, ok=ok)
                await self._notify()
            self._done += 1
            self._failed += not ok
            latency = time.monotonic() - begun
            self._latencies.append(latency)
            return dataclasses.replace(result, id=task.id, latency=latency)

    async def _take(self, avoid: frozenset[str]) -> _Actor:
        assert self._changed is not None
        self._waiting += 1
        try:
            async with self._changed:
                while True:
                    if self._closed:
                        raise RayPoolError("the RayPool is closed")
                    member = self._places.choose(avoid)
                    if member is not None:
                        self._places.take(member)
                        return self._actors[member.node_id]
                    await self._changed.wait()
        finally:
            self._waiting -= 1

    # -- observing ----------------------------------------------------------------------------------

    async def stats(self) -> RayPoolStats:
        nodes = tuple(NodeStats(a.member.node_id, a.name, a.member.generation, a.member.running, a.member.free,
                                a.member.done, a.member.failed)
                      for a in sorted(self._actors.values(), key=lambda a: a.member.node_id) if not a.member.lost)
        ordered = sorted(self._latencies)
        return RayPoolStats(self._spec.per_node, nodes, self._places.capacity, self._running, self._waiting,
                            self._done, self._failed, self._retried, self._lost, self._replaced,
                            _percentile(ordered, 0.50), _percentile(ordered, 0.90), _percentile(ordered, 0.99),
                            tuple(sorted(self._starting)))


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _cause(e: RayTaskError) -> BaseException:
    """The exception a remote method raised, as itself (Ray wraps it in a RayTaskError)."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) else e
