"""Checking a spawn's arguments before anything is started, shared by every face.

Bad arguments fail here with ValueError/TypeError, never in the helper; what remains is a validated
bundle that only needs the handshake fds to become the helper's argv.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _fallback, _plan, _stdio
from ._errors import ProfileError, ProfileTypeError
from ._limits import Limits, check_seconds, resolve_limits
from ._profile import Profile

if TYPE_CHECKING:
    from ._cgroup import JailCgroup


def check_popen_kwargs(kwds: dict[str, Any]) -> int:
    """asyncio's refusals with asyncio's messages, then ours for what a jail cannot honour.

    Returns the requested pipe size (-1 for the default).
    """
    if kwds.pop("universal_newlines", False):
        raise ValueError("universal_newlines must be False")
    if kwds.pop("shell", False):
        raise ValueError("shell must be False")
    if kwds.pop("bufsize", 0) != 0:
        raise ValueError("bufsize must be 0")
    if kwds.pop("text", None):
        raise ValueError("text must not be True")
    if kwds.pop("encoding", None) is not None:
        raise ValueError("encoding must be None")
    if kwds.pop("errors", None) is not None:
        raise ValueError("errors must be None")
    if kwds.pop("preexec_fn", None) is not None:
        raise ValueError("preexec_fn is not supported: no Python code runs between fork and exec in aiogaol")
    if not kwds.pop("close_fds", True):
        raise ValueError("close_fds must be True: a jail receives only the fds named in pass_fds")
    kwds.pop("start_new_session", None)  # the program always gets a session of its own
    kwds.pop("restore_signals", None)  # signal dispositions and mask are always reset
    if kwds.pop("process_group", None) not in (None, 0):
        raise ValueError("process_group is not supported: the program leads a session of its own in its jail")
    for name in ("executable", "user", "group", "extra_groups", "startupinfo"):
        if kwds.pop(name, None) is not None:
            raise ValueError(f"{name} is not supported in a jail")
    if kwds.pop("umask", -1) != -1:
        raise ValueError("umask is not supported in a jail")
    kwds.pop("creationflags", None)
    pipesize = kwds.pop("pipesize", -1)
    if not isinstance(pipesize, int):
        raise TypeError("pipesize must be an int")
    if kwds:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(kwds))}")
    return pipesize


def check_argv(argv: object) -> Sequence[object]:
    """The anyio faces take argv as one sequence (no shell); refuse a string before it is split."""
    if isinstance(argv, (str, bytes)) or not isinstance(argv, Sequence):
        raise ProfileTypeError("argv must be a sequence of arguments (no shell here), not "
                               f"{'a string' if isinstance(argv, (str, bytes)) else type(argv).__name__}")
    if not argv:
        raise ProfileError("argv is empty")
    return argv


def check_grace(grace_period: object) -> float:
    """Seconds between SIGTERM and SIGKILL: a finite number from 0 to MAX_SECONDS."""
    return check_seconds(grace_period, "grace_period", zero=True)


def check_pass_fds(pass_fds: Sequence[int]) -> tuple[int, ...]:
    if isinstance(pass_fds, (str, bytes)) or not isinstance(pass_fds, (Sequence, set, frozenset)):
        raise ProfileTypeError("pass_fds must be a sequence of file descriptors")
    fds: list[int] = []
    for fd in pass_fds:
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise ProfileTypeError(f"pass_fds must hold ints, not {type(fd).__name__}")
        if fd < 3:
            raise ProfileError(f"pass_fds: {fd} is a standard stream; use stdin/stdout/stderr")
        if not _stdio.is_open(fd):
            raise ProfileError(f"pass_fds: {fd} is not an open file descriptor")
        if fd not in fds:
            fds.append(fd)
    return tuple(sorted(fds))


@dataclass(frozen=True)
class SpawnArgs:
    plan: _plan.JailPlan
    argv: list[bytes]
    envp: list[bytes]
    cwd: str
    pass_fds: tuple[int, ...]
    limits: Limits

    @classmethod
    def build(cls, profile: Profile, program: object, args: Sequence[object], *, env: Mapping[Any, Any] | None,
              cwd: object, pass_fds: Sequence[int], limits: Limits | None,
              isolation: str = _fallback.NAMESPACES) -> "SpawnArgs":
        """``isolation`` is "namespaces" (the jail; UserNamespacesUnavailable where they are forbidden),
        "landlock" (the weaker fallback, only when the caller asks for it) or "auto" (the jail when
        possible, else the fallback)."""
        if not isinstance(profile, Profile):
            raise ProfileTypeError(f"profile must be an aiogaol.Profile, not {type(profile).__name__}")
        mode = _fallback.resolve_isolation(_fallback.check_isolation(isolation))
        return cls(
            plan=_plan.compile_profile(profile) if mode == _fallback.NAMESPACES else _fallback.compile_fallback(profile),
            argv=_plan.program_argv(program, args),
            envp=_plan.environment(env),
            cwd=_plan.jail_cwd(cwd),
            pass_fds=check_pass_fds(pass_fds),
            limits=resolve_limits(limits),
        )

    @property
    def seccomp_filter(self) -> bytes:
        """The profile's BPF, compiled once per profile; ``launch`` hands it over in a fresh pipe."""
        return self.plan.seccomp

    @property
    def isolation(self) -> str:
        return self.plan.isolation

    def helper_argv(self, err_fd: int, lifeline_fd: int, seccomp_fd: int | None = None,
                    cgroup: "JailCgroup | None" = None, umask: int | None = None,
                    inherited_rlimits: Sequence[tuple[int, int, int]] = ()) -> list[bytes]:
        """With ``cgroup`` the helper creates init inside it (``--cgroup-fd``); memory.max and pids.max,
        where that cgroup has the controllers, replace RLIMIT_AS and RLIMIT_NPROC.  ``inherited_rlimits``
        (the server's own at this spawn) are set too, for every resource the limits leave alone: a jail
        made by the long-lived spawner must not get the limits the server had when that started."""
        extra = ("--cgroup-fd", str(cgroup.fd)) if cgroup is not None else ()
        controllers = cgroup.controllers if cgroup is not None else frozenset()
        rlimits = self.limits.rlimits(cgroup_memory="memory" in controllers, cgroup_pids="pids" in controllers)
        own = {res for res, _, _ in rlimits}
        rlimits = [t for t in inherited_rlimits if t[0] not in own] + rlimits
        return _plan.helper_argv(self.plan, err_fd=err_fd, lifeline_fd=lifeline_fd, keep_fds=self.pass_fds,
                                 cwd=self.cwd, umask=umask, rlimits=rlimits, nice=self.limits.nice,
                                 seccomp_fd=seccomp_fd, extra=extra,
                                 argv=self.argv)
