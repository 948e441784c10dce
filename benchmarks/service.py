#!/usr/bin/env python3
"""Service benchmark: ``aiogaol serve`` answering SandboxFusion's POST /run_code for ``print(1)``.

Starts ``aiogaol serve`` (the CLI, in a subprocess, on loopback) and posts ``{"code": "print(1)",
"language": "python"}`` from C concurrent clients (httpx, one keep-alive connection each) for a fixed
number of requests, and reports requests/s and the latency percentiles the clients saw (from sending a
request to its whole answer, queueing included).  Beside it, in the same run and at the same
concurrency, the floor without HTTP: ``asyncio.create_subprocess_exec(python, "-c", "print(1)")`` (no
jail) and ``aiogaol.run`` of the same (a jail, no HTTP), so the ratios say what the jail and what the
service add.  The ``serve`` row is the warm path (a python request without files is a job of the
service's PythonPool); ``serve+file`` sends one file with it, which takes the cold path (``python -S``
in a jail holding the request's working directory), and ``jupyter`` is ``/run_jupyter`` with the same
cell (a sandbox per request).  The cold rows run ``python -S`` (the server through a ``--languages``
table that adds the flag): a site-packages ``.pth`` hook of the host (one imports certifi, 80 ms) would
otherwise weigh on every row differently, inside and outside the jail, and say nothing about either.

Then, without HTTP and at the server's concurrency, what the warm path saves: ``PythonPool.run`` (as
the service runs it) beside ``aiogaol.run`` of ``python -S -c`` and of ``python -c`` with site (the
shipped table's python, which the ``.pth`` hooks weigh on).  And one compiled request (a C hello:
compile, run) two ways, at the server's concurrency: as the service runs it (``Runner.run_code``: a
host working directory under the spool, two ``aiogaol.run`` jails and the size watch) and in a sandbox
(``open_sandbox``, ``write_file``, two ``exec``, ``aclose``): the cost of moving compiled languages onto
a sandbox's capped tmpfs.

    python benchmarks/service.py                    # concurrency 8 and 64, 400 requests each
    python benchmarks/service.py --requests 100 --concurrency 8
    python benchmarks/service.py --server-concurrency 2 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

import aiogaol

ROOT = Path(__file__).resolve().parent.parent
now = time.perf_counter


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def drive(n: int, concurrency: int, one: Callable[[], Awaitable[None]]) -> dict[str, float]:
    latencies: list[float] = []
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            t = now()
            await one()
            latencies.append(now() - t)

    t0 = now()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = now() - t0
    return {"rps": n / elapsed, "p50_ms": percentile(latencies, 0.5) * 1e3,
            "p99_ms": percentile(latencies, 0.99) * 1e3, "mean_ms": statistics.fmean(latencies) * 1e3}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


TABLE = """[python]
profile = "python"
source = "main.py"
run = ["{python}", "-S", "main.py"]
inline = ["{python}", "-S", "-c", "{code}"]
probe = 'print("aiogaol-probe")'
"""


def start_server(server_concurrency: int, queue: int, table: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    table.write_text(TABLE)
    proc = subprocess.Popen([sys.executable, "-m", "aiogaol", "serve", "--port", str(port), "--concurrency",
                             str(server_concurrency), "--queue", str(queue), "--languages", str(table)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"aiogaol serve did not start: {proc.communicate()[1]}")


async def measure(url: str, n: int, concurrencies: list[int]) -> dict[str, dict[int, dict[str, float]]]:
    python = aiogaol.python_executable()
    profile = aiogaol.python_profile([aiogaol.Tmpfs("/tmp", 64 << 20)])
    limits = aiogaol.Limits(wall_time=10, memory=1 << 30, processes=64, output=8 << 20)
    out: dict[str, dict[int, dict[str, float]]] = {name: {} for name in ROWS}
    body = {"code": "print(1)", "language": "python"}
    with_file = {**body, "files": {"data.txt": "eA=="}}
    notebook = {"cells": ["print(1)"]}
    for c in concurrencies:
        async def plain() -> None:
            proc = await asyncio.create_subprocess_exec(python, "-S", "-c", "print(1)", stdout=asyncio.subprocess.PIPE,
                                                        stdin=asyncio.subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin"})
            stdout, _ = await proc.communicate()
            assert stdout == b"1\n"

        async def jailed() -> None:
            result = await aiogaol.run(profile, [python, "-S", "-c", "print(1)"], limits=limits, cwd="/tmp")
            assert result.stdout == b"1\n", result

        async with httpx.AsyncClient(base_url=url, timeout=300,
                                     limits=httpx.Limits(max_connections=c, max_keepalive_connections=c)) as client:
            async def served() -> None:
                r = await client.post("/run_code", json=body)
                assert r.status_code == 200 and r.json()["run_result"]["stdout"] == "1\n", r.text

            async def served_cold() -> None:
                r = await client.post("/run_code", json=with_file)
                assert r.status_code == 200 and r.json()["run_result"]["stdout"] == "1\n", r.text

            async def jupyter() -> None:
                r = await client.post("/run_jupyter", json=notebook)
                assert r.status_code == 200 and r.json()["cells"][0]["stdout"] == "1\n", r.text

            for name, one in (("plain", plain), ("aiogaol.run", jailed), ("serve", served),
                              ("serve+file", served_cold), ("jupyter", jupyter)):
                await drive(min(n, 2 * c), c, one)  # warm-up: connections, the spawner, page cache
                out[name][c] = await drive(n, c, one)
    return out


ROWS = ("plain", "aiogaol.run", "serve", "serve+file", "jupyter")
C_HELLO = '#include <stdio.h>\nint main(void) { puts("hi"); return 0; }\n'


async def python_direct(n: int, concurrency: int) -> dict[str, dict[str, float]]:
    """print(1) on a warm PythonPool, and cold with and without site, no HTTP."""
    python = aiogaol.python_executable()
    profile = aiogaol.python_profile([aiogaol.Tmpfs("/tmp", 64 << 20)])
    limits = aiogaol.Limits(wall_time=10, memory=1 << 30, processes=64, output=8 << 20)
    async with aiogaol.PythonPool(profile, size=concurrency, limits=limits, cwd="/tmp") as pool:
        async def warm() -> None:
            result = await pool.run("print(1)", timeout=10)
            assert result.stdout == b"1\n", result

        def cold(*flags: str) -> Callable[[], Awaitable[None]]:
            async def one() -> None:
                result = await aiogaol.run(profile, [python, *flags, "-c", "print(1)"], limits=limits, cwd="/tmp")
                assert result.stdout == b"1\n", result
            return one

        out = {}
        for name, one in (("PythonPool.run", warm), ("run python -S", cold("-S")), ("run python", cold())):
            await drive(min(n, 2 * concurrency), concurrency, one)
            out[name] = await drive(n, concurrency, one)
        return out


async def compiled(n: int, concurrency: int) -> dict[str, dict[str, float]]:
    """One C request, compile and run, as the service runs it and on a sandbox (no HTTP either way)."""
    import shutil

    from aiogaol._serve import load_table
    from aiogaol._serve._runner import Runner
    from aiogaol._serve._schema import RunCode
    c = load_table()["c"]
    gcc = shutil.which("gcc")
    if gcc is None:
        return {}
    with tempfile.TemporaryDirectory() as spool:
        runner = Runner({"c": c}, spool)
        profile = c.profile_for(None)
        limits = runner.limits(c, 10, -1)
        env = c.environment("/work")
        request = RunCode(code=C_HELLO, language="c")

        async def spool_path() -> None:
            reply = await runner.run_code(request, c)
            assert reply["run_result"]["stdout"] == "hi\n", reply

        async def sandbox_path() -> None:
            async with await aiogaol.open_sandbox(profile, limits=limits,
                                                  workspace_size=runner.settings.workdir_size) as sb:
                await sb.write_file("main.c", C_HELLO)
                built = await sb.exec([gcc, *c.compile[1:]] if c.compile else [gcc], timeout=10, env=env)
                assert built.returncode == 0, built
                ran = await sb.exec(["./main"], timeout=10, env=env)
                assert ran.stdout == b"hi\n", ran

        out = {}
        for name, one in (("spool + 2 runs", spool_path), ("sandbox", sandbox_path)):
            await drive(min(n, 2 * concurrency), concurrency, one)
            out[name] = await drive(n, concurrency, one)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="requests per concurrency (default 400)")
    parser.add_argument("--concurrency", default="8,64", help="client concurrencies (default 8,64)")
    parser.add_argument("--server-concurrency", type=int, default=os.cpu_count() or 2,
                        help="aiogaol serve --concurrency (default: the number of CPUs, its own default)")
    parser.add_argument("--compiled-requests", type=int, default=60,
                        help="requests per way in the comparisons without HTTP (default 60; 0 skips them)")
    parser.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    ns = parser.parse_args()
    concurrencies = [int(c) for c in ns.concurrency.split(",")]
    print(f"aiogaol serve benchmark: POST /run_code print(1), {ns.requests} requests per concurrency; "
          f"{platform.node()}, Linux {platform.release()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
          f"uid {os.getuid()}, python {platform.python_version()}; server --concurrency {ns.server_concurrency}")
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(ns.server_concurrency, max(concurrencies) * 2, Path(tmp) / "python-S.toml")
        try:
            figures = asyncio.run(measure(url, ns.requests, concurrencies))
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
        py_figures = (asyncio.run(python_direct(ns.compiled_requests, ns.server_concurrency))
                      if ns.compiled_requests > 0 else {})
        c_figures = (asyncio.run(compiled(ns.compiled_requests, ns.server_concurrency))
                     if ns.compiled_requests > 0 else {})
    print(f"{'concurrency':>11} {'tool':<12} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}  vs plain  vs aiogaol.run")
    for c in concurrencies:
        for name in ROWS:
            f = figures[name][c]
            ratio = figures["plain"][c]["rps"] / f["rps"]
            ratio_run = figures["aiogaol.run"][c]["rps"] / f["rps"]
            print(f"{c:>11} {name:<12} {f['rps']:>8.1f} {f['p50_ms']:>8.1f} {f['p99_ms']:>8.1f}  "
                  f"{ratio:>6.2f} x  {ratio_run:>8.2f} x")
    if py_figures:
        print(f"python print(1), no HTTP, concurrency {ns.server_concurrency}, {ns.compiled_requests} requests each:")
        base = py_figures["PythonPool.run"]["rps"]
        for name, f in py_figures.items():
            print(f"{'':>11} {name:<16} {f['rps']:>8.1f} req/s  p50 {f['p50_ms']:>7.1f} ms  "
                  f"p99 {f['p99_ms']:>7.1f} ms  "
                  f"{base / f['rps']:>5.2f} x the warm pool's time")
    if c_figures:
        print(f"C hello (compile + run), no HTTP, concurrency {ns.server_concurrency}, "
              f"{ns.compiled_requests} requests each:")
        base = c_figures["spool + 2 runs"]["rps"]
        for name, f in c_figures.items():
            print(f"{'':>11} {name:<16} {f['rps']:>8.1f} req/s  p50 {f['p50_ms']:>7.1f} ms  "
                  f"p99 {f['p99_ms']:>7.1f} ms  "
                  f"{base / f['rps']:>5.2f} x the service's way")
    if ns.json:
        Path(ns.json).write_text(json.dumps({"requests": ns.requests, "server_concurrency": ns.server_concurrency,
                                             "figures": figures, "python": py_figures,
                                             "compiled": c_figures}, indent=2))


if __name__ == "__main__":
    main()
