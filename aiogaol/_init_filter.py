"""The seccomp filter of the jail's init (PID 1), once the program runs.

Init builds the jail with every capability of the jail's user namespace; once the program has exec'd it
drops them all, sets no_new_privs and loads this filter, so that a bug in its small loop (poll a signalfd
and the lifeline, reap, forward signals, report the exit) cannot be turned into a mount, a ptrace or a
write to a host file.  The list is what that loop calls and nothing more; anything else is EPERM, which
the loop treats as any failure (it kills the jail and exits).  Native architecture only: any other
table kills init, and with it the jail.

Compiled once per process with libseccomp (the loader of ``_seccomp``), handed to init as hex in the
plan's own arguments (``--init-filter``), so no extra fd travels with each spawn.
"""

from __future__ import annotations

import errno
import functools
import os

from ._errors import SandboxSetupError

_ACT_ALLOW = 0x7FFF0000
_ACT_KILL_PROCESS = 0x80000000
_ATTR_ACT_BADARCH = 2
_ATTR_CTL_NNP = 3

# What init calls after the program's exec (aiogaol/_native/jail.c, run_init, kill_children, mark_lifeline).
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


def _act_errno(err: int) -> int:
    return 0x00050000 | (err & 0xFFFF)


@functools.cache
def init_filter() -> bytes:
    """The BPF program (``struct sock_filter`` array) init loads on itself; raises SandboxSetupError."""
    from ._seccomp import _load  # libseccomp through cffi's ABI mode, loaded once

    ffi, lib = _load()
    ctx = lib.seccomp_init(_act_errno(errno.EPERM))
    if ctx == ffi.NULL:
        raise SandboxSetupError("compile init's seccomp filter", errno.ENOMEM, "seccomp_init")
    try:
        def check(rc: int, what: str) -> None:
            if rc < 0:
                raise SandboxSetupError("compile init's seccomp filter", -rc, what)

        check(lib.seccomp_attr_set(ctx, _ATTR_ACT_BADARCH, _ACT_KILL_PROCESS), "bad-arch action")
        check(lib.seccomp_attr_set(ctx, _ATTR_CTL_NNP, 0), "no_new_privs attribute")  # init sets it
        empty = ffi.new("struct scmp_arg_cmp[]", [(0, 0, 0, 0)])
        for name in INIT_SYSCALLS:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                continue  # not a call of this architecture (open, poll on arm64): init never makes it
            check(lib.seccomp_rule_add_array(ctx, _ACT_ALLOW, nr, 0, empty), name)
        fd = os.memfd_create("aiogaol-init-seccomp", os.MFD_CLOEXEC)
        try:
            check(lib.seccomp_export_bpf(ctx, fd), "export")
            data = os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)
    if not data or len(data) % 8 or len(data) > 256 * 8:
        raise SandboxSetupError("compile init's seccomp filter", errno.EINVAL, f"exported {len(data)} bytes")
    return bytes(data)


def init_filter_args() -> tuple[str, str]:
    """The helper's arguments that hand init its filter."""
    return ("--init-filter", init_filter().hex())
