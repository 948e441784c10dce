"""``aiogaol.PythonPool``: Python jobs at the cost of a fork, each still in a fresh jail.

A plain jailed ``python3 -c`` spends most of its time starting the interpreter and importing; a
PythonPool keeps one warm interpreter (the zygote, ``_zygote.py``) that has imported the ``preload``
modules once, and forks it for each job into a new jail built from the pool's profile by the same C
steps as every other jail (``_native/zygote.c``).  The zygote runs only aiogaol's code; each job runs in
a fork of it that has entered new namespaces, built the profile's mounts, dropped every privilege and
loaded Landlock and seccomp before its code is compiled.

This module is the server's side: it starts, watches, restarts and rebuilds the zygote, sends it one
request per job (the helper argv from the job's ``SpawnArgs``, the code, the job's fds), and collects
the job as ``aiogaol.run`` does (output caps, wall and CPU time, the status and its evidence), on anyio,
so it runs unchanged on asyncio and trio.  The zygote is the server's child (started with
``posix_spawn``); a job's processes are the zygote's descendants, so the server reaps no job: it waits on
the job's report socket and signals the job's init through a pidfd the init sends of itself.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import pickle
import signal as _signal
import socket
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import anyio

from . import _cputime, _ffi, _jail, _pacing, _plan, _spawner, _zygote
from ._errors import AiogaolError, ProfileError, ProfileTypeError, SandboxSetupError
from ._jail import Usage, _failure_error, _parse_records, _Record
from ._limits import Limits, resolve_limits
from ._profile import FileReadAll, Profile, Subpath
from ._run import DEFAULT_GRACE, Result, _classify, _feed, _Outcome, capture, enforcement, stdio_pipes, watch_cpu
from ._native import _core  # type: ignore[attr-defined]
from ._spawnargs import SpawnArgs

_CORE_PATH: str = _core.__file__

# The warm interpreter's start-up: this file and the C core loaded by path, the package not imported.
_BOOT = ("import sys,importlib.util as u;s=u.spec_from_file_location('_aiogaol_zygote',sys.argv[1]);"
         "m=u.module_from_spec(s);sys.modules[s.name]=m;s.loader.exec_module(m);"
         "m.main(sys.argv[2],int(sys.argv[3]),sys.argv[4:])")
START_TIMEOUT = 120.0  # seconds a zygote may take to import its preloads
CHECK_EVERY = 1.0  # seconds between two looks at the files a warm image came from
CLOSE_TIMEOUT = 5.0  # seconds a closed zygote has to exit before it is killed
_DRAIN_TIMEOUT = 5.0
_PIDFD_SPACE = socket.CMSG_SPACE(4)
# The environment of the zygote itself (a job gets its own, as any jail does).  BLAS libraries start a
# thread pool when they load; a process is forked with its calling thread only, so a warm image must
# not have any: one BLAS thread, which the jail's CPU limits would make the sensible choice anyway.
_ZYGOTE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1"}


class PreloadError(AiogaolError, ImportError):
    """A ``preload`` module did not import in the warm interpreter (``name`` says which), or the warm
    interpreter could not start at all (``name`` is then empty)."""


@dataclass(frozen=True)
class PythonPoolStats:
    """What ``PythonPool.stats()`` reports: the pool's shape and what it has done so far."""

    size: int
    running: int
    started: int  # jobs whose code began to run
    finished: int  # jobs reported (any status)
    setup_failures: int  # jobs whose jail could not be built (they raised)
    zygote_pid: int | None  # the warm interpreter now serving (None before open and after aclose)
    zygote_starts: int  # warm interpreters started: the first, restarts and rebuilds
    restarts: int  # started because the last one died
    rebuilds: int  # started because a file its image came from changed
    preload: tuple[str, ...]
    image_files: int  # files the warm image was built from, watched for a change
    threads_at_fork: int  # threads in the warm interpreter (1: forks are safe)


def _stat(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


class _Zygote:
    """One warm interpreter: our child, its socket, and the facts it reported when it was ready."""

    def __init__(self, pid: int, pidfd: int, sock: socket.socket) -> None:
        self.pid = pid
        self.pidfd: int | None = pidfd
        self.sock: socket.socket | None = sock
        self.facts: dict[str, Any] = {}
        self.snapshot: dict[str, tuple[int, int, int, int] | None] = {}
        self.exit_status: int | None = None
        self.lock = anyio.Lock()
        # The server's PID, ids, groups, capabilities, no_new_privs and seccomp state when it was started:
        # a server that has changed them since (or a fork of the server) gets a new one (see _current).
        self.identity: tuple[object, ...] = _spawner.server_state()[0]

    @classmethod
    async def start(cls, python: str, preload: Sequence[str], nice: int) -> "_Zygote":
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            argv = [python, "-I", "-c", _BOOT, _zygote.__file__, _CORE_PATH, str(nice), *preload]
            actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                       (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                       (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
                       (os.POSIX_SPAWN_DUP2, theirs.fileno(), _zygote.CONTROL_FD)]
            try:
                pid = os.posix_spawn(python, argv, _ZYGOTE_ENV, file_actions=actions, setsid=True,
                                     setsigdef=sorted(_signal.valid_signals()), setsigmask=[])
            except OSError as exc:
                raise PreloadError(f"cannot start the warm interpreter {python}: {exc}", name="") from exc
        finally:
            theirs.close()
        zygote = cls(pid, os.pidfd_open(pid), ours)
        ours.setblocking(False)
        try:
            with anyio.fail_after(START_TIMEOUT):
                reply = await zygote._recv()
        except BaseException as exc:
            zygote.kill()
            if isinstance(exc, TimeoutError):
                raise PreloadError(f"the warm interpreter did not finish importing {list(preload)} within "
                                   f"{START_TIMEOUT:g} s", name="") from None
            raise
        if reply is None or reply[0] != "READY":
            status = zygote.kill()
            if reply is None:
                raise PreloadError(f"the warm interpreter {python} ended before it was ready (wait status "
                                   f"{status}): can it import aiogaol's C core (cffi)?", name="")
            _, name, text = reply
            what = f"preload {name!r} failed to import: {text}" if name else text
            raise PreloadError(what, name=name)
        zygote.facts = reply[1]
        zygote.snapshot = {path: _stat(path) for path in zygote.facts["files"]}
        return zygote

    async def _recv(self) -> Any:
        """One frame from the zygote (None at EOF), waiting on the loop."""
        buf = b""
        need = _zygote.FRAME.size
        header = True
        assert self.sock is not None
        while True:
            while len(buf) < need:
                try:
                    chunk = self.sock.recv(need - len(buf))
                except BlockingIOError:
                    await anyio.wait_readable(self.sock)
                    continue
                if not chunk:
                    return None
                buf += chunk
            if not header:
                return pickle.loads(buf)
            need = _zygote.FRAME.unpack(buf)[0]
            buf = b""
            header = False

    def alive(self) -> bool:
        if self.exit_status is not None:
            return False
        pid, status = os.waitpid(self.pid, os.WNOHANG)  # our own unreaped child: its PID is ours
        if pid == 0:
            return True
        self._reaped(status)
        return False

    def _reaped(self, status: int) -> None:
        self.exit_status = status
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def changed(self) -> str | None:
        """The first file of the warm image that is no longer what it was, if any."""
        for path, before in self.snapshot.items():
            if _stat(path) != before:
                return path
        return None

    async def submit(self, data: bytes, fds: Sequence[int]) -> bool:
        """Send one job (its pickled template, the fds attached); False if the zygote is gone (its socket
        broke)."""
        async with self.lock:  # one frame at a time on the socket
            if self.sock is None:
                return False
            sock = self.sock
            head = _zygote.FRAME.pack(len(data))
            try:
                while True:
                    try:
                        socket.send_fds(sock, [head], list(fds))
                        break
                    except BlockingIOError:
                        await anyio.wait_writable(sock)
                view = memoryview(data)
                while view:
                    try:
                        view = view[sock.send(view):]
                    except BlockingIOError:
                        await anyio.wait_writable(sock)
            except (BrokenPipeError, ConnectionResetError):
                return False
        return True

    async def settle(self, seconds: float = 1.0) -> None:
        """Wait (on the loop, at most ``seconds``) for a zygote that may be dying to be reaped."""
        with anyio.move_on_after(seconds):
            while self.alive() and self.pidfd is not None:
                await anyio.wait_readable(self.pidfd)

    def forget(self) -> None:
        """In a fork of the server: not our child.  Close our copies of its fds, never signal or wait."""
        self.exit_status = -1
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        self.retire()

    def retire(self) -> None:
        """Close its socket: it exits at EOF (jobs already forked go on, they need nothing of it)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    async def wait_closed(self) -> None:
        self.retire()
        if self.exit_status is not None:
            return
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(CLOSE_TIMEOUT):
                while self.alive() and self.pidfd is not None:
                    await anyio.wait_readable(self.pidfd)
            if self.exit_status is None:
                self.kill()

    def kill(self) -> int | None:
        """SIGKILL and reap, blocking (bounded: SIGKILL cannot be ignored)."""
        if self.exit_status is None:
            if self.pidfd is not None:
                try:
                    _signal.pidfd_send_signal(self.pidfd, _signal.SIGKILL)
                except ProcessLookupError:
                    pass
            while True:
                try:
                    _, status = os.waitpid(self.pid, 0)
                except InterruptedError:
                    continue
                except ChildProcessError:
                    status = 255 << 8
                break
            self._reaped(status)
        return self.exit_status


class _WarmJob:
    """One job's jail, seen from the server: its report socket (records from the zygote and from the
    job's two processes), its lifeline, and a pidfd of its init once the init sent it."""

    isolation = "namespaces"
    cgroup = None

    def __init__(self, report: socket.socket, lifeline: socket.socket) -> None:
        self.report: socket.socket | None = report
        self.lifeline: socket.socket | None = lifeline
        self.pid = 0
        self.pidfd: int | None = None
        self.started = False
        self.failure: _Record | None = None
        self.eof = False
        self.returncode: int | None = None
        self.usage: Usage | None = None
        self._t0 = time.monotonic()
        # With AIOGAOL_STEP_TIMINGS=1 (a diagnostic): step name -> CLOCK_MONOTONIC ns of the C steps.
        self.timings: dict[str, int] | None = {"sent": time.monotonic_ns()} if _jail.STEP_TIMINGS else None

    def _read(self) -> None:
        """Take every record there is, without blocking."""
        while self.report is not None and not self.eof:
            try:
                # (socket.recv_fds drops its flags argument in 3.11: recvmsg by hand.)
                data, ancdata, _, _ = self.report.recvmsg(_ffi.RECORD_SIZE, _PIDFD_SPACE,
                                                          socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, ancdata = b"", []
            fds = [int.from_bytes(cdata[i:i + 4], sys.byteorder, signed=True)
                   for level, kind_, cdata in ancdata
                   if level == socket.SOL_SOCKET and kind_ == socket.SCM_RIGHTS
                   for i in range(0, len(cdata) - 3, 4)]
            for fd in fds:
                if self.pidfd is None:
                    self.pidfd = fd
                else:
                    os.close(fd)
            if not data:
                self.eof = True
                if self.started and self.returncode is None:
                    self._finish(None, None)  # the job's init was killed from outside, and no USAGE came
                return
            if len(data) < _ffi.RECORD.size:
                continue  # not a record: nothing of the jail writes one
            kind = _ffi.RECORD.unpack_from(data)[0]
            if kind in (_zygote.RECORD_DONE, _zygote.RECORD_USAGE):
                # DONE: init's report of the program's status and the jail's usage; USAGE: the first
                # fork's report of init's own end, which counts only when init was killed before DONE.
                value = _ffi.RECORD.unpack_from(data)[3]
                user_ns, sys_ns, rss_kib = (int.from_bytes(data[16 + 8 * i:24 + 8 * i], sys.byteorder)
                                            for i in range(3))
                figures = (user_ns / 1e9, sys_ns / 1e9, rss_kib * 1024)
                if kind == _zygote.RECORD_DONE:
                    self._finish(None, figures, os.waitstatus_to_exitcode(value))
                else:
                    self._finish(value, figures)
                return
            elif kind == _zygote.RECORD_STARTED:
                self.started = True
                if self.timings is not None:
                    self.timings["started (seen)"] = time.monotonic_ns()
            else:
                for rec in _parse_records(data):
                    if rec.kind == _ffi.RECORD_PID:
                        self.pid = rec.value
                    elif rec.kind == _ffi.RECORD_TIME and self.timings is not None:
                        self.timings[_ffi.step_name(rec.step)] = rec.ns
                    elif rec.kind == _ffi.RECORD_FAILURE and self.failure is None:
                        self.failure = rec

    def _finish(self, init_status: int | None, figures: tuple[float, float, int] | None,
                status: int | None = None) -> None:
        if status is None and self.lifeline is not None:
            try:
                data = self.lifeline.recv(_ffi.RECORD_SIZE, socket.MSG_DONTWAIT)
            except OSError:
                data = b""
            for rec in _parse_records(data):
                if rec.kind == _ffi.RECORD_EXIT:
                    status = os.waitstatus_to_exitcode(rec.value)
        if status is None:
            status = os.waitstatus_to_exitcode(init_status) if init_status is not None else 255
        self.returncode = status
        user, system, rss = figures if figures is not None else (0.0, 0.0, 0)
        self.usage = Usage(time.monotonic() - self._t0, user + system, user, system, rss)
        self.close()

    async def wait(self, until_started: bool) -> None:
        """Until the job runs (or failed to), or until it has ended and been reported."""
        while True:
            self._read()
            if self.returncode is not None or self.eof:
                return
            if until_started and (self.failure is not None or (self.started and self.pid)):
                return
            assert self.report is not None
            await anyio.wait_readable(self.report)

    def send_signal(self, sig: int) -> None:
        if self.returncode is not None or self.pidfd is None:
            raise ProcessLookupError(errno.ESRCH, "the job has already exited")
        _signal.pidfd_send_signal(self.pidfd, sig)

    def signal_quietly(self, sig: int) -> None:
        """SIGTERM and the like go through init to the program; SIGRTMAX has init SIGKILL the program
        (the jail's usage stays whole); SIGKILL of init takes the namespace with it."""
        try:
            self.send_signal(sig)
        except ProcessLookupError:
            if sig == _signal.SIGKILL and self.lifeline is not None:
                self.lifeline.close()  # no pidfd yet: init kills its jail when the lifeline hangs up
                self.lifeline = None

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        for name in ("report", "lifeline"):
            sock = getattr(self, name)
            if sock is not None:
                sock.close()
                setattr(self, name, None)


def _close(fds: list[int]) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)
    fds.clear()


class PythonPool:
    """Warm Python interpreters, each job in a fresh jail of ``profile``.

    ``run(code)`` behaves as ``python3 -c code`` in a new jail would (see docs/python-pool.md), except
    that the ``preload`` modules are imported already: the interpreter's start and those imports are
    paid once, at ``open()``, not per job.  ``size`` bounds the jobs running at once (default: the CPUs
    this process may use); ``limits`` apply to each job (``run``'s ``timeout`` overrides their
    ``wall_time``); ``python`` is the interpreter to warm (default ``sys.executable``; it must be able to
    import cffi); ``cwd`` is every job's working directory in its jail (default ``/``).  Use ``async with``, or ``await pool.open()`` and ``await pool.aclose()`` from any tasks.
    """

    def __init__(self, profile: Profile, *, preload: Iterable[str] = (), size: int | None = None,
                 limits: Limits | None = None, python: str | os.PathLike[str] | None = None,
                 cwd: str | None = None) -> None:
        if not isinstance(profile, Profile):
            raise ProfileTypeError(f"profile must be an aiogaol.Profile, not {type(profile).__name__}")
        if isinstance(preload, (str, bytes)):
            raise ProfileTypeError("preload takes an iterable of module names, not a string")
        names = tuple(preload)
        for name in names:
            if not isinstance(name, str) or not all(part.isidentifier() for part in name.split(".")):
                raise ProfileError(f"preload: {name!r} is not a module name")
        if size is None:
            size = max(1, len(os.sched_getaffinity(0)))
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ProfileError(f"size must be a positive int, not {size!r}")
        self._limits = resolve_limits(limits)
        if self._limits.cgroup not in ("auto", "none"):
            raise ProfileError(f"limits.cgroup={self._limits.cgroup!r}: a PythonPool places no job in a cgroup "
                               "(use 'auto' or 'none'); memory and processes are held by rlimits")
        exe = os.fspath(python) if python is not None else sys.executable
        if not isinstance(exe, str) or not os.path.isabs(exe) or not os.access(exe, os.X_OK):
            raise ProfileError(f"python must be the absolute path of an executable interpreter, not {python!r}")
        self._cwd = _plan.jail_cwd(cwd)  # every job's working directory in its jail (default /)
        self._profile = profile
        self._jail_profile: Profile | None = None
        self._preload = names
        self._size = size
        self._python = exe
        self._zygote: _Zygote | None = None
        self._retired: list[_Zygote] = []
        self._checked = 0.0
        self._open = False
        self._closed = False
        self._slots: anyio.Semaphore | None = None
        self._starting: anyio.Lock | None = None
        self._umask: int | None = None
        self._spawns: dict[tuple[int, Limits], SpawnArgs] = {}
        self._templates: dict[tuple[Any, ...], list[bytes]] = {}
        # (argv, the pickled template) by (id(argv), uid, gid): argv, kept, keeps its id from being reused.
        self._requests: dict[tuple[int, int, int], tuple[list[bytes], bytes]] = {}
        self._counts = {"running": 0, "started": 0, "finished": 0, "setup_failures": 0, "zygote_starts": 0,
                        "restarts": 0, "rebuilds": 0}

    # -- life of the pool ---------------------------------------------------------------------------

    async def open(self) -> "PythonPool":
        """Start the warm interpreter (raises ``PreloadError`` naming a preload that does not import)."""
        if self._closed:
            raise RuntimeError("this PythonPool is closed")
        if self._open:
            return self
        if self._slots is None:
            self._slots = anyio.Semaphore(self._size)
            self._starting = anyio.Lock()
        await self._current()
        self._open = True
        return self

    async def aclose(self) -> None:
        """Stop the warm interpreter.  Jobs already running finish (they need nothing of it); no new one
        starts.  Safe to call from any task, and more than once."""
        self._closed = True
        self._open = False
        zygotes = self._retired + ([self._zygote] if self._zygote is not None else [])
        self._zygote = None
        self._retired = []
        for zygote in zygotes:
            await zygote.wait_closed()

    async def __aenter__(self) -> "PythonPool":
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        zygotes = [z for z in [self._zygote, *self._retired] if z is not None] if hasattr(self, "_retired") else []
        if any(z.exit_status is None for z in zygotes):
            warnings.warn(f"{self!r} was never closed; killing its warm interpreter", ResourceWarning,
                          stacklevel=2, source=self)
            for zygote in zygotes:
                zygote.kill()

    def __repr__(self) -> str:
        return f"PythonPool(size={self._size}, preload={list(self._preload)!r})"

    def stats(self) -> PythonPoolStats:
        z = self._zygote
        return PythonPoolStats(size=self._size, preload=self._preload,
                               zygote_pid=z.pid if z is not None and z.exit_status is None else None,
                               image_files=len(z.snapshot) if z is not None else 0,
                               threads_at_fork=int(z.facts.get("threads", 0)) if z is not None else 0,
                               **self._counts)

    async def _current(self) -> _Zygote:
        """The zygote to use: started if there is none, restarted if it died, rebuilt if a file its
        image came from changed (checked at most every CHECK_EVERY seconds)."""
        assert self._starting is not None
        async with self._starting:
            z = self._zygote
            why = None
            identity, self._umask = _spawner.server_state()
            if z is not None and z.identity != identity:
                # As for the spawner (docs/spawn.md): jails carry the server's current privileges, never
                # those it had when the warm interpreter started.  A fork of the server must not touch
                # its parent's children at all: it only closes its copies of their fds.
                if z.identity[0] != identity[0]:
                    for old in [z, *self._retired]:
                        old.forget()
                    self._retired = []
                    z = None
                why = "restarts"
            self._reap_retired()
            if why is not None:
                pass
            elif z is None:
                why = "start"
            elif not z.alive():
                why = "restarts"
            elif time.monotonic() - self._checked >= CHECK_EVERY:
                self._checked = time.monotonic()
                if z.changed() is not None:
                    why = "rebuilds"
            if why is None:
                assert z is not None
                return z
            if self._closed:
                raise RuntimeError("this PythonPool is closed")
            nice = _spawner.jail_niceness(self._limits.nice)
            new = await _Zygote.start(self._python, self._preload, nice)
            if self._closed:  # closed from another task while this one started it
                await new.wait_closed()
                raise RuntimeError("this PythonPool is closed")
            if new.facts.get("threads", 1) > 1:
                warnings.warn(f"the preloads {list(self._preload)} left {new.facts['threads']} threads running in "
                              "the warm interpreter; each job is forked with one thread only", RuntimeWarning,
                              stacklevel=3)
            self._counts["zygote_starts"] += 1
            if why != "start":
                self._counts[why] += 1
            if z is not None:
                z.retire()
                self._retired.append(z)
            self._zygote = new
            self._spawns.clear()  # plans of the last warm image's jail profile
            self._templates.clear()
            self._checked = time.monotonic()
            self._jail_profile = self._profile + [FileReadAll(Subpath(root)) for root in new.facts["roots"]
                                                  if os.path.exists(root)]
            return new

    def _reap_retired(self) -> None:
        self._retired = [z for z in self._retired if z.alive()]

    # -- one job ------------------------------------------------------------------------------------

    async def run(self, code: str, *, args: Sequence[str] = (), input: bytes | None = None,
                  timeout: float | None = None, env: Mapping[str, str] | None = None) -> Result:
        """Run ``code`` as ``python3 -c code *args`` would, in a fresh jail; the result as ``aiogaol.run``
        reports it.  Raises ``SandboxSetupError`` (naming the step) if the jail cannot be built, and
        ``PreloadError`` if the warm image must be rebuilt and no longer imports."""
        if not isinstance(code, str):
            raise ProfileTypeError(f"code must be a str, not {type(code).__name__}")
        if isinstance(args, (str, bytes)) or not isinstance(args, Sequence):
            raise ProfileTypeError("args must be a sequence of str")
        for a in args:
            if not isinstance(a, str):
                raise ProfileTypeError(f"args must hold str, not {type(a).__name__}")
        if input is not None and not isinstance(input, (bytes, bytearray, memoryview)):
            raise ProfileTypeError(f"input must be bytes or None, not {type(input).__name__}")
        limits = self._limits
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
                    math.isfinite(timeout) and timeout > 0):
                raise ProfileError(f"timeout must be a positive number of seconds, not {timeout!r}")
            limits = dataclasses.replace(limits, wall_time=float(timeout))
        if not self._open or self._slots is None:
            raise RuntimeError("this PythonPool is not open: use `async with` or `await pool.open()`")
        async with self._slots:
            self._counts["running"] += 1
            try:
                for attempt in range(2):
                    zygote = await self._current()
                    assert self._jail_profile is not None
                    spawn = self._spawn_args(limits)
                    envp = _plan.environment(cast("Mapping[object, object] | None", env))
                    result = await self._run_one(zygote, spawn, envp, code, list(args), input, limits)
                    if result is not None:
                        return result
                    # The zygote died before it forked this job (nothing of it ran): once more, on a new one.
                raise SandboxSetupError("start the warm interpreter", errno.EIO,
                                        "the warm interpreter died twice before it could start the job")
            finally:
                self._counts["running"] -= 1

    def _spawn_args(self, limits: Limits) -> SpawnArgs:
        """The jail's plan for these limits, made once per warm image and limits: the program part of a
        SpawnArgs is the zygote's business (a job's code goes in its memfd), so only the plan is used."""
        assert self._jail_profile is not None
        key = (id(self._jail_profile), limits)
        spawn = self._spawns.get(key)
        if spawn is None:
            if len(self._spawns) > 64:
                self._spawns.clear()
            spawn = SpawnArgs.build(self._jail_profile, "python3", [], env=None, cwd=self._cwd, pass_fds=(),
                                    limits=limits)
            self._spawns[key] = spawn
        return spawn

    def _template(self, spawn: SpawnArgs) -> list[bytes]:
        """The helper argv of a job's jail (no program in it), for the umask and rlimits of the moment."""
        rlimits = tuple(_spawner.server_rlimits())
        key = (id(spawn), self._umask, rlimits, _jail.STEP_TIMINGS)
        argv = self._templates.get(key)
        if argv is None:
            if len(self._templates) > 64:
                self._templates.clear()
            argv = spawn.helper_argv(_zygote.REPORT_FD, _zygote.LIFELINE_FD,
                                     _zygote.SECCOMP_FD if spawn.seccomp_filter else None, None, self._umask,
                                     list(rlimits))
            if _jail.STEP_TIMINGS:
                argv.insert(1, b"--timings")
            argv = argv[:argv.index(b"--") + 1] + [b"python3"]
            self._templates[key] = argv
        return argv

    async def _run_one(self, zygote: _Zygote, spawn: SpawnArgs, envp: list[bytes], code: str, args: list[str],
                       input: bytes | bytearray | memoryview | None, limits: Limits) -> Result | None:
        ours: list[int] = []  # stdin (write end, or -1), stdout, stderr (read ends)
        theirs: list[int] = []  # the zygote's: stdin, stdout, stderr, report, lifeline, payload
        job: _WarmJob | None = None
        try:
            # The synchronous part, paced as a spawn is (a burst of jobs must not stall the loop).
            async with _pacing.paced():
                stdio_pipes(input is not None, ours, theirs)
                report_ours, report_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                life_ours, life_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                job = _WarmJob(report_ours, life_ours)
                theirs += [report_theirs.detach(), life_theirs.detach()]
                argv = self._template(spawn)
                env = dict(e.split(b"=", 1) for e in envp)
                # What the job is goes to the job's own fork in a memfd, never through the zygote's memory.
                payload = os.memfd_create("aiogaol-job", os.MFD_CLOEXEC)
                theirs.append(payload)
                data = memoryview(pickle.dumps((code, args, {os.fsdecode(k): os.fsdecode(v) for k, v in env.items()})))
                while data:
                    data = data[os.write(payload, data):]
                # The zygote gets the jail's template: the identity, the helper argv without the program and
                # the program's filter (no job in it: the jail made ahead of time for it has its walls up).
                # Pickled once per template (the same bytes for every job of the pool).
                key = (id(argv), os.getuid(), os.getgid())
                request = self._requests.get(key)
                if request is None or request[0] is not argv:
                    uid, gid = key[1], key[2]
                    for i, a in enumerate(argv[:-1]):
                        if a == b"--uid":
                            uid = int(argv[i + 1])
                        elif a == b"--gid":
                            gid = int(argv[i + 1])
                        elif a == b"--":
                            break
                    if len(self._requests) > 64:
                        self._requests.clear()
                    request = self._requests[key] = (
                        argv, pickle.dumps((uid, gid, argv, bytes(spawn.seccomp_filter or b""))))
            sent = await zygote.submit(request[1], theirs)
            _close(theirs)
            if sent:
                await job.wait(until_started=True)
            if job.failure is not None:
                self._counts["setup_failures"] += 1
                raise _failure_error(job.failure)
            if not sent or (not job.pid and job.eof):
                # Nothing reported, nothing of the job ran: the zygote died with our request (killed, say).
                # Once it is seen dead (within a second), _current starts another.
                await zygote.settle()
                return None
            if not job.started:
                self._counts["setup_failures"] += 1
                raise SandboxSetupError("start the job", errno.EIO, "the job's processes ended before it ran"
                                        f" (returncode {job.returncode})")
            self._counts["started"] += 1
            result = await self._collect(job, spawn, code, args, input, ours, limits)
            self._counts["finished"] += 1
            return result
        finally:
            _close(theirs)
            _close(ours)
            if job is not None and job.returncode is None:
                job.signal_quietly(_signal.SIGKILL)
                job.close()  # init dies of the closed lifeline too; the zygote's fork reaps it

    @staticmethod
    async def _watch_cpu(job: _WarmJob, limit: float, outcome: _Outcome, scope: anyio.CancelScope) -> None:
        """The CPU time of all the job's processes together, from /proc, as ``run`` watches a jail's."""
        used = lambda: _cputime.tree_cpu_seconds(job.pid) if job.pid else None  # noqa: E731
        outcome.jail_cpu_capped = await watch_cpu(limit, used, lambda: job.signal_quietly(_signal.SIGRTMAX),
                                                  scope)

    async def _collect(self, job: _WarmJob, spawn: SpawnArgs, code: str, args: list[str],
                       input: bytes | bytearray | memoryview | None, ours: list[int], limits: Limits) -> Result:
        outcome = _Outcome()
        outputs = {"stdout": bytearray(), "stderr": bytearray()}
        pump_scopes = [anyio.CancelScope(), anyio.CancelScope()]
        helper_scopes = [anyio.CancelScope(), anyio.CancelScope()]
        async with anyio.create_task_group() as tg:
            for fd, name, scope in zip(ours[1:], ("stdout", "stderr"), pump_scopes):
                tg.start_soon(capture, fd, name, limits.output, outputs[name], outcome.capped,
                              lambda: job.signal_quietly(_signal.SIGRTMAX), scope)
            if input is not None:
                tg.start_soon(_feed, ours, bytes(input), helper_scopes[0])
            if limits.cpu_time is not None and _cputime.available():
                outcome.cpu_source = "/proc/PID/stat of the jail's processes"
                tg.start_soon(self._watch_cpu, job, limits.cpu_time, outcome, helper_scopes[1])
            await _supervise(job, limits, outcome)
            for scope in helper_scopes:
                scope.cancel()
            deadline = anyio.current_time() + _DRAIN_TIMEOUT
            for scope in pump_scopes:
                scope.deadline = deadline
        returncode, usage = job.returncode, job.usage
        assert returncode is not None and usage is not None
        stderr = bytes(outputs["stderr"])
        status, evidence = _classify(limits, returncode, stderr, usage.cpu_time, outcome.timed_out,
                                     outcome.capped["stdout"] or outcome.capped["stderr"], max_rss=usage.max_rss,
                                     jail_cpu_capped=outcome.jail_cpu_capped, cpu_source=outcome.cpu_source)
        enforced = enforcement(limits, None)
        enforced["cgroup"] = "none: a PythonPool job has no cgroup of its own"
        return Result(args=("python3", "-c", code, *args), returncode=returncode,
                      signal=-returncode if returncode < 0 else None, stdout=bytes(outputs["stdout"]),
                      stderr=stderr, status=status, evidence=evidence, wall_time=usage.wall_time,
                      cpu_time=usage.cpu_time, max_rss=usage.max_rss, limits=limits, enforced_by=enforced,
                      stdout_truncated=outcome.capped["stdout"], stderr_truncated=outcome.capped["stderr"],
                      isolation=job.isolation, cgroup=None)


async def _supervise(job: _WarmJob, limits: Limits, outcome: _Outcome) -> None:
    """``aiogaol.run``'s sequence: the wall time, then SIGTERM, grace, SIGKILL of the program through
    init, grace, SIGKILL of init.  Whatever ends this early (a cancellation) kills the jail first."""
    try:
        with anyio.move_on_after(limits.wall_time if limits.wall_time is not None else math.inf):
            await job.wait(until_started=False)
        if job.returncode is not None:
            return
        outcome.timed_out = True
        for sig, wait in ((_signal.SIGTERM, DEFAULT_GRACE), (_signal.SIGRTMAX, DEFAULT_GRACE),
                          (_signal.SIGKILL, math.inf)):
            job.signal_quietly(sig)
            with anyio.move_on_after(wait):
                await job.wait(until_started=False)
            if job.returncode is not None:
                return
    finally:
        if job.returncode is None:
            job.signal_quietly(_signal.SIGKILL)
            with anyio.CancelScope(shield=True), anyio.move_on_after(_DRAIN_TIMEOUT):
                await job.wait(until_started=False)
            if job.returncode is None:
                job.close()
