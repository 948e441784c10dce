"""A judge-like batch: many small submissions, some wrong, some hostile, some looping forever.

Each submission is a Python program that must read two numbers and print their sum.  All of them run
through one ``aiogaol.Pool``: at most ``--jobs`` jails at once, each with a wall-clock deadline, a CPU
limit, an address-space limit, a process limit and an output cap.  The hostile ones (fork bomb, memory
hog, output flood, infinite loops, snooping on the host) end with a verdict like the rest, and the honest
submissions next to them are judged as if they had run alone.

    python examples/pool.py [--jobs N] [--backend asyncio|trio] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

import anyio

import aiogaol

TESTS = [("2 3\n", "5"), ("40 2\n", "42"), ("-7 7\n", "0")]

SUBMISSIONS: dict[str, str] = {
    "correct": "a, b = map(int, input().split()); print(a + b)",
    "correct-slow-start": "import time; time.sleep(0.2); a, b = map(int, input().split()); print(a + b)",
    "wrong-answer": "a, b = map(int, input().split()); print(a - b)",
    "runtime-error": "a, b = map(int, input().split()); print(a // 0)",
    "infinite-loop": "while True: pass",
    "sleeps-forever": "import time; time.sleep(10**6)",
    "ignores-sigterm": ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                        "while True: time.sleep(1)"),
    "fork-bomb": ("import os\n"
                  "while True:\n"
                  "    try: os.fork()\n"
                  "    except OSError: pass"),
    "memory-hog": "x = bytearray(2 << 30); print(len(x))",
    "output-flood": "import sys\nwhile True: sys.stdout.write('spam' * 1024)",
    "reads-host-secrets": "print(open('/etc/shadow').read())",
    "phones-home": ("import socket; s = socket.create_connection(('1.1.1.1', 80), timeout=1); "
                    "print('connected')"),
    "kills-itself": "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)",
}
# Plenty of honest submissions around the hostile ones, as in a real contest.
for i in range(12):
    SUBMISSIONS[f"correct-{i}"] = SUBMISSIONS["correct"]

LIMITS = aiogaol.Limits(wall_time=1.5, cpu_time=1.0, memory=256 << 20, processes=16, output=64 << 10)


def verdict(result: aiogaol.Result, expected: str) -> str:
    """The usual judge verdicts, from the pool's status and what the program printed."""
    if result.status == "timed-out":
        return "TLE"
    if result.status == "output-limit":
        return "OLE"
    if b"MemoryError" in result.stderr:
        return "MLE"
    if result.signal == 24:  # SIGXCPU: the CPU-time rlimit
        return "TLE"
    if result.status == "ok":
        return "AC" if result.stdout.decode().strip() == expected else "WA"
    return "RE"


async def judge(jobs: int, as_json: bool) -> dict[str, str]:
    profile = aiogaol.python_profile()
    python = aiogaol.python_executable()
    work = [aiogaol.Job([python, "-c", source], input.encode(), id=(name, t))
            for name, source in SUBMISSIONS.items() for t, (input, _) in enumerate(TESTS)]
    per_submission: dict[str, list[str]] = {name: [] for name in SUBMISSIONS}
    async with aiogaol.Pool(profile, size=jobs, limits=LIMITS) as pool:
        async for result in pool.map(work):
            name, t = result.id
            v = verdict(result, TESTS[t][1])
            per_submission[name].append(v)
            if as_json:
                print(json.dumps({"submission": name, "test": t, "verdict": v, "status": result.status,
                                  "returncode": result.returncode}), flush=True)
        stats = pool.stats()
    final = {}
    for name, verdicts in per_submission.items():
        # The first verdict that is not AC, in judge order, is the submission's.
        final[name] = next((v for v in ("RE", "TLE", "MLE", "OLE", "WA") if v in verdicts), "AC")
    if not as_json:
        width = max(map(len, SUBMISSIONS))
        for name, v in final.items():
            print(f"{name:<{width}}  {v:<3}  {' '.join(per_submission[name])}")
        print(f"{stats.done} runs, {stats.failed} not ok, at most {jobs} at once; latency "
              f"p50 {stats.p50:.3f}s p90 {stats.p90:.3f}s p99 {stats.p99:.3f}s")
    return final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--json", action="store_true", help="one JSON line per run instead of a table")
    ns = parser.parse_args()
    final = anyio.run(judge, ns.jobs, ns.json, backend=ns.backend)
    honest = [name for name in final if name.startswith("correct")]
    sys.exit(0 if all(final[name] == "AC" for name in honest) else 1)


if __name__ == "__main__":
    main()
