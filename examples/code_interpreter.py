"""A code interpreter session, as an LLM agent's tool would run it: one sandbox across many calls.

Files go in, a C program is built and run (when a C compiler is installed), cells of Python keep their
state from one to the next, a cell that raises is reported and the session goes on, a cell that hangs is
interrupted at its timeout, and one that ignores the interrupt is killed (its state lost) while the
sandbox and its files live on.  Runs unchanged on asyncio and trio (``python examples/code_interpreter.py
trio``).
"""

from __future__ import annotations

import shutil
import sys

import anyio

import aiogaol

SOURCE = r"""
#include <stdio.h>
int main(void) { int a, b; if (scanf("%d %d", &a, &b) != 2) return 1; printf("%d\n", a + b); return 0; }
"""


def show(label: str, cell: aiogaol.CodeResult) -> None:
    line = f"[{label}] {cell.status}"
    if cell.value is not None:
        line += f" value={cell.value}"
    if cell.stdout:
        line += f" stdout={cell.stdout.strip()!r}"
    if cell.error is not None:
        line += f" error={cell.error.type}: {cell.error.message}"
    if cell.state_lost:
        line += " (state lost: the kernel was restarted)"
    print(line)


async def main() -> None:
    # The host's Python and the system's programs, read-only; the sandbox adds a private 64 MiB /work.
    profile = aiogaol.python_profile()
    limits = aiogaol.Limits(memory=512 << 20, processes=64)
    async with await aiogaol.open_sandbox(profile, limits=limits, workspace_size=64 << 20, lifetime=300) as sb:
        # 1. Files in, a program built and run in the same jail, files out.
        await sb.write_file("data.csv", "name,score\nada,36\ngrace,42\nalan,29\n")
        if shutil.which("gcc") and (await sb.exec(["gcc", "--version"])).ok:
            await sb.write_file("main.c", SOURCE)
            built = await sb.exec(["gcc", "-O2", "-o", "add", "main.c"], timeout=60)
            print("gcc:", built.status)
            ran = await sb.exec(["./add"], input=b"2 3\n", limits=aiogaol.Limits(cpu_time=1))
            print("./add says", ran.stdout.decode().strip())
        else:
            ran = await sb.exec(["/bin/sh", "-c", "echo $((2 + 3))"])
            print("sh says", ran.stdout.decode().strip())

        # 2. Stateful cells: what one cell defines, the next one sees.
        show("load", await sb.run_code(
            "import csv\nrows = list(csv.DictReader(open('data.csv')))\nlen(rows)"))
        show("best", await sb.run_code(
            "best = max(rows, key=lambda r: int(r['score']))\nprint('best is', best['name'])\nbest['score']"))
        show("write", await sb.run_code(
            "open('report.txt', 'w').write(f\"{best['name']} leads with {best['score']}\\n\")"))
        print("report.txt:", (await sb.read_file("report.txt")).decode().strip())

        # 3. An exception: reported with its traceback, and the kernel lives on.
        cell = await sb.run_code("def average(xs):\n    return sum(xs) / len(xs)\naverage([])")
        show("error", cell)
        assert cell.error is not None
        print("  last traceback line:", cell.error.traceback.strip().splitlines()[-1])
        show("still there", await sb.run_code("len(rows)"))

        # 4. A hung cell: interrupted at its timeout (KeyboardInterrupt in the cell), state intact.
        show("hung", await sb.run_code("import time\nwhile True:\n    time.sleep(1)", timeout=0.5))
        show("after hung", await sb.run_code("best['name']"))

        # 5. A cell that ignores the interrupt: killed, the kernel restarted, the files remain.
        show("stubborn", await sb.run_code(
            "import time\nwhile True:\n    try:\n        time.sleep(1)\n    except KeyboardInterrupt:\n        pass",
            timeout=0.5))
        show("fresh kernel", await sb.run_code("'rows' in globals()"))
        print("files:", (await sb.exec(["ls"])).stdout.decode().split())
    print("closed:", sb.closed)


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
