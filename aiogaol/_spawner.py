"""The spawner: the jail helper kept running, one per server process, starting jails on request.

A one-shot helper costs every spawn a posix_spawn, an exec of the helper, its start-up and its exit, about
half of a jail's latency, and posix_spawn is the one step that blocks the event loop.  The spawner pays
them once.  The server sends it one message per jail on a SOCK_SEQPACKET socket: the same arguments the
one-shot helper takes, plus the jail's fds as SCM_RIGHTS.  The spawner clones init with CLONE_PARENT, so
init is still the server's own child; the PID record, failures and EOF-on-exec still come back on the
spawn's own error pipe, so ``_jail.launch`` reads both paths the same way.  Sending is a non-blocking
``sendmsg``: nothing on the loop's thread waits for another process.

What a long-lived child must not do to its server, it does not:

* it holds no fd of a jail beyond the request it is handling, and its own stdio is /dev/null, so no pipe
  of the server's is kept open by it;
* it exits when its socket reaches EOF, that is when the server exits or ``shutdown()`` is called;
* it belongs to one process and one identity: after a fork, or after the server changed its uid or gid,
  the next spawn starts a fresh spawner (init must be the caller's child, with the caller's ids);
* it is reaped by the server like any child, never by ``waitpid(-1)``.

Two kinds of spawn still go through the one-shot helper: jails placed in a cgroup (where clone3 lacks
CLONE_INTO_CGROUP the helper moves itself into the cgroup first, which the spawner must never do), and
requests too large for one message (more than ``MAX_MESSAGE`` bytes of arguments, or ``MAX_FDS`` fds).
"""

from __future__ import annotations

import array
import os
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Sequence

from . import _ffi

MAX_MESSAGE = 64 * 1024  # bytes of header, arguments and environment in one request
MAX_FDS = 253  # SCM_MAX_FD: the most fds one message can carry

WaitWritable = Callable[[int], Awaitable[None]]


def _identity() -> tuple[int, tuple[int, int, int], tuple[int, int, int]]:
    return os.getpid(), os.getresuid(), os.getresgid()


class _Spawner:
    def __init__(self) -> None:
        self.identity = _identity()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            self.pid = _ffi.spawn_helper([b"aiogaol-jail", b"--serve", b"%d" % theirs.fileno()], [],
                                         [(null, 0), (null, 1), (null, 2), (theirs.fileno(), theirs.fileno())])
        except BaseException:
            ours.close()
            raise
        finally:
            os.close(null)
            theirs.close()
        ours.setblocking(False)
        self.sock: socket.socket | None = ours

    def fds(self) -> set[int]:
        return {self.sock.fileno()} if self.sock is not None else set()

    def retire(self) -> None:
        """Close our end; the spawner exits once it has handled what is queued.  Reaped by ``_reap``."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None


_lock = threading.Lock()
_current: _Spawner | None = None
_retired: list[_Spawner] = []


def _reap_retired() -> None:
    """Reap spawners that were told to go (never blocks: one still draining its queue waits its turn)."""
    for old in list(_retired):
        try:
            pid, _ = os.waitpid(old.pid, os.WNOHANG)
        except ChildProcessError:
            pid = old.pid  # someone else reaped it (SIGCHLD ignored, or a waitpid(-1) elsewhere)
        if pid:
            _retired.remove(old)


def _drop(spawner: _Spawner) -> None:
    """Close our end; if the spawner is our child, keep it to be reaped once it has exited.  A spawner
    inherited across a fork is our parent's child: closing our copy of its socket is all there is to do."""
    spawner.retire()
    if spawner.identity[0] == os.getpid() and spawner not in _retired:
        _retired.append(spawner)


def _get() -> _Spawner:
    global _current
    cur = _current
    if cur is not None and cur.sock is not None and cur.identity == _identity():
        if _retired:
            with _lock:
                _reap_retired()
        return cur
    with _lock:
        cur = _current
        if cur is not None and (cur.sock is None or cur.identity != _identity()):
            _drop(cur)
            cur = _current = None
        _reap_retired()
        if cur is None:
            cur = _current = _Spawner()
        return cur


def _message(argv: Sequence[bytes], envp: Sequence[bytes], targets: Sequence[int]) -> bytes:
    argblob = b"\0".join(argv) + b"\0"
    envblob = b"\0".join(envp) + b"\0" if envp else b""
    return struct.pack(f"iii{len(targets)}i", len(argv), len(envp), len(targets), *targets) + argblob + envblob


async def submit(argv: Sequence[bytes], envp: Sequence[bytes], fd_map: Sequence[tuple[int, int]],
                 wait_writable: WaitWritable) -> bool:
    """Hand one jail to the spawner; False when the request must take the one-shot helper instead.

    ``fd_map`` holds (fd here, fd in init) pairs, the error pipe first.  Once this returns True the request
    is the spawner's: its answer comes on the error pipe, and an error pipe that reaches EOF without a
    PID record means the spawner died first.
    """
    if len(fd_map) > MAX_FDS:
        return False
    data = _message(argv, envp, [to for _, to in fd_map])
    if len(data) > MAX_MESSAGE:
        return False
    fds = array.array("i", [fd for fd, _ in fd_map])
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]
    restarted = False
    while True:
        spawner = _get()
        sock = spawner.sock
        assert sock is not None
        try:
            sock.sendmsg([data], ancillary, socket.MSG_NOSIGNAL)
            return True
        except BlockingIOError:
            # The spawner is behind by a socket buffer's worth of requests: wait, without blocking the loop.
            await wait_writable(sock.fileno())
        except (BrokenPipeError, ConnectionResetError, ConnectionRefusedError):
            # It died (killed from outside): start another, once per request.
            if restarted:
                raise
            restarted = True
            with _lock:
                spawner.retire()  # _get replaces it and keeps it to be reaped


def owned_fds() -> set[int]:
    """The fds the spawner's connection holds in this process: they stay open on purpose."""
    cur = _current
    return cur.fds() if cur is not None and cur.identity[0] == os.getpid() else set()


def shutdown() -> None:
    """Let this process's spawner go; the next spawn starts a new one.  Never blocks: the spawner exits
    once it has started what was already sent, and is reaped by a later spawn or ``shutdown``."""
    global _current
    with _lock:
        cur = _current
        _current = None
        if cur is not None:
            _drop(cur)
        _reap_retired()


def spawner_pid() -> int | None:
    """The PID of this process's spawner, if one runs (for tests and diagnostics)."""
    cur = _current
    return cur.pid if cur is not None and cur.sock is not None and cur.identity[0] == os.getpid() else None
