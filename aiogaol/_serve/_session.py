"""``/run_jupyter`` on a sandbox: the request's files in, its cells in one stateful Python kernel, its
fetch_files out, the sandbox closed.

One ``aiogaol.open_sandbox`` per request, of the python language's profile and the request's limits:
its workspace ``/work`` is a private tmpfs of ``Settings.workdir_size`` bytes (a disk bound the kernel
keeps), the request's files are put there with ``write_file``, each cell is ``run_code`` (the sandbox's
kernel: a cell sees what the cells before it defined), and ``read_file`` brings fetch_files back.  The
file calls resolve paths beneath the workspace in the kernel (``openat2(RESOLVE_BENEATH)``), so a
symlink a cell planted never makes the server read or write outside it.

A cell's outcome becomes SandboxFusion's ``CellRunResult``: stdout, stderr, ``display`` (the final
expression's repr as ``text/plain``, as Jupyter shows it) and ``error`` (Jupyter's ename, evalue,
traceback).  ``cell_timeout`` is each cell's timeout (the kernel is interrupted, its state kept: the
session goes on, the cell's error is a ``TimeoutError``); ``total_timeout`` bounds the session: each
cell gets at most what is left of it, the cell it ends is not reported (as a driver killed at its
deadline could not report it), and the sandbox's ``lifetime`` (kept by its init, which nothing in the
sandbox can stop) ends everything a little after it in any case.
"""

from __future__ import annotations

import logging
import posixpath
import shutil
from typing import Any

import anyio

from .._agent import SandboxClosed, SandboxError
from .._cells import CodeResult
from .._errors import AiogaolError
from .._limits import Limits
from .._profile import Profile
from .._sandbox import Sandbox, open_sandbox
from ._schema import FAILED, FINISHED, SANDBOX_ERROR, SUCCESS, TIME_LIMIT, RunJupyter, encode_files
from ._workspace import MAX_FETCH_FILE, MAX_FETCH_TOTAL

log = logging.getLogger("aiogaol.serve")

WORKSPACE = "/work"
GRACE = 10.0  # seconds past total_timeout for the file calls before the sandbox's lifetime ends it


def cell_result(result: CodeResult, cell_timeout: float) -> dict[str, Any]:
    """SandboxFusion's CellRunResult of one cell (plus the truncation flags, beyond it)."""
    error: list[dict[str, Any]] = []
    if result.status == "timed-out":
        error.append({"ename": "TimeoutError", "evalue": f"the cell ran past cell_timeout = {cell_timeout:g} s",
                      "traceback": []})
    elif result.status == "output-limit":
        error.append({"ename": "OutputLimitExceeded", "evalue": "the cell printed more than the service keeps; "
                      "it was stopped", "traceback": []})
    elif result.error is not None:
        error.append({"ename": result.error.type, "evalue": result.error.message,
                      "traceback": result.error.traceback.splitlines(keepends=True)})
    if result.state_lost and error:
        error[0]["evalue"] += " (the kernel was restarted: the session's state is lost)"
    return {"stdout": result.stdout, "stderr": result.stderr,
            "display": [{"text/plain": result.value}] if result.value is not None else [],
            "error": error, "stdout_truncated": result.stdout_truncated,
            "stderr_truncated": result.stderr_truncated}


def _driver(ended_by_time: bool, ended: bool, wall: float, evidence: str) -> dict[str, Any]:
    """The ``driver`` of SandboxFusion's answer: the session as one command (its kernel's stdout is the
    cells', so empty here).  ``ended``: the sandbox ended under it before its time (a cell killed its
    agent), as a driver killed by a signal."""
    return {"status": TIME_LIMIT if ended_by_time else FINISHED, "execution_time": round(wall, 6),
            "return_code": None if ended_by_time else -9 if ended else 0, "stdout": "", "stderr": "",
            "aiogaol_status": "timed-out" if ended_by_time else "sandbox-ended" if ended else "ok",
            "aiogaol_evidence": evidence}


def _answer(status: str, message: str, driver: dict[str, Any] | None, cells: list[dict[str, Any]],
            files: dict[str, bytes], skipped: dict[str, str]) -> dict[str, Any]:
    reply: dict[str, Any] = {"status": status, "message": message, "driver": driver, "cells": cells,
                             "executor_pod_name": None, "files": encode_files(files)}
    if skipped:
        reply["files_skipped"] = skipped
    return reply


async def _write_files(sb: Sandbox, files: dict[str, bytes]) -> None:
    dirs = sorted({posixpath.dirname(name) for name in files} - {""})
    if dirs:  # write_file wants the parent to exist
        mkdir = shutil.which("mkdir") or "/bin/mkdir"
        made = await sb.exec([mkdir, "-p", "--", *dirs], timeout=30)
        if made.returncode != 0:
            raise OSError(f"the files' directories could not be made: {made.stderr.decode(errors='replace')}")
    for name, data in files.items():
        await sb.write_file(name, data)


async def _fetch(sb: Sandbox, names: tuple[str, ...], skipped: dict[str, str]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    total = 0
    for name in names:
        try:
            data = await sb.read_file(name)
        except FileNotFoundError:
            skipped[name] = "not found"
            continue
        except (OSError, ValueError) as e:
            skipped[name] = str(e)
            continue
        cap = min(MAX_FETCH_FILE, MAX_FETCH_TOTAL - total)
        if len(data) > cap:
            skipped[name] = f"larger than {cap} bytes"
            continue
        out[name] = data
        total += len(data)
    return out


async def run_jupyter(req: RunJupyter, profile: Profile, limits: Limits, *, workspace_size: int,
                      output: int | None) -> dict[str, Any]:
    """The whole session, answered in SandboxFusion's RunJupyterResponse."""
    started = anyio.current_time()
    deadline = started + req.total_timeout
    try:
        sb = await open_sandbox(profile, limits=limits, workspace=WORKSPACE, workspace_size=workspace_size,
                                lifetime=req.total_timeout + GRACE)
    except (AiogaolError, OSError, ValueError) as e:
        log.warning("run_jupyter: the sandbox could not start: %s", e)
        message = f"the sandbox could not start: {e}"
        driver = {"status": "Error", "execution_time": None, "return_code": None, "stdout": "",
                  "stderr": message, "aiogaol_status": "error", "aiogaol_evidence": str(e)}
        return _answer(SANDBOX_ERROR, message, driver, [], {}, {})
    cells: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    files: dict[str, bytes] = {}
    ended_by_time = ended = False
    evidence = ""
    try:
        try:
            await _write_files(sb, dict(req.files))
        except (OSError, ValueError, AiogaolError) as e:
            return _answer(SANDBOX_ERROR, f"the request's files could not be written: {e}", None, [], {}, {})
        try:
            for code in req.cells:
                remaining = deadline - anyio.current_time()
                if remaining <= 0:
                    ended_by_time = True
                    break
                by_total = req.cell_timeout <= 0 or remaining < req.cell_timeout
                result = await sb.run_code(code, timeout=remaining if by_total else req.cell_timeout,
                                           output_limit=output)
                if result.status == "timed-out" and by_total:
                    ended_by_time = True
                    break
                cells.append(cell_result(result, req.cell_timeout))
            evidence = (f"total_timeout = {req.total_timeout:g} s ended the session; cells answered: {len(cells)}"
                        if ended_by_time else f"cells run: {len(cells)}")
            files = await _fetch(sb, req.fetch_files, skipped)
        except SandboxClosed as e:
            # Its lifetime (total_timeout and a grace) ended it in a call, or a cell killed its agent.
            ended_by_time = anyio.current_time() >= deadline
            ended = not ended_by_time
            evidence = str(e)
        except SandboxError as e:  # its agent died or misbehaved: the sandbox was ended
            log.warning("run_jupyter: %s", e)
            return _answer(SANDBOX_ERROR, f"the sandbox failed: {e}", None, cells, {}, {})
    finally:
        await sb.aclose()
    driver = _driver(ended_by_time, ended, anyio.current_time() - started, evidence)
    if ended_by_time or ended:
        return _answer(FAILED, f"the session ended early: {evidence}", driver, cells, files, skipped)
    return _answer(SUCCESS, "", driver, cells, files, skipped)
