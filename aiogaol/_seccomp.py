"""The seccomp wall: which kernel entry points a jailed program may reach, compiled to BPF once.

Policy (``SeccompPolicy``, plain data derived from a profile) is kept apart from compilation: one
description of the rules (``_rules``) is written into our own emitter (``compile_filter``, ``_bpf``: a
third of libseccomp's length, so a third of the kernel's cost to load it on every spawn) or into
libseccomp (``compile_filter_libseccomp``, through cffi's ABI mode: Debian ships ``libseccomp.so.2``
without headers, so nothing is compiled against it), the reference the emitter is tested against.
libseccomp also names every call (``resolve``).  The BPF bytes are cached per policy; each spawn only writes them into
a pipe that the helper reads, and the program loads them last, right before exec, with TSYNC.

The filter is an allow list, so it fails closed: a system call it was not written for, whether newer than
libseccomp's table, newer than this module or not yet in any kernel, is not reached.  The list is in the
class of Docker's default profile (the anchor; see docs/security.md for what we add and remove, and why)
and has three answers besides "allowed":

* ENOSYS, the default, for every number not in the list: "this kernel has no such call", the answer that
  makes libc and runtimes fall back to the older interface (glibc from clone3 to clone, liburing to
  read/write, libmount from statmount to /proc/self/mountinfo).  Calls we know and leave out because an
  older equivalent exists (``DENIED_ENOSYS``) get it too.
* EPERM for calls we know and refuse because they reach past the jail (``DENIED_EPERM``), and for
  allowed calls with refused arguments: EPERM is what the kernel itself answers without the capability,
  so programs that probe (systemd-detect-virt, container runtimes, test suites) take their "not allowed"
  path instead of a fallback that would be refused again.
* Kill, for any architecture but the native one (i386 through ``int 0x80``, x32 numbers on x86-64): a
  second syscall table is a second way around every rule.

libseccomp 2.5.4 (Debian 12) cannot resolve names newer than its table (``statmount``, ``mseal``,
``open_tree_attr``...).  An allowed name it cannot resolve would be silently missing, so the few names
this module needs beyond that table carry their numbers from the kernel's tables (``_NUMBERS``, for x86_64
and aarch64 only, checked against the native architecture); ``resolve`` says for every name whether it
came from libseccomp, from ``_NUMBERS``, does not exist on this architecture, or is unknown, and a test
checks that no listed name is unknown.

Arguments the kernel reads as 32-bit ``int``/``unsigned int`` (ioctl request, personality, socket type
and protocol) are compared through a 0xffffffff mask: libseccomp compares 64 bits, and garbage in the
upper half would otherwise slip past an equality rule (CVE-2019-10063 in Flatpak's TIOCSTI rule).
Socket families are compared on all 64 bits instead, and a family with anything in the upper half is
refused (libc never sends one), which saves the rules of a 32-bit complement.
A call's rules are disjoint, so they read the same in order, first match deciding (the emitter), as with
no order (libseccomp).  "Anything but these values" is one rule (``rule_not_in``); libseccomp, which
allows one comparison per argument per rule and lets a rule without arguments override every rule with
arguments for the same call, gets one rule per aligned block of the other values (``complement_blocks``).
"""

from __future__ import annotations

import errno
import functools
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _bpf
from ._errors import SandboxSetupError

if TYPE_CHECKING:
    from ._profile import Profile

# Action values, from seccomp.h (hard-coded: the headers are not installed).
ACT_ALLOW = 0x7FFF0000
ACT_KILL_PROCESS = 0x80000000


def act_errno(err: int) -> int:
    return 0x00050000 | (err & 0xFFFF)


# enum scmp_filter_attr and enum scmp_compare
_ATTR_ACT_BADARCH = 2
_ATTR_CTL_NNP = 3
_ATTR_CTL_OPTIMIZE = 8  # 2: dispatch on the syscall number through a binary tree, not a linear chain
_CMP_EQ = 4
_CMP_GE = 5
_CMP_MASKED_EQ = 7

# AUDIT_ARCH_* values, which libseccomp uses as its architecture tokens.
ARCH_X86_64 = 0xC000003E
ARCH_AARCH64 = 0xC00000B7
_ARCH_NAMES = {ARCH_X86_64: "x86_64", ARCH_AARCH64: "aarch64"}

_CDEF = """
typedef void *scmp_filter_ctx;
struct scmp_arg_cmp { unsigned int arg; int op; uint64_t datum_a; uint64_t datum_b; };
struct scmp_version { unsigned int major; unsigned int minor; unsigned int micro; };
scmp_filter_ctx seccomp_init(uint32_t def_action);
void seccomp_release(scmp_filter_ctx ctx);
int seccomp_attr_set(scmp_filter_ctx ctx, int attr, uint32_t value);
int seccomp_syscall_resolve_name(const char *name);
uint32_t seccomp_arch_native(void);
int seccomp_rule_add_array(scmp_filter_ctx ctx, uint32_t action, int syscall, unsigned int arg_cnt,
                           const struct scmp_arg_cmp *arg_array);
int seccomp_export_bpf(const scmp_filter_ctx ctx, int fd);
const struct scmp_version *seccomp_version(void);
"""

# Flags of clone/unshare that make a namespace.  CLONE_NEWTIME (0x80) is only valid for unshare and
# clone3: in clone's flags that byte is the exit signal.
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080
_CLONE_NS_FLAGS = (CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID,
                   CLONE_NEWNET)

TIOCSTI = 0x5412
TIOCLINUX = 0x541C

AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
NETLINK_ROUTE = 0
_AF_LIMIT = 64  # above the kernel's AF_MAX (46 in 6.x): families added later are refused too
SOCK_STREAM = 1
_SOCK_TYPE_MASK = 0xF
IPPROTO_IP, IPPROTO_TCP, IPPROTO_SCTP, IPPROTO_MPTCP = 0, 6, 132, 262
MSG_FASTOPEN = 0x20000000

# personality(2): Docker's allowed values are combinations of PER_LINUX32 and UNAME26, and the query.
_PERSONALITY_ALLOWED_BITS = 0x0008 | 0x0020000
_PERSONALITY_QUERY = 0xFFFFFFFF
PERSONALITY_ALLOWED = (0, 0x0008, 0x0020000, 0x0020008, _PERSONALITY_QUERY)
_LOW32 = 0xFFFFFFFF
_FULL64 = 0xFFFFFFFFFFFFFFFF

# The allow list, by group.  Only names of 64-bit native ABIs: the filter holds the native architecture
# alone.  A name that does not exist on the running architecture (``open`` on aarch64) is simply absent.
ALLOWED: dict[str, tuple[str, ...]] = {
    "processes and threads": (
        "fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4", "waitid", "kill", "tkill",
        "tgkill", "getpid", "getppid", "gettid", "getpgid", "getpgrp", "setpgid", "getsid", "setsid",
        "set_tid_address", "set_robust_list", "get_robust_list", "rseq", "futex", "futex_waitv",
        "futex_wake", "futex_wait", "futex_requeue", "prctl", "arch_prctl", "set_thread_area",
        "get_thread_area", "restart_syscall", "membarrier", "getcpu", "pidfd_open", "pidfd_send_signal",
        "pidfd_getfd", "process_mrelease", "getrusage", "times", "seccomp", "landlock_create_ruleset",
        "landlock_add_rule", "landlock_restrict_self", "capget", "capset", "uretprobe", "uprobe",
    ),
    "debugging one's own processes": ("ptrace", "process_vm_readv", "process_vm_writev"),
    "scheduling and priority": (
        "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getattr", "sched_setattr",
        "sched_getparam", "sched_setparam", "sched_getscheduler", "sched_setscheduler",
        "sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval", "getpriority",
        "setpriority", "ioprio_get", "ioprio_set",
    ),
    "credentials": (
        "getuid", "geteuid", "getgid", "getegid", "getgroups", "setgroups", "getresuid", "getresgid",
        "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid", "setfsgid",
    ),
    "signals": (
        "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigsuspend",
        "rt_sigtimedwait", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "sigaltstack", "signalfd", "signalfd4",
        "pause", "alarm",
    ),
    "memory": (
        "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "mincore", "msync", "mlock", "mlock2",
        "munlock", "mlockall", "munlockall", "remap_file_pages", "memfd_create", "memfd_secret",
        "pkey_alloc", "pkey_free", "pkey_mprotect", "map_shadow_stack", "get_mempolicy", "set_mempolicy",
        "mbind", "set_mempolicy_home_node",
    ),
    "file descriptors and I/O": (
        "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2",
        "pwritev2", "close", "close_range", "dup", "dup2", "dup3", "lseek", "fcntl", "flock", "fsync",
        "fdatasync", "sync", "syncfs", "sync_file_range", "ftruncate", "fallocate", "fadvise64",
        "readahead", "sendfile", "splice", "tee", "vmsplice", "copy_file_range", "cachestat", "pipe",
        "pipe2",
    ),
    "paths and metadata": (
        "open", "openat", "openat2", "creat", "stat", "fstat", "lstat", "newfstatat", "statx", "statfs",
        "fstatfs", "access", "faccessat", "faccessat2", "chdir", "fchdir", "getcwd", "mkdir", "mkdirat",
        "rmdir", "rename", "renameat", "renameat2", "link", "linkat", "unlink", "unlinkat", "symlink",
        "symlinkat", "readlink", "readlinkat", "chmod", "fchmod", "fchmodat", "fchmodat2", "chown",
        "fchown", "lchown", "fchownat", "umask", "truncate", "utime", "utimes", "utimensat", "futimesat",
        "mknod", "mknodat", "getdents", "getdents64", "getxattr", "lgetxattr", "fgetxattr", "setxattr",
        "lsetxattr", "fsetxattr", "listxattr", "llistxattr", "flistxattr", "removexattr", "lremovexattr",
        "fremovexattr", "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
    ),
    "waiting and events": (
        "select", "pselect6", "poll", "ppoll", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait",
        "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2", "timerfd_create", "timerfd_settime",
        "timerfd_gettime", "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents",
        "io_pgetevents",
    ),
    "sockets (socket() and socketpair() by argument, below)": (
        "bind", "connect", "accept", "accept4", "getsockname", "getpeername", "getsockopt", "setsockopt",
        "recvfrom", "recvmsg", "recvmmsg", "shutdown",
    ),
    "time": (
        "clock_gettime", "clock_getres", "clock_nanosleep", "gettimeofday", "time", "nanosleep",
        "getitimer", "setitimer", "timer_create", "timer_settime", "timer_gettime", "timer_getoverrun",
        "timer_delete",
    ),
    "system information and limits": ("uname", "sysinfo", "getrlimit", "setrlimit", "prlimit64", "getrandom"),
}

# Allowed in the namespace jail, where they act on the jail's own IPC and UTS namespaces; EPERM in the
# fallback, where System V IPC, POSIX message queues and the host name are the host's.
HOST_NAMESPACED = (
    "shmget", "shmat", "shmctl", "shmdt", "semget", "semop", "semtimedop", "semctl", "msgget", "msgsnd",
    "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify",
    "mq_getsetattr", "sethostname", "setdomainname",
)

# Allowed, but only with some argument values (the rules are in compile_filter).
BY_ARGUMENT: dict[str, str] = {
    "clone": "flags (arg 0) without a namespace flag (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, "
             "NEWPID, NEWNET); with one: EPERM",
    "unshare": "flags (arg 0) without a namespace flag (the same, and CLONE_NEWTIME); with one: EPERM",
    "ioctl": "request (arg 1, low 32 bits) other than TIOCSTI and TIOCLINUX (terminal injection): EPERM",
    "personality": "persona (arg 0, low 32 bits) PER_LINUX, PER_LINUX32, UNAME26, PER_LINUX32 with UNAME26 or "
                   "the query 0xffffffff; anything else (READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE...) falls to the "
                   "default, ENOSYS, as in Docker's profile, which lists only these values",
    "socket": "family (arg 0) among the profile's (below); any other family: EPERM",
    "socketpair": "family (arg 0) AF_UNIX; any other: EPERM",
    "listen": "refused (EPERM) beside Tcp(port) rules: it binds an ephemeral port Landlock does not see",
    "sendto": "flags without MSG_FASTOPEN beside Tcp(port) rules (a connect past Landlock's hook): EPERM",
    "sendmsg": "the same as sendto",
    "sendmmsg": "the same as sendto",
}

# Known and refused with EPERM: what a jailed program has no business with.
DENIED_EPERM: dict[str, tuple[str, ...]] = {
    "namespaces, mounts, root changes": (
        "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "open_tree_attr",
        "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    ),
    "keyrings (not namespaced)": ("keyctl", "add_key", "request_key"),
    "large kernel surfaces with a record of privilege escalations": ("bpf", "perf_event_open", "userfaultfd"),
    "the kernel itself": (
        "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot", "iopl",
        "ioperm", "modify_ldt", "acct", "swapon", "swapoff", "syslog", "quotactl", "quotactl_fd",
        "lookup_dcookie", "uselib", "vhangup", "nfsservctl", "_sysctl",
    ),
    "the host's clock": ("settimeofday", "clock_settime", "clock_adjtime", "adjtimex"),
    "file handles open any inode of a mounted file system, outside every bind (the \"shocker\" escape)": (
        "open_by_handle_at", "name_to_handle_at",
    ),
}

# Known and left out with ENOSYS (the default's answer, so no rule is needed): callers fall back to an
# older interface that the list allows.
DENIED_ENOSYS: dict[str, tuple[str, ...]] = {
    "clone3: its flags sit in memory a filter cannot read; glibc falls back to clone": ("clone3",),
    "io_uring: a second, unfiltered system call interface; liburing users fall back to read/write": (
        "io_uring_setup", "io_uring_enter", "io_uring_register",
    ),
    "mount listing by id (can name other mount namespaces); /proc/self/mountinfo says the same": (
        "statmount", "listmount",
    ),
    "LSM attributes; /proc/self/attr says the same": (
        "lsm_get_self_attr", "lsm_set_self_attr", "lsm_list_modules",
    ),
    "newer than libseccomp 2.5.4 with an older equivalent in the list (fsetxattr..., the FS_IOC_FS*XATTR "
    "ioctls), or an optional hardening a caller skips (mseal)": (
        "setxattrat", "getxattrat", "listxattrat", "removexattrat", "file_getattr", "file_setattr", "mseal",
    ),
}

# Numbers for names libseccomp 2.5.4 cannot resolve, from the kernel's syscall tables.  Since 5.1 every
# architecture shares the numbers of new calls (424 on); uretprobe and uprobe are x86-64 only.  A newer
# libseccomp resolves them itself and takes precedence (a test checks that the two agree).
_COMMON_NEW = {
    "statmount": 457, "listmount": 458, "lsm_get_self_attr": 459, "lsm_set_self_attr": 460,
    "lsm_list_modules": 461, "mseal": 462, "setxattrat": 463, "getxattrat": 464, "listxattrat": 465,
    "removexattrat": 466, "open_tree_attr": 467, "file_getattr": 468, "file_setattr": 469,
}
_NUMBERS: dict[int, dict[str, int]] = {
    ARCH_X86_64: {**_COMMON_NEW, "uretprobe": 335, "uprobe": 336},
    ARCH_AARCH64: dict(_COMMON_NEW),
}


def allowed_names() -> tuple[str, ...]:
    """Every name the filter may allow (unconditionally, by argument, or in the jail only)."""
    return (*(n for group in ALLOWED.values() for n in group), *BY_ARGUMENT, *HOST_NAMESPACED)


def eperm_names() -> tuple[str, ...]:
    return tuple(n for group in DENIED_EPERM.values() for n in group)


def enosys_names() -> tuple[str, ...]:
    return tuple(n for group in DENIED_ENOSYS.values() for n in group)


@dataclass(frozen=True)
class SeccompPolicy:
    """What the filter lets through beyond the fixed lists; derived from a profile, hashable."""

    families: frozenset[int]  # socket families socket() may create
    tcp_only: bool = False  # AF_INET/AF_INET6 only as plain TCP, no listen, no TCP Fast Open
    unix_socket: bool = True  # socket(AF_UNIX); socketpair(AF_UNIX) is always allowed
    host_ipc_denied: bool = False  # EPERM for HOST_NAMESPACED (no IPC or UTS namespace: the fallback)
    netlink_route_only: bool = False  # AF_NETLINK sockets of NETLINK_ROUTE only (the private loopback)


class SeccompUnavailable(SandboxSetupError):
    """libseccomp cannot be loaded, so no filter can be built: refuse rather than run unfiltered."""


_lock = threading.Lock()
_lib: Any = None
_ffi: Any = None


def _load() -> tuple[Any, Any]:
    """The loaded cffi (ffi, lib) of libseccomp.so.2, once per process; raises SeccompUnavailable."""
    global _lib, _ffi
    with _lock:
        if _lib is None:
            import cffi

            ffi = cffi.FFI()
            ffi.cdef(_CDEF)
            try:
                lib = ffi.dlopen("libseccomp.so.2")
            except OSError as e:
                raise SeccompUnavailable(
                    "load libseccomp", errno.ENOENT,
                    f"libseccomp.so.2 ({e}); install it (Debian: apt-get install libseccomp2): aiogaol does "
                    "not start a jail without its seccomp filter") from None
            _ffi, _lib = ffi, lib
    return _ffi, _lib


def libseccomp_version() -> str | None:
    """The loaded libseccomp's version, or None when it cannot be loaded (for ``aiogaol.check()``)."""
    try:
        _, lib = _load()
    except SeccompUnavailable:
        return None
    v = lib.seccomp_version()
    return f"{v.major}.{v.minor}.{v.micro}"


def native_arch() -> int:
    """The native architecture's token; the filter is only written for x86_64 and aarch64 (where clone's
    flags are its first argument and ``_NUMBERS`` holds the new calls), so any other refuses to build."""
    _, lib = _load()
    arch = int(lib.seccomp_arch_native())
    if arch not in _ARCH_NAMES:
        raise SandboxSetupError("compile seccomp filter", errno.ENOSYS,
                                f"architecture 0x{arch:08x}: the filter is written for x86_64 and aarch64 only")
    return arch


def resolve(name: str) -> tuple[str, int | None]:
    """How a name becomes a number here: ("libseccomp", nr), ("number", nr) from ``_NUMBERS``,
    ("absent", None) when the call does not exist on this architecture, or ("unknown", None)."""
    _, lib = _load()
    nr = int(lib.seccomp_syscall_resolve_name(name.encode()))
    if nr >= 0:
        return "libseccomp", nr
    if nr != -1:
        return "absent", None  # a pseudo-number: libseccomp knows the call is not on this architecture
    known = _NUMBERS.get(native_arch(), {}).get(name)
    return ("number", known) if known is not None else ("unknown", None)


class _Filter:
    """A libseccomp context, for the length of one compilation: the program's filter (unknown numbers
    ENOSYS) or, with another ``default`` and ``step``, init's own (``_init_filter``)."""

    def __init__(self, default: int = act_errno(errno.ENOSYS), step: str = "compile seccomp filter") -> None:
        self.ffi, self.lib = _load()
        self.step = step
        native_arch()
        self.ctx = self.lib.seccomp_init(default)
        if self.ctx == self.ffi.NULL:
            raise SandboxSetupError(step, errno.ENOMEM, "seccomp_init")
        self._check(self.lib.seccomp_attr_set(self.ctx, _ATTR_ACT_BADARCH, ACT_KILL_PROCESS), "bad-arch action")
        # The helper sets no_new_privs itself, before Landlock; the exported bytes do not carry it.
        self._check(self.lib.seccomp_attr_set(self.ctx, _ATTR_CTL_NNP, 0), "no_new_privs attribute")
        self._check(self.lib.seccomp_attr_set(self.ctx, _ATTR_CTL_OPTIMIZE, 2), "binary tree attribute")

    def _check(self, rc: int, what: str) -> None:
        if rc < 0:
            raise SandboxSetupError(self.step, -rc, what)

    def rule(self, action: int, name: str, *cmps: tuple[int, int, int, int]) -> None:
        _how, nr = resolve(name)
        if nr is None:
            # Not on this architecture, or unknown: not allowed either way, since the default refuses it
            # (the test of the lists makes sure no name we rely on is unknown).
            return
        arr = self.ffi.new("struct scmp_arg_cmp[]", list(cmps) or [(0, 0, 0, 0)])
        self._check(self.lib.seccomp_rule_add_array(self.ctx, action, nr, len(cmps), arr), name)

    def rule_not_in(self, action: int, name: str, test: tuple[int, int, frozenset[int]],
                    *cmps: tuple[int, int, int, int]) -> None:
        """action when ``arg & mask`` is none of values (and cmps hold): one rule per aligned block of
        the other values (``complement_blocks``).  A full 64-bit mask takes values below _AF_LIMIT only:
        the blocks below it with the upper bits clear, and one comparison for everything from it up."""
        arg, mask, values = test
        if mask == _FULL64:
            if any(not 0 <= v < _AF_LIMIT for v in values):
                raise ValueError(f"{name}: a full-width exclusion is written for values below {_AF_LIMIT}")
            upper = _FULL64 & ~(_AF_LIMIT - 1)
            for block, start in complement_blocks(values, _AF_LIMIT.bit_length() - 1):
                self.rule(action, name, *cmps, _masked(arg, upper | block, start))
            self.rule(action, name, *cmps, _ge(arg, _AF_LIMIT))
            return
        if mask & (mask + 1):
            raise ValueError(f"{name}: mask 0x{mask:x} is not a run of low bits")
        for block, start in complement_blocks(values, mask.bit_length()):
            self.rule(action, name, *cmps, _masked(arg, block, start))

    def export(self) -> bytes:
        fd = os.memfd_create("aiogaol-seccomp", os.MFD_CLOEXEC)
        try:
            self._check(self.lib.seccomp_export_bpf(self.ctx, fd), "export")
            size = os.fstat(fd).st_size
            data = os.pread(fd, size, 0)
        finally:
            os.close(fd)
        if not data or len(data) % 8:
            raise SandboxSetupError(self.step, errno.EINVAL, f"exported {len(data)} bytes")
        if len(data) // 8 > 4096:
            raise SandboxSetupError(self.step, errno.E2BIG,
                                    f"{len(data) // 8} BPF instructions, over BPF_MAXINSNS (4096)")
        return data

    def close(self) -> None:
        self.lib.seccomp_release(self.ctx)


class _Rules:
    """The same rules as ``_Filter`` takes, kept for ``_bpf.emit_filter`` (the program filter's own
    compiler): per number, in order, the first that matches deciding (the rules of a call are disjoint,
    so that libseccomp, which has no order, reads them the same; the emitter test checks it)."""

    def __init__(self, default: int = act_errno(errno.ENOSYS)) -> None:
        self.default = default
        self.arch = native_arch()
        self.table: dict[int, list[tuple[int, tuple[Any, ...]]]] = {}

    def _add(self, action: int, name: str, conds: tuple[Any, ...]) -> None:
        _how, nr = resolve(name)
        if nr is None:
            return  # as in _Filter.rule: the default refuses it
        rules = self.table.setdefault(nr, [])
        if rules and not rules[-1][1]:
            raise ValueError(f"{name}: a rule after one that matches every argument")
        if not conds and rules:
            # libseccomp lets a rule without arguments override the others; no rule here relies on it.
            raise ValueError(f"{name}: a rule for every argument after rules by argument")
        rules.append((action, conds))

    def rule(self, action: int, name: str, *cmps: tuple[int, int, int, int]) -> None:
        self._add(action, name, tuple(cmps))

    def rule_not_in(self, action: int, name: str, test: tuple[int, int, frozenset[int]],
                    *cmps: tuple[int, int, int, int]) -> None:
        arg, mask, values = test
        self._add(action, name, (*cmps, (arg, _bpf.CMP_NOT_IN, mask, frozenset(values))))

    def export(self) -> bytes:
        table: dict[int, Any] = {nr: rules[0][0] if len(rules) == 1 and not rules[0][1] else rules
                                 for nr, rules in self.table.items()}
        return _bpf.emit_filter(self.arch, table, self.default, ACT_KILL_PROCESS)

    def close(self) -> None:
        pass


def _low32(arg: int, value: int) -> tuple[int, int, int, int]:
    """arg's lower 32 bits equal value (how the kernel reads an int argument)."""
    return (arg, _CMP_MASKED_EQ, _LOW32, value)


def _masked(arg: int, mask: int, value: int) -> tuple[int, int, int, int]:
    return (arg, _CMP_MASKED_EQ, mask, value)


def _eq(arg: int, value: int) -> tuple[int, int, int, int]:
    """arg equals value on all 64 bits."""
    return (arg, _CMP_EQ, value, 0)


def _ge(arg: int, value: int) -> tuple[int, int, int, int]:
    """arg is at least value, unsigned on all 64 bits."""
    return (arg, _CMP_GE, value, 0)


def complement_blocks(values: frozenset[int] | set[int], bits: int = 32) -> list[tuple[int, int]]:
    """The ``bits``-wide numbers not in values, as (mask, start) pairs: ``x & mask == start`` is one
    aligned block of them, and the blocks together cover exactly the complement (about ``bits`` blocks
    per value excluded)."""
    full = (1 << bits) - 1
    out: list[tuple[int, int]] = []

    def walk(start: int, width: int, inside: list[int]) -> None:
        if not inside:
            out.append((full & ~((1 << width) - 1), start))
            return
        if width == 0:
            return  # this very value is excluded
        half = 1 << (width - 1)
        walk(start, width - 1, [v for v in inside if v < start + half])
        walk(start + half, width - 1, [v for v in inside if v >= start + half])

    walk(0, bits, sorted(v for v in values if 0 <= v <= full))
    return out


@functools.lru_cache(maxsize=64)
def compile_filter(policy: SeccompPolicy) -> bytes:
    """The BPF program (``struct sock_filter`` array) for a policy, from our own emitter (``_bpf``: a
    search tree over the numbers, a third of libseccomp's length); raises SeccompUnavailable."""
    try:
        return _rules(policy, _Rules())
    except _bpf.FilterTooLarge as e:
        raise SandboxSetupError("compile seccomp filter", errno.E2BIG, str(e)) from None


@functools.lru_cache(maxsize=64)
def compile_filter_libseccomp(policy: SeccompPolicy) -> bytes:
    """The same rules compiled by libseccomp: the reference the emitter's output is checked against."""
    return _rules(policy, _Filter())


def _rules(policy: SeccompPolicy, f: Any) -> bytes:
    """The one description of the program filter, written into either compiler's ``f``."""
    try:
        eperm = act_errno(errno.EPERM)
        for group in ALLOWED.values():
            for name in group:
                f.rule(ACT_ALLOW, name)
        for name in eperm_names():
            f.rule(eperm, name)
        for name in HOST_NAMESPACED:
            f.rule(eperm if policy.host_ipc_denied else ACT_ALLOW, name)
        _clone(f, eperm)
        # Terminal injection into whoever shares our terminal.
        for request in (TIOCSTI, TIOCLINUX):
            f.rule(eperm, "ioctl", _low32(1, request))
        f.rule_not_in(ACT_ALLOW, "ioctl", (1, _LOW32, frozenset({TIOCSTI, TIOCLINUX})))
        _personality(f)
        _sockets(f, policy, eperm)
        return bytes(f.export())
    finally:
        f.close()


def _clone(f: Any, action: int) -> None:
    """clone and unshare without namespace flags; with one, EPERM (one rule per flag, since a rule can
    test an argument once).  The masks leave the upper half alone: clone reads 32 bits of its flags,
    unshare reads them all, and every namespace flag is in the lower half."""
    ns = 0
    for flag in _CLONE_NS_FLAGS:
        ns |= flag
        f.rule(action, "clone", _masked(0, flag, flag))
    f.rule(ACT_ALLOW, "clone", _masked(0, ns, 0))
    for flag in (*_CLONE_NS_FLAGS, CLONE_NEWTIME):
        f.rule(action, "unshare", _masked(0, flag, flag))
    f.rule(ACT_ALLOW, "unshare", _masked(0, ns | CLONE_NEWTIME, 0))


def _personality(f: Any) -> None:
    """Only PER_LINUX, PER_LINUX32, UNAME26 and the query, as in Docker's profile: READ_IMPLIES_EXEC,
    MMAP_PAGE_ZERO and the address-space flags weaken exploit mitigations for the program and everything
    it runs.  Every other value falls to the filter's default (ENOSYS), as in Docker's profile, which
    lists only the allowed values: refusing them with EPERM instead took 60 more rules (a rule can test an
    argument once, and libseccomp's catch-all for a call overrides its argument rules), 191 of the
    filter's 868 instructions, about 0.05 ms of every spawn's filter load."""
    for value in PERSONALITY_ALLOWED:
        f.rule(ACT_ALLOW, "personality", _low32(0, value))


def _families(f: Any, action: int, name: str, allowed: set[int]) -> None:
    """action for every family value not in allowed (all below _AF_LIMIT).  The allowed families are
    compared on all 64 bits, so a value with garbage in its upper half is refused too (libc never sends
    one)."""
    f.rule_not_in(action, name, (0, _FULL64, frozenset(allowed)))


def _sockets(f: Any, policy: SeccompPolicy, action: int) -> None:
    allowed = set(policy.families)
    if not policy.unix_socket:
        allowed.discard(AF_UNIX)
    for family in sorted(allowed):
        if family in (AF_INET, AF_INET6) and policy.tcp_only:
            # Plain TCP only: SOCK_STREAM also makes SCTP and MPTCP sockets, which Landlock's TCP rules
            # may not cover.  Other protocols with SOCK_STREAM fall to the default (ENOSYS).
            for proto in (IPPROTO_IP, IPPROTO_TCP):
                f.rule(ACT_ALLOW, "socket", _eq(0, family), _masked(1, _SOCK_TYPE_MASK, SOCK_STREAM),
                       _low32(2, proto))
            for proto in (IPPROTO_SCTP, IPPROTO_MPTCP):
                f.rule(action, "socket", _eq(0, family), _masked(1, _SOCK_TYPE_MASK, SOCK_STREAM),
                       _low32(2, proto))
            f.rule_not_in(action, "socket", (1, _SOCK_TYPE_MASK, frozenset({SOCK_STREAM})), _eq(0, family))
        elif family == AF_NETLINK and policy.netlink_route_only:
            f.rule(ACT_ALLOW, "socket", _eq(0, family), _eq(2, NETLINK_ROUTE))
            f.rule(action, "socket", _eq(0, family), _ge(2, NETLINK_ROUTE + 1))
        else:
            f.rule(ACT_ALLOW, "socket", _eq(0, family))
    if allowed:
        _families(f, action, "socket", allowed)
    else:
        f.rule(action, "socket")
    f.rule(ACT_ALLOW, "socketpair", _eq(0, AF_UNIX))
    _families(f, action, "socketpair", {AF_UNIX})
    if policy.tcp_only:
        # listen() on an unbound socket binds an ephemeral port without a bind() that Landlock sees.
        f.rule(action, "listen")
        # TCP Fast Open connects from sendto/sendmsg, past the connect hook Landlock checks.
        for name, arg in (("sendto", 3), ("sendmsg", 2), ("sendmmsg", 3)):
            f.rule(action, name, _masked(arg, MSG_FASTOPEN, MSG_FASTOPEN))
            f.rule(ACT_ALLOW, name, _masked(arg, MSG_FASTOPEN, 0))
    else:
        for name in ("listen", "sendto", "sendmsg", "sendmmsg"):
            f.rule(ACT_ALLOW, name)


def policy_for(profile: "Profile", *, jail: bool) -> SeccompPolicy:
    """The socket kinds a profile's ``NetworkOutbound`` rules need, and nothing more.

    Without ``AllAddresses`` or ``Tcp`` rules the jail has a private network namespace; with the profile's
    ``loopback`` on (the default) it holds a loopback of its own, so AF_INET/AF_INET6 (which reach nothing
    else) and AF_NETLINK of NETLINK_ROUTE (getifaddrs, node's os.networkInterfaces) are allowed there.

    ``jail`` is False in the fallback, where there is no IPC, UTS or network namespace: System V IPC,
    message queues and the host name are then the host's and are denied, and so is ``socket(AF_UNIX)``,
    since Landlock (ABI 7) cannot restrict which socket path is connected to (``socketpair`` stays
    allowed); ``loopback`` opens nothing there, since the network is the host's.
    """
    from ._profile import AllAddresses, NetworkOutbound, Tcp

    families = {AF_UNIX}
    tcp_only = False
    route_only = False
    addresses = [op.address for op in profile.operations if isinstance(op, NetworkOutbound)]
    if any(isinstance(a, AllAddresses) for a in addresses):
        families |= {AF_INET, AF_INET6, AF_NETLINK}
    elif any(isinstance(a, Tcp) for a in addresses):
        families |= {AF_INET, AF_INET6}
        tcp_only = True
    elif jail and profile.loopback:
        families |= {AF_INET, AF_INET6, AF_NETLINK}
        route_only = True
    return SeccompPolicy(frozenset(families), tcp_only=tcp_only, unix_socket=jail, host_ipc_denied=not jail,
                         netlink_route_only=route_only)


def describe() -> str:
    """The filter's lists as the Markdown tables of docs/security.md; a test checks that the page holds
    exactly this text (between its seccomp-table markers), so the docs cannot drift from the code."""

    def names(group: tuple[str, ...]) -> str:
        return ", ".join(f"`{n}`" for n in group)

    unconditional = sum(len(g) for g in ALLOWED.values())
    lines = [f"**Allowed** ({len(allowed_names())} calls: {unconditional} as they are, "
             f"{len(HOST_NAMESPACED)} in the namespace jail only, {len(BY_ARGUMENT)} by argument):", "",
             "| group | calls |", "|---|---|"]
    lines += [f"| {title} ({len(group)}) | {names(group)} |" for title, group in ALLOWED.items()]
    lines += [f"| jail only: the jail's own IPC and UTS namespaces; EPERM in the fallback ({len(HOST_NAMESPACED)}) "
              f"| {names(HOST_NAMESPACED)} |", ""]
    lines += [f"**Allowed by argument** ({len(BY_ARGUMENT)} calls):", "", "| call | allowed when |", "|---|---|"]
    lines += [f"| `{name}` | {rule} |" for name, rule in BY_ARGUMENT.items()]
    lines += ["", f"**Refused with EPERM** ({len(eperm_names())} calls):", "", "| why | calls |", "|---|---|"]
    lines += [f"| {why} ({len(group)}) | {names(group)} |" for why, group in DENIED_EPERM.items()]
    lines += ["", f"**Refused with ENOSYS** ({len(enosys_names())} calls named here, and every number not "
              "named in these tables):", "", "| why | calls |", "|---|---|"]
    lines += [f"| {why} ({len(group)}) | {names(group)} |" for why, group in DENIED_ENOSYS.items()]
    numbered = sorted({n for table in _NUMBERS.values() for n in table})
    lines += ["", f"Numbered by the module for libseccomp 2.5.4, which cannot resolve them ({len(numbered)}): "
              f"{names(tuple(numbered))}.", ""]
    return "\n".join(lines)
