"""``Sandbox.spawn``'s face: a program of a sandbox as an ``anyio.abc.Process``.

Its exit and rusage come from the sandbox's agent (the program's parent), and so do its signals, so a
PID reused after its exit is never hit.  The streams are ``spawn``'s own pipe streams.
"""

from __future__ import annotations

import errno
import os
import signal as _signal
import time
from collections.abc import Sequence

import anyio
import anyio.abc

from ._agent import EXITED, Agent, Reply, SandboxClosed, SandboxError
from ._anyio_process import PipeReceiveStream, PipeSendStream
from ._jail import Usage


class SandboxProcess(anyio.abc.Process):
    """A program started by ``Sandbox.spawn``: an ``anyio.abc.Process`` whose PID is the one in the
    sandbox's PID namespace, signalled and reaped through the sandbox's agent (its parent), so a PID
    reused after exit is never hit.  ``usage`` is its own (and its reaped children's) once it exited."""

    def __init__(self, agent: Agent, call_id: int, pid: int, argv: Sequence[object], ours: list[int],
                 started: float) -> None:
        self._agent = agent
        self._call_id = call_id
        self._pid = pid
        self.args = tuple(os.fsdecode(a) for a in argv)  # type: ignore[arg-type]
        self._stdin = PipeSendStream(ours[0]) if ours[0] >= 0 else None
        self._stdout = PipeReceiveStream(ours[1]) if ours[1] >= 0 else None
        self._stderr = PipeReceiveStream(ours[2]) if ours[2] >= 0 else None
        self._started = started
        self._returncode: int | None = None
        self.usage: Usage | None = None
        self._wait_lock = anyio.Lock()

    def __repr__(self) -> str:
        return f"<SandboxProcess {self._pid} returncode={self._returncode}>"

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def stdin(self) -> PipeSendStream | None:
        return self._stdin

    @property
    def stdout(self) -> PipeReceiveStream | None:
        return self._stdout

    @property
    def stderr(self) -> PipeReceiveStream | None:
        return self._stderr

    def _take(self, r: Reply) -> int:
        self._returncode = os.waitstatus_to_exitcode(r.a)
        self.usage = Usage(time.monotonic() - self._started, r.utime + r.stime, r.utime, r.stime, r.maxrss)
        return self._returncode

    @property
    def returncode(self) -> int | None:
        if self._returncode is None and self._call_id in self._agent.live:
            # Read what is there only if no task is parked on the socket: that task is the reader, and a
            # reply taken from under it would leave it waiting for one that already came.
            if not self._agent.reading:
                try:
                    self._agent.drain_nowait()
                except SandboxError:
                    pass
            box = self._agent.mail.get(self._call_id)
            if box:
                r = box.popleft()
                self._agent.forget(self._call_id)
                if r.kind == EXITED and (os.WIFEXITED(r.a) or os.WIFSIGNALED(r.a)):
                    self._take(r)
                else:
                    self._agent.fail(f"its agent sent reply kind {r.kind}, status {r.a:#x} for a running call")
        return self._returncode

    async def wait(self) -> int:
        """The exit code (negative: killed by that signal); ``SandboxClosed`` if the sandbox ended first."""
        async with self._wait_lock:
            if self.returncode is not None:
                return self._returncode  # type: ignore[return-value]
            r = await self._agent.exited(self._call_id)
            return self._take(r)

    def send_signal(self, signal: int) -> None:
        if self.returncode is not None:
            raise ProcessLookupError(errno.ESRCH, "the sandboxed process has already exited")
        self._agent.signal_nowait(self._call_id, int(signal), group=False)

    def terminate(self) -> None:
        self.send_signal(_signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(_signal.SIGKILL)

    async def aclose(self) -> None:
        """Close our ends of its pipes and wait for it; cancelled, it is killed and waited for."""
        for stream in (self._stdin, self._stdout, self._stderr):
            if stream is not None:
                stream.close()
        if self._returncode is not None or self._call_id not in self._agent.live:
            return
        try:
            await self.wait()
        except SandboxClosed:
            pass
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._agent.abandon(self._call_id)
            raise
