"""What crosses Ray's object store between the caller, the pool's head and the node actors: plain,
picklable values (frozen dataclasses of builtins and aiogaol's own values) and the pool's exceptions.

Nothing here imports Ray, so the records can be built, compared and pickled where Ray is absent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import AiogaolError
from .._limits import Limits
from .._profile import Profile


class RayPoolError(AiogaolError):
    """The pool itself cannot do what was asked: it is closed, or no node actor could be started."""


class NodeLost(RayPoolError):
    """A job's node (or its actor) died while the job ran there, and no retry was left (``retries``).

    ``node_id`` is the last node the job was on; ``attempts`` how many nodes it was tried on; ``reason``
    Ray's own words about the death.  The job's jails died with the actor's process (their lifeline).
    """

    def __init__(self, node_id: str, attempts: int, reason: str) -> None:
        self.node_id = node_id
        self.attempts = attempts
        self.reason = reason
        super().__init__(f"the node {node_id[:12]} (or its actor) was lost while the job ran there, after "
                         f"{attempts} attempt{'s' if attempts != 1 else ''}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # An exception pickles as its class and ``args`` (the message); rebuild from the fields instead.
        return (type(self), (self.node_id, self.attempts, self.reason))


@dataclass(frozen=True)
class PythonJob:
    """One piece of Python code for ``RayPool.map`` (run as ``python3 -c code *args`` in a fresh jail,
    through the node's ``aiogaol.PythonPool``); ``id`` comes back on its result."""

    code: str
    args: Sequence[str] = ()
    input: bytes | None = None
    timeout: float | None = None
    env: Mapping[str, str] | None = None
    id: Any = None


@dataclass(frozen=True)
class Task:
    """One job as the head hands it to a node: a program (``kind`` "argv") or Python code ("python")."""

    kind: str
    argv: tuple[str, ...] = ()
    code: str = ""
    args: tuple[str, ...] = ()
    input: bytes | None = None
    timeout: float | None = None
    limits: Limits | None = None
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    id: Any = None


@dataclass(frozen=True)
class Spec:
    """What every node actor is built from: the jail's profile, its places and its defaults."""

    profile: Profile
    per_node: int
    limits: Limits | None
    timeout: float | None
    env: Mapping[str, str] | None
    preload: tuple[str, ...]
    python: str | None
    isolation: str


@dataclass(frozen=True)
class NodeStats:
    """One node's share of the pool: its actor (``actor_name``, for ``ray.get_actor``; ``generation``
    counts the actors this node has had), the jobs running there, the places free, the jobs done and
    how many of those were not ``ok``."""

    node_id: str
    actor_name: str
    generation: int
    running: int
    free: int
    done: int
    failed: int


@dataclass(frozen=True)
class RayPoolStats:
    """A snapshot of the whole pool, per node and in total.

    ``capacity`` is ``per_node`` times the nodes with an actor ready; ``waiting`` the callers waiting for a
    free place; ``retried`` the jobs started again on another node after theirs was lost; ``lost`` the
    actors lost (killed, crashed, or their node gone); ``replaced`` the actors started again on a node
    that lives on.  ``p50``/``p90``/``p99`` are latency percentiles in seconds (from the head's receipt of
    the call to its result, waiting included) over the most recent jobs; None before the first.
    """

    per_node: int
    nodes: tuple[NodeStats, ...]
    capacity: int
    running: int
    waiting: int
    done: int
    failed: int
    retried: int
    lost: int
    replaced: int
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    starting: tuple[str, ...] = field(default=())
