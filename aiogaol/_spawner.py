"""The spawner: the jail helper kept running, one per server process (and niceness), starting jails on
request.

A helper started per jail would cost every spawn a posix_spawn, an exec of the helper, its start-up and its
exit, about half of a jail's latency, and posix_spawn is the one step that blocks the event loop.  The
spawner pays them once.  The server sends it one message per jail on a SOCK_SEQPACKET socket: the helper's
arguments and the program's environment, plus the jail's fds as SCM_RIGHTS (a request too large for one
message goes in a memfd).  The spawner clones init with CLONE_PARENT (into the jail's cgroup, when it has
one), so init is the server's own child; the PID record, failures and EOF-on-exec come back on the spawn's
own error pipe.  Sending is a non-blocking ``sendmsg``: nothing on the loop's thread waits for another
process.

After each request the spawner also makes the next default jail's init ahead of time (a *waiting init*,
see aiogaol/_native/spawner.c), which takes the clone into seven namespaces off the next spawn's path.  A waiting init is the
server's child too, so the spawner reports each one on the socket, and this module keeps the books: a
waiting init is handed to a request (and its PID then arrives on that request's error pipe, to be
``claim``-ed), dropped by the spawner (reported, then killed and reaped here), or still waiting when the
spawner is retired (killed and reaped here; a launch that later reads its PID raises instead of touching
it).

What a long-lived child must not do to its server, it does not:

* it holds no fd of a jail beyond the request it is handling, and its own stdio is /dev/null, so no pipe
  of the server's is kept open by it;
* it exits when its socket reaches EOF, that is when the server exits or ``shutdown()`` is called;
* it belongs to one process and one identity: after a fork, or after the server changed its ids, groups,
  capabilities, no_new_privs or seccomp state, the next spawn starts a fresh spawner (init must be the
  caller's child, with the caller's privileges and no more); the umask is sent with each request;
* it, and every init it made ahead of time, is reaped by the server like any child, never by
  ``waitpid(-1)``.

A spawner runs at the niceness of the jails it serves (19 for default jails, see ``Limits.nice``): its
clones and id maps are part of building a jail, and should yield the CPU to the server as the rest of it
does.  An init cannot be less nice than its creator, so a jail that asks for another niceness gets a
spawner of its own niceness, started at its first such spawn.

Every jail is one request to a spawner: a jail placed in a cgroup too (the request carries the cgroup's
directory fd; init is cloned into it), and a request larger than ``MAX_MESSAGE`` bytes (its bytes go in a
memfd sent with it).  What one message cannot carry is more than ``MAX_FDS`` fds: a spawn that would pass
more is refused with ``ProfileError``.
"""

from __future__ import annotations

import array
import errno
import atexit
import os
import re
import resource
import signal
import socket
import struct
import threading
import time

import anyio
from collections.abc import Sequence

from . import _ffi
from ._errors import ProfileError, SandboxSetupError, is_fd_shortage, out_of_fds
from ._limits import DEFAULT_LIMITS

# The spawner's shortcut, switchable for measuring what it is worth (benchmarks/jail_cost.py modes):
# "waiting" (the default) makes the next jail's init ahead of time, with the part every jail shares
# (/proc, /dev) built, once the last jail has ended; "eager" makes it at once after each request; "none"
# makes nothing ahead.  Read when a spawner starts.
AHEAD_MODES = ("waiting", "none", "eager")
AHEAD_ENV = "AIOGAOL_SPAWNER_AHEAD"


def ahead_mode() -> str:
    mode = os.environ.get(AHEAD_ENV, "waiting")
    if mode not in AHEAD_MODES:
        raise ProfileError(f"{AHEAD_ENV}={mode!r}: expected one of {', '.join(AHEAD_MODES)}")
    return mode


MAX_MESSAGE = 64 * 1024  # bytes of header, arguments and environment in one message; more go in a memfd
MAX_FDS = 253  # SCM_MAX_FD: the most fds one message can carry (the memfd of a large request included)
RETIRE_TIMEOUT = 5.0  # seconds a retired spawner gets to finish what is queued and exit
# Seconds a request may go without the spawner's PID record before the spawner counts as stalled (stopped,
# or starved of CPU for that long): it is then killed and replaced.  It answers in well under a millisecond
# when it runs at all.
STALL_TIMEOUT = 10.0

REPORT = struct.Struct("ii")  # kind, pid: the spawner's messages to the server
REPORT_WAITING, REPORT_DISCARDED = 1, 2


# What of the server a spawner freezes when it starts, and so must match the server's now for the spawner to
# serve it: its ids and groups, its capabilities, no_new_privs and seccomp (a server that drops privileges
# after its first spawn must not have its jails made with the old ones).  From /proc/thread-self/status, in
# one read that also gives the umask (which is sent with each request instead).
_IDENTITY_FIELDS = (b"Uid:", b"Gid:", b"Groups:", b"CapInh:", b"CapPrm:", b"CapEff:", b"CapBnd:", b"CapAmb:",
                    b"NoNewPrivs:", b"Seccomp:")
# Their lines, whole, in the file's order; found by one regex scan (this runs on the loop at every spawn).
_IDENTITY_LINES = re.compile(b"^(?:" + b"|".join(re.escape(f) for f in _IDENTITY_FIELDS) + b").*$", re.M)
_UMASK_LINE = re.compile(rb"^Umask:\s*([0-7]+)", re.M)

Identity = tuple[object, ...]


_RLIMITS = sorted({getattr(resource, n) for n in dir(resource) if n.startswith("RLIMIT_")})
_INFINITY = 2**64 - 1  # RLIM_INFINITY as the C side parses it (Python says -1)


def server_rlimits() -> list[tuple[int, int, int]]:
    """The server's rlimits now, as (resource, soft, hard): what a program it started itself would
    inherit, and so what a jail gets where its Limits say nothing."""
    out: list[tuple[int, int, int]] = []
    for res in _RLIMITS:
        soft, hard = resource.getrlimit(res)
        out.append((res, _INFINITY if soft == resource.RLIM_INFINITY else soft,
                    _INFINITY if hard == resource.RLIM_INFINITY else hard))
    return out


def server_state() -> tuple[Identity, int | None]:
    """This thread's identity (with the PID first) and umask (None where /proc does not say)."""
    fields: list[bytes] = []
    umask = None
    try:
        # Read whole, without a file object: this runs on the loop's thread at every spawn.
        fd = os.open("/proc/thread-self/status", os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks = []
            while chunk := os.read(fd, 8192):
                chunks.append(chunk)
        finally:
            os.close(fd)
        status = b"".join(chunks)
        fields = _IDENTITY_LINES.findall(status)
        found = _UMASK_LINE.search(status)
        if found is not None:
            umask = int(found.group(1), 8)
        if not fields:
            raise ValueError("no identity in /proc/thread-self/status")
    except OSError as e:
        if is_fd_shortage(e):
            # Not a change of identity: a fallback identity here would retire a good spawner and start
            # one under the momentary shortage.
            raise out_of_fds(e, "reading /proc/thread-self/status") from e
        fields = [repr((os.getresuid(), os.getresgid(), os.getgroups())).encode()]
    except (ValueError, IndexError):
        fields = [repr((os.getresuid(), os.getresgid(), os.getgroups())).encode()]
    return (os.getpid(), *fields), umask




def pid_in(data: bytes) -> int:
    """The init PID that records read from an error pipe name (0 if none yet)."""
    size = _ffi.RECORD_SIZE
    for i in range(0, len(data) - size + 1, size):
        kind, _, _, value = _ffi.RECORD.unpack_from(data, i)
        if kind == _ffi.RECORD_PID:
            return int(value)
    return 0


_doomed: set[int] = set()  # our own children, SIGKILLed and not reaped yet


def doom(pid: int) -> None:
    """SIGKILL one of our own unreaped children (its PID cannot have been reused) and reap it if it is
    gone already; else it is reaped, never waited for on the loop, at a later spawn or at shutdown."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    with _lock:
        _doomed.add(pid)
        _reap_doomed()


def _reap_doomed(block: bool = False) -> None:
    for pid in sorted(_doomed):
        try:
            done, _ = os.waitpid(pid, 0 if block else os.WNOHANG)
        except InterruptedError:
            continue
        except ChildProcessError:
            done = pid  # reaped elsewhere (SIGCHLD ignored, or a waitpid(-1) in the process)
        if done:
            _doomed.discard(pid)


class _Abandoned:
    """The error pipe of a launch that was cancelled (or gave up) before its spawner said which init it
    made: that init may not exist yet (the request is queued behind a stopped spawner), and it will be our
    child when it does.  Kept, and read without blocking at each later spawn and at shutdown, until it
    names the PID (killed and reaped) or reaches end of file (nothing was made, or it has exited)."""

    def __init__(self, fd: int, data: bytes, spawner: _Spawner | None) -> None:
        self.fd = fd
        self.data = data
        self.spawner = spawner
        self.since = time.monotonic()

    def settle(self) -> bool:
        """True once there is nothing left to wait for (and the fd is closed)."""
        eof = False
        while not pid_in(self.data):
            try:
                chunk = os.read(self.fd, 65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                eof = True
                break
            if not chunk:
                eof = True
                break
            self.data += chunk
        pid = pid_in(self.data)
        if pid and (self.spawner is None or self.spawner.claim(pid)):
            doom(pid)
        if pid or eof:
            os.close(self.fd)
            self.fd = -1
            return True
        return False


_abandoned: list[_Abandoned] = []


def abandon(fd: int, data: bytes, spawner: _Spawner | None) -> None:
    """Take over a launch's error pipe (``fd``, non-blocking, with what was read of it so far): see
    ``_Abandoned``."""
    os.set_blocking(fd, False)
    with _lock:
        _abandoned.append(_Abandoned(fd, data, spawner))


def _settle() -> None:
    """What cancelled launches and killed inits left: taken care of as far as it can be without waiting;
    and a spawner that has left a request unanswered for STALL_TIMEOUT is killed (the next spawn starts
    another)."""
    now = time.monotonic()
    for item in list(_abandoned):
        if item.settle():
            _abandoned.remove(item)
        elif item.spawner is not None and now - item.since > STALL_TIMEOUT:
            stalled(item.spawner)
    _reap_doomed()


def leftovers() -> bool:
    return bool(_abandoned or _doomed)


def settle() -> None:
    """``_settle`` under the lock, for a launch that has just finished."""
    with _lock:
        _settle()


def stalled(spawner: _Spawner) -> None:
    """A spawner that has not answered a request for STALL_TIMEOUT: SIGKILLed (a stopped process dies of
    it too) and marked dead, so the next spawn retires it and starts another; its reports then end, and
    the inits it made are killed and reaped as for any retired spawner, without blocking."""
    with _lock:
        if spawner.dead or spawner.reaped or not spawner.ours():
            return
        spawner.dead = True
        try:
            os.kill(spawner.pid, signal.SIGKILL)  # our unreaped child: its PID cannot have been reused
        except ProcessLookupError:
            pass


class _Spawner:
    def __init__(self, identity: Identity, nice: int) -> None:
        self.identity = identity
        mode = ahead_mode().encode()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        null = -1
        try:
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            self.pid = _ffi.spawn_helper([b"aiogaol-jail", b"--serve", b"%d" % theirs.fileno(), b"%d" % nice, mode], [],
                                         [(null, 0), (null, 1), (null, 2), (theirs.fileno(), theirs.fileno())])
        except BaseException:
            ours.close()
            raise
        finally:
            if null >= 0:
                os.close(null)
            theirs.close()
        ours.setblocking(False)
        # The hard limits it started with (the server's then): a jail cannot be given more.
        self.hard = {res: hard for res, _, hard in server_rlimits()}
        self.sock: socket.socket | None = ours
        self.waiting: set[int] = set()  # reported waiting, neither dropped nor claimed yet
        self.killed: set[int] = set()  # waiting inits killed at retirement: a late PID record is refused
        self.reaped = False
        self.dead = False  # a send found it gone
        self.retiring: socket.socket | None = None  # our end, after EOF was sent, until its reports end

    def ours(self) -> bool:
        """False for a spawner inherited across a fork: it and its inits are our parent's children."""
        return self.identity[0] == os.getpid()

    def fds(self) -> set[int]:
        return {s.fileno() for s in (self.sock, self.retiring) if s is not None}

    def drain(self) -> None:
        """Take in what the spawner reported, without blocking; reap the dropped inits that have died."""
        while self.sock is not None:
            try:
                data = self.sock.recv(64, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if len(data) < REPORT.size:
                break  # EOF
            self._take(data)
        if _doomed:
            with _lock:
                _reap_doomed()

    def _take(self, data: bytes) -> None:
        kind, pid = REPORT.unpack_from(data)
        if kind == REPORT_WAITING:
            self.waiting.add(pid)
        elif kind == REPORT_DISCARDED and pid in self.waiting:
            # Dropped before any request reached it (it exits at EOF on its socket): ours to reap, without
            # waiting on the loop for its namespaces to be torn down (about a millisecond): SIGKILLed
            # now, reaped by the launch that is sending (its settle) or by a later one.
            self.waiting.discard(pid)
            doom(pid)

    def claim(self, pid: int) -> bool:
        """A PID record from this spawner's request: True if the launch owns the init now; False if it
        was a waiting init killed when the spawner was retired (already reaped: not to be touched)."""
        with _lock:
            self.drain()
            self.waiting.discard(pid)
            return pid not in self.killed

    def retire(self, *, ours: bool, wait: float) -> None:
        """Let it go, waiting at most ``wait`` seconds for it to finish (0 on the event loop's thread: the
        rest is done at a later spawn).  ``ours`` is False for a spawner inherited across a fork: it and its
        inits are our parent's children, and closing our copy of the socket is all there is to do."""
        sock, self.sock = self.sock, None
        if sock is None:
            return
        if not ours:
            sock.close()
            return
        # EOF to the spawner: it handles what is queued, then exits and its socket reaches EOF here. Only
        # then is the list of inits it made complete, and none of them can be handed to a request any more.
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.retiring = sock
        self.finish_retiring(wait)

    def finish_retiring(self, wait: float) -> bool:
        """Read the retired spawner's reports to the end, waiting at most ``wait`` seconds; then kill and
        reap the inits it made that no launch has claimed, and reap it.  True once done.  A stopped or
        wedged spawner may still hand its inits out, so none is touched before the end: the rest is done by
        a later call (``_reap_retired``, at the next spawn), without blocking."""
        sock = self.retiring
        if sock is None:
            return True
        deadline = time.monotonic() + wait
        finished = False
        while True:
            left = deadline - time.monotonic()
            sock.settimeout(max(left, 0.0))
            try:
                data = sock.recv(64)
            except (socket.timeout, BlockingIOError):
                break
            except (InterruptedError, ConnectionResetError):
                # ECONNRESET: the spawner died with requests still queued for it.  Said once, and not the
                # end: an init it made ahead of time may still report itself on its copy of the socket.
                continue
            except OSError:
                finished = True
                break
            if len(data) < REPORT.size:
                finished = True
                break
            self._take(data)
        if not finished:
            return False
        sock.close()
        self.retiring = None
        for pid in sorted(self.waiting):
            doom(pid)
            self.killed.add(pid)
        self.waiting.clear()
        self.reap(block=wait > 0)  # its reports ended: it is exiting (or gone)
        return True

    def reap(self, *, block: bool) -> bool:
        if self.reaped:
            return True
        try:
            pid, _ = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            pid = self.pid  # someone else reaped it (SIGCHLD ignored, or a waitpid(-1) elsewhere)
        self.reaped = pid != 0
        return self.reaped


_lock = threading.RLock()
_spawners: dict[int, _Spawner] = {}  # by niceness: each serves the jails that run at its own
_at_exit_registered = False


def _after_fork_in_child() -> None:
    """A fresh lock in a forked child: another thread of the parent may have held it at the fork, and
    would never release it here (what CPython's own modules do for their locks).  What cancelled launches
    left is the parent's to reap: the child drops it (closing its copies of the pipes)."""
    global _lock
    _lock = threading.RLock()
    for item in _abandoned:
        try:
            os.close(item.fd)
        except OSError:
            pass
    _abandoned.clear()
    _doomed.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_at_exit() -> None:
    """At interpreter exit: close our end (the spawner and its waiting init exit at EOF; the process that
    reaps them is the one exiting), rather than leave the socket to the garbage collector's warning."""
    for cur in list(_spawners.values()):
        if cur.sock is not None:
            cur.sock.close()
            cur.sock = None


_retired: list[_Spawner] = []  # retired but not yet reaped (a spawner that did not exit in time)


def _reap_retired() -> None:
    for old in list(_retired):
        if old.finish_retiring(0.0) and old.reap(block=False):
            _retired.remove(old)


def _drop(spawner: _Spawner, wait: float = 0.0) -> None:
    ours = spawner.ours()
    spawner.retire(ours=ours, wait=wait)
    if ours and (not spawner.reaped or spawner.retiring is not None) and spawner not in _retired:
        _retired.append(spawner)


def _get(ident: Identity, nice: int, rlimits: Sequence[tuple[int, int, int]] = ()) -> _Spawner:
    """This server's spawner for jails at niceness ``nice``, started or replaced as needed (``ident`` from
    ``server_state``).  A change of identity retires every spawner, not only this one: none may go on
    holding privileges the server gave up."""
    global _at_exit_registered
    if _abandoned or _doomed:
        with _lock:
            _settle()
    cur = _spawners.get(nice)
    if cur is not None and not cur.dead and cur.ours() and cur.reap(block=False):
        # It died (killed from outside) and is a zombie: a request sent now could still be accepted by
        # its socket (an init it was making ahead of time holds a copy) and never be answered.
        with _lock:
            cur.dead = True
    if cur is not None and any(hard > cur.hard.get(res, hard) for res, _, hard in rlimits):
        # The server raised a hard limit since (a privileged one can): the jails of this spawner could
        # not get it.  Lowered limits keep the spawner; each jail is given the server's of its spawn.
        with _lock:
            cur.dead = True
    if cur is not None and cur.sock is not None and not cur.dead and cur.identity == ident:
        if _retired:
            with _lock:
                _reap_retired()
        return cur
    with _lock:
        for key, old in list(_spawners.items()):
            if old.sock is None or old.dead or old.identity != ident:
                _drop(old)
                del _spawners[key]
        _reap_retired()
        cur = _spawners.get(nice)
        if cur is None:
            cur = _spawners[nice] = _Spawner(ident, nice)
            if not _at_exit_registered:
                atexit.register(_close_at_exit)
                _at_exit_registered = True
        return cur


def _message(argv: Sequence[bytes], envp: Sequence[bytes], targets: Sequence[int]) -> bytes:
    argblob = b"\0".join(argv) + b"\0"
    envblob = b"\0".join(envp) + b"\0" if envp else b""
    return struct.pack(f"iii{len(targets)}i", len(argv), len(envp), len(targets), *targets) + argblob + envblob


async def submit(argv: Sequence[bytes], envp: Sequence[bytes], fd_map: Sequence[tuple[int, int]],
                 identity: Identity, nice: int, rlimits: Sequence[tuple[int, int, int]] = ()) -> _Spawner:
    """Hand one jail to the spawner, and return it (to ``claim`` the PID it answers with).

    ``identity`` is the caller's, from ``server_state()``; ``nice`` the niceness the jail runs at, which
    picks the spawner (see ``jail_niceness``); ``rlimits`` the server's own now, (resource, soft, hard),
    whose hard limits the spawner must have at least (see ``_Spawner.hard``).  ``fd_map`` holds (fd here, fd in init) pairs,
    the error pipe first.  Once this returns a spawner the request is the spawner's: its answer comes on
    the error pipe, and an error pipe that reaches EOF without a PID record means the spawner died first.
    """
    if len(fd_map) + 1 > MAX_FDS:
        raise ProfileError(f"a jail can be given at most {MAX_FDS - 1} fds, pass_fds, stdio and its own counted "
                           f"({len(fd_map)} here, one message's worth): pass fewer pass_fds")
    data = _message(argv, envp, [to for _, to in fd_map])
    fds = array.array("i", [fd for fd, _ in fd_map])
    memfd = -1
    try:
        if len(data) > MAX_MESSAGE:
            # Too large for one message: the request's bytes in a memfd, sent last, behind a short message
            # saying so (argc 0, envc 0, the fd count; see recv_request in aiogaol/_native/wire.c).
            memfd = os.memfd_create("aiogaol-request", os.MFD_CLOEXEC)
            view = memoryview(data)
            while view:
                view = view[os.write(memfd, view):]
            data = struct.pack("iii", 0, 0, len(fd_map))
            fds.append(memfd)
        return await _send(data, fds, identity, nice, rlimits)
    finally:
        if memfd >= 0:
            os.close(memfd)  # the spawner has its own copy once sent


async def _send(data: bytes, fds: array.array[int], identity: Identity, nice: int,
                rlimits: Sequence[tuple[int, int, int]]) -> _Spawner:
    """Send one request to the spawner for this identity and niceness, starting one if need be."""
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]
    restarted = False
    while True:
        spawner = _get(identity, nice, rlimits)
        # Under the lock: another thread may retire this spawner (and close its socket) at any moment,
        # and the books on waiting inits are kept under it too.
        with _lock:
            sock = spawner.sock
            if sock is None or spawner.dead:
                continue  # retired meanwhile: _get starts or finds the next one
            spawner.drain()
            try:
                sock.sendmsg([data], ancillary, socket.MSG_NOSIGNAL)
                return spawner
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError, ConnectionRefusedError) as e:
                # It died (killed from outside): start another, once per request.
                if restarted:
                    raise SandboxSetupError("start helper", e.errno or errno.EPIPE,
                                            "the spawner died, and the one started after it died too") from e
                restarted = True
                spawner.dead = True  # _get retires it (its inits are killed and reaped)
                continue
        # The spawner is a socket buffer's worth of requests behind (rare: it takes one in well under a
        # millisecond).  Poll rather than wait for the fd to turn writable: the socket may be closed by a
        # retirement meanwhile, and an event loop waiting on a closed fd waits for ever.
        await anyio.sleep(0.001)


def owned_fds() -> set[int]:
    """The fds the spawner's connection holds in this process (and a retired one's, until it has
    finished): they stay open on purpose."""
    return {fd for sp in [*_spawners.values(), *_retired] if sp.ours() for fd in sp.fds()}


def shutdown() -> None:
    """Let this process's spawners go, with the inits they made ahead of time (killed and reaped); the
    next spawn starts a new one.  For a server that wants no idle helper process while it spawns nothing,
    or tests.  Blocks while each spawner finishes the requests already sent (at most RETIRE_TIMEOUT
    seconds; a spawner that does not answer by then is finished at a later spawn).  Public as
    ``aiogaol.shutdown_spawner``."""
    with _lock:
        for key, cur in list(_spawners.items()):
            del _spawners[key]
            _drop(cur, RETIRE_TIMEOUT)
        _reap_retired()
        # What cancelled launches left: their inits (killed, dying) are waited for here, their pipes for
        # as long as a retirement is.
        deadline = time.monotonic() + RETIRE_TIMEOUT
        while True:
            _settle()
            if not _abandoned or time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        _reap_retired()
        _reap_doomed(block=True)


def jail_niceness(nice: int | None) -> int:
    """The niceness a jail asking for ``nice`` (``Limits.nice``) runs at: never below the calling
    thread's own, which an unprivileged init could not go under."""
    now = os.getpriority(os.PRIO_PROCESS, 0)
    return now if nice is None else max(nice, now)


def spawner_pid(nice: int | None = None) -> int | None:
    """The PID of this process's spawner for jails at ``nice`` (by default, for default jails), if one
    runs (for tests and diagnostics)."""
    cur = _spawners.get(jail_niceness(DEFAULT_LIMITS.nice) if nice is None else nice)
    if cur is None or cur.sock is None or cur.dead or not cur.ours():
        return None
    return cur.pid


def waiting_pids() -> set[int]:
    """The inits this process's spawners made ahead of time, as far as reported (for tests)."""
    with _lock:
        out: set[int] = set()
        for cur in _spawners.values():
            if cur.ours():
                cur.drain()
                out |= cur.waiting
        return out
