"""A batch of Python jobs over a Ray cluster: one actor per node, each with its own jails.

Each job is a small untrusted program (here: a few honest ones that compute something, and a few that
misbehave: a loop, a fork bomb, a read of the host's files).  ``RayPool.map`` spreads them over the
nodes, at most ``--per-node`` at once on each, and yields each result as it finishes; the hostile jobs
end with a status like the rest.

    python examples/ray_pool.py                  # starts a two-node cluster on this machine for the demo
    python examples/ray_pool.py --address auto   # or joins a running cluster (ray start --head ...)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from collections import Counter

import aiogaol
from aiogaol.ray import PythonJob, RayPool

HONEST = {f"squares-{n}": f"print(sum(i * i for i in range({n})))" for n in (10, 100, 1000, 10_000)}
HOSTILE = {
    "loops": "while True: pass",
    "fork-bomb": "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass",
    "reads-host": "print(open('/etc/passwd').read())",
}


async def main(address: str | None, per_node: int, copies: int) -> None:
    import ray

    cluster = None
    made = None  # a RAY_TMPDIR of our own, removed at the end
    if address is None:
        from ray.cluster_utils import Cluster

        if "RAY_TMPDIR" not in os.environ:
            made = os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="aiogaol-ray-")
        cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, include_dashboard=False,
                                                                     object_store_memory=80 << 20))
        cluster.add_node(num_cpus=1, object_store_memory=80 << 20)
        address = cluster.address
    ray.init(address=address, log_to_driver=False)
    try:
        pool = await RayPool.open(aiogaol.python_profile(), per_node=per_node,
                                  limits=aiogaol.Limits(wall_time=2, cpu_time=1, processes=32, memory=256 << 20))
        try:
            jobs = [PythonJob(code, id=f"{name}#{i}") for i in range(copies)
                    for name, code in {**HONEST, **HOSTILE}.items()]
            statuses: Counter[str] = Counter()
            async for r in pool.map(jobs):
                name = str(r.id).split("#")[0]
                statuses[str(r.status)] += 1
                if str(r.id).endswith("#0"):
                    print(f"{name:12} {r.status:14} {r.stdout.decode().strip()[:24]!r}")
            stats = await pool.stats()
        finally:
            await pool.aclose()
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        for _ in range(50):  # Ray's processes may write there a moment after the shutdown
            if made is None or not os.path.exists(made):
                break
            shutil.rmtree(made, ignore_errors=True)
            time.sleep(0.2)
    per_node_done = ", ".join(f"{n.node_id[:8]}: {n.done}" for n in stats.nodes)
    print(f"{stats.done} jobs on {len(stats.nodes)} nodes ({per_node_done}); "
          + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", help="a running Ray cluster (default: start two nodes here)")
    parser.add_argument("--per-node", type=int, default=2, help="jails at once on each node")
    parser.add_argument("--copies", type=int, default=3, help="copies of each job")
    args = parser.parse_args()
    asyncio.run(main(args.address, args.per_node, args.copies))
