"""Sandboxes that live across calls: one jail, many programs, files in and out, stateful code cells.

``open_sandbox`` spawns one jail by the usual path (spawner, init as PID 1) whose "program" is the
sandbox's resident agent (``aiogaol/_native/agent.c``), started where a program would exec, so it is as
jailed as any program of the sandbox.  The server talks to it over one SOCK_SEQPACKET socket: each call
is a request (a program's pipes travel with it as SCM_RIGHTS) and fixed-size replies (started, failed,
exited with rusage).  Everything the agent says is untrusted: replies are checked for size and kind,
answers are awaited with a deadline, and an agent that misbehaves or dies ends the sandbox (its init is
killed) and the calls raise ``SandboxError``.

Nothing here runs in the background: replies are read by whichever call is waiting (one reader at a time,
dispatching to the others' mailboxes and waking them), so the sandbox works the same under asyncio and
trio and needs no task group of its own.  ``lifetime`` is kept by init (PID 1, which no program of the
jail can stop or kill), ``idle_timeout`` by the agent (it knows when no call is running); the server
notices either at the next call (``SandboxClosed``) and reaps what is left then, at ``aclose``, at the
next ``open_sandbox``, or in the finaliser.

The link to the agent (wire, mailboxes, errors) is ``_agent.Agent``, the code cells' side in ``_cells`` (the kernel's own
source in ``_kernel_cell``), the spawned programs' face in ``_sandbox_process``.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import signal as _signal
import socket
import time
import warnings
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import anyio.abc

from . import _agent as wire
from . import _cputime, _pacing, _plan
from ._agent import SandboxClosed, SandboxError
from ._agent import SandboxSpawn as _SandboxSpawn
from ._agent import close_fds as _close_fds
from ._cells import CodeError, CodeResult
from ._cells import Kernel as _Kernel
from ._errors import ProfileError, ProfileTypeError
from ._jail import RunningJail, launch
from ._kernel_cell import SOURCE as _KERNEL_SOURCE
from ._limits import MAX_SECONDS, Limits, resolve_limits
from ._profile import Profile, Tmpfs, check_path
from ._ready import python_executable
from ._run import Result, _classify, _feed, capture, enforcement, stdio_pipes, watch_cpu
from ._sandbox_process import SandboxProcess
from ._spawnargs import SpawnArgs, check_argv
from ._stdio import DEVNULL, PIPE, STDOUT

__all__ = ["CodeError", "CodeResult", "Sandbox", "SandboxClosed", "SandboxError", "SandboxProcess", "open_sandbox"]

DEFAULT_WORKSPACE_SIZE = 256 << 20
DEFAULT_GRACE = 0.5  # seconds between SIGTERM and SIGKILL of a call past its timeout
_DRAIN_TIMEOUT = 5.0
_READ_SIZE = 65536


def _seconds(value: object, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProfileTypeError(f"{name} must be a number of seconds or None, not {type(value).__name__}")
    if not (math.isfinite(value) and 0 < value <= MAX_SECONDS):
        raise ProfileError(f"{name} must be a finite number of seconds, more than 0 and at most {MAX_SECONDS:g}, "
                           f"not {value!r}")
    return float(value)


# Sandboxes not yet closed: the next open_sandbox reaps those whose jail ended by itself (idle_timeout,
# lifetime, a dead agent), so a server that never calls them again keeps no zombie for long.
_open: "weakref.WeakSet[Sandbox]" = weakref.WeakSet()


def _reap_ended() -> None:
    for sb in list(_open):
        jail = sb._jail
        # One being closed is its closer's to reap: that task may be waiting on the pidfd.
        if not sb._closing and jail is not None and jail.returncode is None and jail.try_reap():
            sb._release(sb._agent.ended or "its jail ended")


async def open_sandbox(profile: Profile, *, limits: Limits | None = None, workspace: str = "/work",
                       workspace_size: int = DEFAULT_WORKSPACE_SIZE, idle_timeout: float | None = None,
                       lifetime: float | None = None, python: str | None = None) -> "Sandbox":
    """Start a sandbox: one jail built from ``profile`` plus a private tmpfs of ``workspace_size`` bytes
    at ``workspace`` (the default cwd of every call), in which ``exec``, ``spawn``, the file calls and
    ``run_code`` run.  ``limits`` bound the sandbox (memory and processes for the whole sandbox where a
    cgroup exists, else per process, as ``run`` documents) and are every call's defaults.  The sandbox ends
    at ``aclose``, after ``idle_timeout`` seconds with no call running, ``lifetime`` seconds after it
    started, or with the server.  ``python`` is the interpreter of ``run_code`` (default: the host's own,
    which the profile must let the jail read, as ``python_profile()`` does)."""
    if not isinstance(profile, Profile):
        raise ProfileTypeError(f"profile must be an aiogaol.Profile, not {type(profile).__name__}")
    limits = resolve_limits(limits)
    workspace = check_path(workspace, "workspace")
    if workspace == "/":
        raise ProfileError("workspace must be a directory below /, not / itself")
    if isinstance(workspace_size, bool) or not isinstance(workspace_size, int):
        raise ProfileTypeError(f"workspace_size must be an int (bytes), not {type(workspace_size).__name__}")
    if any(isinstance(op, Tmpfs) and op.path == workspace for op in profile):
        raise ProfileError(f"the profile already mounts a Tmpfs at the workspace {workspace}; "
                           "give its size as workspace_size instead")
    idle = _seconds(idle_timeout, "idle_timeout")
    life = _seconds(lifetime, "lifetime")
    if python is not None and (not isinstance(python, str) or not python.startswith("/")):
        raise ProfileTypeError(f"python must be the absolute path of an interpreter in the jail, not {python!r}")
    full = profile + [Tmpfs(workspace, workspace_size)]
    _reap_ended()
    started = time.monotonic()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    null = -1
    try:
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        agent = ["--agent", str(theirs.fileno()), str(int(idle * 1000) if idle else 0)]
        if life:
            agent += ["--deadline", str(max(1, int(life * 1000)))]
        async with _pacing.starting() as ticket:
            # The agent lives as long as the sandbox: CPU and wall time are per call, never its own.
            base = SpawnArgs.build(full, "aiogaol-sandbox", [], env=None, cwd=workspace,
                                   pass_fds=[theirs.fileno()], limits=limits.replace(cpu_time=None, wall_time=None))
            spawn = _SandboxSpawn(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)},
                                  agent_args=tuple(agent))
            jail = await launch(spawn, stdio=[null, null, null], wait_readable=anyio.wait_readable, ticket=ticket)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
        if null >= 0:
            os.close(null)
    ours.setblocking(False)
    sb = Sandbox(jail, ours, full, limits, workspace, workspace_size, python, idle, life, started)
    _open.add(sb)
    return sb


class Sandbox:
    """A jail that lives across calls (see ``open_sandbox``).  Every method is async and works under
    asyncio and trio; ``aclose`` (or leaving ``async with``) may be called from any task."""

    def __init__(self, jail: RunningJail, sock: socket.socket, profile: Profile, limits: Limits, workspace: str,
                 workspace_size: int, python: str | None, idle_timeout: float | None,
                 lifetime: float | None, opened: float) -> None:
        self._jail: RunningJail | None = jail
        self._agent = wire.Agent(jail, sock, idle_timeout, lifetime, opened)
        self.profile = profile
        self.limits = limits
        self.workspace = workspace
        self.workspace_size = workspace_size
        self.python = python
        self.idle_timeout = idle_timeout
        self.lifetime = lifetime
        self._kernel_lock = anyio.Lock()
        self._kernel: _Kernel | None = None
        self._closing = False
        self._closed_event = anyio.Event()

    def __repr__(self) -> str:
        state = self._agent.ended or "open"
        return f"<Sandbox {self.pid} {self.workspace} {state}>"

    @property
    def pid(self) -> int:
        """The host PID of the sandbox's init (0 once it is closed)."""
        return self._jail.pid if self._jail is not None else 0

    @property
    def closed(self) -> bool:
        return self._agent.ended is not None

    async def __aenter__(self) -> "Sandbox":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------------------------------------
    # Lifetime

    async def aclose(self) -> None:
        """End the sandbox: every program in it is killed, its workspace is gone, init is reaped.  Safe to
        call twice, and from a task other than the ones using the sandbox (their calls raise
        ``SandboxClosed``).  Never blocks the loop; shielded from cancellation (bounded by SIGKILL)."""
        if self._agent.ended is None:
            self._agent.ended = "the sandbox was closed (aclose)"
        jail = self._jail
        if jail is None:
            return
        if self._closing:
            # Another task is closing it (one waiter per pidfd): wait for that one to finish.
            with anyio.CancelScope(shield=True), anyio.move_on_after(_DRAIN_TIMEOUT):
                await self._closed_event.wait()
            return
        self._closing = True
        self._agent.close_socket()
        jail.kill_quietly()
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(_DRAIN_TIMEOUT):
                while not jail.try_reap() and jail.pidfd is not None:
                    try:
                        await anyio.wait_readable(jail.pidfd)
                    except anyio.ClosedResourceError:
                        break  # reaped elsewhere
        self._release(self._agent.ended)
        self._closed_event.set()

    def _release(self, reason: str) -> None:
        """What the server holds for the sandbox goes: the agent socket, the kernel's pipes, init."""
        if self._agent.ended is None:
            self._agent.ended = reason
        self._agent.close_socket()
        if self._kernel is not None:
            self._kernel.close()
            self._kernel = None
        jail, self._jail = self._jail, None
        self._agent.jail = None
        if jail is not None:
            jail.reap_blocking()  # at once when reaped already; else bounded by SIGKILL
        _open.discard(self)

    def __del__(self) -> None:
        jail = getattr(self, "_jail", None)
        if jail is not None:
            if jail.returncode is None and self._agent.ended is None:
                warnings.warn(f"{self!r} was never closed; killing its jail", ResourceWarning, stacklevel=2,
                              source=self)
            self._agent.ended = self._agent.ended or "garbage-collected"
            self._release(self._agent.ended)

    # ------------------------------------------------------------------------------------------------
    # Paths

    def _relpath(self, path: object) -> str:
        """A path inside the workspace, relative to it; ValueError (ProfileError) for anything else."""
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str):
            raise ProfileTypeError(f"path must be a str, bytes or os.PathLike, not {type(path).__name__}")
        if "\0" in path or not path:
            raise ProfileError(f"path {path!r} is empty or contains a NUL byte")
        if path.startswith("/"):
            norm = os.path.normpath(path)
            if norm != self.workspace and not norm.startswith(self.workspace + "/"):
                raise ProfileError(f"path {path!r} is outside the workspace {self.workspace}")
            rel = os.path.relpath(norm, self.workspace)
        else:
            rel = os.path.normpath(path)
        if rel == "." or rel == ".." or rel.startswith("../"):
            raise ProfileError(f"path {path!r} is not a file inside the workspace {self.workspace}")
        return rel

    def _cwd(self, cwd: object) -> str:
        if cwd is None:
            return self.workspace
        if isinstance(cwd, (str, bytes, os.PathLike)):
            text = os.fsdecode(os.fspath(cwd))
            if not text.startswith("/"):
                return os.path.normpath(os.path.join(self.workspace, text))
        return check_path(cwd, "cwd")

    def _file_cap(self) -> int:
        caps = [self.workspace_size]
        if self.limits.file_size is not None:
            caps.append(self.limits.file_size)
        return min(caps)

    # ------------------------------------------------------------------------------------------------
    # Programs

    def _call_limits(self, limits: Limits | None, timeout: object) -> Limits:
        call = self.limits if limits is None else resolve_limits(limits)
        wall = _seconds(timeout, "timeout")
        return call.replace(wall_time=wall) if wall is not None else call

    def _rlimits(self, limits: Limits, *, cpu: bool = True) -> list[tuple[int, int, int]]:
        cg = self._jail.cgroup if self._jail is not None else None
        controllers = cg.controllers if cg is not None else frozenset()
        if not cpu:
            limits = limits.replace(cpu_time=None)
        return limits.rlimits(cgroup_memory="memory" in controllers, cgroup_pids="pids" in controllers)

    def _what(self, argv: Sequence[object], cwd: object) -> dict[int, str]:
        """What a failed start names, by stage: the cwd for chdir, the program for exec."""
        prog = os.fsdecode(argv[0]) if isinstance(argv[0], (str, bytes, os.PathLike)) else str(argv[0])
        return {6: self._cwd(cwd), 7: prog, 8: prog}

    def _exec_body(self, argv: Sequence[object], env: Mapping[Any, Any] | None, cwd: object,
                   rlimits: Sequence[tuple[int, int, int]], background: bool = False) -> bytes:
        check_argv(argv)
        args = _plan.program_argv(argv[0], list(argv[1:]))
        envp = _plan.environment(env)
        where = os.fsencode(self._cwd(cwd))
        head = wire.EXEC.pack(wire.BACKGROUND if background else 0, len(rlimits), len(args), len(envp), -1, 0)
        rl = b"".join(wire.RLIM.pack(res, 0, soft if soft >= 0 else (1 << 64) - 1, hard if hard >= 0 else (1 << 64) - 1)
                      for res, soft, hard in rlimits)
        return head + rl + where + b"\0" + b"".join(a + b"\0" for a in args) + b"".join(e + b"\0" for e in envp)

    async def exec(self, argv: Sequence[str | bytes | os.PathLike[str] | os.PathLike[bytes]], *,
                   input: bytes | None = None, timeout: float | None = None, env: Mapping[Any, Any] | None = None,
                   cwd: str | os.PathLike[str] | None = None, limits: Limits | None = None) -> Result:
        """Run a program in the sandbox to its end and report it as ``run`` does (``aiogaol.Result``).

        ``timeout`` (seconds; else the sandbox's ``limits.wall_time``) ends the call with SIGTERM, then
        SIGKILL after a grace; ``limits`` (else the sandbox's) give its CPU time, output cap and rlimits,
        which can only lower the sandbox's own.  The cwd is the workspace unless given (a relative cwd is
        taken from the workspace).  When the call's first process exits, the rest of its process group is
        killed.  Cancelling ``exec`` kills the call before the cancellation propagates."""
        if input is not None and not isinstance(input, (bytes, bytearray, memoryview)):
            raise ProfileTypeError(f"input must be bytes or None, not {type(input).__name__}")
        call_limits = self._call_limits(limits, timeout)
        body = self._exec_body(argv, env, cwd, self._rlimits(call_limits))
        self._agent.check_open()
        ours: list[int] = []
        theirs: list[int] = []
        try:
            stdio_pipes(input is not None, ours, theirs)
            started = time.monotonic()
            call_id, pid = await self._agent.start(wire.OP_EXEC, body, theirs, self._what(argv, cwd))
            _close_fds(theirs)
            return await self._supervise(call_id, pid, argv, call_limits, ours, input, started)
        finally:
            _close_fds(theirs)
            _close_fds(ours)

    def _host_pid(self, ns_pid: int) -> int | None:
        """The host PID of a call's first process (a child of the agent, the child of init), from the
        NSpid line of /proc/PID/status; None if it cannot be found (gone already, or no /proc children)."""
        jail = self._jail
        if jail is None:
            return None
        for agent in _cputime.children(jail.pid):
            for pid in _cputime.children(agent):
                try:
                    with open(f"/proc/{pid}/status", "rb") as f:
                        for line in f:
                            if line.startswith(b"NSpid:"):
                                if int(line.split()[-1]) == ns_pid:
                                    return pid
                                break
                except (OSError, ValueError):
                    continue
        return None

    async def _watch_cpu(self, call_id: int, ns_pid: int, limit: float, scope: anyio.CancelScope) -> bool:
        """The CPU time of the call's whole process tree, from /proc (``_cputime``), as ``run`` watches a
        jail's: RLIMIT_CPU alone lets a call that forks spend ``processes x cpu_time``.  The call's first
        process cannot be reaped (its PID reused) before the agent reports its exit, which ends this."""
        host = self._host_pid(ns_pid)
        if host is None:
            return False
        return await watch_cpu(limit, lambda: _cputime.tree_cpu_seconds(host),
                               lambda: self._agent.signal_nowait(call_id, _signal.SIGKILL), scope)

    async def _supervise(self, call_id: int, ns_pid: int, argv: Sequence[object], limits: Limits, ours: list[int],
                         input: bytes | bytearray | memoryview | None, started: float) -> Result:
        capped = {"stdout": False, "stderr": False}
        cpu_capped = [False]
        outputs = {"stdout": bytearray(), "stderr": bytearray()}
        timed_out = False
        exit_reply: wire.Reply | None = None
        failure: SandboxError | None = None

        def stop() -> None:
            self._agent.signal_nowait(call_id, _signal.SIGKILL)

        pump_scopes = [anyio.CancelScope(), anyio.CancelScope()]
        feed_scope = anyio.CancelScope()
        try:
            async with anyio.create_task_group() as tg:
                for fd, name, scope in zip(ours[1:], ("stdout", "stderr"), pump_scopes):
                    tg.start_soon(capture, fd, name, limits.output, outputs[name], capped, stop, scope)
                if input is not None:
                    tg.start_soon(_feed, ours, bytes(input), feed_scope)
                watch_scope = anyio.CancelScope()
                if limits.cpu_time is not None and _cputime.available():
                    async def watch(cpu_time: float) -> None:
                        cpu_capped[0] = await self._watch_cpu(call_id, ns_pid, cpu_time, watch_scope)

                    tg.start_soon(watch, limits.cpu_time)
                try:
                    with anyio.move_on_after(limits.wall_time if limits.wall_time is not None else math.inf):
                        exit_reply = await self._agent.exited(call_id)
                    if exit_reply is None:
                        timed_out = True
                        exit_reply = await self._agent.stop(call_id, DEFAULT_GRACE)
                except SandboxError as e:
                    failure = e  # raised below, on its own rather than in an exception group
                    tg.cancel_scope.cancel()
                feed_scope.cancel()
                watch_scope.cancel()
                deadline = anyio.current_time() + _DRAIN_TIMEOUT
                for scope in pump_scopes:
                    scope.deadline = deadline
        finally:
            if exit_reply is None:
                await self._agent.abandon(call_id)
        if failure is not None:
            raise failure
        assert exit_reply is not None
        wall = time.monotonic() - started
        returncode = os.waitstatus_to_exitcode(exit_reply.a)
        stderr = bytes(outputs["stderr"])
        cpu = exit_reply.utime + exit_reply.stime
        status, evidence = _classify(limits, returncode, stderr, cpu, timed_out,
                                     capped["stdout"] or capped["stderr"], max_rss=exit_reply.maxrss,
                                     jail_cpu_capped=cpu_capped[0],
                                     cpu_source="/proc/PID/stat of the call's processes")
        if timed_out:
            evidence = f"wall time {limits.wall_time} s ran out; the sandbox ended the call"
        enforced = enforcement(limits, None)
        enforced.pop("cgroup", None)
        if "output" in enforced:
            enforced["output"] = "event loop (reading stops and the call's process group is killed at the cap)"
        if "wall_time" in enforced:
            enforced["wall_time"] = "event loop (SIGTERM to the call's process group, grace, SIGKILL)"
        if "cpu_time" in enforced:
            enforced["cpu_time"] = "rlimit RLIMIT_CPU (per process: SIGXCPU, then SIGKILL a second later)"
            if _cputime.available():
                enforced["cpu_time"] += "; event loop on /proc/PID/stat of the call's processes (the whole call)"
        return Result(args=tuple(os.fsdecode(a) for a in argv),  # type: ignore[arg-type]
                      returncode=returncode, signal=-returncode if returncode < 0 else None,
                      stdout=bytes(outputs["stdout"]), stderr=stderr, status=status, evidence=evidence,
                      wall_time=wall, cpu_time=cpu, max_rss=exit_reply.maxrss, limits=limits,
                      enforced_by=enforced, stdout_truncated=capped["stdout"], stderr_truncated=capped["stderr"])

    async def spawn(self, argv: Sequence[str | bytes | os.PathLike[str] | os.PathLike[bytes]], *,
                    stdin: int | None = PIPE, stdout: int | None = PIPE, stderr: int | None = PIPE,
                    env: Mapping[Any, Any] | None = None, cwd: str | os.PathLike[str] | None = None,
                    limits: Limits | None = None) -> "SandboxProcess":
        """Start a program in the sandbox and return it as an ``anyio.abc.Process`` (stdin, stdout and
        stderr are pipes unless given as ``DEVNULL``, ``STDOUT`` for stderr, or an fd of the server's to
        hand over).  It shares the sandbox's jail with every other call."""
        call_limits = self._call_limits(limits, None)
        body = self._exec_body(argv, env, cwd, self._rlimits(call_limits))
        self._agent.check_open()
        ours: list[int] = [-1, -1, -1]
        theirs: list[int] = []
        try:
            for target, spec in enumerate((stdin, stdout, stderr)):
                if spec == PIPE:
                    r, w = os.pipe2(os.O_CLOEXEC)
                    ours[target], mine = (w, r) if target == 0 else (r, w)
                    theirs.append(mine)
                elif spec == DEVNULL or spec is None:
                    theirs.append(os.open(os.devnull, (os.O_RDONLY if target == 0 else os.O_WRONLY) | os.O_CLOEXEC))
                elif spec == STDOUT and target == 2:
                    theirs.append(os.dup(theirs[1]))
                elif isinstance(spec, int) and not isinstance(spec, bool) and spec >= 0:
                    theirs.append(os.dup(spec))
                else:
                    raise ProfileError(f"{('stdin', 'stdout', 'stderr')[target]} must be PIPE, DEVNULL, an fd "
                                       f"(or STDOUT for stderr), not {spec!r}")
            started = time.monotonic()
            call_id, pid = await self._agent.start(wire.OP_EXEC, body, theirs, self._what(argv, cwd))
        except BaseException:
            _close_fds(ours)
            raise
        finally:
            _close_fds(theirs)
        return SandboxProcess(self._agent, call_id, pid, argv, ours, started)

    # ------------------------------------------------------------------------------------------------
    # Files

    async def write_file(self, path: str | os.PathLike[str], data: bytes | str, *, mode: int = 0o644) -> None:
        """Write ``data`` (str as UTF-8) to ``path`` in the workspace, replacing it.  The path is resolved
        beneath the workspace by the kernel (openat2 RESOLVE_BENEATH), so a symlink planted by a program
        cannot redirect it outside (PermissionError); its parent must exist.  At most the smaller of
        ``workspace_size`` and ``limits.file_size`` bytes."""
        rel = self._relpath(path)
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ProfileTypeError(f"data must be bytes or str, not {type(data).__name__}")
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise ProfileError(f"mode must be a permission mode from 0 to 0o7777, not {mode!r}")
        cap = self._file_cap()
        if len(data) > cap:
            raise ProfileError(f"{len(data)} bytes is more than a sandbox file may hold ({cap} bytes)")
        r, w = os.pipe2(os.O_CLOEXEC)
        fds = [r, w]
        try:
            os.set_blocking(w, False)
            call_id, _ = await self._agent.start(wire.OP_WRITE, wire.FILE.pack(mode, 0, cap) + os.fsencode(rel) + b"\0", [r])
            os.close(r)
            fds[0] = -1
            exit_reply = None
            try:
                view = memoryview(bytes(data))
                try:
                    while view:
                        try:
                            view = view[os.write(w, view[:_READ_SIZE]):]
                        except BlockingIOError:
                            await anyio.wait_writable(w)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                os.close(w)
                fds[1] = -1
                exit_reply = await self._agent.exited(call_id)
            finally:
                if exit_reply is None:
                    await self._agent.abandon(call_id)
        finally:
            _close_fds(fds)
        self._file_status(exit_reply, path)

    async def read_file(self, path: str | os.PathLike[str]) -> bytes:
        """The bytes of ``path`` in the workspace (a regular file; resolved beneath the workspace as
        ``write_file`` is), at most the smaller of ``workspace_size`` and ``limits.file_size``."""
        rel = self._relpath(path)
        cap = self._file_cap()
        r, w = os.pipe2(os.O_CLOEXEC)
        fds = [r, w]
        buf = bytearray()
        try:
            os.set_blocking(r, False)
            call_id, _ = await self._agent.start(wire.OP_READ, wire.FILE.pack(0, 0, cap) + os.fsencode(rel) + b"\0", [w])
            os.close(w)
            fds[1] = -1
            exit_reply = None
            try:
                while True:
                    try:
                        chunk = os.read(r, _READ_SIZE)
                    except BlockingIOError:
                        await anyio.wait_readable(r)
                        continue
                    if not chunk:
                        break
                    if len(buf) + len(chunk) > cap:
                        raise self._agent.fail(f"its agent sent more than the {cap} bytes asked for")
                    buf += chunk
                exit_reply = await self._agent.exited(call_id)
            finally:
                if exit_reply is None:
                    await self._agent.abandon(call_id)
        finally:
            _close_fds(fds)
        self._file_status(exit_reply, path)
        return bytes(buf)

    def _file_status(self, r: wire.Reply | None, path: object) -> None:
        assert r is not None
        path = str(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else repr(path)
        if os.WIFSIGNALED(r.a):
            raise SandboxError(f"{path}: the sandbox's file worker was killed by signal {os.WTERMSIG(r.a)}")
        code = os.WEXITSTATUS(r.a) if os.WIFEXITED(r.a) else errno.EIO
        if code == 0:
            return
        if code in (errno.EXDEV, errno.ELOOP):
            raise PermissionError(code, f"{path}: resolves outside the workspace {self.workspace} "
                                  "(through a symlink or a mount); sandbox files stay inside it", path)
        if code == errno.EFBIG:
            raise ProfileError(f"{path}: larger than a sandbox file may be ({self._file_cap()} bytes)")
        if code == errno.ENOSPC:
            raise OSError(code, f"{path}: the workspace is full (workspace_size {self.workspace_size} bytes)")
        if code in (errno.EINVAL, errno.ENXIO):  # ENXIO: a FIFO with no reader, opened without blocking
            raise OSError(code, f"{path}: not a regular file")
        raise OSError(code, os.strerror(code), path)

    # ------------------------------------------------------------------------------------------------
    # Code cells

    async def run_code(self, code: str, *, timeout: float | None = None,
                       output_limit: int | None = None) -> CodeResult:
        """Run a cell of Python in the sandbox's kernel (started at the first cell; state carries over).

        Past ``timeout`` (else the sandbox's ``limits.wall_time``) the cell is interrupted (SIGINT: KeyboardInterrupt in the cell) and the result is
        "timed-out"; if it does not stop within a second, the kernel is killed (``state_lost``) and the
        next cell starts a new one.  Each of stdout and stderr is capped at ``output_limit`` bytes (default:
        the sandbox's ``limits.output``); past it the cell is stopped the same way ("output-limit")."""
        if not isinstance(code, str):
            raise ProfileTypeError(f"code must be a str, not {type(code).__name__}")
        wall = _seconds(timeout, "timeout")
        if wall is None:
            wall = self.limits.wall_time
        cap = self.limits.output if output_limit is None else output_limit
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap <= 0):
            raise ProfileError(f"output_limit must be a positive int (bytes) or None, not {cap!r}")
        request = json.dumps({"code": code}).encode()
        async with self._kernel_lock:
            kernel = self._kernel
            if kernel is None or kernel.dead:
                kernel = self._kernel = await self._start_kernel()
            return await kernel.cell(request, wall, cap)

    async def _start_kernel(self) -> "_Kernel":
        python = self.python or python_executable()
        ours: list[int] = []
        theirs: list[int] = []
        try:
            theirs.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            for _ in range(2):  # the cell's stdout and stderr
                r, w = os.pipe2(os.O_CLOEXEC)
                ours.append(r)
                theirs.append(w)
            r, w = os.pipe2(os.O_CLOEXEC)  # requests: fd 3 in the kernel
            theirs.append(r)
            ours.append(w)
            r, w = os.pipe2(os.O_CLOEXEC)  # replies: fd 4 in the kernel
            ours.append(r)
            theirs.append(w)
            for fd in ours:
                os.set_blocking(fd, False)
            body = self._exec_body([python, "-I", "-u", "-c", _KERNEL_SOURCE],
                                   {"HOME": self.workspace, "LC_ALL": "C.UTF-8"}, None,
                                   self._rlimits(self.limits, cpu=False), background=True)
            call_id, pid = await self._agent.start(wire.OP_EXEC, body, theirs, self._what([python], None))
        except BaseException:
            _close_fds(ours)
            raise
        finally:
            _close_fds(theirs)
        return _Kernel(self._agent, call_id, pid, *ours)


