#!/usr/bin/env python3
"""Sandbox benchmarks: what a call costs in a sandbox that is already running, in one run.

Measured from one asyncio event loop, each figure the median of N sequential samples:

  open+close   aiogaol.open_sandbox(profile) then aclose: a jail with its agent, and its end
  exec true    Sandbox.exec(["/bin/true"]) in a running sandbox (pipes, output collected, a Result)
  fresh run    aiogaol.run(profile, ["/bin/true"]): a fresh jail per program, the same Result
  fresh spawn  aiogaol.create_sandboxed_subprocess(profile, "/bin/true") + wait: a fresh jail, no pipes
  plain        asyncio.create_subprocess_exec("/bin/true") + wait: no jail at all
  bwrap        bwrap --unshare-all ... /bin/true (if bubblewrap is installed): a fresh bubblewrap jail
  print(1)     Sandbox.run_code("print(1)") in a warm kernel
  write 1 MiB  Sandbox.write_file of 1 MiB;  read 1 MiB: Sandbox.read_file of it

Targets (issue 14): exec true at most 0.5 x a fresh jail's run; a print(1) cell under 2 ms.  A miss is
printed as MISS and never changes the exit status.

    .venv/bin/python benchmarks/sandbox.py            # about half a minute on 2 cores
    .venv/bin/python benchmarks/sandbox.py --quick    # fewer samples
    .venv/bin/python benchmarks/sandbox.py --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import aiogaol  # noqa: E402

now = time.perf_counter
DEVNULL = subprocess.DEVNULL


async def median_ms(fn: Callable[[], Awaitable[Any]], n: int, warm: int = 3) -> dict[str, float]:
    for _ in range(warm):
        await fn()
    samples = []
    for _ in range(n):
        t = now()
        await fn()
        samples.append((now() - t) * 1000)
    samples.sort()
    return {"median_ms": round(statistics.median(samples), 3), "p90_ms": round(samples[int(0.9 * (n - 1))], 3),
            "n": n}


def bwrap_argv() -> list[str] | None:
    path = shutil.which("bwrap")
    if path is None:
        return None
    argv = [path, "--unshare-all", "--die-with-parent", "--new-session", "--proc", "/proc", "--dev", "/dev"]
    for d in ("/usr", "/bin", "/lib", "/lib64", "/sbin"):
        if os.path.islink(d):
            argv += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            argv += ["--ro-bind", d, d]
    return argv + ["/bin/true"]


async def main(quick: bool, out: str | None) -> int:
    n = 30 if quick else 200
    profile = aiogaol.python_profile()
    figures: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load": os.getloadavg()[0],
                                           "kernel": os.uname().release}}

    async def open_close() -> None:
        sb = await aiogaol.open_sandbox(profile)
        await sb.aclose()

    figures["open+close"] = await median_ms(open_close, max(10, n // 4))
    async with await aiogaol.open_sandbox(profile) as sb:
        async def exec_true() -> None:
            r = await sb.exec(["/bin/true"])
            assert r.ok, r

        figures["exec true"] = await median_ms(exec_true, n)

        async def cell() -> None:
            c = await sb.run_code("print(1)")
            assert c.ok and c.stdout == "1\n", c

        figures["print(1)"] = await median_ms(cell, n)
        blob = os.urandom(1 << 20)

        async def write() -> None:
            await sb.write_file("blob", blob)

        async def read() -> None:
            assert len(await sb.read_file("blob")) == len(blob)

        figures["write 1 MiB"] = await median_ms(write, max(10, n // 4))
        figures["read 1 MiB"] = await median_ms(read, max(10, n // 4))

    async def fresh_run() -> None:
        r = await aiogaol.run(profile, ["/bin/true"])
        assert r.ok, r

    async def fresh_spawn() -> None:
        p = await aiogaol.create_sandboxed_subprocess(profile, "/bin/true", stdin=DEVNULL, stdout=DEVNULL,
                                                      stderr=DEVNULL)
        assert await p.wait() == 0

    async def plain() -> None:
        p = await asyncio.create_subprocess_exec("/bin/true", stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL)
        assert await p.wait() == 0

    figures["fresh run"] = await median_ms(fresh_run, n)
    figures["fresh spawn"] = await median_ms(fresh_spawn, n)
    figures["plain"] = await median_ms(plain, n)
    bw = bwrap_argv()
    if bw is not None:
        async def bwrap() -> None:
            p = await asyncio.create_subprocess_exec(*bw, stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL)
            assert await p.wait() == 0

        figures["bwrap"] = await median_ms(bwrap, n)

    exec_ms = figures["exec true"]["median_ms"]
    ratios = {"exec true / fresh run": exec_ms / figures["fresh run"]["median_ms"],
              "exec true / fresh spawn": exec_ms / figures["fresh spawn"]["median_ms"],
              "exec true / plain": exec_ms / figures["plain"]["median_ms"]}
    if "bwrap" in figures:
        ratios["exec true / bwrap"] = exec_ms / figures["bwrap"]["median_ms"]
    figures["ratios"] = {k: round(v, 3) for k, v in ratios.items()}
    verdicts = {
        "exec true <= 0.5 x fresh run": ratios["exec true / fresh run"] <= 0.5,
        "print(1) cell < 2 ms": figures["print(1)"]["median_ms"] < 2.0,
    }
    figures["verdicts"] = verdicts

    print(f"sandbox benchmarks ({'quick' if quick else 'full'}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
          f"Linux {os.uname().release})")
    print(f"{'figure':<14} {'median ms':>10} {'p90 ms':>9} {'n':>5}")
    for name in ("open+close", "exec true", "fresh run", "fresh spawn", "plain", "bwrap", "print(1)",
                 "write 1 MiB", "read 1 MiB"):
        if name in figures:
            f = figures[name]
            print(f"{name:<14} {f['median_ms']:>10.3f} {f['p90_ms']:>9.3f} {f['n']:>5}")
    for name, value in ratios.items():
        print(f"{name:<26} {value:6.2f} x")
    for name, ok in verdicts.items():
        print(f"{'PASS' if ok else 'MISS'}  {name}")
    if out:
        with open(out, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.quick, args.json)))
