"""Quickstart: one jailed program with ``aiogaol.spawn``, then a few through a ``Pool``.

Runs unchanged on asyncio and trio (``python examples/quickstart.py trio``), because it only speaks anyio.
"""

from __future__ import annotations

import sys

import anyio

import aiogaol


async def main() -> None:
    # The host's Python and the libraries it needs, read-only; nothing else: no /etc, no /home, no
    # network, a private /proc and /dev.  Add operations to grant more.
    profile = aiogaol.python_profile([aiogaol.Tmpfs("/tmp")])
    python = aiogaol.python_executable()

    # 1. One program, talked to through its pipes.  Leaving the block reaps it (and would terminate it
    #    if it still ran), so no jail outlives the code that started it.
    code = "import sys, os; name = sys.stdin.read(); print(f'hello {name} from pid {os.getpid()}')"
    async with await aiogaol.spawn(profile, [python, "-c", code]) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        await proc.stdin.send(b"world")
        await proc.stdin.aclose()
        print((await proc.stdout.receive()).decode().strip())  # pid 2: its own PID namespace
        print("exit status", await proc.wait(), "isolation", proc.isolation)
        assert proc.usage is not None
        print(f"used {proc.usage.cpu_time * 1000:.0f} ms CPU, {proc.usage.max_rss >> 20} MiB at most")

    # 2. What the jail refuses: the host's files are simply not there.
    code = "open('/etc/passwd')"
    async with await aiogaol.spawn(profile, [python, "-c", code]) as proc:
        assert proc.stderr is not None
        err = b""
        async for chunk in proc.stderr:
            err += chunk
        print("reading /etc/passwd:", err.decode().strip().splitlines()[-1], "| exit", await proc.wait())

    # 3. A pool: at most 4 jails at once, each with a deadline and limits.
    limits = aiogaol.Limits(wall_time=2.0, memory=256 << 20, processes=16)
    async with aiogaol.Pool(profile, size=4, limits=limits) as pool:
        result = await pool.run([python, "-c", "print(sum(range(101)))"])
        print("pool.run:", result.status, result.stdout.decode().strip())
        jobs = [[python, "-c", f"print({n} ** {n})"] for n in range(1, 9)]
        jobs.append([python, "-c", "while True: pass"])  # will hit the 2 s deadline
        async for result in pool.map(jobs):
            print(f"  job {result.id}: {result.status:<9} {result.stdout.decode().strip()}")
        print("stats:", pool.stats())


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
