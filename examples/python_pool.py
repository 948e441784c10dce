"""A code interpreter's back end: Python snippets at the cost of a fork, each in a fresh jail.

    python examples/python_pool.py [asyncio|trio]

One warm interpreter imports the preloads once (numpy, when it is installed); every snippet then runs
as `python3 -c` would, in a new jail of its own, and nothing of one snippet reaches the next.
"""

from __future__ import annotations

import importlib.util
import sys
import time

import anyio

import aiogaol

PRELOAD = ["json"] + (["numpy"] if importlib.util.find_spec("numpy") else [])

SNIPPETS = {
    "sum": "import numpy as np\nprint(np.arange(10).sum())" if "numpy" in PRELOAD else "print(sum(range(10)))",
    "argv": "import sys; print(sys.argv[1:], __name__)",
    "leaves-state": "import json; json.LEFT = 1; open('/tmp/x', 'w').write('x'); print('left state')",
    "finds-state": "import json, os; print(hasattr(json, 'LEFT'), os.path.exists('/tmp/x'))",
    "crashes": "import ctypes; ctypes.string_at(0)",
    "raises": "raise ValueError('bad input')",
    "loops": "while True: pass",
    "reads-host": "print(open('/etc/shadow').read())",
}


async def main() -> None:
    profile = aiogaol.python_profile([aiogaol.Tmpfs("/tmp", 16 << 20)])
    limits = aiogaol.Limits(wall_time=5, memory=1 << 30, processes=16)
    async with aiogaol.PythonPool(profile, preload=PRELOAD, size=4, limits=limits) as pool:
        for name, code in SNIPPETS.items():
            r = await pool.run(code, args=["one", "two"], timeout=1)
            last = (r.stderr.strip().splitlines() or [b""])[-1].decode()
            print(f"{name:13} {r.status:13} {r.stdout.decode().strip()!r:28} {last}")
        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(32):
                tg.start_soon(pool.run, "print(1)")
        took = time.perf_counter() - start
        stats = pool.stats()
        print(f"32 more jobs in {took:.2f} s; preloaded {', '.join(PRELOAD)}; "
              f"{stats.finished} jobs, {stats.zygote_starts} warm interpreter(s) started")


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
