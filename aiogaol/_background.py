"""A task group that belongs to no caller's task, so that an object can be opened in one task and closed
in another.

anyio's task groups and cancel scopes must be left by the task that entered them.  A pool entered in
one Ray actor method and closed in another (or opened by a server's start-up hook and closed by its
shutdown hook) cannot keep its task group in the caller's task: leaving it from the closing task raises
"Attempted to exit cancel scope in a different task than it was entered in".  So the task group lives
in a host task of its own, started on the running loop (``asyncio``: a task of the loop; trio: a
system task, trio's own place for tasks that outlive their starter), which enters it, waits for the
word to stop, cancels what is left in it and leaves it, all in the one task.  Callers only start
tasks in it and ask it to stop.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.abc
import sniffio


class Background:
    """A task group run by its own host task: ``await start()``, ``start_soon(...)``, ``await aclose()``.

    The tasks started in it must not fail (they report to their consumers instead); should one fail
    anyway, the failure is kept and raised by ``aclose``, never lost and never crashing the event loop.
    """

    def __init__(self) -> None:
        self._tg: anyio.abc.TaskGroup | None = None
        self._stop = anyio.Event()
        self._done = anyio.Event()
        self._error: BaseException | None = None
        self._task: object = None  # asyncio keeps only weak references to tasks: hold the host here
        self._started = False

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("a Background is started once")
        self._started = True
        ready = anyio.Event()
        if sniffio.current_async_library() == "trio":
            import trio

            trio.lowlevel.spawn_system_task(self._host, ready, name="aiogaol background",
                                            context=contextvars.copy_context())
        else:
            self._task = asyncio.get_running_loop().create_task(self._host(ready), name="aiogaol background")
        await ready.wait()
        if self._tg is None:  # the host ended before it could serve (cancelled as the loop shuts down)
            raise RuntimeError("the event loop is shutting down")

    async def _host(self, ready: anyio.Event) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                ready.set()
                await self._stop.wait()
                tg.cancel_scope.cancel()  # what is still running in it: tasks nobody waits for now
        except anyio.get_cancelled_exc_class():
            raise  # the loop itself is shutting down: a host task must let that through
        except BaseException as e:  # a trio system task that raises crashes the run: keep it for aclose
            self._error = e
        finally:
            self._tg = None
            ready.set()
            self._done.set()

    def start_soon(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: object) -> None:
        if self._tg is None:
            raise RuntimeError("the background task group is not running")
        self._tg.start_soon(fn, *args)

    async def aclose(self) -> None:
        """Cancel what still runs in it and wait until its host has left it; any task may call it,
        any number of times.  Shielded: a cancelled closer still leaves nothing behind."""
        self._stop.set()
        if self._started:
            with anyio.CancelScope(shield=True):
                await self._done.wait()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
