"""aiogaol: run untrusted programs in Linux jails, awaited from asyncio, trio and anyio.

A ``Profile`` says what a jailed program may do (gaol's operations plus writable scratch); the functions
here start programs under it.  See the README and docs/ for the model and its limits.
"""

from ._anyio_process import JailedProcess, spawn
from ._asyncio_process import SandboxedProcess, create_sandboxed_subprocess
from ._cgroup import CgroupReport
from ._errors import (AiogaolError, PoolClosedError, ProfileError, ProfileTypeError, ProgramNotFoundError,
                      ProgramPermissionError,
                      SandboxSetupError, UnsupportedOperation, UserNamespacesUnavailable)
from ._jail import Usage
from ._check import check
from ._kernel import KernelReport
from ._limits import DEFAULT_LIMITS, UNLIMITED, Limits
from ._plan import compile_profile as _compile_profile
from ._pool import Job, JobResult, JobResults, Pool, PoolStats
from ._profile import (AllAddresses, FileReadAll, FileReadMetadata, FileWriteAll, Literal, LocalSocket,
                       NetworkOutbound, OperationSupportLevel, Profile, Subpath, SystemInfoRead, Tcp, Tmpfs,
                       support)
from ._ready import python_executable, python_profile, system_profile
from ._run import Result, RunError, Status, run
from ._spawner import shutdown as shutdown_spawner
from ._stdio import DEVNULL, PIPE, STDOUT


def explain(profile: Profile) -> str:
    """The jail a profile compiles to, one step a line (namespaces, binds, tmpfs, symlinks)."""
    return _compile_profile(profile).explain()


__version__ = "0.1.0"

__all__ = [
    "AiogaolError", "AllAddresses", "CgroupReport", "DEFAULT_LIMITS", "DEVNULL", "FileReadAll", "FileReadMetadata",
    "FileWriteAll", "JailedProcess", "Job", "JobResult", "JobResults", "KernelReport", "Limits", "Literal", "LocalSocket", "NetworkOutbound",
    "OperationSupportLevel", "PIPE", "Pool", "PoolStats", "Profile", "ProfileError",
    "ProfileTypeError", "ProgramNotFoundError",
    "ProgramPermissionError", "STDOUT", "SandboxSetupError", "SandboxedProcess", "Subpath",
    "SystemInfoRead", "Tcp", "Tmpfs", "UNLIMITED", "UnsupportedOperation", "Usage",
    "UserNamespacesUnavailable", "check", "create_sandboxed_subprocess", "explain", "python_executable",
    "python_profile", "Result", "RunError", "Status", "run", "shutdown_spawner", "spawn", "support", "system_profile",
    "__version__",
    "PoolClosedError",
]
