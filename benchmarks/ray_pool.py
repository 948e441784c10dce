#!/usr/bin/env python3
"""RayPool throughput: jobs per second on one node and on two, in one run, beside the same jobs on the
same machine without Ray.

One run starts a Ray cluster of one node on this machine, opens one ``RayPool`` on it, measures, then
adds a second node, waits for the pool to give it an actor, and measures again with the same pool:

  asyncio    asyncio.create_subprocess_exec(python -c CODE), at most CONC at once   no jail, no Ray
  local      aiogaol.PythonPool(size=CONC).run(CODE) in this process               jail, no Ray
  ray 1 node RayPool(per_node=CONC).map(PythonJob(CODE) ...), one node               jail, over Ray
  ray 2 nodes the same pool after a second node joined (2 x CONC places)

Both "nodes" here are processes on one machine sharing its cores, so the second node adds places, not
CPU: on a real cluster each node brings its own cores (see docs/scale-out.md).  The figures are jobs/s
(higher is better) and the ratio to asyncio's.

    python benchmarks/ray_pool.py [--jobs 200] [--per-node 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from typing import Any

CODE = "print(sum(i * i for i in range(1000)))"
EXPECTED = b"332833500\n"


async def bench_asyncio(jobs: int, conc: int) -> float:
    limit = asyncio.Semaphore(conc)

    async def one() -> None:
        async with limit:
            proc = await asyncio.create_subprocess_exec(sys.executable, "-c", CODE, stdout=asyncio.subprocess.PIPE)
            out, _ = await proc.communicate()
            assert out == EXPECTED, out

    begun = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(jobs)))
    return jobs / (time.perf_counter() - begun)


async def bench_local(jobs: int, conc: int) -> float:
    import aiogaol

    async with aiogaol.PythonPool(aiogaol.python_profile(), size=conc) as pool:
        await pool.run("pass")  # warm: the interpreter's start is not a job's cost
        begun = time.perf_counter()
        results = await asyncio.gather(*(pool.run(CODE) for _ in range(jobs)))
        rate = jobs / (time.perf_counter() - begun)
    assert all(r.stdout == EXPECTED for r in results), results[0]
    return rate


async def bench_ray(pool: Any, jobs: int) -> float:
    from aiogaol.ray import PythonJob

    # Warm every node's PythonPool first (a node starts its warm interpreter on its first Python job).
    async for r in pool.map([PythonJob("pass") for _ in range((await pool.stats()).capacity)]):
        assert r.ok, r
    begun = time.perf_counter()
    count = 0
    async for r in pool.map(PythonJob(CODE) for _ in range(jobs)):
        assert r.stdout == EXPECTED, r
        count += 1
    return count / (time.perf_counter() - begun)


async def main(jobs: int, per_node: int, out: str | None) -> None:
    import ray
    from ray.cluster_utils import Cluster

    import aiogaol
    from aiogaol.ray import RayPool

    figures: dict[str, float] = {}
    print(f"# RayPool, {jobs} jobs of `python -c {CODE!r}`, {per_node} at once per node; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, Python {platform.python_version()}, "
          f"ray {ray.__version__}")
    figures["asyncio"] = await bench_asyncio(jobs, per_node)
    figures["local"] = await bench_local(jobs, per_node)
    made = None  # a RAY_TMPDIR of our own, removed at the end
    if "RAY_TMPDIR" not in os.environ:
        made = os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="aiogaol-ray-")
    node = dict(num_cpus=1, object_store_memory=80 << 20)
    cluster = Cluster(initialize_head=True, head_node_args=dict(include_dashboard=False, **node))
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        pool = await RayPool.open(aiogaol.python_profile(), per_node=per_node, watch_interval=0.5)
        try:
            figures["ray 1 node"] = await bench_ray(pool, jobs)
            cluster.add_node(**node)
            while len((await pool.stats()).nodes) < 2:
                await asyncio.sleep(0.2)
            before = {n.node_id: n.done for n in (await pool.stats()).nodes}
            figures["ray 2 nodes"] = await bench_ray(pool, jobs)
            split = [n.done - before.get(n.node_id, 0) for n in (await pool.stats()).nodes]
        finally:
            await pool.aclose()
    finally:
        ray.shutdown()
        cluster.shutdown()
        for _ in range(50):  # Ray's processes may write there a moment after the shutdown
            if made is None or not os.path.exists(made):
                break
            shutil.rmtree(made, ignore_errors=True)
            time.sleep(0.2)
    base = figures["asyncio"]
    print(f"{'':12} {'jobs/s':>8} {'x asyncio':>10}")
    for name, rate in figures.items():
        print(f"{name:12} {rate:8.1f} {rate / base:10.2f}")
    print(f"ray 2 nodes / ray 1 node: {figures['ray 2 nodes'] / figures['ray 1 node']:.2f}; "
          f"ray 1 node / local: {figures['ray 1 node'] / figures['local']:.2f}; "
          f"jobs per node with two (warm-up included): {', '.join(map(str, split))}")
    if out:
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"jobs": jobs, "per_node": per_node, "jobs_per_second": figures,
                       "load": os.getloadavg()[0], "cpus": os.cpu_count()}, f, indent=2)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--per-node", type=int, default=4)
    parser.add_argument("--json", dest="out")
    args = parser.parse_args()
    asyncio.run(main(args.jobs, args.per_node, args.out))
