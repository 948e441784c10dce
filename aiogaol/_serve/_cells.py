"""The run_jupyter driver: the program that runs in the request's jail and executes its cells in order.

Not imported by the server: ``SOURCE`` (this module's own text) is handed to the jail's Python with
``-c``.  It reads ``{"cells": [...], "cell_timeout": s}`` as JSON on stdin, runs every cell in one
namespace (so a cell sees what the cells before it defined, as in a notebook), and writes one JSON line
per cell, as each ends, on the stdout it was started with: SandboxFusion's ``CellRunResult`` (stdout,
stderr, display, error).  Each cell's fds 1 and 2 are files of the jail's private /tmp while it runs, so
what a child process or ``os.write`` prints is the cell's output too, and cannot be taken for a result
line.  A cell's final expression is shown as Jupyter shows it (``{"text/plain": repr(value)}``), an
exception as Jupyter's error content (ename, evalue, traceback).  cell_timeout is an interval timer
raising TimeoutError in the cell; the request's total_timeout is the jail's wall time, enforced from
outside, which a cell cannot stop.

The server treats every line as untrusted (the cells' code shares this process): ``parse_lines``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Any

MAX_CELL_OUTPUT = 1 << 20  # bytes of one cell's stdout, of its stderr, of a displayed repr


def _main() -> None:  # runs in the jail
    import ast
    import os
    import signal
    import sys
    import tempfile
    import traceback

    request = json.loads(sys.stdin.buffer.read())
    results = os.fdopen(os.dup(1), "w", encoding="utf-8")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    timeout = float(request.get("cell_timeout") or 0)

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"the cell ran past cell_timeout = {timeout:g} s")

    signal.signal(signal.SIGALRM, expired)
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}

    def text(f: Any) -> tuple[str, bool]:
        f.seek(0)
        data = f.read(MAX_CELL_OUTPUT + 1)
        return data[:MAX_CELL_OUTPUT].decode("utf-8", "replace"), len(data) > MAX_CELL_OUTPUT

    for number, cell in enumerate(request["cells"]):
        out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        display: list[dict[str, str]] = []
        error: list[dict[str, Any]] = []
        name = f"<cell-{number}>"
        try:
            if timeout > 0:
                signal.setitimer(signal.ITIMER_REAL, timeout)
            tree = ast.parse(cell, name)
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = ast.Expression(tree.body.pop().value)
            exec(compile(tree, name, "exec"), namespace)
            if last is not None:
                value = eval(compile(last, name, "eval"), namespace)
                if value is not None:
                    display.append({"text/plain": repr(value)[:MAX_CELL_OUTPUT]})
        except BaseException as e:  # SystemExit and KeyboardInterrupt end the cell, not the session
            tb = traceback.format_exception(type(e), e, e.__traceback__.tb_next if e.__traceback__ else None)
            error.append({"ename": type(e).__name__, "evalue": str(e)[:MAX_CELL_OUTPUT], "traceback": tb})
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        stdout, stdout_cut = text(out)
        stderr, stderr_cut = text(err)
        out.close()
        err.close()
        results.write(json.dumps({"stdout": stdout, "stderr": stderr, "display": display, "error": error,
                                  "stdout_truncated": stdout_cut, "stderr_truncated": stderr_cut}) + "\n")
        results.flush()


def parse_lines(data: bytes, cells: int) -> Iterator[dict[str, Any]]:
    """The cell results in the driver's output, checked one by one; stops at the first line that is
    not one (a cut last line, or something a cell wrote there itself)."""
    for n, line in enumerate(data.split(b"\n")):
        if n >= cells or not line:
            return
        try:
            item = json.loads(line)
        except (ValueError, RecursionError):
            return
        if not (isinstance(item, dict) and isinstance(item.get("stdout"), str)
                and isinstance(item.get("stderr"), str) and isinstance(item.get("display"), list)
                and all(isinstance(d, dict) for d in item["display"]) and isinstance(item.get("error"), list)
                and all(isinstance(d, dict) for d in item["error"])):
            return
        yield {"stdout": item["stdout"], "stderr": item["stderr"], "display": item["display"],
               "error": item["error"], "stdout_truncated": bool(item.get("stdout_truncated")),
               "stderr_truncated": bool(item.get("stderr_truncated"))}


@functools.cache
def source() -> str:
    """This module's text, to run as the driver (``python -c``), ending in the call of ``_main``."""
    import inspect
    import sys
    return inspect.getsource(sys.modules[__name__]) + "\n_main()\n"
