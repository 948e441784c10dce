"""Facts about the running kernel, and nothing built on them: the bottom of the import stack.

Reads of /proc/sys and one Landlock version query (through ``_ffi``) are all this module does.  Policy
(``_profile.support``) judges from these facts whether an operation can be enforced, the plan layer picks
the Landlock ABI from them, and ``_check`` gathers them with the mechanism's own probes for
``aiogaol.check()``.  Nothing here knows what a profile is, so every layer may ask.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from ._ffi import landlock_abi as _query_landlock


def read_sysctl(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def userns_block_reason() -> str | None:
    """The setting that forbids this user a new user namespace, or None when nothing visibly does."""
    value = read_sysctl("/proc/sys/user/max_user_namespaces")
    if value == "0":
        return "user.max_user_namespaces is 0 (sysctl -w user.max_user_namespaces=15000 to allow them)"
    if os.geteuid() != 0:
        value = read_sysctl("/proc/sys/kernel/unprivileged_userns_clone")
        if value == "0":
            return "kernel.unprivileged_userns_clone is 0 (sysctl -w kernel.unprivileged_userns_clone=1)"
        value = read_sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
        if value == "1":
            return ("kernel.apparmor_restrict_unprivileged_userns is 1 (Ubuntu's AppArmor restriction; "
                    "add an AppArmor profile granting userns, or set it to 0)")
    return None


@functools.cache
def landlock_abi() -> int:
    """Landlock ABI version of this kernel, 0 when absent or disabled."""
    return max(_query_landlock(), 0)


def seccomp_available() -> bool:
    return os.path.exists("/proc/sys/kernel/seccomp/actions_avail")


def pidfd_available() -> bool:
    try:
        fd = os.pidfd_open(os.getpid())
    except (OSError, AttributeError):
        return False
    os.close(fd)
    return True


@dataclass(frozen=True)
class KernelReport:
    """What ``aiogaol.check()`` returns: each mechanism, and why not where it is missing."""

    kernel: str
    user_namespaces: bool
    user_namespaces_reason: str | None
    landlock_abi: int
    seccomp: bool
    libseccomp: str | None
    pidfd: bool
    cgroup2: str | None

    def lines(self) -> list[str]:
        def yn(ok: bool) -> str:
            return "yes" if ok else "no"

        return [
            f"kernel            {self.kernel}",
            f"user namespaces   {yn(self.user_namespaces)}"
            + (f" ({self.user_namespaces_reason})" if self.user_namespaces_reason else ""),
            "landlock          " + (f"ABI {self.landlock_abi}" if self.landlock_abi else "no"),
            f"seccomp           {yn(self.seccomp)}"
            + (f" (libseccomp {self.libseccomp})" if self.libseccomp else " (libseccomp.so.2 not found: spawns will fail)"),
            f"pidfd             {yn(self.pidfd)}",
            "cgroup v2         " + (self.cgroup2 or "no (no cgroup2 hierarchy with the memory, pids and cpu controllers; limits use rlimits)"),
        ]
