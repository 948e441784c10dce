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
