"""Facts about the running kernel: what it can enforce, and why not when it cannot.

Policy (``_profile``) asks here whether an operation can be enforced; the CLI's ``check`` prints the same
facts.  Reads of /proc/sys and one Landlock version query are all this module does.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._profile import Operation, OperationSupportLevel


def _read_sysctl(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def userns_block_reason() -> str | None:
    """The setting that forbids this user a new user namespace, or None when nothing visibly does."""
    value = _read_sysctl("/proc/sys/user/max_user_namespaces")
    if value == "0":
        return "user.max_user_namespaces is 0 (sysctl -w user.max_user_namespaces=15000 to allow them)"
    if os.geteuid() != 0:
        value = _read_sysctl("/proc/sys/kernel/unprivileged_userns_clone")
        if value == "0":
            return "kernel.unprivileged_userns_clone is 0 (sysctl -w kernel.unprivileged_userns_clone=1)"
        value = _read_sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
        if value == "1":
            return ("kernel.apparmor_restrict_unprivileged_userns is 1 (Ubuntu's AppArmor restriction; "
                    "add an AppArmor profile granting userns, or set it to 0)")
    return None


@functools.cache
def landlock_abi() -> int:
    """Landlock ABI version of this kernel, 0 when absent or disabled."""
    from ._ffi import landlock_abi as query

    return max(query(), 0)


def seccomp_available() -> bool:
    return os.path.exists("/proc/sys/kernel/seccomp/actions_avail")


def pidfd_available() -> bool:
    try:
        fd = os.pidfd_open(os.getpid())
    except (OSError, AttributeError):
        return False
    os.close(fd)
    return True


CGROUP2_NEEDED = ("memory", "pids", "cpu")


def cgroup2_root() -> str | None:
    """Mount point of a cgroup v2 hierarchy offering the controllers limits need, if any."""
    from ._cgroup import _cgroup2_mounts  # one reader of mountinfo for both

    for _root, mount in _cgroup2_mounts():
        controllers = (_read_sysctl(os.path.join(mount, "cgroup.controllers")) or "").split()
        if all(c in controllers for c in CGROUP2_NEEDED):
            return mount
    return None


def support(op: "Operation") -> tuple["OperationSupportLevel", str]:
    """gaol's OperationSupport for this kernel: the level, and the reason when it is not CAN_BE_ALLOWED."""
    from ._profile import (FileReadMetadata, LocalSocket, NetworkOutbound, OperationSupportLevel, Tcp)

    if isinstance(op, FileReadMetadata):
        # The path is bound so that stat sees it, and Landlock (any ABI) grants it no right: open,
        # listing and exec fail.  Without Landlock only the mounts remain, which cannot say "stat only".
        if landlock_abi() < 1:
            return (OperationSupportLevel.CANNOT_BE_ALLOWED_PRECISELY,
                    "metadata-only access needs Landlock, which this kernel lacks (or has disabled); "
                    "use FileReadAll to grant reading")
        return OperationSupportLevel.CAN_BE_ALLOWED, ""
    if isinstance(op, NetworkOutbound) and isinstance(op.address, Tcp):
        # Connect to that port only: Landlock's TCP rules (ABI 4) for the port and against bind, and its
        # abstract-socket scope (ABI 6), since the jail then shares the host's network namespace and so
        # its abstract Unix sockets; the seccomp filter refuses every other kind of socket.
        abi = landlock_abi()
        if abi < 6:
            return (OperationSupportLevel.CANNOT_BE_ALLOWED_PRECISELY,
                    f"per-port TCP needs Landlock ABI 6 (TCP port rules and abstract-socket scoping, Linux "
                    f"6.12); this kernel has ABI {abi}; use NetworkOutbound(AllAddresses())")
        return OperationSupportLevel.CAN_BE_ALLOWED, ""
    if isinstance(op, NetworkOutbound) and isinstance(op.address, LocalSocket):
        return OperationSupportLevel.CAN_BE_ALLOWED, ""
    return OperationSupportLevel.CAN_BE_ALLOWED, ""


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


def check() -> KernelReport:
    """Probe this kernel for every mechanism aiogaol uses; user namespaces are tried, not guessed."""
    from ._ffi import probe_userns
    from ._seccomp import libseccomp_version

    err = probe_userns()
    reason = None
    if err != 0:
        reason = userns_block_reason() or f"unshare(CLONE_NEWUSER) failed: {os.strerror(err)}"
    return KernelReport(
        kernel=os.uname().release,
        user_namespaces=err == 0,
        user_namespaces_reason=reason,
        landlock_abi=landlock_abi(),
        seccomp=seccomp_available(),
        libseccomp=libseccomp_version(),
        pidfd=pidfd_available(),
        cgroup2=cgroup2_root(),
    )
