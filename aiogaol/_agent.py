"""The server's end of a sandbox's agent (``aiogaol/_native/agent.c``): its wire, its link, its errors.

The wire (``agent.h``): request and reply layouts as ``struct`` formats in native byte order (the agent
and the server are one machine), the numbers of ops, reply kinds and failure stages, and the spawn of a
sandbox's jail (a plain spawn plus ``--agent``).  ``Agent`` is the link: it sends a call's request with its
fds, and reads the replies for every call, by whichever call is waiting (one task at a time reads the
socket, putting each reply in its call's mailbox and waking the task that waits for it), so no background
task is needed and the same code runs under asyncio and trio.  Everything the agent says is untrusted:
replies are checked for size, kind and sense, answers are awaited with a deadline (``AGENT_TIMEOUT``), and
an agent that misbehaves ends the sandbox (its init is killed) with a named ``SandboxError``.
"""

from __future__ import annotations

import array
import collections
import errno
import itertools
import os
import signal as _signal
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from ._errors import AiogaolError, ProfileError, SandboxSetupError, setup_error
from ._jail import RunningJail
from ._spawnargs import SpawnArgs

# The agent answers a request at once when it runs at all: one that has not for this long is stopped
# (a program of the sandbox can SIGSTOP it) or starved, and the sandbox is ended rather than waited for.
AGENT_TIMEOUT = 10.0

MAX_MSG = 65536  # the agent's receive buffer: a request is at most this long
REQ = struct.Struct("=II")  # op, id
EXEC = struct.Struct("=IIIIiI")  # flags, n_rlimits, argc, envc, umask, pad
RLIM = struct.Struct("=iiQQ")
FILE = struct.Struct("=IIQ")  # mode, pad, max bytes
SIG = struct.Struct("=IiI")  # call id, signal, group
BUSY = struct.Struct("=II")  # call id, busy
REPLY = struct.Struct("=IIiiQQQ")  # kind, id, a, b, utime ns, stime ns, maxrss bytes
OP_EXEC, OP_SIGNAL, OP_WRITE, OP_READ, OP_BUSY = 1, 2, 3, 4, 5
STARTED, FAILED, EXITED, ACK, IDLE = 1, 2, 3, 4, 5
BACKGROUND = 1
STAGES = {1: "sandbox request", 2: "fork program", 3: "setsid", 4: "setrlimit", 5: "place fds", 6: "chdir",
           7: "exec", 8: "exec (program found, its ELF interpreter or script interpreter is not in the jail)"}



class SandboxError(AiogaolError, RuntimeError):
    """The sandbox cannot serve this call: its agent misbehaved, stopped answering or died, so the
    sandbox was ended; the message says what happened."""


class SandboxClosed(SandboxError):
    """The sandbox has ended (``aclose``, its ``idle_timeout`` or its ``lifetime``, or an earlier
    failure); the message says which."""


@dataclass(frozen=True)
class Reply:
    """One reply of the agent, decoded (times in seconds)."""

    kind: int
    id: int
    a: int
    b: int
    utime: float
    stime: float
    maxrss: int


@dataclass(frozen=True)
class SandboxSpawn(SpawnArgs):
    """The spawn of a sandbox's jail: a plain spawn's arguments plus the agent's own."""

    agent_args: tuple[str, ...] = ()

    def helper_argv(self, err_fd: int, lifeline_fd: int, seccomp_fd: int | None = None, cgroup: Any = None,
                    umask: int | None = None, inherited_rlimits: Sequence[tuple[int, int, int]] = ()) -> list[bytes]:
        argv = super().helper_argv(err_fd, lifeline_fd, seccomp_fd, cgroup, umask, inherited_rlimits)
        return argv[:1] + [os.fsencode(a) for a in self.agent_args] + argv[1:]


def close_fds(fds: list[int], notify: bool = False) -> None:
    """Close each fd of the list (-1s skipped) and empty it.  With ``notify``, a task of ours parked on one
    of them is woken first (``anyio.notify_closing``), as an fd closed under a waiter must never be."""
    for fd in fds:
        if fd >= 0:
            if notify:
                try:
                    anyio.notify_closing(fd)
                except RuntimeError:
                    pass  # not in an async context: nobody can be waiting
            try:
                os.close(fd)
            except OSError:
                pass
    fds.clear()


class Agent:
    """The server's link to one sandbox's agent: its socket, the calls in flight and their mailboxes, and
    why the sandbox ended (``ended``), once it has."""

    def __init__(self, jail: RunningJail, sock: socket.socket, idle_timeout: float | None,
                 lifetime: float | None, opened: float) -> None:
        self.jail: RunningJail | None = jail  # killed when the agent cannot be trusted; None once released
        self.sock: socket.socket | None = sock
        self.idle_timeout = idle_timeout
        self.lifetime = lifetime
        self.opened = opened  # time.monotonic() before the jail was asked for: init's lifetime starts later
        self.ids = itertools.count(1)
        self.live: set[int] = set()
        self.mail: dict[int, collections.deque[Reply]] = {}
        self.reading = False  # a task is parked on the socket, reading for everyone (see reply)
        self.events: dict[int, anyio.Event] = {}
        self.send_lock = anyio.Lock()
        self.ended: str | None = None
        self.idle_seen = False

    def close_socket(self) -> None:
        """Our end goes (the agent reads EOF and exits); a task parked on it is woken first."""
        sock, self.sock = self.sock, None
        self.wake_all()  # the waiters see the end
        if sock is None:
            return
        try:
            anyio.notify_closing(sock)
        except RuntimeError:
            pass
        sock.close()

    def fail(self, why: str) -> SandboxError:
        """The agent cannot be trusted any more: end the sandbox now, and say why."""
        if self.ended is None:
            self.ended = f"the sandbox was ended: {why}"
        if self.jail is not None:
            self.jail.kill_quietly()
        self.close_socket()
        return SandboxError(self.ended)

    def why_ended(self) -> str:
        """What to tell a caller of an ended sandbox: the first reason recorded, else the likeliest."""
        if self.ended is not None:
            return self.ended
        if self.idle_seen:
            return f"the sandbox ended after {self.idle_timeout:g} s idle (idle_timeout)"
        if self.lifetime is not None and time.monotonic() - self.opened >= self.lifetime - 0.05:
            return f"the sandbox's lifetime of {self.lifetime:g} s ended"
        return "the sandbox's agent exited (was it killed by a program of the sandbox?)"

    def ended_now(self) -> SandboxClosed:
        """The agent's socket reached EOF: the jail has ended (or is ending) by itself."""
        sock = self.sock
        while sock is not None and not self.idle_seen:  # its last words: was it idle?
            try:
                data = sock.recv(REPLY.size + 1, socket.MSG_DONTWAIT)
            except OSError:
                break
            if len(data) != REPLY.size:
                break
            self.idle_seen = REPLY.unpack(data)[0] == IDLE
        self.ended = self.why_ended()
        self.close_socket()
        return SandboxClosed(self.ended)

    def check_open(self) -> socket.socket:
        """The socket, or ``SandboxClosed`` saying why there is none."""
        if self.ended is not None or self.sock is None:
            raise SandboxClosed(self.ended or "the sandbox is closed")
        return self.sock

    async def send(self, op: int, body: bytes, fds: Sequence[int] = ()) -> int:
        """One request with its fds (SCM_RIGHTS, copied into the agent by the kernel); its call id."""
        if len(body) + REQ.size > MAX_MSG:
            raise ProfileError(f"this call's request is {len(body) + REQ.size} bytes; a sandbox takes at most "
                               f"{MAX_MSG} (arguments, environment and path together)")
        call_id = next(self.ids)
        msg = REQ.pack(op, call_id) + body
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        async with self.send_lock:
            while True:
                sock = self.check_open()
                try:
                    sock.sendmsg([msg], anc)
                    break
                except BlockingIOError:
                    await anyio.wait_writable(sock)
                except anyio.ClosedResourceError:
                    raise SandboxClosed(self.why_ended()) from None
                except OSError as e:
                    if e.errno in (errno.EPIPE, errno.ECONNRESET, errno.EBADF):
                        raise self.ended_now() from None
                    raise
        return call_id

    def signal_nowait(self, call_id: int, sig: int, group: bool = True) -> None:
        """Fire and forget (its ACK is dropped): used where a call must be stopped now, cancelled or not."""
        sock = self.sock
        if sock is None:
            return
        try:
            sock.send(REQ.pack(OP_SIGNAL, next(self.ids)) + SIG.pack(call_id, sig, 1 if group else 0))
        except OSError:
            pass  # a full socket or a dead agent: the wait that follows finds out

    def busy_nowait(self, call_id: int, busy: bool) -> None:
        """A background call (the code kernel) counts as running, for the idle timeout, while ``busy``."""
        sock = self.sock
        if sock is None:
            return
        try:
            sock.send(REQ.pack(OP_BUSY, next(self.ids)) + BUSY.pack(call_id, 1 if busy else 0))
        except OSError:
            pass  # a dead agent: the cell finds out

    def drain_nowait(self) -> None:
        """Read every reply already there and put it in its call's mailbox."""
        sock = self.sock
        while sock is not None:
            try:
                data = sock.recv(REPLY.size + 1)
            except BlockingIOError:
                return
            except OSError:
                raise self.ended_now() from None
            if not data:
                raise self.ended_now()
            if len(data) != REPLY.size:
                raise self.fail(f"its agent sent a malformed reply ({len(data)} bytes)")
            kind, call_id, a, b, utime, stime, maxrss = REPLY.unpack(data)
            if kind == IDLE:
                self.idle_seen = True
                continue
            if kind not in (STARTED, FAILED, EXITED, ACK):
                raise self.fail(f"its agent sent a reply of unknown kind {kind}")
            if call_id in self.live:
                self.mail.setdefault(call_id, collections.deque()).append(
                    Reply(kind, call_id, a, b, utime / 1e9, stime / 1e9, maxrss))
                self.wake(call_id)
            sock = self.sock

    async def reply(self, call_id: int) -> Reply:
        """The next reply for a call: from its mailbox, or, if no other task is reading the socket, read
        until it comes.  One reader at a time (two waiters on one fd are an error in anyio); the others
        wait on an event of their own, set when a reply lands in their mailbox or when the reader leaves
        (then one of them takes over)."""
        while True:
            box = self.mail.get(call_id)
            if box:
                return box.popleft()
            if self.ended is not None:
                raise SandboxClosed(self.ended)
            if self.reading:
                event = self.events.get(call_id)
                if event is None:
                    event = self.events[call_id] = anyio.Event()
                await event.wait()
                continue
            self.reading = True
            try:
                self.drain_nowait()
                if self.mail.get(call_id):
                    continue
                sock = self.check_open()
                try:
                    await anyio.wait_readable(sock)
                except (anyio.ClosedResourceError, OSError):
                    raise SandboxClosed(self.why_ended()) from None
                self.drain_nowait()
            finally:
                self.reading = False
                self.wake_all()

    def wake(self, call_id: int) -> None:
        event = self.events.pop(call_id, None)
        if event is not None:
            event.set()

    def wake_all(self) -> None:
        events, self.events = self.events, {}
        for event in events.values():
            event.set()

    async def reply_within(self, call_id: int, seconds: float, what: str) -> Reply:
        with anyio.move_on_after(seconds):
            return await self.reply(call_id)
        raise self.fail(f"its agent did not answer {what} within {seconds:g} s (stopped by a program?)")

    async def start(self, op: int, body: bytes, fds: Sequence[int], what: Mapping[int, str] = {}) -> tuple[int, int]:
        """Send a call and wait for it to start: (call id, PID in the sandbox)."""
        call_id = await self.send(op, body, fds)
        self.live.add(call_id)
        try:
            r = await self.reply_within(call_id, AGENT_TIMEOUT, "a request")
        except BaseException as exc:
            if not isinstance(exc, SandboxError):
                # Cancelled while the agent starts it: learn whether it started, and if so end it, so
                # nothing of a cancelled call lives on.
                with anyio.CancelScope(shield=True):
                    try:
                        late = await self.reply_within(call_id, AGENT_TIMEOUT, "a request")
                        if late.kind == STARTED:
                            await self.kill(call_id)
                    except SandboxError:
                        pass
            self.forget(call_id)
            raise
        if r.kind == STARTED:
            return call_id, r.a
        self.forget(call_id)
        if r.kind != FAILED:
            raise self.fail(f"its agent answered a request with reply kind {r.kind}")
        stage = STAGES.get(r.b, f"stage {r.b}")
        if r.b == 1 and r.a == errno.EAGAIN:
            raise SandboxSetupError(stage, r.a, "the sandbox runs 1024 calls already")
        raise setup_error(stage, r.a if 0 < r.a < 4096 else errno.EIO, what.get(r.b, ""))

    def forget(self, call_id: int) -> None:
        self.live.discard(call_id)
        self.mail.pop(call_id, None)

    async def exited(self, call_id: int) -> Reply:
        r = await self.reply(call_id)
        if r.kind != EXITED:
            raise self.fail(f"its agent sent reply kind {r.kind} for a running call")
        self.forget(call_id)
        if not (os.WIFEXITED(r.a) or os.WIFSIGNALED(r.a)):
            raise self.fail(f"its agent reported the impossible wait status {r.a:#x}")
        return r

    async def stop(self, call_id: int, grace: float) -> Reply:
        """SIGTERM the call's process group, then after ``grace`` SIGKILL; its exit, or the sandbox ends."""
        self.signal_nowait(call_id, _signal.SIGTERM)
        with anyio.move_on_after(grace):
            return await self.exited(call_id)
        return await self.kill(call_id)

    async def kill(self, call_id: int) -> Reply:
        self.signal_nowait(call_id, _signal.SIGKILL)
        with anyio.move_on_after(AGENT_TIMEOUT):
            return await self.exited(call_id)
        raise self.fail("a killed call was not reported dead within "
                         f"{AGENT_TIMEOUT:g} s (its agent is stopped?)")

    async def abandon(self, call_id: int) -> None:
        """A call left early (cancelled, or an error): kill it and wait for it, shielded, so nothing of it
        lives on; a sandbox that cannot confirm that is ended."""
        if call_id not in self.live or self.ended is not None:
            self.forget(call_id)
            return
        with anyio.CancelScope(shield=True):
            try:
                await self.kill(call_id)
            except SandboxError:
                pass
        self.forget(call_id)
