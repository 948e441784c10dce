"""``Sandbox.run_code``'s server side: the results of a cell, and the kernel process that runs them.

The kernel itself (the program run in the sandbox) is ``_kernel_cell.SOURCE``.  Here is its other end:
our ends of its pipes (the cell's stdout and stderr, requests, replies), a cell sent and its reply read
under a deadline and an output cap, SIGINT through the agent past it, and the kernel killed (its state
lost) when the cell does not stop.  Replies are untrusted input: capped in size, parsed as JSON, checked
field by field.
"""

from __future__ import annotations

import json
import math
import os
import signal as _signal
import struct
import time
from dataclasses import dataclass
from typing import Any

import anyio

from ._agent import Agent, SandboxClosed, SandboxError
from ._agent import close_fds as _close_fds

INTERRUPT_GRACE = 1.0  # seconds a cell has to stop after SIGINT before its kernel is killed
_KERNEL_REPLY_MAX = 1 << 20  # the kernel caps its value and texts at 64 KiB each
_KERNEL_HDR = struct.Struct(">I")
_READ_SIZE = 65536


@dataclass(frozen=True)
class CodeError:
    """What a cell raised: the exception's type name, its message, and the formatted traceback (the
    cell's own frames only)."""

    type: str
    message: str
    traceback: str


@dataclass(frozen=True)
class CodeResult:
    """One cell's outcome.  ``status`` is "ok", "error" (the cell raised; see ``error``; the kernel lives
    on), "timed-out" or "output-limit".  ``value`` is the repr of the cell's final expression (None when
    it has none, or it is None).  ``state_lost`` says the kernel had to be killed (it did not stop at
    SIGINT, or it died), so the next cell starts in a fresh one."""

    status: str
    stdout: str
    stderr: str
    value: str | None
    error: CodeError | None
    state_lost: bool = False
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    wall_time: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"



class Kernel:
    """The sandbox's Python kernel: its call, and our ends of its pipes (stdout, stderr, requests,
    replies)."""

    def __init__(self, agent: Agent, call_id: int, pid: int, out_r: int, err_r: int, req_w: int, rep_r: int) -> None:
        self.agent = agent
        self.dead = False  # killed (or died): the next cell needs a new kernel
        self.call_id = call_id
        self.pid = pid
        self.fds = [out_r, err_r, req_w, rep_r]
        self.pending = b""

    def close(self) -> None:
        """Our ends go; a cell's task still parked on one of them (the sandbox closed under it) is woken."""
        self.dead = True
        _close_fds(self.fds, notify=True)

    async def _write(self, data: bytes) -> None:
        fd = self.fds[2]
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                await anyio.wait_writable(fd)

    async def _read_reply(self) -> dict[str, Any] | None:
        """The kernel's reply to the cell, or None at EOF (the kernel died)."""
        fd = self.fds[3]
        while True:
            if len(self.pending) >= _KERNEL_HDR.size:
                (size,) = _KERNEL_HDR.unpack_from(self.pending)
                if size > _KERNEL_REPLY_MAX:
                    raise _KernelBroken(f"the kernel sent a reply of {size} bytes")
                if len(self.pending) >= _KERNEL_HDR.size + size:
                    data = self.pending[_KERNEL_HDR.size:_KERNEL_HDR.size + size]
                    self.pending = self.pending[_KERNEL_HDR.size + size:]
                    try:
                        reply = json.loads(data)
                    except (ValueError, RecursionError):
                        raise _KernelBroken("the kernel sent a reply that is not JSON") from None
                    if not isinstance(reply, dict):
                        raise _KernelBroken("the kernel sent a reply that is not an object")
                    return reply
            try:
                chunk = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                await anyio.wait_readable(fd)
                continue
            if not chunk:
                return None
            self.pending += chunk

    async def cell(self, request: bytes, timeout: float | None, cap: int | None) -> CodeResult:
        agent = self.agent
        started = time.monotonic()
        outputs = [bytearray(), bytearray()]
        capped = [False, False]
        stop = anyio.CancelScope(deadline=anyio.current_time() + timeout if timeout is not None else math.inf)
        reply: dict[str, Any] | None = None
        died = False
        why = "timed-out"
        done = False

        def take(i: int, chunk: bytes) -> None:
            nonlocal why
            buf = outputs[i]
            if capped[i]:
                return
            if cap is not None and len(buf) + len(chunk) > cap:
                buf += chunk[:cap - len(buf)]
                capped[i] = True
                why = "output-limit"
                stop.cancel()
                return
            buf += chunk

        async def pump(i: int) -> None:
            fd = self.fds[i]
            while True:
                try:
                    chunk = os.read(fd, _READ_SIZE)
                except BlockingIOError:
                    try:
                        await anyio.wait_readable(fd)
                    except anyio.ClosedResourceError:
                        return  # the sandbox was closed under the cell
                    continue
                except OSError:
                    return
                if not chunk:
                    await anyio.sleep_forever()
                take(i, chunk)

        def drain() -> None:
            if not self.fds:
                return  # closed under the cell (the sandbox ended): nothing is ours to read any more
            for i in (0, 1):
                while True:
                    try:
                        chunk = os.read(self.fds[i], _READ_SIZE)
                    except (BlockingIOError, OSError):
                        break
                    if not chunk:
                        break
                    take(i, chunk)

        state_lost = False
        interrupted = False
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(pump, 0)
                tg.start_soon(pump, 1)
                try:
                    agent.busy_nowait(self.call_id, True)  # a running cell is not idle
                    await self._write(_KERNEL_HDR.pack(len(request)) + request)
                    with stop:
                        reply = await self._read_reply()
                        died = reply is None
                    interrupted = reply is None and not died
                    if interrupted:
                        # Past the timeout or the output cap: interrupt the cell, then kill the kernel.
                        agent.signal_nowait(self.call_id, _signal.SIGINT)
                        with anyio.move_on_after(INTERRUPT_GRACE):
                            reply = await self._read_reply()
                            died = reply is None
                        if reply is None:
                            state_lost = True
                except (BrokenPipeError, ConnectionResetError, anyio.ClosedResourceError, OSError):
                    died = True
                except _KernelBroken:
                    state_lost = True
                    reply = None
                drain()
                tg.cancel_scope.cancel()
            done = True
        finally:
            if not done or state_lost or died:
                state_lost = True
                await self._end()
            else:
                agent.busy_nowait(self.call_id, False)
        if (died or reply is None) and agent.ended is not None:
            raise SandboxClosed(agent.ended)  # the sandbox ended under the cell, as exec reports it
        wall = time.monotonic() - started
        out = outputs[0].decode(errors="replace")
        err = outputs[1].decode(errors="replace")
        if died:
            return CodeResult("error", out, err, None, CodeError("KernelDied", "the kernel exited during the cell",
                                                                 ""), True, capped[0], capped[1], wall)
        if reply is None:
            return CodeResult(why, out, err, None, None, state_lost, capped[0], capped[1], wall)
        status = reply.get("status")
        error = _code_error(reply.get("error"))
        value = reply.get("value")
        if not isinstance(value, str):
            value = None
        if interrupted:
            return CodeResult(why, out, err, None, error, False, capped[0], capped[1], wall)
        if status == "ok":
            return CodeResult("ok", out, err, value, None, False, capped[0], capped[1], wall)
        if status == "error":
            return CodeResult("error", out, err, None, error, False, capped[0], capped[1], wall)
        # "interrupted" without our SIGINT: the cell raised KeyboardInterrupt itself.
        return CodeResult("error", out, err, None, error, False, capped[0], capped[1], wall)

    async def _end(self) -> None:
        """Kill the kernel and wait for it (shielded); the next cell starts a new one."""
        agent = self.agent
        self.dead = True
        with anyio.CancelScope(shield=True):
            try:
                if self.call_id in agent.live and agent.ended is None:
                    await agent.kill(self.call_id)
            except SandboxError:
                pass
        agent.forget(self.call_id)
        self.close()


class _KernelBroken(Exception):
    pass


def _code_error(data: object) -> CodeError | None:
    if not isinstance(data, dict):
        return None
    fields = [data.get(k) for k in ("type", "message", "traceback")]
    return CodeError(*(f if isinstance(f, str) else "" for f in fields))


