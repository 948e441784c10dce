"""The warm interpreter of a ``PythonPool``: imports the preloads once, then forks one jail per job.

Started by the pool (``_python_pool``) as ``python -I -c BOOT`` with a clean environment, its own session,
stdio on /dev/null and one socket (fd 3) to the server.  BOOT loads this file and the C core by path,
without importing the ``aiogaol`` package, so the warm image holds the preloads and the standard
library's own modules, not the server's libraries.  This module imports nothing outside the standard
library, and runs no code of a job: each job runs in a fork of a clone of it, in a fresh jail
(see aiogaol/_native/zygote.c for the process tree and docs/python-pool.md for the semantics).

The server speaks to it in frames on the socket: an 8-byte length, then a pickled request, the job's
fds attached to the length (SCM_RIGHTS).  The request holds only the jail's template: the identity
whose id maps the zygote writes, the helper argv and the program's seccomp filter; what the job is (its
code, arguments and environment) comes in a memfd that only the job's own fork reads, so the zygote's heap, which every later job is forked from,
never holds a byte of an earlier job.  It answers only once, at start: READY with the facts the
server needs (the files the image came from, the prefixes a job needs to read), or FAILED naming the
preload that did not import.  Everything about a job goes on that job's own report socket.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.machinery
import importlib.util
import os
import pickle
# os.wait4 imports resource for its struct_rusage when the first K is reaped: imported here, before the
# image is frozen, so that the first job's image is every job's.
import resource  # noqa: F401
import select
import signal
import socket
import struct
import sys
import traceback
import time
import types
from typing import Any

FRAME = struct.Struct("!Q")
# The job's fds as the zygote receives them, and the numbers they take in the jail's init (K): stdio at
# 0-2, then the report socket, the lifeline and the payload (the helper argv the server builds names the
# first two).  The program filter is the template's, not the job's: K puts it on a pipe at SECCOMP_FD.
JOB_FDS = 6
REPORT_FD, LIFELINE_FD, PAYLOAD_FD, SECCOMP_FD = 3, 4, 5, 6
# P's fds once they came from init: stdio, then the report socket and the payload.
P_REPORT_FD, P_PAYLOAD_FD = 3, 4
# (K's own fds before a job comes, the handshake with the zygote, the socket the job's fds come on
# and the pipe they report on, are placed by the C calls: zygote.c's ZJ_SYNC_R to ZJ_ERR.)
CONTROL_FD = 3  # the zygote's own socket to the server
MAP_TIMEOUT = 5.0  # seconds the zygote waits for a jail's init to ask for its id maps before giving up
AHEAD_AFTER = 0.01  # seconds into a job after which the next jail is made even if the job still runs
RECORD_SIZE = 512
RECORD = struct.Struct("iiii")  # kind, step, errno, value: the head of jail.h's struct aiogaol_record
RECORD_FAILURE = 2
RECORD_STARTED, RECORD_USAGE, RECORD_DONE = 16, 17, 18  # zygote.c's own kinds
RECORD_BUILT = 19  # P to the zygote: the jail made ahead of time, its program walled in, is ready for a job
NOBODY_EXIT = 127


def record(kind: int, step: int, err: int, value: int, detail: bytes = b"") -> bytes:
    return RECORD.pack(kind, step, err, value) + detail[:RECORD_SIZE - RECORD.size].ljust(RECORD_SIZE - RECORD.size,
                                                                                          b"\0")


class _Core:
    """The C core, loaded by path (the package is not imported here); step numbers by name."""

    def __init__(self, path: str) -> None:
        loader = importlib.machinery.ExtensionFileLoader("_core", path)
        spec = importlib.util.spec_from_file_location("_core", path, loader=loader)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
        self.ffi: Any = getattr(module, "ffi")
        self.lib: Any = getattr(module, "lib")
        self.steps: dict[str, int] = {}
        for i in range(64):
            name = self.ffi.string(self.lib.aiogaol_step_name(i)).decode()
            self.steps.setdefault(name, i)


def _send(sock: socket.socket, obj: object) -> None:
    data = pickle.dumps(obj)
    sock.sendall(FRAME.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _image_facts(preload: list[str]) -> dict[str, Any]:
    """What the server needs: the files the warm image came from (it watches them for a change), the
    directories a job must be able to read (the interpreter's prefixes, and where each preload lives),
    and the threads the preloads left running (a fork takes only the calling thread)."""
    files = {os.path.realpath(sys.executable)}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and os.path.isabs(path):
            files.add(path)
    roots = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    for name in preload:
        package = sys.modules.get(name.partition(".")[0])
        path = getattr(package, "__file__", None)
        if isinstance(path, str):
            path = os.path.realpath(path)
            top = os.path.dirname(path) if os.path.basename(path).startswith("__init__.") else path
            if not any(top == r or top.startswith(r + os.sep) for r in roots):
                roots.add(top)
    try:
        threads = len(os.listdir("/proc/self/task"))
    except OSError:
        threads = 1
    return {"files": sorted(files), "roots": sorted(roots), "threads": threads, "pid": os.getpid(),
            "executable": sys.executable, "version": sys.version}


def main(core_path: str, nice: int, preload: list[str]) -> None:
    """The zygote's life: load the core, import the preloads, report, serve; in a job's P, run it."""
    # Whatever the server had open without O_CLOEXEC when it spawned us is not ours to hold.
    os.closerange(CONTROL_FD + 1, 1 << 16)
    ctl = socket.socket(fileno=CONTROL_FD)
    try:
        core = _Core(core_path)
    except BaseException as exc:  # noqa: BLE001 - reported to the server, which raises it
        _send(ctl, ("FAILED", "", f"cannot load aiogaol's C core {core_path}: {type(exc).__name__}: {exc}"))
        return
    for name in preload:
        try:
            importlib.import_module(name)
        except BaseException as exc:  # noqa: BLE001 - a preload's failure is the pool's start failure
            text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            _send(ctl, ("FAILED", name, text))
            return
    # Our session's autogroup, opened while we are still dumpable: once sealed, /proc/self's files are
    # root's, and an unprivileged warm interpreter could no longer open it to weigh its session.
    global _autogroup, _session_nice
    try:
        _autogroup = os.open("/proc/self/autogroup", os.O_WRONLY | os.O_CLOEXEC)
        _session_nice = nice
    except OSError:
        pass  # no autogroups: nothing to weigh
    # Neither the server nor a job reads the warm interpreter's memory: not ptrace-able, no core.
    if core.lib.aiogaol_zygote_seal() != 0:
        _send(ctl, ("FAILED", "", "prctl(PR_SET_DUMPABLE, 0) failed in the warm interpreter"))
        return
    # At the jails' niceness, as the spawner runs (docs/spawn.md): its forks yield to the server.  Its
    # session (the server started it with setsid) holds the jails it makes and each job's process until
    # its job starts: weighed as one session at that niceness (see _weigh_session).  Its time slice is
    # lengthened as the spawner's is (init.c's lengthen_slice), and K, P and the job inherit it.
    if core.lib.aiogaol_raise_nice(nice) != 0:
        _send(ctl, ("FAILED", "", f"the warm interpreter could not take niceness {nice}"))
        return
    _weigh_session()
    # Our children are the jails' inits (K), each reaped by the loop once its pidfd says it has exited
    # (never waited for): SIGCHLD stays at its default, so that each one's status and usage are ours.
    # Every object of the warm image out of the collector's reach: a job's collections then never walk
    # (and so never copy) the pages the zygote shares with it.
    import gc

    _settle_image(core)
    gc.collect()
    gc.freeze()
    _send(ctl, ("READY", _image_facts(preload)))
    job = _serve(ctl, core)
    if job is not None:
        _run_job(*job)


def _settle_image(core: _Core) -> None:
    """What the interpreter makes once, at its first use, on the path every job's K and P take: made
    here, in the warm image, instead of again in every job.  compile() makes the AST node types (over
    a hundred classes, each through type_new) at its first call, 1.3 ms of a print(1) job's CPU
    (docs/benchmarks.md); ``os.environ.update`` asks whether a dict is a Mapping, whose answer the ABC
    caches; cffi makes a lib's function objects at their first lookup.  A job sees no difference: no
    module is imported, nothing of the environment changes."""
    compile("", "<aiogaol>", "exec")
    os.environ.update({})
    for name in ("aiogaol_zygote_init_wait", "aiogaol_zygote_program_ready", "aiogaol_zygote_program_receive",
                 "aiogaol_zygote_program_enter"):
        getattr(core.lib, name)


class _Waiting:
    """A jail being made, or made, for a job: K, cloned into its namespaces, asks for its id maps (the
    zygote writes them), builds the jail, forks P and waits for a job's fds on ``sock``; P puts its walls
    up and waits for its own from K.  Both report on ``err`` (a pipe of ours) until a job's report socket
    takes over.  Made from a request's ``template`` (the helper argv of the pool's jails, which names no job),
    it serves a job whose template is the same, byte for byte.

    Nothing here blocks: the zygote's loop advances every jail in the making as its pipes turn readable,
    so that jails for jobs that came together are built side by side (each one is a chain of three
    processes that runs mostly on one CPU) instead of one after another while the others wait."""

    def __init__(self, pid: int, sock: socket.socket, err: int, sync_r: int, sync_w: int,
                 template: tuple[Any, ...]) -> None:
        self.pid = pid
        self.sock = sock
        self.err = err
        self.sync_r = sync_r  # K says "u" on it once cloned; -1 once its maps are written
        self.sync_w = sync_w
        self.template = template
        self.deadline = time.monotonic() + MAP_TIMEOUT
        self.built = False
        self.failure: bytes | None = None
        self.dead = False
        self.job: list[int] | None = None  # the job's fds once one is given to this jail

    def watched(self) -> int:
        """The fd whose readiness moves this jail on."""
        return self.sync_r if self.sync_r >= 0 else self.err

    def advance(self, core: _Core) -> None:
        """Take what is ready, without waiting: the maps once K asks, then BUILT or FAILURE."""
        if self.sync_r >= 0:
            if not select.select([self.sync_r], [], [], 0)[0]:
                return
            said = os.read(self.sync_r, 1)
            if said != b"u":
                self._close_sync()
                self.poll()  # K failed: its record, if it wrote one, is there
                self.failure = self.failure or record(
                    RECORD_FAILURE, core.steps.get("unshare namespaces", 0), 5, 0, b"the jail's init ended "
                    b"before it asked for its id maps")
                return
            uid, gid = self.template[0], self.template[1]
            try:
                self.failure = _write_maps(self.pid, uid, gid, core)
                if self.failure is None:
                    os.write(self.sync_w, b"g" + struct.pack("i", self.pid))  # and K's host PID
                    self.deadline = time.monotonic() + MAP_TIMEOUT  # and as long again to build
            except OSError as exc:
                self.failure = record(RECORD_FAILURE, core.steps.get("clone init", 0), exc.errno or 5, 0,
                                      b"let the jail's init go")
            self._close_sync()
            if self.failure is not None:
                os.kill(self.pid, signal.SIGKILL)
                return
        self.poll()

    def poll(self) -> None:
        """Take what K and P said on ``err`` (BUILT, or a FAILURE record), without waiting."""
        while not (self.built or self.dead or self.failure):
            if not select.select([self.err], [], [], 0)[0]:
                return
            data = os.read(self.err, RECORD_SIZE)
            if len(data) < RECORD.size:
                self.dead = True
            elif RECORD.unpack_from(data)[0] == RECORD_BUILT:
                self.built = True
            elif RECORD.unpack_from(data)[0] == RECORD_FAILURE:
                self.failure = data

    def ended(self) -> bool:
        return self.dead or self.failure is not None

    def why(self, core: _Core) -> bytes:
        """The record a job given to this jail gets when the jail cannot take it."""
        if self.failure is not None:
            return self.failure
        if self.dead:
            return record(RECORD_FAILURE, core.steps.get("clone init", 0), 5, 0,
                          b"the jail made for this job ended before it was built")
        return record(RECORD_FAILURE, core.steps.get("unshare namespaces" if self.sync_r >= 0 else "clone init", 0),
                      110, 0, b"the jail made for this job stalled before it was built")

    def hand_over(self, core: _Core) -> int:
        """Give the job's fds to the built jail (K takes them), or report on the job's socket why not.
        The report socket, a copy of it that the loop keeps for K's end (USAGE); -1 if none is kept."""
        assert self.job is not None
        if not self.built:
            os.write(self.job[3], self.why(core))
            return -1
        try:
            socket.send_fds(self.sock, [b"j"], self.job)
            return os.dup(self.job[3])
        except OSError as exc:
            os.write(self.job[3], record(RECORD_FAILURE, core.steps.get("clone init", 0), exc.errno or 5, 0,
                                         b"hand the job to its jail"))
            return -1

    def _close_sync(self) -> None:
        if self.sync_r >= 0:
            os.close(self.sync_r)
            os.close(self.sync_w)
            self.sync_r = self.sync_w = -1

    def close(self) -> None:
        """Drop it (K sees EOF and exits, and the jail with it), and the job's fds with it.  K is reaped
        by the loop (``_Inits``)."""
        if self.sync_r >= 0:
            os.kill(self.pid, signal.SIGKILL)  # still asking for its maps: it would wait for them
            self._close_sync()
        self.sock.close()
        os.close(self.err)
        for fd in self.job or ():
            try:
                os.close(fd)
            except OSError:
                pass
        self.job = None


class _Inits:
    """The jails' inits (K), our children: each reaped once its pidfd turns readable, never waited for.
    One that was given a job reports its end on that job's report socket (USAGE, with its wait status and
    the usage of the whole jail, which K reaped): what the server counts when K was killed before it
    could report the job's own end (DONE).  The rest (dropped before a job came, or failed) are only
    reaped."""

    def __init__(self) -> None:
        self.pidfds: dict[int, tuple[int, int]] = {}  # pidfd -> (pid, a copy of the job's report socket, or -1)

    def add(self, pid: int) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pidfd = -1
        if pidfd < 0:
            # No fd to watch it with: reaped now, killed first (it is our own unreaped child, so the PID
            # is still its own); its jail never serves a job.
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (OSError, ChildProcessError):
                pass
            return
        self.pidfds[pidfd] = (pid, -1)

    def report_to(self, pid: int, report: int) -> None:
        for pidfd, (known, old) in self.pidfds.items():
            if known == pid:
                if old >= 0:
                    os.close(old)
                self.pidfds[pidfd] = (pid, report)
                return
        if report >= 0:
            os.close(report)

    def fds(self) -> list[int]:
        return list(self.pidfds)

    def watch(self, pid: int) -> int:
        """A copy of the pidfd of init pid (-1 if it is not ours to watch): by fd, never by PID."""
        for pidfd, (known, _) in self.pidfds.items():
            if known == pid:
                return os.dup(pidfd)
        return -1

    def reap(self, ready: Any) -> None:
        for pidfd in [fd for fd in ready if fd in self.pidfds]:
            pid, report = self.pidfds.pop(pidfd)
            os.close(pidfd)
            try:
                _, status, ru = os.wait4(pid, 0)  # it has exited (its pidfd said so): no wait
            except ChildProcessError:
                status, ru = 0, None
            if report >= 0:
                if ru is not None:
                    # As init.c's add_usage writes them: whole microseconds in ns, the RSS in KiB.
                    figures = struct.pack("QQQ", round(ru.ru_utime * 1e6) * 1000, round(ru.ru_stime * 1e6) * 1000,
                                          ru.ru_maxrss)
                    try:
                        os.write(report, record(RECORD_USAGE, 0, 0, status, figures))
                    except OSError:
                        pass  # the server has its result already (DONE), or is gone
                os.close(report)

    def close(self) -> None:
        """At the loop's end: what is still running goes on (and is reaped by whoever inherits it)."""
        for pidfd, (_, report) in self.pidfds.items():
            os.close(pidfd)
            if report >= 0:
                os.close(report)
        self.pidfds.clear()


_autogroup = -1  # /proc/self/autogroup, open until the kernel has taken _session_nice (_weigh_session)
_session_nice = 0


def _weigh_session() -> None:
    """Our session's autogroup to the jobs' niceness: the scheduler weighs each session as one, so the
    niceness of our processes alone would yield the server nothing (docs/spawn.md).  Asked at each request
    until it takes: the kernel takes an unprivileged change at most every 100 ms, machine-wide (EAGAIN)."""
    global _autogroup
    if _autogroup < 0:
        return
    try:
        os.write(_autogroup, str(_session_nice).encode())
    except BlockingIOError:
        return  # EAGAIN: later
    except OSError:
        pass  # a niceness the kernel refuses: leave it
    os.close(_autogroup)
    _autogroup = -1


def _mounts_changed(mountinfo: int) -> bool:
    """Whether the host's mount table changed since this was last asked (or the loop's select saw it):
    POLLPRI on /proc/self/mountinfo, taken by the asking.  One call, where reading the table and
    comparing it cost tens of microseconds at every job (more on a host with many mounts)."""
    poller = select.poll()
    poller.register(mountinfo, select.POLLPRI)
    return bool(poller.poll(0))


def _binds_current(template: tuple[Any, ...]) -> bool:
    """Whether every host path the template binds still names the inode the profile resolved (a file
    replaced by rename since the jail was built would otherwise show in it as it was)."""
    argv = template[2]
    for i, a in enumerate(argv):
        if a in (b"--ro", b"--rw") and i + 4 < len(argv):
            try:
                st = os.stat(argv[i + 1], follow_symlinks=False)
            except OSError:
                return False
            if (st.st_dev, st.st_ino) != (int(argv[i + 3]), int(argv[i + 4])):
                return False
    return True


def _serve(ctl: socket.socket, core: _Core) -> tuple[str, list[str], dict[str, str]] | None:
    """The request loop.  Returns only in a job's program process (P), with what it must run.

    Each job is given a jail as it comes: the one made ahead of time from the last job's template when
    it fits (same template, the host's mount table and bound files unchanged since it was made),
    otherwise one started for it there and then; it is handed over once that jail is built, while the
    loop goes on taking requests and moving the other jails on.  Once no job waits for a jail, the next
    one is made ahead: after the last job has ended or run AHEAD_AFTER."""
    spare: _Waiting | None = None  # made ahead, no job given to it yet
    pending: list[_Waiting] = []  # given a job, not built yet
    running = -1  # a pidfd of the last job's init, until the next jail is made
    ahead_at = 0.0
    last: tuple[Any, ...] | None = None  # the last job's template
    last_frame = b""  # the last request's pickled template
    last_template: tuple[Any, ...] = ()  # and it, unpickled
    mountinfo = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
    inits = _Inits()  # every jail's init we cloned, until it is reaped
    in_p = False

    def settle() -> None:
        """Hand over what is built, report what failed or stalled; keep the rest."""
        nonlocal running, ahead_at
        now = time.monotonic()
        for w in list(pending):
            w.advance(core)
            if not (w.built or w.ended() or now >= w.deadline):
                continue
            pending.remove(w)
            inits.report_to(w.pid, w.hand_over(core))
            if w.built:
                if running >= 0:
                    os.close(running)
                try:
                    running = inits.watch(w.pid)
                except OSError:
                    running = -1  # no fd left: the next one is made at once
                ahead_at = time.monotonic() + AHEAD_AFTER
            w.close()

    try:
        while True:
            if spare is not None:
                spare.advance(core)
                if spare.ended() or (not spare.built and time.monotonic() >= spare.deadline):
                    spare.close()
                    spare = None
            settle()
            ahead = spare is None and not pending and last is not None and running >= 0
            watched: list[Any] = [ctl] + [w.watched() for w in pending] + inits.fds()
            if spare is not None and not spare.built:
                watched.append(spare.watched())
            if ahead:
                watched.append(running)
            deadlines = [w.deadline for w in pending] + ([ahead_at] if ahead else [])
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            try:
                # The host's mount table changing (POLLPRI on mountinfo) drops the spare jail at once:
                # its copy of the host's mounts would keep a filesystem unmounted since busy.
                ready, _, changed = select.select(watched, [], [mountinfo] if spare is not None else [], timeout)
            except InterruptedError:
                continue
            if changed:
                # Taken by the select: the spare's copy of the host's mounts is stale, whatever changed.
                if spare is not None:
                    spare.close()
                    spare = None
                continue
            inits.reap(ready)
            if ctl not in ready:
                if ahead and (running in ready or time.monotonic() >= ahead_at):
                    # The last job has ended (its init exited) or has run AHEAD_AFTER: the next
                    # jail is made now, not beside the job's start, whose forks and walls it would slow
                    # by more than it saves the next job.
                    os.close(running)
                    running = -1
                    assert last is not None
                    made = _make(ctl, core, last, mountinfo, inits, ahead=True)
                    if isinstance(made, tuple):
                        in_p = True
                        return made  # in P (whose copy of this loop's jails is not its own)
                    spare = made if isinstance(made, _Waiting) else None
                continue
            _weigh_session()
            try:
                head, fds, _, _ = socket.recv_fds(ctl, FRAME.size, JOB_FDS)
            except InterruptedError:
                continue
            if not head:
                return None  # the server is gone, or closed the pool
            rest = _recv_exact(ctl, FRAME.unpack(head)[0]) if len(head) == FRAME.size else None
            if rest is None or len(fds) != JOB_FDS:
                for fd in fds:
                    os.close(fd)
                return None  # a broken frame: not a server speaking our protocol
            # Every job of a pool sends the same template: unpickled once, the same object kept, so that
            # the spare's template compares by identity.
            if rest != last_frame:
                last_frame, last_template = rest, pickle.loads(rest)
            template = last_template
            if spare is not None and (spare.template != template or not _binds_current(template)
                                      or _mounts_changed(mountinfo)):
                spare.close()
                spare = None
            if spare is None:
                made = _make(ctl, core, template, mountinfo, inits, ahead=False)
                if isinstance(made, tuple):
                    in_p = True
                    return made  # in P (whose copy of this loop's jails is not its own)
                if isinstance(made, OSError):
                    os.write(fds[3], record(RECORD_FAILURE, core.steps.get("clone init", 0), made.errno or 0, 0,
                                            b"fork"))
                    for fd in fds:
                        os.close(fd)
                    continue
                spare = made
            spare.job = fds
            pending.append(spare)
            spare = None
            last = template
            if running >= 0:
                os.close(running)
                running = -1
            settle()
            if running < 0 and not pending and spare is None and not select.select([ctl], [], [], 0)[0]:
                made = _make(ctl, core, template, mountinfo, inits, ahead=True)
                if isinstance(made, tuple):
                    in_p = True
                    return made  # in P (whose copy of this loop's jails is not its own)
                spare = made if isinstance(made, _Waiting) else None
    finally:
        # Not in P: its copy of these jails is the zygote's (P closed the zygote's fds when it started,
        # and must never signal the PIDs they name, which in its own PID namespace are other processes).
        if not in_p:
            _drop_all(pending, spare, running, mountinfo)
            inits.close()
        else:
            # Nor may its copies of the loop's sockets close the numbers they name when this frame
            # drops them: those are P's own now, or closed, and each socket finalized unclosed also
            # formats a ResourceWarning (its repr) on the job's time.  Forgotten, not closed.
            for w in pending + ([spare] if spare is not None else []):
                w.sock.detach()


def _drop_all(pending: list[_Waiting], spare: _Waiting | None, running: int, mountinfo: int) -> None:
    """The loop's end in the zygote: every jail in the making dropped, the loop's fds closed."""
    for w in pending + ([spare] if spare is not None else []):
        w.close()
    for fd in (running, mountinfo):
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


def _make(ctl: socket.socket, core: _Core, template: tuple[Any, ...], mountinfo: int, inits: _Inits, *,
          ahead: bool) -> _Waiting | OSError | tuple[str, list[str], dict[str, str]]:
    """Clone a jail's init (K) with a template: a _Waiting in the zygote (the OSError if the clone failed),
    what to run in P.  The loop writes K's id maps once it asks, and lets it go (``_Waiting.advance``).
    ``ahead``: made before any job asked for it, so P warms up (``_warm_program``) while it waits."""
    uid, gid, argv, seccomp = template
    c_argv = _c_argv(core, argv)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    err_r, err_w = os.pipe()
    to_k_r, to_k_w = os.pipe()
    from_k_r, from_k_w = os.pipe()
    _mounts_changed(mountinfo)  # what changed before this clone is in its copy: taken, not held against it
    k_out = core.ffi.new("int[3]")
    pid = core.lib.aiogaol_zygote_clone(len(argv), c_argv, seccomp, len(seccomp), theirs.fileno(), err_w, to_k_r,
                                        from_k_w, k_out)
    if pid == 0:
        try:
            # K: every fd but its handshake's is closed already (in the call); these objects must never
            # close their numbers again.
            ours.detach()
            theirs.detach()
            ctl.detach()
            return _k(core, k_out, bool(seccomp), ahead)
        except BaseException:  # noqa: BLE001 - a clone of the zygote never returns into its loop
            os._exit(NOBODY_EXIT)
    theirs.close()
    for fd in (err_w, to_k_r, from_k_w):
        os.close(fd)
    if pid < 0:
        for fd in (err_r, to_k_w, from_k_r):
            os.close(fd)
        ours.close()
        return OSError(-pid, os.strerror(-pid))
    inits.add(pid)
    return _Waiting(pid, ours, err_r, from_k_r, to_k_w, template)


_C_ARGV: dict[tuple[bytes, ...], tuple[list[Any], Any]] = {}


def _c_argv(core: _Core, argv: list[bytes]) -> Any:
    """The helper argv as C strings, made once per template in the zygote (each K reads its copy of
    the zygote's memory) rather than in every K."""
    key = tuple(argv)
    kept = _C_ARGV.get(key)
    if kept is None:
        if len(_C_ARGV) >= 4:
            _C_ARGV.clear()  # a pool has one template; a few at most over its life
        strings = [core.ffi.new("char[]", a) for a in argv]
        kept = _C_ARGV[key] = (strings, core.ffi.new("char *[]", strings + [core.ffi.NULL]))
    return kept[1]


def _write_maps(pid: int, uid: int, gid: int, core: _Core) -> bytes | None:
    """K's id maps, from the parent user namespace (jail.c's write_maps, for a process of our own): our
    ids mapped to themselves, or, for a root zygote whose jobs run as another identity, ours as 0 and
    theirs to themselves; setgroups denied unless that identity must shed our groups.  None, or the
    FAILURE record that says which write failed."""
    me_u, me_g = os.getuid(), os.getgid()
    switch = (uid, gid) != (me_u, me_g)

    def lines(caller: int, program: int) -> str:
        if caller == program:
            return f"{caller} {caller} 1\n"
        return f"0 {caller} 1\n{program} {program} 1\n"

    for name, text, step in ((("setgroups", "deny", "write setgroups"),) if not switch else ()) + (
            ("gid_map", lines(me_g, gid), "write gid_map"), ("uid_map", lines(me_u, uid), "write uid_map")):
        path = f"/proc/{pid}/{name}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            return record(RECORD_FAILURE, core.steps.get(step, 0), exc.errno or 0, 0, path.encode())
    return None


def _k(core: _Core, k_out: Any, seccomp: bool, ahead: bool) -> tuple[str, list[str], dict[str, str]]:
    """K, back in Python from its clone with its jail built: P with its walls, while no job waits for
    them; then the job, straight from the zygote.  Returns only in P, with every wall up, what it must
    run.  Until a job comes, K holds fds 6 and up only (0-2 are the zygote's /dev/null)."""
    to_program, p_end, host_pid = k_out[0], k_out[1], k_out[2]
    program = os.fork()
    if not program:
        # P: its walls now (aiogaol_zygote_program_ready, which closes every fd but 0-2 and p_end); in a
        # jail made ahead, the warm-up; its fds (from init, once init has dropped everything) when a job
        # comes, at 0-4.
        core.lib.aiogaol_zygote_program_ready(p_end)
        if ahead:
            _warm_program()
        if not core.lib.aiogaol_zygote_program_receive(p_end):
            os._exit(0)  # dropped before a job came: nothing of a job ever ran here
        payload = b""
        while chunk := os.pread(P_PAYLOAD_FD, 1 << 20, len(payload)):
            payload += chunk
        os.close(P_PAYLOAD_FD)
        code, args, env = pickle.loads(payload)
        del payload
        core.lib.aiogaol_zygote_program_enter(P_REPORT_FD)
        return code, args, env
    os.close(p_end)
    if seccomp:
        os.close(SECCOMP_FD)
    # The job's fds from the zygote, the PID record (with a pidfd of K) for the server, then init's loop:
    # all C, so K runs no more Python.
    core.lib.aiogaol_zygote_init_wait(program, to_program, host_pid)
    os._exit(NOBODY_EXIT)  # not reached


# What P compiles while it waits in a jail made ahead (``_warm_program``): the common statements of a
# job's source, so that the parser's and the compiler's allocations have their pages already.
_WARM_SOURCE = """
import sys, os
def gen(n, step=2, *args, **kwargs):
    for i in range(n):
        if i % step == 0 and not args:
            yield i * step
        elif kwargs.get("skip"):
            continue
        else:
            break
class Point:
    x: int = 0
    def __init__(self, x, y=None):
        self.x, self.y = x, [y, {"y": y}, (y,)]
    def __repr__(self):
        return f"Point({self.x!r}, {self.y:>4})"
try:
    total = sum(gen(10)) + len([p for p in map(Point, range(3)) if p.x])
    table = {k: v for k, v in zip("ab", "cd")}
    with open(os.devnull) as fh:
        data = fh.read().split()
except (OSError, ValueError) as exc:
    raise SystemExit(1) from exc
finally:
    pass
while total > 0:
    total -= 1
print(total, table, data, lambda q: q + 1, file=sys.stderr)
"""


def _warm_program() -> None:
    """P of a jail made ahead, walls up, before a job comes: the first steps a job takes, on aiogaol's own
    source and payload, so that the pages they write are copied from the warm image now instead of on
    the job's time.  A page's copy-on-write fault costs 10 to 20 us on the VMs measured, and compiling a
    one-line job wrote 50 to 170 pages (docs/benchmarks.md).  The job sees nothing of it: the code object
    and the payload are dropped, and the environment cleared here is replaced by the job's anyway.  Best
    effort: a failure here only leaves the pages to the job."""
    try:
        compile(_WARM_SOURCE, "<string>", "exec")
        pickle.loads(pickle.dumps(("", [""], {"": ""})))
        os.environ.clear()
    except Exception:  # noqa: BLE001 - a warm-up, never a reason to lose the jail
        pass


def _run_job(code: str, args: list[str], env: dict[str, str]) -> None:
    """What ``python3 -c CODE ARGS`` does with its code, in P: a fresh ``__main__``, ``sys.argv``,
    ``sys.path[0] == ''``, the job's environment; SystemExit and an uncaught exception as CPython
    handles them (the traceback starts at the job's own frame); then what the end of the interpreter
    does that a program can see (``_exit_as_python``)."""
    for name in ("_aiogaol_zygote", "_core"):
        sys.modules.pop(name, None)
    os.environ.clear()
    os.environ.update(env)
    sys.argv[:] = ["-c", *args]
    sys.path.insert(0, "")
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = __builtins__
    main.__dict__["__loader__"] = importlib.machinery.BuiltinImporter
    sys.modules["__main__"] = main
    status: object = 0
    try:
        exec(compile(code, "<string>", "exec"), main.__dict__)
    except SystemExit as exc:
        status = exc.code
    except BaseException as exc:  # noqa: BLE001 - as the interpreter reports an uncaught exception
        tb = exc.__traceback__
        exc = exc.with_traceback(tb.tb_next if tb is not None else None)  # from the job's own frame
        sys.excepthook(type(exc), exc, exc.__traceback__)
        status = 1
    _exit_as_python(status)


def _exit_as_python(status: object) -> None:
    """The end of ``python3 -c`` as a program sees it: the exit status from SystemExit's code (None 0, an
    int itself, anything else printed on stderr and 1), non-daemon threads joined, atexit handlers run,
    stdio flushed (120 if stdout cannot be), then out.  Without the interpreter's teardown of every
    module and object: in a fork of the warm image that would touch (and copy) every page of it, for
    nothing a job could observe but ``__del__`` methods run at shutdown."""
    if status is None:
        code = 0
    elif isinstance(status, int):
        code = status
    else:
        try:
            print(status, file=sys.stderr)
        except Exception:  # noqa: BLE001
            pass
        code = 1
    threading = sys.modules.get("threading")
    if threading is not None:
        try:
            threading._shutdown()
        except BaseException:  # noqa: BLE001 - as at the interpreter's end: reported, not fatal
            traceback.print_exc()
    atexit._run_exitfuncs()
    for stream, failed in ((sys.stdout, 120), (sys.stderr, None)):
        try:
            if stream is not None:
                stream.flush()
        except BaseException:  # noqa: BLE001
            if failed is not None and code == 0:
                code = failed
    os._exit(code & 0xFF)


if __name__ == "__main__":  # pragma: no cover - the pool starts it through BOOT
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
