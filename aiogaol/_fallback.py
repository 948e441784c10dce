"""The fallback where user namespaces are forbidden: Landlock, seccomp, no_new_privs and rlimits only.

Ubuntu 24.04's AppArmor restriction, containers without user namespaces and
``user.max_user_namespaces=0`` stop every namespace sandbox (bubblewrap included).  There a caller may
opt in to ``isolation="landlock"``: the program runs on the host's own tree, PIDs, network and IPC,
walled in by a Landlock ruleset (files, TCP ports, abstract sockets, signals) and the seccomp filter.

It is weaker, and says so (``GUARANTEES``): no private /tmp or /dev, host PIDs visible in /proc when
``SystemInfoRead`` is granted, processes the program detaches may outlive a SIGKILL of the jail.  What it
cannot enforce as written it refuses (``UnsupportedOperation``), as the namespace jail does:
``Tmpfs`` needs a mount namespace, and ``LocalSocket`` a mount jail, since Landlock ABI 7 cannot
restrict which socket path a program connects to.  It also needs Landlock ABI 6 (Linux 6.12): without
its scopes the program could signal the host's processes and reach its abstract sockets.
"""

from __future__ import annotations

import errno
import functools

from . import _kernel, _landlock, _seccomp
from ._errors import ProfileError, ProfileTypeError, SandboxSetupError, UnsupportedOperation
from ._plan import JailPlan
from ._profile import LocalSocket, NetworkOutbound, Profile, ResolvedPath, Tmpfs

NAMESPACES = "namespaces"
LANDLOCK = "landlock"
AUTO = "auto"
ISOLATIONS = (NAMESPACES, LANDLOCK, AUTO)
MIN_ABI = 6

GUARANTEES = {
    NAMESPACES: ("a mount, PID, IPC, UTS, cgroup and (unless the profile grants the network) network "
                 "namespace jail, with Landlock and seccomp behind it"),
    LANDLOCK: ("no namespaces: Landlock limits files, TCP ports, abstract sockets and signals, and seccomp "
               "the kernel surface, on the host's own tree; host processes stay visible through /proc when "
               "SystemInfoRead is granted, and processes the program detaches may outlive a SIGKILL"),
}


def check_isolation(isolation: object) -> str:
    if not isinstance(isolation, str):
        raise ProfileTypeError(f"isolation must be a str, not {type(isolation).__name__}")
    if isolation not in ISOLATIONS:
        raise ProfileError(f"isolation must be one of {', '.join(map(repr, ISOLATIONS))}, not {isolation!r}")
    return isolation


def resolve_isolation(isolation: str) -> str:
    """``auto`` picks the namespace jail when this process may create a user namespace, else Landlock."""
    if isolation != AUTO:
        return isolation
    from ._ffi import probe_userns

    return NAMESPACES if probe_userns() == 0 else LANDLOCK


def compile_fallback(profile: Profile) -> JailPlan:
    """The plan for ``isolation="landlock"``: no mounts, a Landlock ruleset over host paths, a filter.

    Cached per profile and what its paths resolved to (each plan checks for its own objects)."""
    return _compile_fallback(profile, tuple(profile.resolved.values()))


@functools.lru_cache(maxsize=256)
def _compile_fallback(profile: Profile, resolution: tuple[ResolvedPath, ...]) -> JailPlan:
    for op in profile.operations:
        if isinstance(op, Tmpfs):
            raise UnsupportedOperation(op, "a private tmpfs needs a mount namespace, which the landlock "
                                           "isolation does not have")
        if isinstance(op, NetworkOutbound) and isinstance(op.address, LocalSocket):
            raise UnsupportedOperation(op, "without a mount jail, Landlock (ABI 7) cannot limit which "
                                           "Unix socket path is connected to")
    abi = _kernel.landlock_abi()
    if abi < MIN_ABI:
        raise SandboxSetupError("landlock", errno.ENOSYS,
                                f"the landlock isolation needs Landlock ABI {MIN_ABI} (Linux 6.12) for its "
                                f"signal and abstract-socket scopes; this kernel has ABI {abi}")
    rules = _landlock.rules_for(profile, abi=abi, jail=False)
    assert rules is not None
    seccomp = _seccomp.compile_filter(_seccomp.policy_for(profile, jail=False))
    from ._init_filter import init_filter_args

    args = ("--no-namespaces", *init_filter_args(), *rules.args())
    return JailPlan(unshare_net=False, steps=(), args=args, seccomp=seccomp, isolation=LANDLOCK,
                    security=tuple(rules.describe()))
