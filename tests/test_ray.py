"""RayPool on a real Ray cluster on this machine: two nodes (ray.cluster_utils.Cluster), jobs spread
over them, an actor killed mid-run, a node removed and one added, handles used from tasks and actors.

One cluster for the module, kept light (one CPU a node, a small object store, no dashboard), because
the cores are shared.  Waiting for the cluster to reach a state is a poll with a generous deadline, never
a timing assertion; jobs that must be running "now" wait on a gate file the test opens.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed here (pip install 'aiogaol[ray]')")

from ray.cluster_utils import Cluster  # noqa: E402

import aiogaol  # noqa: E402
from aiogaol.ray import NodeLost, PythonJob, RayPool, RayPoolError, RayPoolStats  # noqa: E402

_DEADLINE = 180.0  # seconds a poll may wait for the cluster to get somewhere (slow, loaded machines)
_NODE = dict(num_cpus=1, object_store_memory=80 << 20)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # Ray's files (sockets, logs, the address of the current cluster) in a directory of our own, so a
    # run as root and a run as an unprivileged user on the same machine do not share /tmp/ray.
    tmp = tempfile.mkdtemp(prefix="aiogaol-ray-")
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp
    started = time.monotonic()
    c = Cluster(initialize_head=True, head_node_args=dict(include_dashboard=False, **_NODE))
    c.add_node(**_NODE)
    ray.init(address=c.address, log_to_driver=False)
    print(f"\ntwo-node Ray cluster up in {time.monotonic() - started:.1f} s", file=sys.stderr)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        # Ray's processes may still write there for a moment after the shutdown: removed until gone.
        deadline = time.monotonic() + 10
        while True:
            shutil.rmtree(tmp, ignore_errors=True)
            if not os.path.exists(tmp) or time.monotonic() > deadline:
                break
            time.sleep(0.2)


@pytest.fixture(scope="module")
def gate_dir() -> Iterator[Path]:
    """A folder the jails may read: a job waits there until the test creates its gate file."""
    d = Path(tempfile.mkdtemp(prefix="aiogaol-gate-"))
    d.chmod(0o755)  # a root server's jails run as nobody
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def profile(gate_dir: Path) -> aiogaol.Profile:
    return aiogaol.python_profile([aiogaol.FileReadAll(aiogaol.Subpath(str(gate_dir)))])


@pytest.fixture(scope="module")
def pool(cluster: Cluster, profile: aiogaol.Profile) -> Iterator[RayPool]:
    p = RayPool.open_sync(profile, per_node=2, limits=aiogaol.Limits(wall_time=120), name="aiogaol-test-pool")
    try:
        yield p
    finally:
        p.close_sync()


_gates = iter(range(1_000_000))


class Gate:
    """A job that runs until the test opens its gate; ``marker`` finds its processes in /proc."""

    def __init__(self, gate_dir: Path, python: str) -> None:
        n = next(_gates)
        self.path = gate_dir / f"gate-{os.getpid()}-{n}"
        self.marker = f"aiogaol-gate-{os.getpid()}-{n}"
        self.argv = [python, "-c", f"import os, time\nwhile not os.path.exists({str(self.path)!r}): "
                     f"time.sleep(0.05)\nprint('through')  # {self.marker}"]

    def open(self) -> None:
        self.path.touch()

    def pids(self) -> set[int]:
        found = set()
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    if self.marker.encode() in Path(f"/proc/{name}/cmdline").read_bytes():
                        found.add(int(name))
                except OSError:
                    pass
        return found


async def until(what: str, check: Callable[[], Any], deadline: float = _DEADLINE) -> Any:
    end = time.monotonic() + deadline
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.1)


async def stats_until(pool: RayPool, what: str, check: Callable[[RayPoolStats], bool]) -> RayPoolStats:
    end = time.monotonic() + _DEADLINE
    while True:
        stats = await pool.stats()
        if check(stats):
            return stats
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}; last stats: {stats}")
        await asyncio.sleep(0.1)


# -- results -----------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_run_returns_an_aiogaol_result(pool: RayPool, python: str) -> None:
    r = await pool.run([python, "-c", "import sys; print(6*7, sys.stdin.read())"], input=b"in", timeout=60)
    assert isinstance(r, aiogaol.Result)
    assert r.ok and r.stdout == b"42 in\n" and r.returncode == 0
    assert r.latency is not None and r.latency > 0
    # A job's own limits and environment go with it.
    r = await pool.run([python, "-c", "import os; print(os.environ['X'])"], env={"X": "y"},
                       limits=aiogaol.Limits(wall_time=60, output=1 << 10))
    assert r.stdout == b"y\n" and r.limits.output == 1 << 10


@pytest.mark.asyncio
async def test_run_python_goes_through_the_nodes_python_pool(pool: RayPool, python: str) -> None:
    r = await pool.run_python("print(sum(range(10)))")
    assert isinstance(r, aiogaol.Result) and r.ok and r.stdout == b"45\n"
    r = await pool.run_python("import sys; print(sys.argv[1:])", args=["a", "b"])
    assert r.stdout == b"['a', 'b']\n"
    r = await pool.run_python("raise SystemExit(3)")
    assert r.status == aiogaol.Status.NONZERO_EXIT and r.returncode == 3
    # In map, beside bare argvs; ids default to the index.
    out = {r.id: r.stdout async for r in pool.map([PythonJob("print('p')"), [python, "-c", "print('a')"]])}
    assert out == {0: b"p\n", 1: b"a\n"}


def test_run_python_sync(pool: RayPool) -> None:
    assert pool.run_python_sync("print(2 + 2)").stdout == b"4\n"


@pytest.mark.asyncio
async def test_statuses_and_setup_errors_cross_the_object_store(pool: RayPool, python: str) -> None:
    r = await pool.run([python, "-c", "import time; time.sleep(60)"], timeout=1)
    assert r.status == aiogaol.Status.TIMED_OUT
    r = await pool.run(["/nonexistent/program"])
    assert r.status == aiogaol.Status.ERROR
    assert isinstance(r.exception, aiogaol.ProgramNotFoundError) and r.exception.step.startswith("exec")
    with pytest.raises(aiogaol.RunError) as caught:
        r.check()
    assert pickle.loads(pickle.dumps(caught.value)).result == r


def test_errors_and_results_pickle_as_themselves() -> None:
    errors: list[BaseException] = [
        aiogaol.SandboxSetupError("mount", 2, "/x"), aiogaol.ProgramNotFoundError("exec", 2, "/bin/nope"),
        aiogaol.ProgramPermissionError("exec", 13, "/x"), aiogaol.ProfileError("bad"),
        aiogaol.UnsupportedOperation(aiogaol.FileReadAll(aiogaol.Literal("/x")), "why"),
        NodeLost("abcdef0123456789", 2, "ActorDiedError: gone"), RayPoolError("closed"),
    ]
    for e in errors:
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and str(back) == str(e)
        assert back.__dict__ == e.__dict__
    back_lost = pickle.loads(pickle.dumps(errors[5]))
    assert isinstance(back_lost, NodeLost) and back_lost.attempts == 2 and back_lost.node_id == "abcdef0123456789"


@pytest.mark.asyncio
async def test_bad_arguments_fail_before_anything_is_sent(pool: RayPool, profile: aiogaol.Profile,
                                                           python: str) -> None:
    with pytest.raises(TypeError, match="single string"):
        await pool.run("echo hi")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        await pool.run([])
    with pytest.raises(ValueError, match="timeout"):
        await pool.run([python], timeout=-1)
    with pytest.raises(TypeError, match="input"):
        await pool.run([python], input="text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cwd"):
        await pool.run([python], cwd="relative")
    with pytest.raises(TypeError, match="code"):
        await pool.run_python(b"print(1)")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="per_node"):
        await RayPool.open(profile, per_node=0)
    with pytest.raises(ValueError, match="retries"):
        await RayPool.open(profile, retries=-1)
    with pytest.raises(TypeError, match="profile"):
        await RayPool.open("profile")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window"):
        pool.map([], window=0)


# -- placement ---------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_jobs_spread_over_the_nodes_and_callers_beyond_wait(pool: RayPool, gate_dir: Path,
                                                                  python: str) -> None:
    before = await pool.stats()
    assert len(before.nodes) == 2 and before.capacity == 4
    gate = Gate(gate_dir, python)
    jobs = [asyncio.ensure_future(pool.run(gate.argv)) for _ in range(5)]
    try:
        full = await stats_until(pool, "4 running and 1 waiting",
                                 lambda s: s.running == 4 and s.waiting == 1)
        assert sorted(n.running for n in full.nodes) == [2, 2]  # the most free places first: 2 and 2
        assert all(n.free == 0 for n in full.nodes)
        for _ in range(5):  # and it stays so: the fifth is held back, not sent to a full node
            s = await pool.stats()
            assert all(n.running <= 2 for n in s.nodes) and s.running == 4
            await asyncio.sleep(0.1)
    finally:
        gate.open()
        results = await asyncio.gather(*jobs)
    assert all(r.ok and r.stdout == b"through\n" for r in results)
    after = await pool.stats()
    per_node = [a.done - b.done for a, b in zip(after.nodes, before.nodes)]
    assert sum(per_node) == 5 and min(per_node) >= 2
    assert after.running == 0 and after.waiting == 0 and after.p50 is not None


@pytest.mark.asyncio
async def test_map_yields_results_as_they_finish(pool: RayPool, gate_dir: Path, python: str) -> None:
    gate = Gate(gate_dir, python)
    jobs = [aiogaol.Job(gate.argv, id="slow")] + [aiogaol.Job([python, "-c", f"print({i})"], id=i) for i in range(6)]
    seen: list[Any] = []
    async for r in pool.map(jobs):
        seen.append(r.id)
        assert r.ok
        if len(seen) == 6:
            gate.open()  # every quick job came back while the slow one still waited at its gate
    assert seen[-1] == "slow" and sorted(seen[:-1]) == list(range(6))


@pytest.mark.asyncio
async def test_map_left_early_cancels_its_jobs_and_their_jails(pool: RayPool, gate_dir: Path, python: str) -> None:
    gate = Gate(gate_dir, python)
    quick = [python, "-c", "print(1)"]

    def jobs() -> Iterator[list[str]]:
        yield quick
        while True:  # endless: map pulls only what its window allows
            yield gate.argv

    async with pool.map(jobs(), window=3) as results:
        async for r in results:
            assert r.ok
            await until("the gated jobs' jails", lambda: len(gate.pids()) >= 2)  # the window less the one consumed
            break
    await until("the cancelled jobs' jails to go", lambda: not gate.pids())
    await stats_until(pool, "the pool idle again", lambda s: s.running == 0)


@pytest.mark.asyncio
async def test_a_cancelled_call_ends_its_jail(pool: RayPool, gate_dir: Path, python: str) -> None:
    gate = Gate(gate_dir, python)
    job = asyncio.ensure_future(pool.run(gate.argv))
    await until("the job's jail", gate.pids)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    await until("the cancelled job's jail to go", lambda: not gate.pids())
    await stats_until(pool, "the pool idle again", lambda s: s.running == 0)
    gate.open()


# -- from other places -------------------------------------------------------------------------------

def test_sync_api_from_driver_code(cluster: Cluster, profile: aiogaol.Profile, python: str) -> None:
    p = RayPool.open_sync(profile, per_node=1)
    try:
        r = p.run_sync([python, "-c", "print('sync')"], timeout=60)
        assert r.ok and r.stdout == b"sync\n"
        assert p.stats_sync().done == 1
        results = list(p.map_sync([[python, "-c", f"print({i})"] for i in range(4)], window=2))
        assert sorted((r.id, r.stdout) for r in results) == [(i, f"{i}\n".encode()) for i in range(4)]
    finally:
        p.close_sync()
    # "closed" while the head actor is still ending, "gone" once it has.
    with pytest.raises(RayPoolError, match="gone|closed"):
        p.run_sync([python, "-c", "1"])


@ray.remote(num_cpus=0)
def _run_in_task(pool: RayPool, python: str) -> bytes:
    return bytes(pool.run_sync([python, "-c", "print('task')"]).stdout)


@ray.remote(num_cpus=0)
def _run_by_name(name: str, python: str) -> bytes:
    return bytes(RayPool.connect(name).run_sync([python, "-c", "print('named')"]).stdout)


@ray.remote(num_cpus=0)
class _Caller:
    async def call(self, pool: RayPool, python: str) -> bytes:
        r = await pool.run([python, "-c", "print('actor')"])
        return bytes(r.stdout)


@pytest.mark.asyncio
async def test_the_handle_works_from_tasks_and_actors(pool: RayPool, python: str) -> None:
    assert pickle.loads(pickle.dumps(pool)).name == pool.name
    assert await _run_in_task.remote(pool, python) == b"task\n"
    assert await _run_by_name.remote("aiogaol-test-pool", python) == b"named\n"
    caller = _Caller.remote()  # type: ignore[attr-defined]
    try:
        assert await caller.call.remote(pool, python) == b"actor\n"
    finally:
        ray.kill(caller)


# -- losses ------------------------------------------------------------------------------------------

def _node_running(stats: RayPoolStats) -> Any:
    return next((n for n in stats.nodes if n.running), None)


@pytest.mark.asyncio
async def test_an_actor_killed_mid_run_retries_elsewhere_and_is_replaced(cluster: Cluster, profile: aiogaol.Profile,
                                                                        gate_dir: Path, python: str) -> None:
    p = await RayPool.open(profile, per_node=1, retries=1, watch_interval=0.5)
    try:
        gate = Gate(gate_dir, python)
        job = asyncio.ensure_future(p.run(gate.argv))
        where = _node_running(await stats_until(p, "the job running", lambda s: _node_running(s) is not None))
        first = await until("the job's jail", gate.pids)
        ray.kill(ray.get_actor(where.actor_name))
        # The killed actor's jails die with it (their lifeline) ...
        await until("the killed actor's jails to go", lambda: not (gate.pids() & first))
        # ... and the job runs again on the other node.
        again = await stats_until(p, "the retry running", lambda s: s.retried == 1 and s.running == 1)
        assert _node_running(again).node_id != where.node_id
        gate.open()
        r = await job
        assert r.ok and r.stdout == b"through\n"
        # The node lives on, so it gets a new actor.
        s = await stats_until(p, "the actor replaced", lambda s: s.replaced == 1 and len(s.nodes) == 2)
        assert s.lost == 1 and s.failed == 0
        assert next(n for n in s.nodes if n.node_id == where.node_id).generation > where.generation
        assert (await p.run([python, "-c", "print(1)"])).ok
    finally:
        await p.aclose()


@pytest.mark.asyncio
async def test_with_no_retries_a_lost_job_raises_node_lost(cluster: Cluster, profile: aiogaol.Profile,
                                                           gate_dir: Path, python: str) -> None:
    p = await RayPool.open(profile, per_node=1, retries=0)
    try:
        gate = Gate(gate_dir, python)
        job = asyncio.ensure_future(p.run(gate.argv))
        where = _node_running(await stats_until(p, "the job running", lambda s: _node_running(s) is not None))
        ray.kill(ray.get_actor(where.actor_name))
        with pytest.raises(NodeLost) as lost:
            await job
        assert lost.value.node_id == where.node_id and lost.value.attempts == 1
        assert "ActorDiedError" in lost.value.reason
        gate.open()
    finally:
        await p.aclose()


@pytest.mark.asyncio
async def test_a_node_that_joins_gets_an_actor_and_one_removed_gives_its_jobs_to_the_others(
        cluster: Cluster, profile: aiogaol.Profile, gate_dir: Path, python: str) -> None:
    p = await RayPool.open(profile, per_node=1, retries=1, watch_interval=0.5)
    try:
        assert len((await p.stats()).nodes) == 2
        node = cluster.add_node(**_NODE)
        joined = await stats_until(p, "an actor on the new node", lambda s: len(s.nodes) == 3)
        assert node.node_id in {n.node_id for n in joined.nodes}
        gate = Gate(gate_dir, python)
        jobs = [asyncio.ensure_future(p.run(gate.argv)) for _ in range(3)]
        await stats_until(p, "a job on each node", lambda s: s.running == 3)
        cluster.remove_node(node)
        # Its job waits for a place elsewhere; the other two keep theirs.
        s = await stats_until(p, "the node gone and its job retried",
                              lambda s: s.retried == 1 and len(s.nodes) == 2 and s.waiting == 1)
        assert node.node_id not in {n.node_id for n in s.nodes}
        gate.open()
        results = await asyncio.gather(*jobs)
        assert all(r.ok for r in results)
        s = await p.stats()
        assert s.lost == 1 and s.replaced == 0 and s.done == 3
    finally:
        await p.aclose()


_ABANDONING_DRIVER = """
import asyncio, json, os, sys
import ray, aiogaol
from aiogaol.ray import RayPool

async def main():
    ray.init(address=sys.argv[1], namespace=sys.argv[4], log_to_driver=False)
    pool = await RayPool.open(aiogaol.python_profile([aiogaol.FileReadAll(aiogaol.Subpath(sys.argv[2]))]),
                              per_node=1)
    asyncio.ensure_future(pool.run(json.loads(sys.argv[3])))
    while (await pool.stats()).running == 0:
        await asyncio.sleep(0.1)
    print(json.dumps([n.actor_name for n in (await pool.stats()).nodes]), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    os._exit(0)  # no aclose, no ray.shutdown: the driver just goes

asyncio.run(main())
"""


@pytest.mark.asyncio
async def test_a_driver_that_exits_without_closing_leaves_no_actor_and_no_jail(
        cluster: Cluster, gate_dir: Path, python: str) -> None:
    import json

    gate = Gate(gate_dir, python)
    namespace = f"aiogaol-abandoned-{os.getpid()}"
    driver = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _ABANDONING_DRIVER, cluster.address, str(gate_dir), json.dumps(gate.argv), namespace,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert driver.stdin is not None and driver.stdout is not None
    line = await asyncio.wait_for(driver.stdout.readline(), _DEADLINE)
    assert line, "the driver ended before its pool ran the job"
    names = json.loads(line)

    def alive(name: str) -> bool:
        try:
            ray.get_actor(name, namespace=namespace)
        except ValueError:
            return False
        return True

    assert len(names) == 2 and all(alive(n) for n in names)
    await until("the job's jail", gate.pids)
    driver.stdin.write(b"go\n")
    await driver.stdin.drain()
    assert await driver.wait() == 0
    await until("the abandoned pool's actors to go", lambda: not any(alive(n) for n in names))
    await until("the abandoned job's jail to go", lambda: not gate.pids())
    gate.open()


@pytest.mark.asyncio
async def test_a_pool_whose_actors_cannot_start_says_why(cluster: Cluster, profile: aiogaol.Profile) -> None:
    with pytest.raises(RayPoolError, match=r"no node actor could be started: node \w+: \w+Error"):
        await RayPool.open(profile, actor_options={"resources": {"absent-resource": 1}}, start_timeout=2)


@pytest.mark.asyncio
async def test_a_closed_pool_refuses_jobs_and_leaves_no_actor(cluster: Cluster, profile: aiogaol.Profile,
                                                              python: str) -> None:
    p = await RayPool.open(profile, per_node=1)
    names = [n.actor_name for n in (await p.stats()).nodes]
    await p.aclose()
    with pytest.raises(RayPoolError):
        await p.run([python, "-c", "1"])

    def gone(name: str) -> bool:
        try:
            ray.get_actor(name)
        except ValueError:
            return True
        return False

    await until("the node actors to go", lambda: all(gone(n) for n in names))
