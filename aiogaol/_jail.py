"""A running jail, shared by both process faces (the asyncio mirror and the anyio ``spawn``).

It owns the pidfd of the jail's init (the server's own child, thanks to CLONE_PARENT), the lifeline
socket, and the exit status.  Nothing here knows about mounts (that is the plan) or about streams (that
is the process faces).  Waiting is injected: ``launch`` takes an awaitable ``wait_readable(fd)``.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING
from dataclasses import dataclass

import anyio

from . import _cgroup, _errors, _ffi, _pacing, _spawner, _stdio
from ._errors import SandboxSetupError, UserNamespacesUnavailable, setup_error
from ._ffi import RECORD, RECORD_EXIT, RECORD_FAILURE, RECORD_PID, RECORD_TIME
from ._kernel import userns_block_reason

if TYPE_CHECKING:
    from ._spawnargs import SpawnArgs

_NS = struct.Struct("Q")

# A diagnostic: with AIOGAOL_STEP_TIMINGS=1 in the environment (or this set to True), every jail reports
# when each set-up step was reached, and the process faces show it as ``step_timings``.  Off by default:
# it costs a few writes per spawn.
STEP_TIMINGS = os.environ.get("AIOGAOL_STEP_TIMINGS") == "1"

WaitReadable = Callable[[int], Awaitable[None]]


@dataclass(frozen=True)
class Usage:
    """What the whole jail used (every process in it), like isolate's meta file."""

    wall_time: float  # seconds from spawn to exit
    cpu_time: float  # user + system seconds
    user_time: float
    system_time: float
    max_rss: int  # bytes, largest resident set of any process in the jail


@dataclass
class _Record:
    kind: int
    step: int
    err: int
    value: int
    detail: str
    ns: int = 0  # a TIME record's CLOCK_MONOTONIC nanoseconds


def _parse_records(data: bytes) -> list[_Record]:
    size = _ffi.RECORD_SIZE
    out = []
    for i in range(0, len(data) - size + 1, size):
        kind, step, err, value = RECORD.unpack_from(data, i)
        if kind == RECORD_TIME:
            out.append(_Record(kind, step, err, value, "", _NS.unpack_from(data, i + RECORD.size)[0]))
            continue
        detail = data[i + RECORD.size:i + size].split(b"\0", 1)[0].decode(errors="replace")
        out.append(_Record(kind, step, err, value, detail))
    return out


class RunningJail:
    """The jail's init process: reaped through its pidfd, signalled through its pidfd."""

    def __init__(self, pid: int, pidfd: int, lifeline: socket.socket, started: float) -> None:
        self.pid = pid
        self.pidfd: int | None = pidfd
        self._lifeline: socket.socket | None = lifeline
        self._started = started
        self.returncode: int | None = None
        self.usage: Usage | None = None
        # "namespaces" (the jail) or "landlock" (the weaker fallback): what the faces report as
        # ``proc.isolation``.
        self.isolation = "namespaces"
        # With STEP_TIMINGS: step name -> CLOCK_MONOTONIC ns, from the C core's TIME records and the
        # server's own marks ("sent", "answered", "reaped").
        self.timings: dict[str, int] | None = None
        # The jail's own cgroup v2 (None where none could be made, and cgroup_reason says why); its
        # counters are read and it is removed when init is reaped.
        self.cgroup: _cgroup.JailCgroup | None = None
        self.cgroup_reason = ""

    def try_reap(self) -> bool:
        """Reap init if it has exited; True once the returncode is known.  Never blocks."""
        if self.returncode is not None:
            return True
        # wait4 on the PID is safe: init is our unreaped child, so its PID cannot be reused, and only
        # this object reaps it.  It gives the rusage of the whole jail, which waitid does not.
        try:
            pid, status, ru = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:
            # Someone else reaped our child (a waitpid(-1) elsewhere in the process, or SIGCHLD set to
            # SIG_IGN): report it as asyncio does, rather than hang.
            self._finish(255, None)
            return True
        if pid == 0:
            return False
        self._finish(self._program_status(status), ru)
        return True

    def reap_blocking(self) -> None:
        """Kill and reap: for finalizers and failed spawns, where nothing can be awaited."""
        if self.returncode is not None:
            return
        self.kill_quietly()
        while True:
            try:
                pid, status, ru = os.wait4(self.pid, 0)
            except InterruptedError:
                continue
            except ChildProcessError:
                self._finish(255, None)
                return
            self._finish(self._program_status(status), ru)
            return

    def _program_status(self, init_status: int) -> int:
        """The program's returncode: init reports it exactly, since PID 1 cannot die of its own signal."""
        status = None
        while self._lifeline is not None:
            # With STEP_TIMINGS, init's own TIME records come first; then EXIT.
            try:
                data = self._lifeline.recv(_ffi.RECORD_SIZE, socket.MSG_DONTWAIT)
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            for rec in _parse_records(data):
                if rec.kind == RECORD_EXIT:
                    status = os.waitstatus_to_exitcode(rec.value)
                elif rec.kind == RECORD_TIME and self.timings is not None:
                    self.timings[_ffi.step_name(rec.step)] = rec.ns
            if status is not None:
                return status
        return os.waitstatus_to_exitcode(init_status)

    def _finish(self, returncode: int, ru: resource.struct_rusage | None) -> None:
        if self.timings is not None:
            self.timings["reaped"] = time.monotonic_ns()
        self.returncode = returncode
        wall = time.monotonic() - self._started
        if ru is not None:
            self.usage = Usage(wall, ru.ru_utime + ru.ru_stime, ru.ru_utime, ru.ru_stime, ru.ru_maxrss * 1024)
        else:
            self.usage = Usage(wall, 0.0, 0.0, 0.0, 0)
        if self.cgroup is not None:
            try:
                self.cgroup.read_report()
                self.cgroup.remove()
            except OSError:
                pass  # the figures are a bonus; never let them lose the returncode
        self.close()

    def send_signal(self, sig: int) -> None:
        if self.returncode is not None or self.pidfd is None:
            raise ProcessLookupError(errno.ESRCH, "the jailed process has already exited")
        # Through the pidfd: a PID reused after exit is never hit.  Init forwards catchable signals to
        # the program; SIGKILL kills init, and with it the whole PID namespace.
        signal.pidfd_send_signal(self.pidfd, sig)

    def kill_program(self) -> None:
        """SIGKILL the program through init, which then reaps and reports as usual: unlike SIGKILL to
        init, the usage of the whole jail survives.  Init answers SIGRTMAX this way."""
        self.send_signal(signal.SIGRTMAX)

    def kill_quietly(self) -> None:
        try:
            self.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        if self._lifeline is not None:
            self._lifeline.close()
            self._lifeline = None


def _lifeline_gone(sock: socket.socket) -> bool:
    """True if the jail's end of the lifeline is closed with nothing sent on it (init sends the program's
    EXIT record, and its TIME records, before it closes it)."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


def _low_fd_safe(fd: int, target: int) -> int:
    """A copy of fd above 2 when it would be clobbered by the dup2 of another stdio slot."""
    if fd < 3 and fd != target:
        return os.dup(fd) if fd >= 0 else fd
    return fd


async def launch(spawn: "SpawnArgs", *, stdio: Sequence[int | None], wait_readable: WaitReadable,
                 ticket: _pacing.Ticket) -> RunningJail:
    """Have the spawner start a jail for a validated spawn, read the handshake, return the running jail
    (or raise what failed).  Every jail takes this one way, one placed in a cgroup too.

    Cancellation at any await kills and reaps whatever was started before re-raising, without blocking
    the loop (see ``_cancelled``).  The profile's seccomp filter (BPF bytes) travels in a pipe made for
    this spawn: the server keeps no filter fd between spawns, and no face can start a jail without its
    filter.  ``ticket`` is the face's admission (see ``_pacing``), taken before it built ``spawn``: launch
    charges it once the request is sent, and gives back its starting slot once the jail has answered.
    Every fd it makes is made inside its ``try``: a spawn that fails (EMFILE near the fd limit, say)
    leaves none behind.
    """
    seccomp_filter = spawn.seccomp_filter
    isolation = spawn.isolation
    envp = spawn.envp
    pass_fds = spawn.pass_fds
    seccomp_r = err_r = err_w = -1
    data = b""
    life_server: socket.socket | None = None
    life_jail: socket.socket | None = None
    copies: list[int] = []
    init_pid = 0
    spawner: _spawner._Spawner | None = None  # the spawner that owns the request: it answers on err_r
    cgroup: _cgroup.JailCgroup | None = None
    started = time.monotonic()
    try:
        if seccomp_filter:
            seccomp_r, seccomp_w = os.pipe()
            try:
                # At most 32 KiB (BPF_MAXINSNS), below a pipe's capacity: this write never blocks.
                view = memoryview(seccomp_filter)
                while view:
                    view = view[os.write(seccomp_w, view):]
            finally:
                os.close(seccomp_w)
        err_r, err_w = os.pipe()
        life_server, life_jail = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cgroup, cgroup_reason = _cgroup.for_limits(spawn.limits.memory, spawn.limits.processes,
                                                   spawn.limits.cgroup)
        # (fd here, fd in init) pairs: the error pipe first (the spawner reports on it from the start),
        # a pair (fd, fd) keeps an fd where it is.
        fd_map: list[tuple[int, int]] = [(err_w, err_w), (life_jail.fileno(), life_jail.fileno())]
        fd_map += [(fd, fd) for fd in pass_fds]
        if seccomp_r >= 0:
            fd_map.append((seccomp_r, seccomp_r))
        if cgroup is not None:
            fd_map.append((cgroup.fd, cgroup.fd))  # init is cloned into it (clone3 CLONE_INTO_CGROUP)
        stdio_map: list[tuple[int, int]] = []
        for target, fd in enumerate(stdio):
            if fd is None:
                continue
            safe = _low_fd_safe(fd, target)
            if safe != fd:
                copies.append(safe)
            stdio_map.append((safe, target))
        identity, umask = _spawner.server_state()
        rlimits = _spawner.server_rlimits()
        argv = spawn.helper_argv(err_w, life_jail.fileno(), seccomp_r if seccomp_r >= 0 else None, cgroup, umask,
                                 rlimits)
        timings: dict[str, int] | None = None
        if STEP_TIMINGS:
            argv.insert(1, b"--timings")
            timings = {"sent": time.monotonic_ns()}
        # A stdio slot left to inheritance is sent too, as a plain child would inherit it.
        inherited = [(t, t) for t, fd in enumerate(stdio) if fd is None and _stdio.is_open(t)]
        owner = spawner = await _spawner.submit(argv, envp, fd_map + stdio_map + inherited, identity,
                                                _spawner.jail_niceness(spawn.limits.nice), rlimits)
        sent = time.monotonic()
        _pacing.charge(ticket)
        os.close(err_w)
        err_w = -1
        life_jail.close()
        os.set_blocking(err_r, False)
        wait_at_most = ticket.pacer.slots.wait_at_most
        while True:
            if not _spawner.pid_in(data):
                # A spawner answers with the PID at once when it runs at all: one that has not for
                # STALL_TIMEOUT is stopped or starved, and is replaced rather than waited for.
                left = sent + _spawner.STALL_TIMEOUT - time.monotonic()
                if left <= 0 or not await wait_at_most(lambda: wait_readable(err_r), left):
                    _spawner.stalled(owner)
                    raise SandboxSetupError(
                        "start helper", errno.ETIMEDOUT,
                        f"the spawner (PID {owner.pid}) did not answer within {_spawner.STALL_TIMEOUT:g} s "
                        "(stopped, or starved of CPU?): it was killed, and the next spawn starts another")
            else:
                await wait_readable(err_r)
            try:
                chunk = os.read(err_r, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                break
            data += chunk
        if timings is not None:
            timings["answered"] = time.monotonic_ns()
        if ticket.slot is not None:
            ticket.slot.give_back()  # built (or failed): the next jail may start
        ticket = await _pacing.admit()  # the answer's half of the synchronous work (see _pacing)
        records = _parse_records(data)
        ended = "the spawner ended before it answered (was it killed?)"
        for rec in records:
            if rec.kind == RECORD_PID:
                init_pid = rec.value
        if init_pid and not _owned(init_pid, spawner):
            init_pid = 0
            raise SandboxSetupError("start helper", errno.ECANCELED,
                                    "the spawner was shut down while this jail was starting")
        failure = next((r for r in records if r.kind == RECORD_FAILURE), None)
        if failure is not None:
            raise _failure_error(failure)
        if not init_pid:
            raise SandboxSetupError("start helper", errno.EIO, ended)
        if _lifeline_gone(life_server):
            # A PID and then EOF reads as "exec seen"; but an init whose lifeline is already closed, with
            # nothing on it, never held the request's fds (they did not fit its fd table: a waiting init
            # receives them itself, and has no error pipe to say so on): a bare 127 from wait() otherwise.
            raise SandboxSetupError("start helper", errno.EMFILE,
                                    "the jail's init lost the request's fds before it could report anything "
                                    "(they did not fit in its fd table: is the spawner's RLIMIT_NOFILE too low?)")
        pidfd = os.pidfd_open(init_pid)
        jail = RunningJail(init_pid, pidfd, life_server, started)
        life_server = None
        jail.isolation = isolation
        if timings is not None:
            for rec in records:
                if rec.kind == RECORD_TIME:
                    timings[_ffi.step_name(rec.step)] = rec.ns
            jail.timings = timings
        if cgroup is not None:
            cgroup.close_fd()  # init is in it now; the directory's path is all we need from here on
        jail.cgroup, jail.cgroup_reason = cgroup, cgroup_reason
        cgroup = None
        init_pid = 0
        if _spawner.leftovers():
            _spawner.settle()  # what cancelled spawns left: their PIDs came before this one's
        _pacing.charge(ticket)
        return jail
    except BaseException as exc:
        if life_server is not None:
            life_server.close()  # a jail that got this far dies of the closed lifeline too
        if err_w >= 0:
            os.close(err_w)
            err_w = -1
        if init_pid or spawner is not None:
            # Failed, or cancelled (or given up) at any await: init may exist already, or soon (a request
            # still queued), and is our child; with every record in (eof), its PID is in them even when
            # the cancellation came before they were parsed.
            keep = await _cancelled(err_r, data, spawner, init_pid, wait_readable,
                                    ticket.pacer.slots.wait_at_most)
            if keep:
                err_r = -1  # the spawner module's now (see _spawner.abandon)
        if cgroup is not None:
            cgroup.remove()
        if isinstance(exc, OSError) and _errors.is_fd_shortage(exc):
            raise _errors.out_of_fds(exc, "starting a jail") from exc
        raise
    finally:
        if err_r >= 0:
            os.close(err_r)
        if err_w >= 0:
            os.close(err_w)
        if seccomp_r >= 0:
            os.close(seccomp_r)
        if life_jail is not None and life_jail.fileno() >= 0:
            life_jail.close()
        for fd in copies:
            os.close(fd)


# At most this long, a cancelled spawn waits (on the loop, never blocking it) for its spawner to say which
# init it made, and for that init to die of SIGKILL; what is still unknown then is left to later spawns
# (see _spawner.abandon).  Milliseconds when the spawner runs at all.
CANCEL_GRACE = 0.5


async def _cancelled(err_r: int, data: bytes, spawner: _spawner._Spawner | None, init_pid: int,
                     wait_readable: WaitReadable,
                     wait_at_most: Callable[[Callable[[], Awaitable[object]], float], Awaitable[bool]]) -> bool:
    """Clean up after a launch that failed or was cancelled: learn init's PID if need be (the spawner
    writes it right after the clone), kill it and reap it, waiting on the
    loop, shielded from a second cancellation and at most CANCEL_GRACE seconds.  Never a blocking read
    or waitpid: a stopped spawner must not freeze the loop.  True if the error pipe was handed to
    ``_spawner.abandon`` (its init still unknown after the grace; a later spawn finishes the job)."""
    deadline = time.monotonic() + CANCEL_GRACE
    eof = False
    os.set_blocking(err_r, False)

    async def grace(fd: int) -> bool:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            return await _shielded(wait_at_most, lambda: wait_readable(fd), left)
        except BaseException:
            return False  # cancelled again (asyncio cannot shield): what is left is abandoned

    if not init_pid:
        while not (pid := _spawner.pid_in(data)):
            try:
                chunk = os.read(err_r, 65536)
            except BlockingIOError:
                if await grace(err_r):
                    continue
                break
            if not chunk:
                eof = True
                break
            data += chunk
        init_pid = _owned(pid, spawner)
        if not pid and not eof:
            _spawner.abandon(err_r, data, spawner)
            return True
    if init_pid:
        await _kill_and_wait(init_pid, grace)
    return False


async def _kill_and_wait(pid: int, grace: Callable[[int], Awaitable[bool]]) -> None:
    """SIGKILL our own unreaped child, wait for it through a pidfd (within the grace), and reap it; if it
    has not died by then, ``_spawner.doom`` reaps it later."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        _spawner.doom(pid)  # gone already (or no fd left): reaped without waiting
        return
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        await grace(pidfd)
    finally:
        os.close(pidfd)
    _spawner.doom(pid)  # reaps it now if it has died, as it should have


async def _shielded(wait_at_most: Callable[[Callable[[], Awaitable[object]], float], Awaitable[bool]],
                    wait: Callable[[], Awaitable[object]], seconds: float) -> bool:
    """``wait_at_most(wait, seconds)``, shielded from the cancellation being handled: trio, and anyio's
    cancel scopes on asyncio, deliver it again at every await otherwise (a plain asyncio cancel has been
    delivered once already)."""
    with anyio.CancelScope(shield=True):
        return await wait_at_most(wait, seconds)
    return False  # not reached: a shielded scope is never cancelled from outside


def _owned(pid: int, spawner: _spawner._Spawner | None) -> int:
    """pid, if this launch owns that init now; 0 if the spawner made it ahead of time and its retirement
    has killed and reaped it already (the PID may be another process's by now: not to be touched)."""
    return pid if pid and (spawner is None or spawner.claim(pid)) else 0


def _failure_error(rec: _Record) -> OSError:
    step = _ffi.step_name(rec.step)
    if (step == "unshare namespaces" and rec.detail != "network namespace"
            and rec.err in (errno.EPERM, errno.ENOSPC, errno.EINVAL, errno.EACCES)):
        reason = userns_block_reason() or f"unshare failed with {errno.errorcode.get(rec.err, rec.err)}"
        return UserNamespacesUnavailable(rec.err, f"this host forbids user namespaces: {reason}; "
                                         "aiogaol needs them to build a jail")
    if step in ("write uid_map", "write gid_map", "write setgroups") and rec.err == errno.EPERM:
        reason = userns_block_reason() or "the id map was refused"
        return UserNamespacesUnavailable(rec.err, f"cannot map ids in a new user namespace: {reason}")
    if step == "parse helper arguments" and rec.err == errno.E2BIG and rec.detail == "request":
        return SandboxSetupError(step, rec.err, "request: its fds did not all fit in the fd table of the spawner or "
                                 "of the init it was handed to (their RLIMIT_NOFILE), or it was too large")
    if step == "close inherited fds" and rec.detail == "place fds" and rec.err in (errno.EINVAL, errno.EMFILE,
                                                                                   errno.EBADF):
        return SandboxSetupError(step, rec.err, "place fds: the fd numbers the jail needs are above the RLIMIT_NOFILE "
                                 "of its init (the spawner's), or its fd table is full")
    if rec.err == errno.EAGAIN and step in ("unshare namespaces", "clone init", "fork program"):
        # clone's EAGAIN: a process limit, not a namespace problem.
        return SandboxSetupError(step, rec.err, f"{rec.detail}: {_errors.process_limit_reason()}")
    if step.startswith("exec") and rec.err == errno.E2BIG:
        return SandboxSetupError(step, rec.err, f"{rec.detail}: the program's arguments and environment are too "
                                 "long for the kernel (ARG_MAX, a quarter of RLIMIT_STACK; 128 KiB in any one string)")
    if step == "unshare namespaces" and rec.err == errno.ENOSPC:
        return SandboxSetupError(step, rec.err, f"{rec.detail} (this host's user.max_net_namespaces is reached)")
    return setup_error(step, rec.err, rec.detail)
