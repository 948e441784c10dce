"""``aiogaol.check()``: every mechanism aiogaol uses, probed on this host, for callers and ``aiogaol check``.

It sits at the top of the mechanism layer because it gathers facts from every layer below: the
kernel's (``_kernel``), the C core's user-namespace probe (``_ffi``), libseccomp's version (``_seccomp``)
and the cgroup v2 hierarchies (``_cgroup``).  ``_kernel`` itself stays free of them, so that policy can
ask it without an import circle.
"""

from __future__ import annotations

import os

from ._cgroup import _cgroup2_mounts  # one reader of mountinfo for both
from ._ffi import probe_userns
from ._kernel import (KernelReport, landlock_abi, pidfd_available, read_sysctl, seccomp_available,
                      userns_block_reason)
from ._seccomp import libseccomp_version

CGROUP2_NEEDED = ("memory", "pids", "cpu")


def cgroup2_root() -> str | None:
    """Mount point of a cgroup v2 hierarchy offering the controllers limits need, if any."""
    for _root, mount in _cgroup2_mounts():
        controllers = (read_sysctl(os.path.join(mount, "cgroup.controllers")) or "").split()
        if all(c in controllers for c in CGROUP2_NEEDED):
            return mount
    return None


def check() -> KernelReport:
    """Probe this kernel for every mechanism aiogaol uses; user namespaces are tried, not guessed."""
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
