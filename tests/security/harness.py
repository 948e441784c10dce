"""Running one probe in each mode: aiogaol's namespace jail, aiogaol's Landlock fallback, and bubblewrap.

A probe is a small Python program for the host's own interpreter.  It prints one JSON object
``{"blocked": bool, "how": str}``, or it dies of a signal (the seccomp filter kills on a foreign syscall
ABI).  The same probe, the same profile, three walls; the verdicts are collected for the closing table
(what bubblewrap lets through).

bubblewrap runs as a typical caller would use it: the profile's binds, ``--unshare-all`` (``--share-net``
when the profile grants the network), ``--die-with-parent``, and nothing it does not do by default (no
seccomp filter, no ``--new-session``, the caller's environment).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import textwrap
from dataclasses import dataclass
from typing import Any

import aiogaol
from aiogaol import _plan
from aiogaol._asyncio_process import SandboxedProcess

MODES = ("namespaces", "landlock", "bwrap")
BWRAP = shutil.which("bwrap")

# Helpers every probe starts with.
PRELUDE = textwrap.dedent(r"""
    import ctypes, errno, json, os, socket, sys
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    def name(e):
        return errno.errorcode.get(e, str(e))
    def verdict(blocked, how):
        print(json.dumps({"blocked": bool(blocked), "how": str(how)}))
        sys.exit(0)
    def call(f):
        try:
            return ("ok", f())
        except OSError as e:
            return ("err", name(e.errno))
    def sys_call(nr, *args):
        r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
        return ("ok", r) if r >= 0 else ("err", name(ctypes.get_errno()))
""")


@dataclass
class Outcome:
    blocked: bool
    how: str  # an errno name, "SIGSYS", ...
    mode: str


RESULTS: dict[tuple[str, str], Outcome] = {}


async def _spawn(profile: aiogaol.Profile, argv: list[str], isolation: str, **kw: Any) -> SandboxedProcess:
    return await aiogaol.create_sandboxed_subprocess(profile, *argv, isolation=isolation, **kw)


def bwrap_argv(profile: aiogaol.Profile) -> list[str]:
    plan = _plan.compile_profile(profile)
    argv = [BWRAP or "bwrap", "--unshare-all", "--die-with-parent"]
    if not plan.unshare_net:
        argv.append("--share-net")
    for step in plan.steps:
        if step.kind == "ro":
            argv += ["--ro-bind", step.source, step.target]
        elif step.kind == "rw":
            argv += ["--bind", step.source, step.target]
        elif step.kind == "dir":
            argv += ["--dir", step.target]
        elif step.kind == "symlink":
            argv += ["--symlink", step.source, step.target]
        elif step.kind == "tmpfs":
            argv += ["--tmpfs", step.target]
        elif step.kind == "proc":
            argv += ["--proc", step.target]
        elif step.kind == "dev":
            argv += ["--dev", step.target]
    return argv + ["--"]


def _take_controlling_tty() -> None:
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


async def run_probe(mode: str, profile: aiogaol.Profile, python: str, code: str, *args: str,
                    stdin: Any = None, pass_fds: tuple[int, ...] = ()) -> Outcome:
    """Run one probe in one mode; its verdict (a death by signal is reported as the signal's name)."""
    source = PRELUDE + textwrap.dedent(code)
    argv = [python, "-c", source, *args]
    if mode == "bwrap":
        tty: dict[str, Any] = {}
        if stdin is not None and os.isatty(stdin):
            # The terminal as the caller's controlling one, which is what a CLI running bwrap passes on.
            tty = {"start_new_session": True, "preexec_fn": _take_controlling_tty}
        proc_b = await asyncio.create_subprocess_exec(
            *bwrap_argv(profile), *argv, stdin=stdin if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, pass_fds=pass_fds, **tty)
        out, err = await asyncio.wait_for(proc_b.communicate(), 60)
        rc = proc_b.returncode
    else:
        proc = await _spawn(profile, argv, mode, stdin=stdin if stdin is not None else aiogaol.DEVNULL,
                            stdout=aiogaol.PIPE, stderr=aiogaol.PIPE, pass_fds=pass_fds)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        rc = proc.returncode
    assert rc is not None
    if rc < 0:
        return Outcome(True, signal.Signals(-rc).name, mode)
    lines = (out or b"").decode(errors="replace").strip().splitlines()
    assert rc == 0 and lines, f"probe failed in {mode} (rc {rc}): {(err or b'').decode(errors='replace')}"
    result = json.loads(lines[-1])
    return Outcome(bool(result["blocked"]), str(result["how"]), mode)


def record(attack: str, outcome: Outcome) -> None:
    RESULTS[(attack, outcome.mode)] = outcome


def summary() -> list[str]:
    """One line per mode with blocked/total, then what bubblewrap let through."""
    lines = []
    user = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    for mode in MODES:
        rows = [o for (a, m), o in RESULTS.items() if m == mode]
        if rows:
            lines.append(f"{mode:<11} ({user}): {sum(o.blocked for o in rows)}/{len(rows)} attacks blocked")
    through = sorted(a for (a, m), o in RESULTS.items() if m == "bwrap" and not o.blocked)
    if through:
        lines.append("bubblewrap lets through: " + ", ".join(through))
    return lines
