"""The seccomp filter of the jail's init (PID 1), once the program runs.

Init builds the jail with every capability of the jail's user namespace; once the program has exec'd it
drops them all, sets no_new_privs and loads this filter, so that a bug in its small loop (poll a signalfd
and the lifeline, reap, forward signals, report the exit) cannot be turned into a mount, a ptrace or a
write to a host file.  The list is what that loop calls and nothing more; anything else is EPERM, which
the loop treats as any failure (it kills the jail and exits).  Native architecture only: any other
table kills init, and with it the jail.

Compiled once per process with libseccomp (``_seccomp``'s compiler), handed to init as hex in the
plan's own arguments (``--init-filter``), so no extra fd travels with each spawn.
"""

from __future__ import annotations

import errno
import functools

from ._errors import SandboxSetupError

# What init calls after the program's exec (aiogaol/_native/init.c: run_init, kill_children; wire.c: mark_lifeline).
INIT_SYSCALLS = (
    "poll", "ppoll",  # the signalfd and the lifeline (glibc picks one or the other)
    "read",  # signalfd records, /proc/PID/stat in the fallback's kill_children
    "write",  # TIME marks on the error pipe (--timings), before init closes it
    "close",
    "wait4", "waitid",  # reaping
    "kill",  # forwarding signals, killing the jail
    "sendto", "sendmsg",  # EXIT and TIME records on the lifeline
    "clock_gettime",  # marks (the vDSO fallback)
    "openat", "open", "getdents64",  # /proc in the fallback's kill_children
    "exit", "exit_group", "rt_sigreturn", "restart_syscall",
)
INIT_MAX_INSNS = 256  # the size of init's buffer for it (init_insns in aiogaol/_native/wire.c)
_STEP = "compile init's seccomp filter"


@functools.cache
def init_filter() -> bytes:
    """The BPF program (``struct sock_filter`` array) init loads on itself; raises SandboxSetupError.
    Built with the program filter's compiler (``_seccomp._Filter``): native architecture only, other
    tables kill, and a name not on this architecture (open, poll on arm64) is left out, as init never
    makes that call."""
    from ._seccomp import ACT_ALLOW, _Filter, act_errno

    f = _Filter(act_errno(errno.EPERM), _STEP)
    try:
        for name in INIT_SYSCALLS:
            f.rule(ACT_ALLOW, name)
        data = f.export()
    finally:
        f.close()
    if len(data) > INIT_MAX_INSNS * 8:
        raise SandboxSetupError(_STEP, errno.E2BIG, f"{len(data) // 8} BPF instructions, over {INIT_MAX_INSNS}")
    return data


def init_filter_args() -> tuple[str, str]:
    """The helper's arguments that hand init its filter."""
    return ("--init-filter", init_filter().hex())
