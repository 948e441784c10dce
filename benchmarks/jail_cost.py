#!/usr/bin/env python3
"""What a /bin/true jail costs in CPU, and what each spawner shortcut is worth, on a machine that may be busy.

benchmarks/spawn.py measures the clock; on a host shared with other work its figures move with the load.
These two measurements hold up better there:

    python benchmarks/jail_cost.py cpu [--n 300]
        N sequential /bin/true jails (spawn.py's aiogaol profile): the median latency, and CPU per jail of
        the server process, the spawner (/proc/PID/stat) and the jails' own processes (RUSAGE_CHILDREN:
        each init, with the program, is the server's child).

    python benchmarks/jail_cost.py modes [--modes waiting,none,eager] [--rounds 8] [--n 60]
        The spawner's shortcuts (AIOGAOL_SPAWNER_AHEAD) alternating round by round in one process, a new
        spawner per round: the median of each round's median latency, per mode.

    python benchmarks/jail_cost.py budget [--rounds 3] [--seconds 4]
        /bin/true at concurrency 8, benchmarks/floor.c and aiogaol alternating: the machine's CPU per
        spawn (/proc/stat, all processes, kernel workers included) of each, and aiogaol's split into
        the server, the spawner, the jails' own processes and the rest (the kernel's workers that tear
        namespaces down, RCU, interrupts).  Issue 15's target of 0.7 x the floor's jails/s leaves a jail
        the floor's CPU / 0.7 on a machine whose CPUs are the limit: the run prints that budget beside
        what the jail's own processes and the rest take before the server and the spawner spend a cycle.

--server-nice runs the jails at the server's niceness (Limits(nice=None)) instead of 19, so that on a
busy host a nice -15 server keeps other work off the path being measured.  Run it from the tree to
measure (the aiogaol it imports is that tree's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spawn  # noqa: E402  (the same tool, profile and stdio as spawn.py's aiogaol)

import aiogaol  # noqa: E402
from aiogaol import _spawner  # noqa: E402


def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _one(profile: aiogaol.Profile, kw: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    proc = await aiogaol.create_sandboxed_subprocess(profile, "/bin/true", stdin=spawn.DEVNULL,
                                                     stdout=spawn.DEVNULL, stderr=spawn.DEVNULL, **kw)
    if await proc.wait() != 0:
        raise SystemExit("/bin/true failed in the jail")
    return time.perf_counter() - t0


async def cpu(n: int, kw: dict[str, Any]) -> dict[str, Any]:
    profile = spawn.Aiogaol(aiogaol).profiles[False]
    for _ in range(30):
        await _one(profile, kw)  # warm: the spawner started, its waiting init made
    (spawner,) = [s.pid for s in _spawner._spawners.values()]
    before = _marks(spawner)
    lat = [await _one(profile, kw) for _ in range(n)]
    per = _per_spawn_ms(before, _marks(spawner), n)
    return {"n": n, "median_ms": round(statistics.median(lat) * 1e3, 3),
            "cpu_ms_per_jail": {"server": round(per["server"], 3), "spawner": round(per["spawner"], 3),
                                "jail": round(per["children"], 3)},
            "load": round(os.getloadavg()[0], 1)}


def _machine_cpu() -> float:
    """Seconds of CPU the whole machine has spent, idle and I/O wait left out (/proc/stat)."""
    with open("/proc/stat", encoding="ascii") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def _marks(spawner: int | None = None) -> dict[str, float]:
    """Seconds of CPU so far: this process (the server), its reaped children (each jail's init, with its
    program; or floor.c with its children), the spawner when given, and the whole machine."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = {"server": time.process_time(), "children": children.ru_utime + children.ru_stime,
           "machine": _machine_cpu()}
    if spawner is not None:
        out["spawner"] = _proc_cpu(spawner)
    return out


def _per_spawn_ms(before: dict[str, float], after: dict[str, float], n: float) -> dict[str, float]:
    return {k: (after[k] - before[k]) / n * 1e3 for k in before}


def _floor_round(exe: str, seconds: float) -> dict[str, float]:
    before = _marks()
    done = subprocess.run([exe, "8", str(seconds), "/bin/true"], capture_output=True, text=True, check=True)
    after = _marks()
    n = json.loads(done.stdout)["spawns_per_s"] * seconds
    per = _per_spawn_ms(before, after, n)
    return {"per_s": n / seconds, "machine_ms": per["machine"], "floor_ms": per["children"]}


async def _aiogaol_round(profile: aiogaol.Profile, kw: dict[str, Any], seconds: float) -> dict[str, float]:
    (spawner,) = [s.pid for s in _spawner._spawners.values()]
    before = _marks(spawner)
    t0 = time.monotonic()
    stop, n = t0 + seconds, 0

    async def worker() -> None:
        nonlocal n
        while time.monotonic() < stop:
            await _one(profile, kw)
            n += 1

    await asyncio.gather(*(worker() for _ in range(8)))
    per = _per_spawn_ms(before, _marks(spawner), n)
    out = {"server_ms": per["server"], "spawner_ms": per["spawner"], "jail_ms": per["children"],
           "machine_ms": per["machine"]}
    out["rest_ms"] = out["machine_ms"] - out["server_ms"] - out["spawner_ms"] - out["jail_ms"]
    out["per_s"] = n / (time.monotonic() - t0)
    return out


async def budget(rounds: int, seconds: float, kw: dict[str, Any]) -> dict[str, Any]:
    floors: list[dict[str, float]] = []
    ours: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            exe = spawn.build_floor(tmp)
        except spawn.FloorUnavailable as exc:
            raise SystemExit(f"budget needs benchmarks/floor.c: {exc}") from None
        profile = spawn.Aiogaol(aiogaol).profiles[False]
        for _ in range(30):
            await _one(profile, kw)  # warm: the spawner started, its waiting init made
        for _ in range(rounds):
            floors.append(_floor_round(exe, seconds))
            time.sleep(0.5)  # the kernel's workers finish tearing the floor's namespaces down
            ours.append(await _aiogaol_round(profile, kw, seconds))
            time.sleep(0.5)
    med = lambda rows, k: round(statistics.median(r[k] for r in rows), 3)  # noqa: E731
    floor = {k: med(floors, k) for k in floors[0]}
    jail = {k: med(ours, k) for k in ours[0]}
    allowed = round(floor["machine_ms"] / 0.7, 3)
    return {"rounds": rounds, "seconds": seconds, "load": round(os.getloadavg()[0], 1),
            "floor": floor, "aiogaol": jail, "ratio": round(jail["per_s"] / floor["per_s"], 3),
            "budget_ms_at_0.7x": allowed,
            "jail_and_rest_ms": round(jail["jail_ms"] + jail["rest_ms"], 3),
            "over_budget_before_server_and_spawner": jail["jail_ms"] + jail["rest_ms"] > allowed}


async def modes(names: list[str], rounds: int, n: int, kw: dict[str, Any]) -> dict[str, Any]:
    profile = spawn.Aiogaol(aiogaol).profiles[False]
    medians: dict[str, list[float]] = {m: [] for m in names}
    for _ in range(rounds):
        for mode in names:
            os.environ[_spawner.AHEAD_ENV] = mode
            aiogaol.shutdown_spawner()  # the next spawn starts a spawner with this mode
            for _ in range(10):
                await _one(profile, kw)
            medians[mode].append(statistics.median([await _one(profile, kw) for _ in range(n)]) * 1e3)
    return {"rounds": rounds, "n": n, "load": round(os.getloadavg()[0], 1),
            "median_of_medians_ms": {m: round(statistics.median(v), 2) for m, v in medians.items()},
            "per_round_ms": {m: [round(x, 2) for x in v] for m, v in medians.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("cpu", "modes", "budget"))
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None, help="modes: 8; budget: 3")
    p.add_argument("--seconds", type=float, default=4.0, help="budget: seconds of each round")
    p.add_argument("--modes", default=",".join(_spawner.AHEAD_MODES))
    p.add_argument("--server-nice", action="store_true", help="jails at the server's niceness, not 19")
    args = p.parse_args()
    unknown = set(args.modes.split(",")) - set(_spawner.AHEAD_MODES)
    if unknown:
        p.error(f"--modes: {', '.join(sorted(unknown))}: expected some of {', '.join(_spawner.AHEAD_MODES)}")
    kw: dict[str, Any] = {"limits": aiogaol.Limits(nice=None)} if args.server_nice else {}
    if args.what == "cpu":
        out = asyncio.run(cpu(args.n or 300, kw))
    elif args.what == "budget":
        if args.seconds <= 0 or (args.rounds is not None and args.rounds < 1):
            p.error("budget: --seconds must be positive and --rounds at least 1")
        out = asyncio.run(budget(args.rounds or 3, args.seconds, kw))
    else:
        out = asyncio.run(modes(args.modes.split(","), args.rounds or 8, args.n or 60, kw))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
