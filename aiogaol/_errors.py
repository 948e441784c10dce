"""The exception tree.

One base, and each class also derives from the built-in a caller would already catch: a bad profile is a
``ValueError``, a failed set-up step is an ``OSError`` (with ``errno`` and ``filename``), a missing program is
a ``FileNotFoundError`` exactly as with ``asyncio.create_subprocess_exec``.
"""

from __future__ import annotations

import errno as _errno
import os


class AiogaolError(Exception):
    """Base of every exception aiogaol raises on purpose."""


class ProfileError(AiogaolError, ValueError):
    """A profile or an argument is malformed (relative path, NUL byte, wrong type...)."""


class ProfileTypeError(ProfileError, TypeError):
    """A profile field or an argument has the wrong type (a bool where an int is wanted, a list for a
    path...).  Both a ``ProfileError`` and the ``TypeError`` Python code would expect."""


class UnsupportedOperation(ProfileError):
    """The running kernel cannot enforce this operation exactly as written.

    Raised instead of silently allowing more than the profile says (gaol's ``OperationSupport``).
    """

    def __init__(self, operation: object, reason: str) -> None:
        self.operation = operation
        self.reason = reason
        super().__init__(f"{operation!r} cannot be enforced here: {reason}")


class SandboxSetupError(AiogaolError, OSError):
    """A step of building the jail failed; ``step`` names it, ``errno`` and ``filename`` say why and where."""

    def __init__(self, step: str, err: int, detail: str) -> None:
        self.step = step
        name = _errno.errorcode.get(err, str(err))
        message = f"{step} {detail}: {name} ({os.strerror(err)})" if detail else f"{step}: {name}"
        OSError.__init__(self, err, message, detail or None)
        self.step = step

    def __str__(self) -> str:
        return str(self.strerror)


class ProgramNotFoundError(SandboxSetupError, FileNotFoundError):
    """The program does not exist inside the jail (or is not visible through the profile)."""


class ProgramPermissionError(SandboxSetupError, PermissionError):
    """The program exists in the jail but may not be executed there."""


class PoolClosedError(AiogaolError, RuntimeError):
    """A job was given to a pool that is not open: closed already, or never opened (``await pool.open()``
    or ``async with Pool(...)`` first).  A ``RuntimeError``, as using any closed resource is."""


class UserNamespacesUnavailable(AiogaolError, OSError):
    """This host forbids unprivileged user namespaces; the message names the setting that does."""


def setup_error(step: str, err: int, detail: str) -> SandboxSetupError:
    """The most specific exception for a failed step, so callers can catch the built-in they know."""
    if step.startswith("exec") and err == _errno.ENOENT:
        return ProgramNotFoundError(step, err, detail)
    if step == "exec" and err in (_errno.EACCES, _errno.EPERM):
        return ProgramPermissionError(step, err, detail)
    if step == "chdir" and err == _errno.ENOENT:
        return ProgramNotFoundError(step, err, detail)
    return SandboxSetupError(step, err, detail)


def out_of_fds(err: OSError, what: str) -> SandboxSetupError:
    """EMFILE/ENFILE on the server's side of a spawn (``what`` it was making), as an error that names the
    limit to raise: a bare ``Too many open files`` does not say whose files, nor which knob."""
    import resource

    number = err.errno or _errno.EMFILE
    if number == _errno.ENFILE:
        fix = "the whole system ran out of open files: raise fs.file-max, or close files elsewhere"
    else:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = "unlimited" if soft == resource.RLIM_INFINITY else str(soft)
        fix = (f"the server ran out of file descriptors (RLIMIT_NOFILE soft limit {limit}, hard "
               f"{'unlimited' if hard == resource.RLIM_INFINITY else hard}): close some, or raise the limit "
               "(ulimit -n, or resource.setrlimit(resource.RLIMIT_NOFILE, ...)); a spawn needs about ten "
               "free fds while it starts")
    return SandboxSetupError("server fds", number, f"{what}: {fix}")


def is_fd_shortage(err: BaseException) -> bool:
    return isinstance(err, OSError) and not isinstance(err, AiogaolError) and err.errno in (_errno.EMFILE,
                                                                                           _errno.ENFILE)


def process_limit_reason() -> str:
    """Why a fork or clone may have failed with EAGAIN, and what to raise: RLIMIT_NPROC (counted per user,
    so other processes of the same user count too), the pids.max of the server's cgroup, or the kernel's
    own caps."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    uid = os.getuid()
    reasons = []
    if soft != resource.RLIM_INFINITY and uid != 0:
        mine = 0
        try:
            for name in os.listdir("/proc"):
                if name.isdigit():
                    try:
                        if os.stat(f"/proc/{name}").st_uid == uid:
                            mine += 1
                    except OSError:
                        continue
        except OSError:
            mine = -1
        reasons.append(f"RLIMIT_NPROC is {soft} and user {uid} runs {mine if mine >= 0 else 'an unknown number of'} "
                       "processes (raise it with ulimit -u or resource.setrlimit(resource.RLIMIT_NPROC, ...))")
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            path = next((line.split(":", 2)[2].strip() for line in f if line.startswith("0::")), None)
        if path is not None:
            base = os.path.join("/sys/fs/cgroup", path.lstrip("/"))
            with open(os.path.join(base, "pids.max"), encoding="utf-8") as f:
                top = f.read().strip()
            with open(os.path.join(base, "pids.current"), encoding="utf-8") as f:
                now = f.read().strip()
            if top != "max":
                reasons.append(f"the server's cgroup {path} allows {top} processes (pids.max) and has {now}")
    except (OSError, StopIteration):
        pass
    reasons.append("or the kernel's kernel.pid_max / kernel.threads-max is reached")
    return "too many processes: " + "; ".join(reasons)


def helper_start_error(err: int, path: str, arg_bytes: int) -> OSError:
    """posix_spawn of the jail helper failed: the error that names the real cause.  Only a missing or
    unrunnable helper is worth reinstalling aiogaol for."""
    if err in (_errno.ENOENT, _errno.EACCES, _errno.ENOEXEC, _errno.ELIBBAD):
        return OSError(err, f"cannot start the jail helper {path}: {os.strerror(err)} "
                       "(reinstall aiogaol: the helper is built with the package)", path)
    if err == _errno.E2BIG:
        try:
            arg_max = os.sysconf("SC_ARG_MAX")
        except (OSError, ValueError):
            arg_max = -1
        return SandboxSetupError("start helper", err,
                                 f"the program's arguments and environment are too long ({arg_bytes} bytes with the "
                                 f"jail's options; the kernel takes at most {arg_max} in all, a quarter of "
                                 "RLIMIT_STACK, and 128 KiB in any one string): pass the data through stdin or a file")
    if err == _errno.EAGAIN:
        return SandboxSetupError("start helper", err, process_limit_reason())
    if err in (_errno.EMFILE, _errno.ENFILE):
        return out_of_fds(OSError(err, os.strerror(err)), "starting the jail helper")
    if err == _errno.ENOMEM:
        return SandboxSetupError("start helper", err, "out of memory (RLIMIT_AS or RLIMIT_DATA of the server, "
                                 "or the host's memory)")
    return SandboxSetupError("start helper", err, f"posix_spawn of {path}")
