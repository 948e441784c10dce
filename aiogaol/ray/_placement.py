"""Where the next job goes: the pool's placement policy as plain data, with no Ray and no event loop.

Each node actor that is ready holds ``per_node`` places.  A job takes a place on the node with the most
free places (ties go to the node that has done the fewest jobs, then to the lowest node id, so the
choice is deterministic), and gives it back when it ends.  A node's actor that is lost takes its places
with it: the jobs that held them give nothing back, and the node's replacement comes with fresh places.

A job being retried names the nodes it was lost on (``avoid``); it goes elsewhere while any other node
has an actor, full or not (it waits for a place there), and back to an avoided node only when no other
node is left.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(eq=False)
class Member:
    """One node actor's share of the pool (``generation`` tells a node's successive actors apart)."""

    node_id: str
    generation: int
    per_node: int
    running: int = 0
    done: int = 0
    failed: int = 0
    lost: bool = False

    @property
    def free(self) -> int:
        return self.per_node - self.running if not self.lost else 0


class Places:
    """The members of the pool by node id, and the choice of a place for a job."""

    def __init__(self, per_node: int) -> None:
        self.per_node = per_node
        self.members: dict[str, Member] = {}

    def add(self, node_id: str, generation: int) -> Member:
        """A node's actor is ready: its places join the pool (replacing a lost predecessor's)."""
        old = self.members.get(node_id)
        member = Member(node_id, generation, self.per_node)
        if old is not None:
            old.lost = True
            member.done, member.failed = old.done, old.failed  # the node's history, not the actor's
        self.members[node_id] = member
        return member

    def lose(self, member: Member) -> bool:
        """The member's actor is gone; True the first time (a member is lost once)."""
        if member.lost:
            return False
        member.lost = True
        return True

    def choose(self, avoid: frozenset[str] = frozenset()) -> Member | None:
        """The member to take a place on now, or None when the job must wait for one."""
        live = [m for m in self.members.values() if not m.lost]
        preferred = [m for m in live if m.node_id not in avoid]
        candidates = [m for m in (preferred or live) if m.free > 0]
        if not candidates:
            return None
        return min(candidates, key=lambda m: (-m.free, m.done, m.node_id))

    def take(self, member: Member) -> None:
        if member.lost or member.free <= 0:
            raise RuntimeError(f"no free place on {member.node_id}")
        member.running += 1

    def give(self, member: Member, *, ok: bool | None) -> None:
        """A job that held a place on ``member`` ended: ``ok`` says how (None: it did not end there)."""
        member.running -= 1
        if ok is not None:
            member.done += 1
            member.failed += not ok

    @property
    def live(self) -> list[Member]:
        return [m for m in self.members.values() if not m.lost]

    @property
    def capacity(self) -> int:
        return self.per_node * len(self.live)
