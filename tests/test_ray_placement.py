"""RayPool's placement policy (aiogaol/ray/_placement.py) as plain data: no Ray, no event loop."""

from __future__ import annotations

import pytest

pytest.importorskip("ray", reason="Ray is not installed here (pip install 'aiogaol[ray]'); aiogaol.ray needs it")

from aiogaol.ray._placement import Places  # noqa: E402


def test_a_job_takes_a_place_on_the_node_with_the_most_free() -> None:
    places = Places(per_node=2)
    a, b = places.add("a", 1), places.add("b", 1)
    taken = []
    for _ in range(4):
        m = places.choose()
        assert m is not None
        places.take(m)
        taken.append(m.node_id)
    assert sorted(taken) == ["a", "a", "b", "b"] and taken[:2] in (["a", "b"], ["b", "a"])  # spread first
    assert places.choose() is None  # full: the caller waits
    places.give(b, ok=True)
    assert places.choose() is b
    with pytest.raises(RuntimeError):
        places.take(a)  # never past per_node


def test_ties_go_to_the_node_that_has_done_least() -> None:
    places = Places(per_node=1)
    a, b = places.add("a", 1), places.add("b", 1)
    places.take(a)
    places.give(a, ok=True)
    assert places.choose() is b


def test_a_retried_job_avoids_the_node_it_was_lost_on_while_another_exists() -> None:
    places = Places(per_node=1)
    a, b = places.add("a", 1), places.add("b", 1)
    places.take(b)
    # b is full, a is free, but the job was lost on a: it waits for b rather than going back to a ...
    assert places.choose(frozenset({"a"})) is None
    places.give(b, ok=None)
    assert places.choose(frozenset({"a"})) is b
    # ... and goes back to a only when no other node is left.
    places.lose(b)
    assert places.choose(frozenset({"a"})) is a


def test_a_lost_actor_takes_its_places_and_its_successor_brings_fresh_ones() -> None:
    places = Places(per_node=2)
    a = places.add("a", 1)
    places.take(a)
    places.give(a, ok=False)
    places.take(a)
    assert places.lose(a) and not places.lose(a)  # lost once
    assert places.capacity == 0 and places.choose() is None
    places.give(a, ok=None)  # the job that held a place on the lost actor gives nothing back to anyone
    a2 = places.add("a", 2)
    assert places.capacity == 2 and a2.free == 2
    assert (a2.done, a2.failed) == (1, 1)  # the node's history carries over
