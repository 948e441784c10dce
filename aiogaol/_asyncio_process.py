"""The asyncio face: ``create_sandboxed_subprocess``, a mirror of ``asyncio.create_subprocess_exec``.

The process object has the members of ``asyncio.subprocess.Process`` with the same streams
(``StreamWriter``/``StreamReader``), but waits on the jail's pidfd with ``loop.add_reader``: no child
watcher, no thread, no SIGCHLD handler, and ``wait()`` returns when the process exits, not when its pipes
close.  Signals go through the pidfd, so a reused PID is never hit.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from typing import Any

from . import _pacing, _stdio
from ._face import JailFace
from ._jail import RunningJail, launch
from ._profile import Profile
from ._spawnargs import SpawnArgs, check_popen_kwargs

_DEFAULT_LIMIT = 2**16


async def _wait_readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


class SandboxedProcess(JailFace):
    """A jailed program, with ``asyncio.subprocess.Process``'s members plus ``usage`` and ``async with``."""

    _never = "waited for"

    def __init__(self, jail: RunningJail, loop: asyncio.AbstractEventLoop, args: SpawnArgs) -> None:
        JailFace.__init__(self, jail, args)
        self._loop = loop
        # Resolved when init's pidfd turns readable (while it is pending, a reader watches the pidfd).
        self._exit: asyncio.Future[None] | None = None
        self._watched: int | None = None
        self._transports: list[asyncio.BaseTransport] = []
        self.stdin: asyncio.StreamWriter | None = None
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None

    def _poll(self) -> bool:
        if self._jail.returncode is not None:
            return True
        if self._jail.try_reap():
            self._stop_watching()
            return True
        return False

    async def wait(self) -> int:
        """Wait for the program to exit and return its returncode (``-N`` if killed by signal N)."""
        while self._jail.returncode is None:
            # Reaping is paced like spawning: sixty-four jails that exit together are reaped over a few
            # loop iterations, not in one (see _pacing).
            async with _pacing.paced():
                if self._poll():
                    break
            if self._exit is None or self._exit.done():
                self._exit = self._loop.create_future()
                assert self._jail.pidfd is not None
                self._watched = self._jail.pidfd
                self._loop.add_reader(self._watched, self._on_pidfd)
            # Shielded: cancelling one waiter must not cancel the shared exit future (asyncio semantics:
            # a cancelled wait() leaves the process running).
            await asyncio.shield(self._exit)
        returncode = self._jail.returncode
        assert returncode is not None
        return returncode

    def _on_pidfd(self) -> None:
        """Init has exited: wake the waiters, who reap it."""
        self._stop_watching()

    def _stop_watching(self) -> None:
        # By fd number: a reap elsewhere (``returncode``) may have closed the pidfd already, and the
        # selector must forget it before the number is reused.
        if self._watched is not None:
            self._loop.remove_reader(self._watched)
            self._watched = None
        if self._exit is not None and not self._exit.done():
            self._exit.set_result(None)

    def send_signal(self, sig: int) -> None:
        """As asyncio's: ``ProcessLookupError`` once the program has been reaped."""
        self._jail.send_signal(sig)

    async def _feed_stdin(self, input: bytes | None) -> None:
        assert self.stdin is not None
        try:
            if input:
                self.stdin.write(input)
                await self.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.stdin.close()

    async def _read(self, stream: asyncio.StreamReader | None) -> bytes | None:
        if stream is None:
            return None
        return await stream.read()

    async def communicate(self, input: bytes | None = None) -> tuple[bytes | None, bytes | None]:
        """Send input, read stdout and stderr to EOF, wait for exit: asyncio's semantics (3.12+)."""
        if input is not None and not isinstance(input, (bytes, bytearray, memoryview)):
            raise TypeError(f"input must be bytes, not {type(input).__name__}")
        tasks: list[Any] = []
        if self.stdin is not None:
            tasks.append(self._feed_stdin(bytes(input) if input is not None else None))
        results = await asyncio.gather(self._read(self.stdout), self._read(self.stderr), *tasks)
        await self.wait()
        return results[0], results[1]

    def _close_transports(self) -> None:
        for t in self._transports:
            t.close()
        self._transports.clear()

    async def aclose(self) -> None:
        """Kill the jail if it still runs, reap it and close the pipes."""
        if self._jail.returncode is None:
            self._jail.kill_quietly()
            await self.wait()
        self._close_transports()

    def _unwatch(self) -> None:
        # A wait() still watching the pidfd loses its reader first: the reap closes that fd.
        watched = getattr(self, "_watched", None)
        if watched is not None and not self._loop.is_closed():
            self._loop.remove_reader(watched)

    def _close_ends(self) -> None:
        for t in getattr(self, "_transports", []):
            if not self._loop.is_closed():
                t.close()


async def _connect(proc: SandboxedProcess, stdio: _stdio.Stdio, limit: int) -> None:
    loop = proc._loop
    if stdio.parent[0] >= 0:
        fd, stdio.parent[0] = stdio.parent[0], -1
        transport, protocol = await loop.connect_write_pipe(
            lambda: asyncio.streams.FlowControlMixin(loop=loop), open(fd, "wb", buffering=0))
        proc._transports.append(transport)
        proc.stdin = asyncio.StreamWriter(transport, protocol, None, loop)
    for slot in (1, 2):
        if stdio.parent[slot] >= 0:
            fd, stdio.parent[slot] = stdio.parent[slot], -1
            reader = asyncio.StreamReader(limit=limit, loop=loop)
            protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
            read_transport, _ = await loop.connect_read_pipe(lambda: protocol, open(fd, "rb", buffering=0))
            proc._transports.append(read_transport)
            if slot == 1:
                proc.stdout = reader
            else:
                proc.stderr = reader


async def create_sandboxed_subprocess(
    profile: Profile,
    program: str | bytes | os.PathLike[str] | os.PathLike[bytes],
    *args: str | bytes | os.PathLike[str] | os.PathLike[bytes],
    stdin: Any = None,
    stdout: Any = None,
    stderr: Any = None,
    limit: int = _DEFAULT_LIMIT,
    env: Mapping[Any, Any] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    pass_fds: Sequence[int] = (),
    limits: Any = None,
    isolation: str = "namespaces",
    **kwds: Any,
) -> SandboxedProcess:
    """Start ``program`` in a jail built from ``profile``; the arguments mean what they mean for
    ``asyncio.create_subprocess_exec`` (``cwd`` is a path inside the jail, ``env`` is the whole
    environment apart from a minimal PATH).  ``isolation="landlock"`` opts into the weaker fallback for
    hosts that forbid user namespaces (see docs/security.md); ``"auto"`` uses it only there."""
    async with _pacing.starting() as ticket:
        pipesize = check_popen_kwargs(kwds)
        spawn = SpawnArgs.build(profile, program, args, env=env, cwd=cwd, pass_fds=pass_fds, limits=limits,
                                isolation=isolation)
        loop = asyncio.get_running_loop()
        stdio = _stdio.prepare(stdin, stdout, stderr, pipesize)
        try:
            jail = await launch(spawn, stdio=stdio.child, wait_readable=_wait_readable, ticket=ticket)
        except BaseException:
            stdio.close_all()
            raise
    stdio.close_child_ends()
    proc = SandboxedProcess(jail, loop, spawn)
    try:
        await _connect(proc, stdio, limit)
    except BaseException:
        stdio.close_all()
        proc._close_transports()
        jail.reap_blocking()
        raise
    return proc
