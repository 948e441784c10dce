"""What both process faces (``_anyio_process``, ``_asyncio_process``) hold of their RunningJail, written once.

A face is an event loop's way of waiting on the jail's pidfd and its pipes; everything else about the
process is the jail's and the same for both: its PID, isolation, usage and step timings, the exit status
read without blocking, the signals, ``async with``, and the finaliser that kills and reaps a jail nobody
waited for.  Each face supplies only what is its loop's business: ``_poll`` (reap if exited, first
forgetting its own watch of the pidfd), ``send_signal`` (trio's no-op after exit, or asyncio's
``ProcessLookupError``), ``wait``, ``aclose``, and for the finaliser ``_unwatch`` and ``_close_ends``.
"""

from __future__ import annotations

import signal
import warnings
from typing import ClassVar, Self

from ._jail import RunningJail, Usage
from ._limits import Limits
from ._spawnargs import SpawnArgs


class JailFace:
    """The members a process face delegates to its RunningJail."""

    _jail: RunningJail
    # What a caller failed to do when the finaliser finds the jail still running ("closed", "waited for").
    _never: ClassVar[str] = "closed"

    def __init__(self, jail: RunningJail, args: SpawnArgs) -> None:
        self._jail = jail
        self.args = args.argv
        self.limits: Limits = args.limits

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.pid} returncode={self._jail.returncode}>"

    @property
    def pid(self) -> int:
        """The host PID of the jail's init (the server's own child)."""
        return self._jail.pid

    @property
    def isolation(self) -> str:
        """"namespaces" (the full jail) or "landlock" (the fallback, with weaker guarantees)."""
        return self._jail.isolation

    @property
    def usage(self) -> Usage | None:
        """CPU, memory and wall time of the whole jail, once it has exited."""
        return self._jail.usage

    @property
    def step_timings(self) -> dict[str, float] | None:
        """A diagnostic, with ``AIOGAOL_STEP_TIMINGS=1``: seconds from the request being sent to each step
        of the set-up reached (named as in error messages), then "answered" (the exec was seen) and
        "reaped", in order; None otherwise."""
        t = self._jail.timings
        if t is None:
            return None
        return {name: (ns - t["sent"]) / 1e9 for name, ns in sorted(t.items(), key=lambda kv: kv[1])}

    @property
    def returncode(self) -> int | None:
        """Fresh on every read: the exit status if the program has exited (reaping it), else None."""
        if self._jail.returncode is None:
            self._poll()
        return self._jail.returncode

    def _poll(self) -> bool:
        """Reap the jail if it has exited, without blocking; True once it is reaped."""
        raise NotImplementedError

    def send_signal(self, sig: int) -> None:
        raise NotImplementedError

    def terminate(self) -> None:
        """SIGTERM to the program (through the jail's init and its pidfd)."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the jail's init; the kernel then kills every process in the jail's PID namespace."""
        self.send_signal(signal.SIGKILL)

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _unwatch(self) -> None:
        """Forget the face's own watch of the pidfd, if it keeps one (the finaliser's first step: the
        reap closes that fd, and a selector must not be left holding its number)."""

    def _close_ends(self) -> None:
        """Close our ends of the jail's pipes at once (the finaliser's last step)."""

    def __del__(self) -> None:
        self._unwatch()
        jail = getattr(self, "_jail", None)  # absent if __init__ never ran
        if jail is not None and jail.returncode is None:
            warnings.warn(f"{self!r} was never {self._never}; killing and reaping it", ResourceWarning,
                          stacklevel=2, source=self)
            jail.reap_blocking()
        self._close_ends()
