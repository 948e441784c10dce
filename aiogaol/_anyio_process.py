"""The anyio face: ``await aiogaol.spawn(profile, argv)``, the same on the asyncio and trio backends.

anyio has no public way to wrap a pipe fd as a byte stream, and its ``open_process`` would start the
helper through ``subprocess.Popen`` (a worker thread on trio, asyncio's child watcher elsewhere).  So
this face keeps its own small pieces, all built on ``anyio.wait_readable``/``wait_writable``:

- ``PipeReceiveStream``/``PipeSendStream``: non-blocking pipe fds, ``os.read``/``os.write``;
- ``JailedProcess``: an ``anyio.abc.Process`` whose exit is awaited on the jail's pidfd (one waiter at a
  time, behind a lock, because two tasks waiting on one fd raise ``BusyResourceError``).

The semantics are trio's structured ones rather than asyncio's: leaving ``async with proc`` (normally or
by cancellation) terminates a jail that still runs, waits ``grace_period`` seconds, kills it and reaps
it, shielded from cancellation, so no jail outlives the block that started it.  Cancelling a bare
``wait()`` leaves the process running, as in trio.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from . import _pacing, _stdio
from ._face import JailFace
from ._jail import RunningJail, launch
from ._limits import Limits
from ._profile import Profile
from ._spawnargs import SpawnArgs, check_argv, check_grace

DEFAULT_GRACE_PERIOD = 2.0  # seconds between SIGTERM and SIGKILL when a block is left early
_READ_SIZE = 65536


class _PipeEnd:
    """Our end of one of the jail's stdio pipes: a non-blocking fd, closed at once by ``close``."""

    def __init__(self, fd: int, doing: str) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._guard = anyio.ResourceGuard(doing)

    def fileno(self) -> int:
        return self._fd

    async def aclose(self) -> None:
        self.close()
        await anyio.lowlevel.checkpoint()

    def close(self) -> None:
        """Close at once; a task blocked on the fd gets ``ClosedResourceError`` (and for stdin, the
        program reads EOF)."""
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        try:
            # Wake any task waiting on this fd before the number can be reused by another open().
            anyio.notify_closing(fd)
        except RuntimeError:
            pass  # not in an async context: nobody can be waiting
        os.close(fd)


class PipeReceiveStream(_PipeEnd, anyio.abc.ByteReceiveStream):
    """Our read end of a pipe from the jail (its stdout or stderr)."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd, "reading from")

    async def receive(self, max_bytes: int = _READ_SIZE) -> bytes:
        """The next chunk the program wrote; ``anyio.EndOfStream`` once it closed its end."""
        with self._guard:
            # A checkpoint either way, as trio's streams do: a loop that always finds data ready must
            # still be cancellable and must still let other tasks run.
            await anyio.lowlevel.checkpoint_if_cancelled()
            while True:
                if self._fd < 0:
                    raise anyio.ClosedResourceError
                try:
                    data = os.read(self._fd, max_bytes)
                except BlockingIOError:
                    await anyio.wait_readable(self._fd)
                    continue
                await anyio.lowlevel.cancel_shielded_checkpoint()
                if not data:
                    raise anyio.EndOfStream
                return data


class PipeSendStream(_PipeEnd, anyio.abc.ByteSendStream):
    """Our write end of the pipe that is the jail's stdin."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd, "writing to")

    async def send(self, item: bytes) -> None:
        """Write all of ``item``; ``anyio.BrokenResourceError`` if the program closed its stdin."""
        with self._guard:
            await anyio.lowlevel.checkpoint_if_cancelled()
            view = memoryview(item).cast("B")
            while view:
                if self._fd < 0:
                    raise anyio.ClosedResourceError
                try:
                    written = os.write(self._fd, view)
                except BlockingIOError:
                    await anyio.wait_writable(self._fd)
                    continue
                except (BrokenPipeError, ConnectionResetError) as e:
                    raise anyio.BrokenResourceError from e
                view = view[written:]
            await anyio.lowlevel.cancel_shielded_checkpoint()


class JailedProcess(JailFace, anyio.abc.Process):
    """A program running in a jail, as an ``anyio.abc.Process``, plus ``usage`` and ``isolation``."""

    _never = "closed"

    def __init__(self, jail: RunningJail, args: SpawnArgs, stdin: PipeSendStream | None,
                 stdout: PipeReceiveStream | None, stderr: PipeReceiveStream | None, grace_period: float) -> None:
        JailFace.__init__(self, jail, args)
        self._stdin = stdin
        self._stdout = stdout
        self._stderr = stderr
        self._grace_period = grace_period
        self._wait_lock = anyio.Lock()

    @property
    def stdin(self) -> PipeSendStream | None:
        return self._stdin

    @property
    def stdout(self) -> PipeReceiveStream | None:
        return self._stdout

    @property
    def stderr(self) -> PipeReceiveStream | None:
        return self._stderr

    def _poll(self) -> bool:
        """Reap the jail if it has exited, without blocking.

        Reaping closes the pidfd, so a task parked on it in ``wait()`` is woken first: a closed fd left
        registered in epoll would never become readable and that task would hang.
        """
        jail = self._jail
        if jail.returncode is not None:
            return True
        pidfd = jail.pidfd
        if pidfd is None:
            return jail.try_reap()
        try:
            exited = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            exited = True  # reaped behind our back; try_reap reports it
        if not exited:
            return False
        try:
            anyio.notify_closing(pidfd)
        except RuntimeError:
            pass
        return jail.try_reap()

    async def wait(self) -> int:
        """Wait for the program to exit (not for its pipes to close) and return its returncode.

        ``-N`` when signal N killed it.  Cancelling ``wait`` leaves the program running.
        """
        async with self._wait_lock:
            while True:
                # Reaping is paced like spawning (see _pacing).
                async with _pacing.paced():
                    if self._poll():
                        break
                pidfd = self._jail.pidfd
                assert pidfd is not None
                try:
                    await anyio.wait_readable(pidfd)
                except anyio.ClosedResourceError:
                    pass  # reaped by a ``returncode`` read in another task; _poll sees it
        returncode = self._jail.returncode
        assert returncode is not None
        return returncode

    def send_signal(self, signal: int) -> None:
        """Signal the program (through the jail's init and its pidfd).  A no-op once it has exited, as in
        trio: a reused PID is never hit."""
        if self._poll():
            return
        try:
            self._jail.send_signal(signal)
        except ProcessLookupError:
            pass

    async def aclose(self) -> None:
        """End the process's life, whatever state it is in; never raises for an exited program.

        Closes stdin (EOF may be all the program waits for), then if the program still runs: SIGTERM,
        ``grace_period`` seconds, SIGKILL, reap.  Shielded: a cancelled caller still leaves no jail.
        """
        with anyio.CancelScope(shield=True):
            if self._stdin is not None:
                await self._stdin.aclose()
            if not self._poll():
                self.terminate()
                with anyio.move_on_after(self._grace_period):
                    await self.wait()
                if not self._poll():
                    self.kill()
                    await self.wait()
            for stream in (self._stdout, self._stderr):
                if stream is not None:
                    await stream.aclose()

    def _close_ends(self) -> None:
        for name in ("_stdin", "_stdout", "_stderr"):
            stream = getattr(self, name, None)
            if stream is not None and stream._fd >= 0:
                os.close(stream._fd)
                stream._fd = -1


async def spawn(
    profile: Profile,
    argv: Sequence[str | bytes | os.PathLike[str] | os.PathLike[bytes]],
    *,
    stdin: Any = _stdio.PIPE,
    stdout: Any = _stdio.PIPE,
    stderr: Any = _stdio.PIPE,
    env: Mapping[Any, Any] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    pass_fds: Sequence[int] = (),
    limits: Limits | None = None,
    isolation: str = "namespaces",
    grace_period: float = DEFAULT_GRACE_PERIOD,
) -> JailedProcess:
    """Start ``argv`` in a jail built from ``profile`` and return it as an ``anyio.abc.Process``.

    Like ``anyio.open_process`` with a sequence: all three streams are pipes by default (``PIPE``,
    ``DEVNULL``, ``STDOUT``, an fd, a file object or None to inherit).  ``cwd`` is a path inside the jail;
    ``env`` is the whole environment apart from a minimal PATH.  Use it as ``async with await spawn(...)
    as proc:`` so that the jail cannot outlive the block.  Raises before anything starts when an argument
    is wrong, and ``OSError`` subclasses naming the failed step when the jail cannot be built.
    """
    check_argv(argv)
    grace = check_grace(grace_period)
    async with _pacing.starting() as ticket:
        args = SpawnArgs.build(profile, argv[0], argv[1:], env=env, cwd=cwd, pass_fds=pass_fds, limits=limits,
                               isolation=isolation)
        stdio = _stdio.prepare(stdin, stdout, stderr)
        try:
            jail = await launch(args, stdio=stdio.child, wait_readable=anyio.wait_readable, ticket=ticket)
        except BaseException:
            stdio.close_all()
            raise
    stdio.close_child_ends()
    # From here on nothing awaits before the process object owns every fd and the jail.
    fds, stdio.parent = stdio.parent, [-1, -1, -1]
    return JailedProcess(
        jail, args,
        PipeSendStream(fds[0]) if fds[0] >= 0 else None,
        PipeReceiveStream(fds[1]) if fds[1] >= 0 else None,
        PipeReceiveStream(fds[2]) if fds[2] >= 0 else None,
        grace,
    )
