#!/usr/bin/env python3
"""Spawn benchmarks: aiogaol side by side with plain asyncio and bubblewrap, in one run.

Three tools start the same program from the same asyncio event loop:

  plain    asyncio.create_subprocess_exec(program)                         no jail at all
  bwrap    asyncio.create_subprocess_exec("bwrap", "--unshare-all", ...)   bubblewrap's full jail
  aiogaol  aiogaol.create_sandboxed_subprocess(profile, program)           aiogaol's full default jail

Measured: spawn-to-exit latency (/bin/true and `python -c pass`), throughput at concurrency 1, 8 and 64,
latency with the server holding 50 MiB versus 2 GiB of resident memory, the event loop's longest stall
while 64 jails start, and a soak of many jails (fds, threads, RSS and zombie children before and after).
Figures and ratios are printed as a table and checked against targets (PASS/MISS).  A miss never makes
the exit status non-zero; a tool that cannot start its program does.

    python benchmarks/spawn.py                      # full run, a few minutes on 2 cores
    python benchmarks/spawn.py --quick              # short run (for tests), well under a minute
    python benchmarks/spawn.py --json out.json --plot out.png --soak 20000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

MiB = 1 << 20
GiB = 1 << 30
ALL_TOOLS = ("plain", "bwrap", "aiogaol")
# Every tool's program gets this same environment (aiogaol's default is a minimal PATH and nothing else).
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
DEVNULL = subprocess.DEVNULL  # every tool's program gets /dev/null as stdin, stdout and stderr
now = time.perf_counter


# --------------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class Settings:
    quick: bool
    latency_true_n: int  # sequential /bin/true spawns per tool
    latency_python_n: int  # sequential `python -c pass` spawns per tool
    throughput_seconds: float  # per (tool, concurrency) and round
    throughput_rounds: int
    concurrencies: tuple[int, ...] = (1, 8, 64)
    memory_n: int = 300  # /bin/true spawns per tool and memory size
    memory_sizes: tuple[int, ...] = (50 * MiB, 2 * GiB)
    stall_jails: int = 64
    stall_rounds: int = 10
    soak_n: int = 10_000
    soak_concurrency: int = 8

    @classmethod
    def make(cls, quick: bool, soak: int | None) -> Settings:
        if quick:
            return cls(quick=True, latency_true_n=100, latency_python_n=12, throughput_seconds=0.6,
                       throughput_rounds=1, memory_n=60, stall_rounds=3,
                       soak_n=500 if soak is None else soak)
        return cls(quick=False, latency_true_n=1000, latency_python_n=150, throughput_seconds=2.5,
                   throughput_rounds=2, memory_n=300, stall_rounds=10,
                   soak_n=10_000 if soak is None else soak)


# --------------------------------------------------------------------------------------------------
# Tools and workloads


@dataclass(frozen=True)
class Workload:
    name: str
    argv: tuple[str, ...]
    python: bool  # needs the interpreter's prefix in the jail


class BenchError(Exception):
    pass


class Tool:
    name = ""

    async def run(self, wl: Workload) -> int:
        raise NotImplementedError


class Plain(Tool):
    name = "plain"

    async def run(self, wl: Workload) -> int:
        proc = await asyncio.create_subprocess_exec(*wl.argv, env=ENV, stdin=DEVNULL, stdout=DEVNULL,
                                                    stderr=DEVNULL)
        return await proc.wait()


def _host_root_binds(python: bool) -> list[tuple[str, str]]:
    """(kind, path) pairs for the host's root: merged-/usr links become symlinks, real dirs binds."""
    names = ["/lib", "/lib64", "/bin"] + (["/sbin", "/lib32", "/libx32"] if python else [])
    out: list[tuple[str, str]] = [("dir", "/usr")]
    for path in names:
        if os.path.islink(path):
            out.append(("link", path))
        elif os.path.isdir(path):
            out.append(("dir", path))
    return out


def _python_prefixes() -> list[str]:
    """The interpreter's installation directories that lie outside /usr (a pyenv or /opt Python)."""
    out = []
    for prefix in {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}:
        if prefix != "/usr" and not prefix.startswith("/usr/"):
            out.append(prefix)
    return sorted(out)


class Bwrap(Tool):
    name = "bwrap"

    def __init__(self, path: str) -> None:
        self.path = path
        self._argv: dict[str, list[str]] = {}

    def prefix(self, wl: Workload) -> list[str]:
        argv = self._argv.get(wl.name)
        if argv is None:
            argv = [self.path, "--unshare-all", "--die-with-parent", "--new-session"]
            for kind, path in _host_root_binds(wl.python):
                if kind == "link":
                    argv += ["--symlink", os.readlink(path), path]
                else:
                    argv += ["--ro-bind", path, path]
            argv += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
            if wl.python:
                for extra in ("/etc/ld.so.conf", "/etc/localtime", "/etc/alternatives"):
                    argv += ["--ro-bind-try", extra, extra]
                for prefix in _python_prefixes():
                    argv += ["--ro-bind", prefix, prefix]
            argv += ["--proc", "/proc", "--dev", "/dev", "--"]
            self._argv[wl.name] = argv
        return argv

    async def run(self, wl: Workload) -> int:
        proc = await asyncio.create_subprocess_exec(*self.prefix(wl), *wl.argv, env=ENV, stdin=DEVNULL,
                                                    stdout=DEVNULL, stderr=DEVNULL)
        return await proc.wait()


class Aiogaol(Tool):
    name = "aiogaol"

    def __init__(self, module: Any) -> None:
        self.m = module
        m = module
        ops = [m.FileReadAll(m.Subpath(p)) for p in ("/usr", "/lib", "/lib64", "/bin") if os.path.lexists(p)]
        ops.append(m.FileReadAll(m.Literal("/etc/ld.so.cache")))
        self.profiles = {False: m.Profile(ops), True: m.python_profile()}

    async def run(self, wl: Workload) -> int:
        proc = await self.m.create_sandboxed_subprocess(self.profiles[wl.python], *wl.argv, stdin=DEVNULL,
                                                        stdout=DEVNULL, stderr=DEVNULL)
        rc: int = await proc.wait()
        return rc


# Where an aiogaol jail's time goes: (label, from, to), marks named as in aiogaol's step_timings, plus
# "call" and "returned" taken here around the spawn and the wait.
BREAKDOWN = (
    ("Python: call to request sent", "call", "sent"),
    ("request waits in the spawner", "sent", "parse helper arguments"),
    ("init cloned, maps written; or the request handed over", "parse helper arguments", "init ready"),
    ("init starts on the request", "init ready", "make mounts private"),
    ("jail built: mounts, pivot_root", "make mounts private", "sethostname"),
    ("program started (vfork-class)", "sethostname", "fork program"),
    ("program: fds, rlimits, caps, Landlock", "fork program", "landlock"),
    ("program: seccomp filter loaded", "landlock", "load seccomp filter"),
    ("exec, seen by the server", "load seccomp filter", "answered"),
    ("program runs and exits; init reaps it", "answered", "reap the program"),
    ("init kills what is left, reports the exit", "reap the program", "report the exit status"),
    ("init exits, namespaces torn down; server reaps", "report the exit status", "reaped"),
    ("Python: reaped to wait() returning", "reaped", "returned"),
)
HANDED_OVER = "hand the request to a waiting init"


async def breakdown(tool: "Aiogaol", n: int) -> dict[str, Any]:
    """Sequential /bin/true jails with aiogaol's per-step timers on (AIOGAOL_STEP_TIMINGS): the median
    of each segment.  The timers add a few writes per spawn, so this runs apart from the other figures."""
    m = tool.m
    m._jail.STEP_TIMINGS = True
    try:
        segments: dict[str, list[float]] = {label: [] for label, _, _ in BREAKDOWN}
        totals: list[float] = []
        warm = 0
        for i in range(n + 20):
            call = time.monotonic_ns()
            proc = await m.create_sandboxed_subprocess(tool.profiles[False], "/bin/true", stdin=DEVNULL,
                                                       stdout=DEVNULL, stderr=DEVNULL)
            await proc.wait()
            returned = time.monotonic_ns()
            if i < 20:
                continue  # warm-up
            marks = dict(proc._jail.timings)  # CLOCK_MONOTONIC ns, as time.monotonic_ns() here
            marks["call"], marks["returned"] = call, returned
            # A fresh init is ready once its maps are written; a waiting one once it has the request.
            warm += HANDED_OVER in marks
            marks["init ready"] = marks.get(HANDED_OVER) or marks["write uid_map"]
            for label, a, b in BREAKDOWN:
                segments[label].append((marks[b] - marks[a]) / 1e9)
            totals.append((returned - call) / 1e9)
    finally:
        m._jail.STEP_TIMINGS = False
    return {"n": n, "median_ms": {label: statistics.median(v) * 1e3 for label, v in segments.items()},
            "total_median_ms": statistics.median(totals) * 1e3, "waiting_init_share": warm / n}


async def timed(tool: Tool, wl: Workload) -> float:
    t0 = now()
    rc = await tool.run(wl)
    dt = now() - t0
    if rc != 0:
        raise BenchError(f"{tool.name}: {' '.join(wl.argv)} exited with status {rc}")
    return dt


# --------------------------------------------------------------------------------------------------
# Statistics and process introspection


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summary(samples: Sequence[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"n": len(s), "median_ms": statistics.median(s) * 1e3, "p99_ms": percentile(s, 99) * 1e3,
            "mean_ms": statistics.fmean(s) * 1e3, "min_ms": s[0] * 1e3, "max_ms": s[-1] * 1e3}


def _status_field(name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise BenchError(f"/proc/self/status has no {name}")


def rss_bytes() -> int:
    return _status_field("VmRSS") * 1024


def thread_count() -> int:
    return _status_field("Threads")


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir itself holds open


def zombie_children() -> list[int]:
    """PIDs of this process's children that have exited and not been reaped (state Z)."""
    me, out = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2:].split()  # the command name may hold spaces and parens
        if fields[0] == b"Z" and int(fields[1]) == me:
            out.append(int(entry))
    return out


def snapshot() -> dict[str, Any]:
    gc.collect()
    return {"fds": fd_count(), "threads": thread_count(), "rss_mib": rss_bytes() / MiB,
            "zombies": len(zombie_children())}


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            mem_gib = int(f.readline().split()[1]) / (1 << 20)
    except (OSError, ValueError, IndexError):
        mem_gib = math.nan
    return {"kernel": platform.release(), "cores": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_gib, 1),
            "python": platform.python_version(), "euid": os.geteuid(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


# --------------------------------------------------------------------------------------------------
# The measurements


async def warm(tools: Sequence[Tool], wl: Workload, n: int) -> None:
    for tool in tools:
        for _ in range(n):
            await timed(tool, wl)


async def latency_samples(tools: Sequence[Tool], wl: Workload, n: int) -> dict[str, list[float]]:
    """n spawn-to-exit times per tool, one at a time; the tools take turns so drift hits all alike."""
    await warm(tools, wl, 3)
    samples: dict[str, list[float]] = {t.name: [] for t in tools}
    for i in range(n):
        k = i % len(tools)
        for tool in [*tools[k:], *tools[:k]]:
            samples[tool.name].append(await timed(tool, wl))
    return samples


async def sequential_latency(tools: Sequence[Tool], wl: Workload, n: int) -> dict[str, dict[str, float]]:
    return {name: summary(s) for name, s in (await latency_samples(tools, wl, n)).items()}


async def run_for(tool: Tool, wl: Workload, concurrency: int, seconds: float) -> tuple[int, float, list[float]]:
    """`concurrency` workers spawn back to back until the deadline; returns (spawns, elapsed, latencies)."""
    latencies: list[float] = []
    start = now()
    deadline = start + seconds

    async def worker() -> None:
        while now() < deadline:
            latencies.append(await timed(tool, wl))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), now() - start, latencies


async def throughput(tools: Sequence[Tool], wl: Workload, cfg: Settings) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for c in cfg.concurrencies:
        acc: dict[str, list[Any]] = {t.name: [0, 0.0, []] for t in tools}
        for r in range(cfg.throughput_rounds):
            for tool in tools if r % 2 == 0 else tools[::-1]:
                await run_for(tool, wl, c, 0.05)  # warm-up at this concurrency
                n, elapsed, lat = await run_for(tool, wl, c, cfg.throughput_seconds)
                acc[tool.name][0] += n
                acc[tool.name][1] += elapsed
                acc[tool.name][2] += lat
        out[str(c)] = {name: {"spawns_per_s": n / el, **summary(lat)} for name, (n, el, lat) in acc.items()}
    return out


def hold_memory(target: int) -> tuple[bytearray | None, int]:
    """A bytearray, every page touched, that brings this process's RSS up to about `target` bytes."""
    gc.collect()
    need = target - rss_bytes()
    if need <= 0:
        return None, rss_bytes()
    ballast = bytearray(need)
    ballast[::4096] = b"\x01" * len(range(0, need, 4096))
    return ballast, rss_bytes()


async def memory(tools: Sequence[Tool], wl: Workload, cfg: Settings) -> dict[str, Any]:
    """Latency with the server at each RSS.  The sizes are visited there and back (small, big, small: half
    the samples of the ends on each visit), so a drift in the machine's speed does not favour one size."""
    tools = [t for t in tools if t.name in ("plain", "aiogaol")]
    sizes = list(cfg.memory_sizes)
    order = [*sizes, *sizes[-2::-1]]
    samples: dict[int, dict[str, list[float]]] = {s: {t.name: [] for t in tools} for s in sizes}
    rss_seen: dict[int, list[int]] = {s: [] for s in sizes}
    for size in order:
        share = cfg.memory_n if order.count(size) == 1 else max(1, cfg.memory_n // 2)
        ballast, rss = hold_memory(size)
        rss_seen[size].append(rss)
        for name, got in (await latency_samples(tools, wl, share)).items():
            samples[size][name] += got
        del ballast
        gc.collect()
    return {str(size): {"label": label_bytes(size), "rss_mib": statistics.fmean(rss_seen[size]) / MiB,
                        **{name: summary(got) for name, got in samples[size].items()}} for size in sizes}


def run_queue_wait() -> float | None:
    """Seconds this thread has spent runnable but waiting for a CPU (schedstat), or None where the
    kernel does not keep the figure."""
    try:
        with open("/proc/thread-self/schedstat", encoding="ascii") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


async def ticker_max_lateness(during: Callable[[], Awaitable[Any]], tick: float = 0.001) -> tuple[float, float | None]:
    """Largest lateness of a task sleeping `tick` seconds in a loop, while `during()` runs; and the largest
    lateness less the time the loop's thread spent waiting for a CPU in that tick, which is what the loop
    itself lost to work done on its thread (None without schedstat)."""
    worst = 0.0
    worst_own: float | None = 0.0
    stop = False

    async def ticker() -> None:
        nonlocal worst, worst_own
        while not stop:
            t0, q0 = now(), run_queue_wait()
            await asyncio.sleep(tick)
            late, q1 = now() - t0 - tick, run_queue_wait()
            worst = max(worst, late)
            if q0 is None or q1 is None:
                worst_own = None
            elif worst_own is not None:
                worst_own = max(worst_own, late - (q1 - q0))

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)  # let it settle; its first ticks are not counted below
    worst = 0.0
    worst_own = 0.0 if run_queue_wait() is not None else None
    try:
        await during()
    finally:
        stop = True
        await task
    return worst, worst_own


async def loop_stall(tools: Sequence[Tool], wl: Workload, cfg: Settings) -> dict[str, Any]:
    idle = [(await ticker_max_lateness(lambda: asyncio.sleep(0.1)))[0] for _ in range(3)]
    out: dict[str, Any] = {"idle_max_ms": max(idle) * 1e3}
    for tool in tools:
        async def burst(tool: Tool = tool) -> None:
            await asyncio.gather(*(timed(tool, wl) for _ in range(cfg.stall_jails)))

        await burst()  # warm-up
        rounds = [await ticker_max_lateness(burst) for _ in range(cfg.stall_rounds)]
        late = [r[0] for r in rounds]
        own = [r[1] for r in rounds]
        out[tool.name] = {"max_ms": max(late) * 1e3, "median_round_max_ms": statistics.median(late) * 1e3,
                          "own_max_ms": None if None in own else max(x for x in own if x is not None) * 1e3,
                          "rounds": len(rounds)}
    return out


async def soak(tool: Tool, wl: Workload, cfg: Settings) -> dict[str, Any]:
    async def spawn_many(n: int) -> float:
        remaining = n
        start = now()

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await timed(tool, wl)

        await asyncio.gather(*(worker() for _ in range(cfg.soak_concurrency)))
        return now() - start

    await spawn_many(200)  # everything that is created once is created now
    await asyncio.sleep(0.05)
    before = snapshot()
    elapsed = await spawn_many(cfg.soak_n)
    await asyncio.sleep(0.05)
    after = snapshot()
    return {"tool": tool.name, "n": cfg.soak_n, "concurrency": cfg.soak_concurrency, "seconds": elapsed,
            "spawns_per_s": cfg.soak_n / elapsed, "before": before, "after": after}


class FloorUnavailable(Exception):
    """benchmarks/floor.c could not be built here; the message says why."""


def build_floor(tmp: str) -> str:
    """benchmarks/floor.c built into the directory `tmp` with the C compiler on PATH: the program's path."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise FloorUnavailable("no C compiler on PATH (Debian: apt-get install gcc)")
    exe = os.path.join(tmp, "floor")
    built = subprocess.run([cc, "-O2", "-o", exe, os.path.join(os.path.dirname(os.path.abspath(__file__)), "floor.c")],
                           capture_output=True, text=True)
    if built.returncode != 0:
        raise FloorUnavailable(f"floor.c did not build: {built.stderr.strip()[-300:]}")
    return exe


def kernel_floor(cfg: Settings) -> dict[str, Any]:
    """The floor any such jail pays on this machine (benchmarks/floor.c: clone into the seven namespaces,
    write the id maps, exec /bin/true, exit, reap; no mounts, no filter, no Python), at each concurrency:
    a target above it is out of reach of every sandbox here.  Built with the C compiler on PATH."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            exe = build_floor(tmp)
        except FloorUnavailable as exc:
            return {"skipped": str(exc)}
        out: dict[str, Any] = {}
        for c in cfg.concurrencies:
            done = subprocess.run([exe, str(c), str(cfg.throughput_seconds * cfg.throughput_rounds), "/bin/true"],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                return {"skipped": f"floor failed: {done.stderr.strip()[-300:]}"}
            out[str(c)] = json.loads(done.stdout)
            time.sleep(0.5)  # let the kernel's workers finish tearing the namespaces down
        return out


# --------------------------------------------------------------------------------------------------
# Targets


@dataclass
class Target:
    text: str
    value: str
    ok: bool | None  # None: skipped (a tool is missing)

    @property
    def verdict(self) -> str:
        return "SKIP" if self.ok is None else ("PASS" if self.ok else "MISS")


def check_targets(r: dict[str, Any], have: set[str]) -> list[Target]:
    out: list[Target] = []
    if "aiogaol" not in have:
        return out
    lat = r["latency"]["/bin/true"]
    a = lat["aiogaol"]["median_ms"]
    if "bwrap" in have:
        ratio = a / lat["bwrap"]["median_ms"]
        out.append(Target("full jail latency <= 0.45 x bwrap (/bin/true median)", f"{ratio:.2f} x", ratio <= 0.45))
    else:
        out.append(Target("full jail latency <= 0.45 x bwrap (/bin/true median)", "no bwrap", None))
    if "plain" in have:
        ratio = a / lat["plain"]["median_ms"]
        out.append(Target("full jail latency <= 3 x plain (/bin/true median)", f"{ratio:.2f} x", ratio <= 3))
    tp = r["throughput"].get("8", {})
    floor = r.get("floor", {})

    def beside_floor(c: str, key: str, unit: str) -> str:
        return f" (kernel floor: {floor[c][key]:.0f}{unit})" if c in floor else ""

    if "aiogaol" in tp:
        rate = tp["aiogaol"]["spawns_per_s"]
        out.append(Target(">= 1000 jails/s at concurrency 8",
                          f"{rate:.0f} /s" + beside_floor("8", "spawns_per_s", " /s"), rate >= 1000))
        if "bwrap" in tp:
            ratio = rate / tp["bwrap"]["spawns_per_s"]
            out.append(Target(">= 2.5 x bwrap's throughput at concurrency 8", f"{ratio:.2f} x", ratio >= 2.5))
        else:
            out.append(Target(">= 2.5 x bwrap's throughput at concurrency 8", "no bwrap", None))
    mem = r.get("memory", {})
    small, big = mem.get(str(50 * MiB)), mem.get(str(2 * GiB))
    if small and big and "aiogaol" in small:
        ratio = big["aiogaol"]["median_ms"] / small["aiogaol"]["median_ms"]
        out.append(Target("2 GiB server latency <= 1.1 x 50 MiB (median)", f"{ratio:.2f} x", ratio <= 1.1))
    c64 = r["throughput"].get("64", {}).get("aiogaol")
    if c64:
        ratio = c64["p99_ms"] / c64["median_ms"]
        out.append(Target("p99 <= 3 x median at concurrency 64", f"{ratio:.2f} x", ratio <= 3))
        out.append(Target("no spawn slower than 50 ms at concurrency 64",
                          f"max {c64['max_ms']:.1f} ms" + beside_floor("64", "max_ms", " ms max"), c64["max_ms"] <= 50))
    stall = r["stall"].get("aiogaol")
    if stall:
        out.append(Target("event loop stall <= 5 ms while 64 jails start", f"{stall['max_ms']:.2f} ms",
                          stall["max_ms"] <= 5))
    s = r.get("soak")
    if s:
        b, e = s["before"], s["after"]
        out.append(Target("after soak: same fd count", f"{b['fds']} -> {e['fds']}", b["fds"] == e["fds"]))
        out.append(Target("after soak: same thread count", f"{b['threads']} -> {e['threads']}",
                          b["threads"] == e["threads"]))
        grow = e["rss_mib"] - b["rss_mib"]
        out.append(Target("after soak: RSS within 5 MiB", f"{grow:+.1f} MiB", abs(grow) <= 5))
        out.append(Target("after soak: no zombie children", f"{e['zombies']} zombies", e["zombies"] == 0))
    return out


# --------------------------------------------------------------------------------------------------
# Report


def label_bytes(n: int) -> str:
    return f"{n // GiB} GiB" if n >= GiB and n % GiB == 0 else f"{n // MiB} MiB"


def ms(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.2f} ms" if x < 100 else f"{x:.0f} ms"


def times(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.2f}x"


class Table:
    def __init__(self, tools: Sequence[str]) -> None:
        self.tools = list(tools)
        self.lines: list[str] = []
        self.w = 34

    def header(self, title: str) -> None:
        cols = "".join(f"{t:>12}" for t in ALL_TOOLS) + f"{'aiogaol/plain':>15}{'aiogaol/bwrap':>15}"
        self.lines += ["", title, f"{'':<{self.w}}{cols}"]

    def note(self, text: str) -> None:
        self.lines.append(f"  {text}")

    def row(self, label: str, values: dict[str, float], fmt: Callable[[float | None], str],
            ratios: bool = True) -> None:
        cells = "".join(f"{fmt(values[t]) if t in values else '-' if t in self.tools else 'skipped':>12}"
                        for t in ALL_TOOLS)
        a = values.get("aiogaol")
        rp = a / values["plain"] if ratios and a is not None and values.get("plain") else None
        rb = a / values["bwrap"] if ratios and a is not None and values.get("bwrap") else None
        self.lines.append(f"  {label:<{self.w - 2}}{cells}{times(rp):>15}{times(rb):>15}")


def render(r: dict[str, Any], targets: list[Target]) -> str:
    m, cfg = r["machine"], r["config"]
    t = Table(r["tools"])
    t.lines += [f"aiogaol spawn benchmarks ({'quick' if cfg['quick'] else 'full'} run)",
                f"  machine: {m['cores']} cores, {m['cpu'] or 'unknown CPU'}, {m['memory_gib']} GiB, Linux "
                f"{m['kernel']}, Python {m['python']}, euid {m['euid']}",
                f"  load average at start: {' '.join(map(str, m['loadavg_at_start']))} (an idle machine reads ~0)",
                f"  tools:   {', '.join(f'{k} {v}' for k, v in r['versions'].items())}",
                f"  asyncio child watcher for plain/bwrap: {r['child_watcher']}"]
    for skipped, why in r["skipped"].items():
        t.lines.append(f"  {skipped} figures are skipped: {why}")

    for wl in ("/bin/true", "python -c pass"):
        lat = r["latency"][wl]
        n = next(iter(lat.values()))["n"]
        t.header(f"{wl}: spawn-to-exit, one at a time (n={n})")
        t.row("median", {k: v["median_ms"] for k, v in lat.items()}, ms)
        t.row("p99", {k: v["p99_ms"] for k, v in lat.items()}, ms)

    bd = r.get("breakdown")
    if bd:
        t.lines += ["", f"where an aiogaol /bin/true jail's time goes (per-step timers, n={bd['n']}, medians; "
                        f"{bd['waiting_init_share']:.0%} started by an init made ahead of time)"]
        total = bd["total_median_ms"]
        for label, value in bd["median_ms"].items():
            t.lines.append(f"  {label:<58}{ms(value):>10}{value / total:>8.0%}")
        t.lines.append(f"  {'sum of the medians':<58}{ms(sum(bd['median_ms'].values())):>10}")
        t.lines.append(f"  {'median spawn-to-exit with the timers on':<58}{ms(total):>10}")

    t.header("/bin/true throughput (spawns/s)")
    for c, by_tool in r["throughput"].items():
        t.row(f"concurrency {c}", {k: v["spawns_per_s"] for k, v in by_tool.items()}, lambda x: f"{x:.0f}")
    floor = r.get("floor", {})
    if "skipped" in floor:
        t.note(f"kernel floor skipped: {floor['skipped']}")
    elif floor:
        t.note("kernel floor (benchmarks/floor.c: clone into the 7 namespaces, id maps, exec, exit, reap;")
        t.note("  no mounts, no filter, no Python): " + ", ".join(
            f"c={c} {v['spawns_per_s']:.0f}/s (median {ms(v['median_ms'])}, max {ms(v['max_ms'])})"
            for c, v in floor.items()))
    for c in ("8", "64"):
        by_tool = r["throughput"].get(c, {})
        if not by_tool:
            continue
        t.header(f"/bin/true latency at concurrency {c}")
        for key in ("median_ms", "p99_ms", "max_ms"):
            t.row(key.replace("_ms", ""), {k: v[key] for k, v in by_tool.items()}, ms)
        t.row("p99 / median", {k: v["p99_ms"] / v["median_ms"] for k, v in by_tool.items()}, times, ratios=False)

    if r.get("memory"):
        t.header("/bin/true median with the server's RSS at")
        sizes = list(r["memory"].values())
        for s in sizes:
            t.row(f"{s['label']} (RSS {s['rss_mib']:.0f} MiB)",
                  {k: s[k]["median_ms"] for k in ALL_TOOLS if k in s}, ms)
        if len(sizes) == 2:
            t.row(f"{sizes[1]['label']} / {sizes[0]['label']}",
                  {k: sizes[1][k]["median_ms"] / sizes[0][k]["median_ms"] for k in ALL_TOOLS if k in sizes[0]},
                  times, ratios=False)

    st = r["stall"]
    t.header("event loop: longest 1 ms-tick lateness")
    t.row(f"while {cfg['stall_jails']} start (worst of {cfg['stall_rounds']})",
          {k: st[k]["max_ms"] for k in ALL_TOOLS if k in st}, ms)
    t.row("  median of the rounds' worst", {k: st[k]["median_round_max_ms"] for k in ALL_TOOLS if k in st}, ms)
    if all(st[k].get("own_max_ms") is not None for k in ALL_TOOLS if k in st):
        t.row("  worst, less waiting for a CPU", {k: st[k]["own_max_ms"] for k in ALL_TOOLS if k in st}, ms)
        t.note("(the second figure leaves out the time the loop's thread was runnable but other processes, "
               "such as the starting jails, held both CPUs: it is the work done on the loop's own thread)")
    t.note(f"idle loop, no spawns: {ms(st['idle_max_ms'])}")

    s = r.get("soak")
    if s:
        b, e = s["before"], s["after"]
        t.lines += ["", f"soak: {s['n']} {s['tool']} jails of /bin/true at concurrency {s['concurrency']}, "
                        f"{s['seconds']:.1f} s ({s['spawns_per_s']:.0f}/s)",
                    f"  {'':<30}{'before':>12}{'after':>12}",
                    f"  {'open fds':<30}{b['fds']:>12}{e['fds']:>12}",
                    f"  {'threads':<30}{b['threads']:>12}{e['threads']:>12}",
                    f"  {'RSS (MiB)':<30}{b['rss_mib']:>12.1f}{e['rss_mib']:>12.1f}",
                    f"  {'zombie children':<30}{b['zombies']:>12}{e['zombies']:>12}"]

    if targets:
        t.lines += ["", "targets (a miss is reported, never fatal)"]
        for tg in targets:
            t.lines.append(f"  {tg.verdict:<5} {tg.text:<52} {tg.value}")
        ok = sum(1 for tg in targets if tg.ok)
        miss = sum(1 for tg in targets if tg.ok is False)
        t.lines.append(f"  {ok} passed, {miss} missed, {len(targets) - ok - miss} skipped")
    return "\n".join(t.lines)


def plot(r: dict[str, Any], path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"note: matplotlib is not installed, so no plot was written to {path} "
              f"(pip install matplotlib)", file=sys.stderr)
        return
    tools = [t for t in ALL_TOOLS if t in r["tools"]]
    colors = {"plain": "#8c8c8c", "bwrap": "#d95f02", "aiogaol": "#1b9e77"}
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    m = r["machine"]
    fig.suptitle(f"aiogaol spawn benchmarks: {m['cores']} cores, Linux {m['kernel']}, Python {m['python']}")

    for ax, wl in zip(axes[0], ("/bin/true", "python -c pass")):
        lat = r["latency"][wl]
        xs = range(len(tools))
        med = [lat[t]["median_ms"] for t in tools]
        p99 = [lat[t]["p99_ms"] for t in tools]
        ax.bar(xs, med, color=[colors[t] for t in tools], label="median")
        ax.scatter(xs, p99, marker="_", s=600, color="black", label="p99", zorder=3)
        ax.set_xticks(list(xs), tools)
        ax.set_ylim(0, max(p99) * 1.35)
        ax.set_ylabel("spawn-to-exit (ms)")
        ax.set_title(f"{wl}: latency, one at a time")
        ax.legend(loc="upper left")

    ax = axes[1][0]
    concs = list(r["throughput"])
    width = 0.8 / len(tools)
    for i, tool in enumerate(tools):
        ax.bar([j + i * width for j in range(len(concs))],
               [r["throughput"][c][tool]["spawns_per_s"] for c in concs], width, label=tool, color=colors[tool])
    ax.set_xticks([j + width * (len(tools) - 1) / 2 for j in range(len(concs))], [f"c={c}" for c in concs])
    ax.set_ylabel("spawns / s")
    ax.set_title("/bin/true throughput")
    ax.legend()

    ax = axes[1][1]
    mem = list(r.get("memory", {}).values())
    mem_tools = [t for t in tools if mem and t in mem[0]]
    if mem and mem_tools:
        width = 0.8 / len(mem)
        for i, size in enumerate(mem):
            ax.bar([j + i * width for j in range(len(mem_tools))], [size[t]["median_ms"] for t in mem_tools], width,
                   label=f"server RSS {size['rss_mib']:.0f} MiB", color=["#7570b3", "#e7298a"][i % 2])
        ax.set_xticks([j + width * (len(mem) - 1) / 2 for j in range(len(mem_tools))], mem_tools)
        ax.legend()
    ax.set_ylabel("median spawn-to-exit (ms)")
    ax.set_title("/bin/true latency vs server memory")

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot written to {path}")


# --------------------------------------------------------------------------------------------------
# Main


def import_aiogaol() -> Any:
    try:
        import aiogaol
    except ImportError:
        # Run from a checkout without an installed aiogaol: try the repository next to this file.
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        import aiogaol
    return aiogaol


def use_pidfd_child_watcher() -> str:
    """Python 3.12+ watches asyncio children with pidfds when it can; give 3.11 the same, so the plain and
    bwrap baselines do not pay for the default watcher's thread per child."""
    if sys.version_info >= (3, 12):
        return "built-in (pidfd when available)"
    try:
        os.close(os.pidfd_open(os.getpid()))
        asyncio.set_child_watcher(asyncio.PidfdChildWatcher())
        return "PidfdChildWatcher"
    except (AttributeError, OSError):
        return "ThreadedChildWatcher (default)"


def version_of(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        return out.split()[-1] if out else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


async def probe(tool: Tool, workloads: Sequence[Workload]) -> str | None:
    """None when the tool runs every workload; otherwise why not."""
    for wl in workloads:
        try:
            await asyncio.wait_for(timed(tool, wl), 30)
        except Exception as exc:  # noqa: BLE001 - reported to the user
            return f"{' '.join(wl.argv)} did not run: {type(exc).__name__}: {exc}"
    return None


async def bench(args: argparse.Namespace, cfg: Settings) -> int:
    wanted = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(wanted) - set(ALL_TOOLS)
    if unknown:
        print(f"unknown tools: {', '.join(sorted(unknown))} (known: {', '.join(ALL_TOOLS)})", file=sys.stderr)
        return 2
    python = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    true = Workload("/bin/true", ("/bin/true",), python=False)
    py = Workload("python -c pass", (python, "-c", "pass"), python=True)
    tools: list[Tool] = []
    skipped: dict[str, str] = {}
    versions: dict[str, str] = {"python": platform.python_version()}
    for name in ALL_TOOLS:
        if name not in wanted:
            continue
        if name == "plain":
            tools.append(Plain())
        elif name == "bwrap":
            path = args.bwrap or shutil.which("bwrap")
            if not path:
                skipped["bwrap"] = "bwrap is not installed (Debian: apt-get install bubblewrap)"
                print("bwrap is not installed: bwrap figures are skipped", file=sys.stderr)
                continue
            bw = Bwrap(path)
            why = await probe(bw, [true, py])
            if why:
                skipped["bwrap"] = why
                print(f"bwrap figures are skipped: {why}", file=sys.stderr)
                continue
            versions["bwrap"] = version_of([path, "--version"])
            tools.append(bw)
        else:
            try:
                module = import_aiogaol()
            except ImportError as exc:
                print(f"cannot import aiogaol: {exc}", file=sys.stderr)
                return 1
            ag = Aiogaol(module)
            why = await probe(ag, [true, py])
            if why:
                print(f"aiogaol cannot run the benchmark programs: {why}", file=sys.stderr)
                return 1
            versions["aiogaol"] = getattr(module, "__version__", "?")
            tools.append(ag)
    if not tools:
        print("no tool to benchmark", file=sys.stderr)
        return 2
    names = {t.name for t in tools}

    async def phase(text: str) -> None:
        # A pause first: the kernel tears namespaces down in its own workers, after the jail has exited,
        # and that work should not land on the next phase's first samples.
        await asyncio.sleep(0.2 if cfg.quick else 1.0)
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    r: dict[str, Any] = {"machine": machine(), "versions": versions, "child_watcher": args.child_watcher,
                         "tools": [t.name for t in tools], "skipped": skipped,
                         "config": {k: v for k, v in cfg.__dict__.items()}, "program": {"python": python}}
    r["config"]["memory_sizes"] = [label_bytes(s) for s in cfg.memory_sizes]
    started = now()
    await phase("latency: /bin/true")
    r["latency"] = {true.name: await sequential_latency(tools, true, cfg.latency_true_n)}
    await phase("latency: python -c pass")
    r["latency"][py.name] = await sequential_latency(tools, py, cfg.latency_python_n)
    ag_tool = next((t for t in tools if isinstance(t, Aiogaol)), None)
    if ag_tool is not None:
        await phase("where a jail's time goes (aiogaol's per-step timers)")
        r["breakdown"] = await breakdown(ag_tool, cfg.latency_true_n // 3)
    await phase("throughput at concurrency " + ", ".join(map(str, cfg.concurrencies)))
    r["throughput"] = await throughput(tools, true, cfg)
    await phase("kernel floor (benchmarks/floor.c)")
    r["floor"] = kernel_floor(cfg)
    await phase("event loop stall")
    r["stall"] = await loop_stall(tools, true, cfg)
    aiogaol_tool = next((t for t in tools if t.name == "aiogaol"), None)
    if aiogaol_tool is not None and cfg.soak_n > 0:
        await phase(f"soak: {cfg.soak_n} jails")
        r["soak"] = await soak(aiogaol_tool, true, cfg)
    if names & {"plain", "aiogaol"}:
        await phase("server memory: " + " vs ".join(label_bytes(s) for s in cfg.memory_sizes))
        r["memory"] = await memory(tools, true, cfg)
    r["seconds"] = now() - started

    targets = check_targets(r, names)
    r["targets"] = [{"target": tg.text, "value": tg.value, "verdict": tg.verdict} for tg in targets]
    print(render(r, targets))
    print(f"\n(run took {r['seconds']:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
            f.write("\n")
        print(f"figures written to {args.json}")
    if args.plot:
        plot(r, args.plot)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short run (fewer samples, shorter windows)")
    p.add_argument("--json", metavar="OUT", help="write every figure to this JSON file")
    p.add_argument("--plot", metavar="PNG", help="draw latency and throughput per tool (needs matplotlib)")
    p.add_argument("--soak", metavar="N", type=int, default=None,
                   help="jails in the soak (default 10000; 500 with --quick; 0 skips it)")
    p.add_argument("--tools", default=",".join(ALL_TOOLS), help="comma-separated subset of: " + ", ".join(ALL_TOOLS))
    p.add_argument("--bwrap", metavar="PATH", help="the bwrap executable (default: bwrap on PATH)")
    args = p.parse_args(argv)
    if args.soak is not None and args.soak < 0:
        p.error("--soak must be >= 0")
    cfg = Settings.make(args.quick, args.soak)
    for d in (args.json, args.plot):
        if d and os.path.dirname(d):
            os.makedirs(os.path.dirname(d), exist_ok=True)
    args.child_watcher = use_pidfd_child_watcher()
    return asyncio.run(bench(args, cfg))


if __name__ == "__main__":
    sys.exit(main())
