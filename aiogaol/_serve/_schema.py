"""SandboxFusion's request and response models, as plain data checked by hand.

Field for field as SandboxFusion's ``RunCodeRequest``/``RunJupyterRequest`` take them (the same names,
defaults and meaning; unknown keys are ignored, as its pydantic models ignore them), so its clients and
their own few lines of ``requests`` code work unchanged.  Every check raises ``BadRequest`` with the
HTTP status and a sentence naming the field, so that a mistake is a 4xx saying what to fix, never a
500.  No web framework here: the checks are pure and tested as such.
"""

from __future__ import annotations

import base64
import binascii
import math
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_TIMEOUT = 600.0         # seconds: one step's deadline at most (compile, run, a jupyter request)
MAX_FILES = 1000            # entries of files / fetch_files
MAX_PATH = 1024             # bytes of one path in files / fetch_files
MAX_CELLS = 1000


class BadRequest(Exception):
    """A request the service refuses: ``status`` is the HTTP status (400, 413, 422...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class RunCode:
    code: str
    language: str
    compile_timeout: float = 10.0
    run_timeout: float = 10.0
    memory_limit_MB: int = -1
    stdin: str | None = None
    files: Mapping[str, bytes] = field(default_factory=dict)
    fetch_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunJupyter:
    cells: tuple[str, ...]
    cell_timeout: float = 0.0
    total_timeout: float = 45.0
    memory_limit_MB: int = -1
    kernel: str = "python3"
    files: Mapping[str, bytes] = field(default_factory=dict)
    fetch_files: tuple[str, ...] = ()


def _seconds(body: Mapping[str, Any], key: str, default: float, *, zero_ok: bool = False) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(422, f"{key}: expected a number of seconds, not {type(value).__name__}")
    value = float(value)
    low_ok = value >= 0 if zero_ok else value > 0
    if not (math.isfinite(value) and low_ok and value <= MAX_TIMEOUT):
        raise BadRequest(422, f"{key}: expected seconds {'from 0' if zero_ok else 'more than 0'} up to "
                              f"{MAX_TIMEOUT:g}, not {value!r}")
    return value


def _memory(body: Mapping[str, Any]) -> int:
    value = body.get("memory_limit_MB", -1)
    if value is None:
        return -1
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(422, f"memory_limit_MB: expected an integer (megabytes, -1 for the default), "
                              f"not {type(value).__name__}")
    if value > 1 << 20:
        raise BadRequest(422, f"memory_limit_MB: {value} MB is more than any host has")
    return value if value > 0 else -1


def check_path(path: object, what: str) -> str:
    """A path relative to the request's working directory that stays inside it: no absolute path, no
    ``..``, no NUL, no empty name.  Checked as text here; the file system is walked without following
    symlinks when the file is read or written (``_workspace``), as the program may plant them."""
    if not isinstance(path, str):
        raise BadRequest(422, f"{what}: expected a path string, not {type(path).__name__}")
    if not path or "\0" in path or len(path.encode("utf-8", "surrogatepass")) > MAX_PATH:
        raise BadRequest(400, f"{what}: {path[:80]!r} is not a usable path (empty, NUL or too long)")
    if path.startswith("/"):
        raise BadRequest(400, f"{what}: {path[:80]!r} is absolute; paths are relative to the working directory")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise BadRequest(400, f"{what}: {path[:80]!r} leaves the working directory")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(400, f"{what}: {path[:80]!r} is not valid UTF-8") from None
    return posixpath.join(*parts)


def _files(body: Mapping[str, Any]) -> dict[str, bytes]:
    value = body.get("files", {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(422, "files: expected an object of path -> base64 content")
    if len(value) > MAX_FILES:
        raise BadRequest(413, f"files: {len(value)} files, more than {MAX_FILES}")
    out: dict[str, bytes] = {}
    for path, content in value.items():
        name = check_path(path, "files")
        if content is None:  # SandboxFusion's model allows null: the file is skipped
            continue
        if not isinstance(content, str):
            raise BadRequest(422, f"files[{path[:80]!r}]: expected a base64 string")
        try:
            out[name] = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(400, f"files[{path[:80]!r}]: not valid base64") from None
    return out


def _fetch(body: Mapping[str, Any]) -> tuple[str, ...]:
    value = body.get("fetch_files", [])
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadRequest(422, "fetch_files: expected a list of paths")
    if len(value) > MAX_FILES:
        raise BadRequest(413, f"fetch_files: {len(value)} paths, more than {MAX_FILES}")
    for path in value:
        check_path(path, "fetch_files")
    return tuple(value)  # answered under the names the client gave


def _body(body: object) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest(422, f"the body must be a JSON object, not {type(body).__name__}")
    return body


def run_code_request(raw: object) -> RunCode:
    body = _body(raw)
    code, language, stdin = body.get("code"), body.get("language"), body.get("stdin")
    if not isinstance(code, str):
        raise BadRequest(422, "code: required, a string")
    if not isinstance(language, str):
        raise BadRequest(422, "language: required, a string such as \"python\" (GET /languages lists them)")
    if stdin is not None and not isinstance(stdin, str):
        raise BadRequest(422, "stdin: expected a string or null")
    for key, text in (("code", code), ("stdin", stdin or "")):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise BadRequest(400, f"{key}: holds a lone surrogate (\\u{ord(text[e.start]):04x} at {e.start}); "
                                  "not encodable as UTF-8") from None
    return RunCode(code=code, language=language,
                   compile_timeout=_seconds(body, "compile_timeout", 10.0),
                   run_timeout=_seconds(body, "run_timeout", 10.0),
                   memory_limit_MB=_memory(body), stdin=stdin, files=_files(body), fetch_files=_fetch(body))


def run_jupyter_request(raw: object) -> RunJupyter:
    body = _body(raw)
    cells = body.get("cells")
    if not (isinstance(cells, list) and all(isinstance(c, str) for c in cells)):
        raise BadRequest(422, "cells: required, a list of strings (the code of each cell)")
    if len(cells) > MAX_CELLS:
        raise BadRequest(413, f"cells: {len(cells)} cells, more than {MAX_CELLS}")
    kernel = body.get("kernel", "python3")
    if kernel != "python3":
        raise BadRequest(422, f"kernel: only \"python3\" is offered, not {str(kernel)[:40]!r}")
    return RunJupyter(cells=tuple(cells), cell_timeout=_seconds(body, "cell_timeout", 0.0, zero_ok=True),
                      total_timeout=_seconds(body, "total_timeout", 45.0), memory_limit_MB=_memory(body),
                      files=_files(body), fetch_files=_fetch(body))


# Responses: CommandRunResult's statuses and RunStatus's, as SandboxFusion spells them.
FINISHED, TIME_LIMIT, ERROR = "Finished", "TimeLimitExceeded", "Error"
SUCCESS, FAILED, SANDBOX_ERROR = "Success", "Failed", "SandboxError"


def overall_status(*steps: Mapping[str, Any] | None) -> tuple[str, str]:
    """RunStatus and message from the steps that ran, by SandboxFusion's rule: an Error in any step is
    SandboxError (its stderr the message), a time limit or a non-zero return code Failed, else Success."""
    ran = [s for s in steps if s is not None]
    for step in ran:
        if step["status"] == ERROR:
            return SANDBOX_ERROR, str(step.get("stderr") or "")
    if any(s["status"] == TIME_LIMIT for s in ran):
        return FAILED, ""
    if any(s.get("return_code") not in (0, None) for s in ran):
        return FAILED, ""
    return SUCCESS, ""


def encode_files(files: Mapping[str, bytes]) -> dict[str, str]:
    return {name: base64.b64encode(data).decode("ascii") for name, data in files.items()}
