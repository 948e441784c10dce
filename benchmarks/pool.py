#!/usr/bin/env python3
"""Pool benchmarks: what a job costs through ``aiogaol.Pool`` beside ``aiogaol.run`` and a plain subprocess.

Measured, from one asyncio event loop and in one run:

  plain      asyncio.create_subprocess_exec(program), output read to EOF         no jail at all
  run        aiogaol.run(profile, program)                                       one job, its full report
  pool.run   await pool.run(program) on a Pool(size=1)                           the same, through a pool
  pool.map   pool.map(jobs) on a Pool(size=8): jobs per second                   throughput with a queue

for ``/bin/true`` and ``python -c pass``.  Sequential latencies are medians (and p90) over ``n`` runs; the
ratios say what the pool adds over ``run`` and what ``run`` adds over a plain process.  The server's own
CPU time per job (``time.process_time``, this process only) is printed too: on a shared host it is the
figure that survives the load.  Only the public
API is used, so the same script measures an older tree (run it with that tree's interpreter) for a
before/after comparison in the same hour.

    python benchmarks/pool.py            # about a minute on 2 cores
    python benchmarks/pool.py --quick    # a few seconds
    python benchmarks/pool.py --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import aiogaol

now = time.perf_counter


async def plain(argv: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"plain {argv}: exit {proc.returncode}")


def _check(result: aiogaol.Result, what: str) -> None:
    if result.status != "ok":
        raise SystemExit(f"{what}: {result.status} ({result.evidence})")


async def sequential(call: Callable[[], Awaitable[None]], n: int) -> dict[str, float]:
    for _ in range(max(2, n // 10)):  # warm: the spawner, the cached plan, the page cache
        await call()
    samples = []
    cpu = time.process_time()
    for _ in range(n):
        t = now()
        await call()
        samples.append(now() - t)
    cpu = time.process_time() - cpu
    samples.sort()
    # The server's own CPU per job (this process only: not the spawner, not the jail) barely moves with
    # the machine's load, where wall-clock latency on a shared host can move several-fold.
    return {"median_ms": statistics.median(samples) * 1e3, "p90_ms": samples[int(0.9 * (len(samples) - 1))] * 1e3,
            "server_cpu_ms": cpu / n * 1e3}


async def measure(profile: aiogaol.Profile, argv: list[str], n: int, batch: int) -> dict[str, object]:
    limits = aiogaol.Limits(wall_time=30)
    out: dict[str, object] = {}
    out["plain"] = await sequential(lambda: plain(argv), n)

    async def one_run() -> None:
        _check(await aiogaol.run(profile, argv, limits=limits), "run")

    out["run"] = await sequential(one_run, n)
    async with aiogaol.Pool(profile, size=1, limits=limits) as pool:
        async def one_pool_run() -> None:
            _check(await pool.run(argv), "pool.run")

        out["pool.run"] = await sequential(one_pool_run, n)
    async with aiogaol.Pool(profile, size=8, limits=limits) as pool:
        async for result in pool.map([argv] * 8):  # warm eight at once
            _check(result, "pool.map")
        t = now()
        async for result in pool.map([argv] * batch):
            _check(result, "pool.map")
        out["pool.map"] = {"jobs_per_s": batch / (now() - t), "jobs": batch}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--n", type=int, help="sequential runs per figure (default 150, --quick 20)")
    parser.add_argument("--batch", type=int, help="jobs through map (default 400, --quick 40)")
    parser.add_argument("--json", help="also write the figures to this file")
    ns = parser.parse_args()
    n, batch = (20, 40) if ns.quick else (150, 400)
    n, batch = ns.n or n, ns.batch or batch
    python = aiogaol.python_executable()
    workloads = {"/bin/true": (aiogaol.system_profile(), ["/bin/true"]),
                 "python -c pass": (aiogaol.python_profile(), [python, "-c", "pass"])}
    figures: dict[str, object] = {"aiogaol": aiogaol.__file__, "python": sys.version.split()[0], "n": n,
                                  "batch": batch}
    print(f"aiogaol from {aiogaol.__file__}; {n} sequential runs each, {batch} jobs through map(size=8)")
    print(f"{'workload':<16} {'plain ms':>9} {'run ms':>9} {'pool.run ms':>12} {'pool/run':>9} {'run/plain':>10} "
          f"{'map jobs/s':>11} {'cpu/job: plain':>15} {'run':>6} {'pool.run':>9}")
    for name, (profile, argv) in workloads.items():
        got = asyncio.run(measure(profile, argv, n, batch))
        figures[name] = got
        p, r, q, m = (got["plain"], got["run"], got["pool.run"], got["pool.map"])
        assert isinstance(p, dict) and isinstance(r, dict) and isinstance(q, dict) and isinstance(m, dict)
        print(f"{name:<16} {p['median_ms']:>9.2f} {r['median_ms']:>9.2f} {q['median_ms']:>12.2f} "
              f"{q['median_ms'] / r['median_ms']:>8.2f}x {r['median_ms'] / p['median_ms']:>9.2f}x "
              f"{m['jobs_per_s']:>11.0f} {p['server_cpu_ms']:>12.2f} ms {r['server_cpu_ms']:>6.2f} "
              f"{q['server_cpu_ms']:>9.2f}")
    if ns.json:
        with open(ns.json, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2)
    aiogaol.shutdown_spawner()


if __name__ == "__main__":
    main()
