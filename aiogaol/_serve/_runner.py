"""What ``/run_code`` and ``/run_jupyter`` do: each step of a request in a jail of its own, reported in
SandboxFusion's terms with aiogaol's verdicts beside them.

No web framework here (``_app`` is the face): a request comes in as ``_schema.RunCode``/``RunJupyter``
and leaves as the JSON-ready dict of SandboxFusion's ``RunCodeResponse``/``RunJupyterResponse``.
Every step of ``/run_code`` is one jail with its own deadline (compile_timeout, run_timeout), memory,
process and output limits, and the report says which limit ended it (``aiogaol_status``,
``memory_limit_exceeded``, the truncation flags): a python request without files is a job of a warm
``PythonPool`` (``_warm``), every other step one ``aiogaol.run``.  ``/run_jupyter`` is a sandbox
(``_session``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from .._errors import AiogaolError
from .._limits import Limits
from .._profile import Profile
from .._run import Result, Status, run
from . import _session
from ._languages import Language, LanguageUnavailable
from ._schema import (ERROR, FINISHED, SANDBOX_ERROR, TIME_LIMIT, BadRequest, RunCode, RunJupyter, encode_files,
                      overall_status)
from ._warm import WarmPython
from ._workspace import Workspace, tree_size_over

log = logging.getLogger("aiogaol.serve")

MAX_INLINE = 64 << 10  # bytes of code passed as an argument (one argv string may be 128 KiB at most)
PROBE = b"aiogaol-probe"
PROBE_TIMEOUT = 60.0   # a JVM's first compile on a busy machine
WATCH_INTERVAL = 0.2   # seconds between two looks at a working directory's size


@dataclass(frozen=True)
class Settings:
    """The service's limits for every jail (a request may lower memory, never raise the others)."""

    memory: int = 1 << 30          # when the request says memory_limit_MB = -1 and the language no more
    processes: int = 64            # processes and threads of one step (a fork bomb stops here)
    output: int = 8 << 20          # bytes kept of stdout and of stderr; more ends the step (output-limit)
    file_size: int = 256 << 20     # bytes of any one file a step writes
    open_files: int = 256
    workdir_size: int = 512 << 20  # bytes a request's working directory may hold (watched, see _watched)
    max_memory: int = 16 << 30     # the most a request may ask for with memory_limit_MB

    def check_memory(self, memory_mb: int) -> None:
        if memory_mb > 0 and memory_mb << 20 > self.max_memory:
            raise BadRequest(422, f"memory_limit_MB: {memory_mb} is more than this service allows "
                                  f"({self.max_memory >> 20})")


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def command_result(result: Result) -> dict[str, Any]:
    """SandboxFusion's CommandRunResult, plus aiogaol's verdict in fields its clients ignore."""
    timed_out = result.status in (Status.TIMED_OUT, Status.CPU_LIMIT)
    return {
        "status": TIME_LIMIT if timed_out else FINISHED,
        "execution_time": round(result.wall_time, 6),
        "return_code": None if timed_out else result.returncode,
        "stdout": _text(result.stdout),
        "stderr": _text(result.stderr),
        # beyond SandboxFusion (its client's model already has cpu_time):
        "cpu_time": round(result.cpu_time, 6),
        "max_rss": result.max_rss,
        "memory_limit_exceeded": result.status is Status.MEMORY_LIMIT,
        "output_limit_exceeded": result.status is Status.OUTPUT_LIMIT,
        "stdout_truncated": result.stdout_truncated,
        "stderr_truncated": result.stderr_truncated,
        "aiogaol_status": result.status.value,
        "aiogaol_evidence": result.evidence,
    }


def error_result(message: str) -> dict[str, Any]:
    """A step the sandbox could not carry out (the jail could not be built, the tool is missing)."""
    return {"status": ERROR, "execution_time": None, "return_code": None, "stdout": "", "stderr": message,
            "aiogaol_status": "error", "aiogaol_evidence": message}


class Runner:
    """Runs requests; holds the language table and the spool of working directories."""

    def __init__(self, languages: Mapping[str, Language], spool: str, settings: Settings | None = None, *,
                 concurrency: int = 8) -> None:
        self.languages = dict(languages)
        self.concurrency = concurrency
        self.warm: WarmPython | None = None  # the python language's warm pools, once ``open`` made them
        self._warm_language: Language | None = None
        self.spool = spool
        self.settings = settings or Settings()
        self.available: dict[str, Language] = {}
        self.unavailable: dict[str, str] = {}
        # The profile of each language's steps without a working directory, made once: a Profile
        # resolves its paths when made, which is file system work on the event loop's thread.
        self._shared: dict[str, Profile] = {}

    async def open(self) -> None:
        """Warm the python language's default pool (before the probes, so python's probe runs on it)."""
        python = self.languages.get("python")
        if python is None or python.inline is None:
            return
        try:
            profile = self._profile(python, None)
        except (AiogaolError, OSError, ValueError) as e:
            log.warning("no warm python: its profile could not be made: %s", e)
            return
        self.warm = WarmPython(profile, self.concurrency)
        self._warm_language = python
        await self.warm.open(self.limits(python, 1.0, -1))

    async def aclose(self) -> None:
        if self.warm is not None:
            await self.warm.aclose()

    def _profile(self, language: Language, workdir: str | None) -> Profile:
        if workdir is not None:
            return language.profile_for(workdir)
        profile = self._shared.get(language.name)
        if profile is None:
            profile = self._shared[language.name] = language.profile_for(None)
        return profile

    def limits(self, language: Language | None, timeout: float, memory_mb: int) -> Limits:
        s = self.settings
        memory = memory_mb << 20 if memory_mb > 0 else (language.memory if language and language.memory
                                                         else s.memory)
        processes = language.processes if language and language.processes else s.processes
        return Limits(wall_time=timeout, memory=memory, processes=processes, output=s.output,
                      file_size=s.file_size, open_files=s.open_files)

    async def _step(self, language: Language, template: tuple[str, ...], *, workdir: str | None, code: str,
                    stdin: str | None, timeout: float, memory_mb: int) -> dict[str, Any]:
        cwd = workdir or "/tmp"
        try:
            argv = language.argv(template, workdir=cwd, code=code)
            limits = self.limits(language, timeout, memory_mb)
            result: Result | None = None
            if self.warm is not None and workdir is None and language is self._warm_language:
                # The code alone, no files: a job of the warm pool (None: none serves these limits).
                result = await self.warm.run(limits, code, input=stdin.encode() if stdin else None,
                                             env=language.environment(cwd))
            if result is None:
                result = await self._watched(workdir, run(self._profile(language, workdir), argv,
                                                          input=stdin.encode() if stdin else None,
                                                          limits=limits, env=language.environment(cwd), cwd=cwd))
        except LanguageUnavailable as e:
            return error_result(f"{language.name}: {e}")
        except (AiogaolError, OSError, ValueError) as e:
            # A host path of the shared profile may have been replaced since (a package upgrade): the
            # next request makes the profile again rather than failing the same way for ever.
            self._shared.pop(language.name, None)
            log.warning("%s: the jail could not run %s: %s", language.name, template[0], e)
            return error_result(f"{language.name}: the jail could not run {template[0]}: {e}")
        if result is None:
            return self.disk_limit_result()
        return command_result(result)

    async def _watched(self, workdir: str | None, step: Awaitable[Result]) -> Result | None:
        """The step's result, or None when its working directory grew past ``Settings.workdir_size``
        (checked every ``WATCH_INTERVAL`` s from a worker thread): the step is then cancelled, which
        kills and reaps its jail.  A tmpfs of the jail's own would bound it in the kernel; a host
        directory is bounded only by this watch (and RLIMIT_FSIZE per file)."""
        if workdir is None:
            return await step
        result: Result | None = None
        cap = self.settings.workdir_size

        async def watch(scope: anyio.CancelScope) -> None:
            while True:
                await anyio.sleep(WATCH_INTERVAL)
                if await anyio.to_thread.run_sync(tree_size_over, workdir, cap):
                    scope.cancel()
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, tg.cancel_scope)
            result = await step
            tg.cancel_scope.cancel()
        return result

    def disk_limit_result(self) -> dict[str, Any]:
        message = (f"the working directory grew past {self.settings.workdir_size} bytes; the step was "
                   "stopped (its output is lost with it)")
        return {"status": FINISHED, "execution_time": None, "return_code": -9, "stdout": "", "stderr": message,
                "memory_limit_exceeded": False, "output_limit_exceeded": False, "stdout_truncated": True,
                "stderr_truncated": True, "aiogaol_status": "disk-limit", "aiogaol_evidence": message}

    async def run_code(self, req: RunCode, language: Language) -> dict[str, Any]:
        compile_result: dict[str, Any] | None = None
        run_result: dict[str, Any] | None = None
        files: dict[str, bytes] = {}
        skipped: dict[str, str] = {}
        inline = (language.inline is not None and language.compile is None and not req.files
                  and not req.fetch_files and "\0" not in req.code and len(req.code.encode()) <= MAX_INLINE)
        if inline:
            assert language.inline is not None
            run_result = await self._step(language, language.inline, workdir=None, code=req.code,
                                          stdin=req.stdin, timeout=req.run_timeout, memory_mb=req.memory_limit_MB)
        else:
            ws = Workspace(self.spool)
            await ws.open()
            try:
                await ws.write({**req.files, language.source: req.code.encode()})
                if language.compile is not None:
                    compile_result = await self._step(language, language.compile, workdir=ws.path, code="",
                                                      stdin=None, timeout=req.compile_timeout,
                                                      memory_mb=req.memory_limit_MB)
                if compile_result is None or (compile_result["status"] == FINISHED
                                              and compile_result["return_code"] == 0):
                    run_result = await self._step(language, language.run, workdir=ws.path, code="",
                                                  stdin=req.stdin, timeout=req.run_timeout,
                                                  memory_mb=req.memory_limit_MB)
                files = await ws.fetch(req.fetch_files)
                skipped = ws.skipped
            finally:
                await ws.close()
        status, message = overall_status(compile_result, run_result)
        reply: dict[str, Any] = {"status": status, "message": message, "compile_result": compile_result,
                                 "run_result": run_result, "executor_pod_name": None, "files": encode_files(files)}
        if skipped:
            reply["files_skipped"] = skipped
        return reply

    async def run_jupyter(self, req: RunJupyter) -> dict[str, Any]:
        """The cells in one sandbox of the python language's profile (``_session``)."""
        python = self.available.get("python") or self.languages.get("python")
        if python is None:
            return {"status": SANDBOX_ERROR, "message": "no python language in the table", "driver": None,
                    "cells": [], "executor_pod_name": None, "files": {}}
        try:
            profile = self._profile(python, None)
        except (AiogaolError, OSError, ValueError) as e:
            self._shared.pop(python.name, None)
            return {"status": SANDBOX_ERROR, "message": f"the sandbox's profile could not be made: {e}",
                    "driver": None, "cells": [], "executor_pod_name": None, "files": {}}
        return await _session.run_jupyter(req, profile, self.limits(python, req.total_timeout, req.memory_limit_MB),
                                          workspace_size=self.settings.workdir_size, output=self.settings.output)

    # ------------------------------------------------------------------------------------------
    # Which languages work here

    async def probe(self, language: Language) -> str | None:
        """None when the language's probe compiles and runs here and prints the probe word; else why not."""
        if language.probe is None:
            return None
        req = RunCode(code=language.probe, language=language.name, compile_timeout=PROBE_TIMEOUT,
                      run_timeout=PROBE_TIMEOUT)
        reply = await self.run_code(req, language)
        for step in ("compile_result", "run_result"):
            res = reply[step]
            if res is not None and (res["status"] != FINISHED or res["return_code"] != 0):
                detail = (res.get("stderr") or "").strip().splitlines()
                why = detail[-1] if detail else res.get("aiogaol_evidence") or res["status"]
                return f"{step.split('_')[0]} step: {why}"[:300]
        if reply["run_result"] is None or PROBE.decode() not in reply["run_result"]["stdout"]:
            return "the probe printed something else"
        return None

    async def probe_all(self, at_once: int = 3) -> None:
        """Probe every language of the table, a few at a time (compilers are heavy on a small host)."""
        limiter = anyio.Semaphore(at_once)

        async def one(name: str, language: Language) -> None:
            async with limiter:
                why = await self.probe(language)
            if why is None:
                self.available[name] = language
            else:
                self.unavailable[name] = why

        async with anyio.create_task_group() as tg:
            for name, language in self.languages.items():
                tg.start_soon(one, name, language)
        ordered = {n: self.available[n] for n in self.languages if n in self.available}
        for language in list(ordered.values()):  # SandboxFusion's other names (js for nodejs)
            for alias in language.aliases:
                ordered.setdefault(alias, language)
        self.available = ordered
