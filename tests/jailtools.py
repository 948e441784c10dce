"""Small helpers for tests: run a Python snippet in a real jail and collect what it printed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiogaol


async def run_python(profile: aiogaol.Profile, python: str, code: str, *, input: bytes | None = None,
                     **kwargs: Any) -> tuple[int, bytes, bytes]:
    proc = await aiogaol.create_sandboxed_subprocess(
        profile, python, "-c", code, stdin=aiogaol.PIPE if input is not None else aiogaol.DEVNULL,
        stdout=aiogaol.PIPE, stderr=aiogaol.PIPE, **kwargs)
    out, err = await asyncio.wait_for(proc.communicate(input), 60)
    assert proc.returncode is not None
    return proc.returncode, out or b"", err or b""


async def python_json(profile: aiogaol.Profile, python: str, code: str, **kwargs: Any) -> Any:
    """Run code that prints one JSON document; fail loudly with its stderr otherwise."""
    rc, out, err = await run_python(profile, python, code, **kwargs)
    assert rc == 0, f"jailed python exited {rc}: {err.decode(errors='replace')}"
    return json.loads(out)
