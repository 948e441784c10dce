"""The seccomp wall: which kernel entry points a jailed program may not reach, compiled to BPF once.

Policy (``SeccompPolicy``, plain data derived from a profile) is kept apart from compilation
(``compile_filter``, libseccomp through cffi's ABI mode: Debian ships ``libseccomp.so.2`` without headers,
so nothing is compiled against it).  The BPF bytes are cached per policy; each spawn only writes them into
a pipe that the helper reads, and the program loads them last, right before exec, with TSYNC.

The filter is a deny list over a default of ALLOW, in the class of Docker's default profile and of
Flatpak's and bubblewrap's: what a jailed program has no business with (new namespaces, mounts, keyrings,
BPF, perf, userfaultfd, io_uring, module and kexec loading, raw I/O ports, clock setting, reboot,
open_by_handle_at, terminal injection) fails with EPERM (ENOSYS where callers are known to fall back).
Only the native architecture is in the filter; any other (i386 through ``int 0x80``, x32 numbers on
x86-64) kills the process, since a second syscall table is a second way around every rule.

Arguments the kernel reads as 32-bit ``int``/``unsigned int`` (socket family, ioctl request,
personality) are compared through a 0xffffffff mask: libseccomp compares 64 bits, and garbage in the
upper half would otherwise slip past an equality rule (CVE-2019-10063 in Flatpak's TIOCSTI rule).
libseccomp also allows one comparison per argument per rule, so "anything but these values" is written
as one rule per aligned block of forbidden values (socket families: seven rules deny every family but
AF_UNIX below 64, where one rule per value took sixty-three and made the filter twice as long to load)
or per forbidden bit (personality).
"""

from __future__ import annotations

import errno
import functools
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
_CMP_EQ = 4
_CMP_MASKED_EQ = 7

_CDEF = """
typedef void *scmp_filter_ctx;
struct scmp_arg_cmp { unsigned int arg; int op; uint64_t datum_a; uint64_t datum_b; };
struct scmp_version { unsigned int major; unsigned int minor; unsigned int micro; };
scmp_filter_ctx seccomp_init(uint32_t def_action);
void seccomp_release(scmp_filter_ctx ctx);
int seccomp_attr_set(scmp_filter_ctx ctx, int attr, uint32_t value);
int seccomp_syscall_resolve_name(const char *name);
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
_AF_LIMIT = 64  # above the kernel's AF_MAX (46 in 6.x), so families added later are denied too
SOCK_STREAM = 1
_SOCK_TYPE_MASK = 0xF
IPPROTO_SCTP = 132
IPPROTO_MPTCP = 262
MSG_FASTOPEN = 0x20000000

# personality(2): Docker's allowed values are combinations of PER_LINUX32 and UNAME26, and the query.
_PERSONALITY_ALLOWED_BITS = 0x0008 | 0x0020000
_PERSONALITY_QUERY = 0xFFFFFFFF
_LOW32 = 0xFFFFFFFF

# Always denied.  EPERM is what the kernel itself answers without the capability, so programs that
# probe (systemd-detect-virt, container runtimes, test suites) take their "not allowed" path.
DENIED_EPERM = (
    # namespaces, mounts, root changes
    "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr",
    # keyrings: not namespaced
    "keyctl", "add_key", "request_key",
    # large kernel attack surfaces with a record of privilege escalations
    "bpf", "perf_event_open", "userfaultfd",
    # the kernel itself
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
    "iopl", "ioperm", "modify_ldt", "acct", "swapon", "swapoff", "syslog", "quotactl", "quotactl_fd",
    "lookup_dcookie", "uselib", "vhangup", "nfsservctl", "_sysctl",
    # the host's clock
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    # file handles open any inode of a mounted file system, outside every bind (the "shocker" escape)
    "open_by_handle_at", "name_to_handle_at",
)
# ENOSYS: callers fall back to an older interface (glibc from clone3 to clone, liburing to read/write),
# and clone3's flags sit in memory that seccomp cannot read.
DENIED_ENOSYS = ("clone3", "io_uring_setup", "io_uring_enter", "io_uring_register")
# Without an IPC namespace (the fallback) System V IPC and POSIX message queues are the host's.
HOST_IPC = ("shmget", "shmat", "shmctl", "shmdt", "semget", "semop", "semtimedop", "semctl", "msgget",
            "msgsnd", "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive",
            "mq_notify", "mq_getsetattr")


@dataclass(frozen=True)
class SeccompPolicy:
    """What the filter lets through beyond the fixed deny list; derived from a profile, hashable."""

    families: frozenset[int]  # socket families socket() may create
    tcp_only: bool = False  # AF_INET/AF_INET6 only as plain TCP, no listen, no TCP Fast Open
    unix_socket: bool = True  # socket(AF_UNIX); socketpair(AF_UNIX) is always allowed
    host_ipc_denied: bool = False  # deny System V IPC and message queues (no IPC namespace)


class SeccompUnavailable(SandboxSetupError):
    """libseccomp cannot be loaded, so no filter can be built: refuse rather than run unfiltered."""


_lock = threading.Lock()
_lib: Any = None
_ffi: Any = None


def _load() -> tuple[Any, Any]:
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


class _Filter:
    """A libseccomp context, for the length of one compilation."""

    def __init__(self) -> None:
        self.ffi, self.lib = _load()
        self.ctx = self.lib.seccomp_init(ACT_ALLOW)
        if self.ctx == self.ffi.NULL:
            raise SandboxSetupError("compile seccomp filter", errno.ENOMEM, "seccomp_init")
        self._check(self.lib.seccomp_attr_set(self.ctx, _ATTR_ACT_BADARCH, ACT_KILL_PROCESS), "bad-arch action")
        # The helper sets no_new_privs itself, before Landlock; the exported bytes do not carry it.
        self._check(self.lib.seccomp_attr_set(self.ctx, _ATTR_CTL_NNP, 0), "no_new_privs attribute")

    def _check(self, rc: int, what: str) -> None:
        if rc < 0:
            raise SandboxSetupError("compile seccomp filter", -rc, what)

    def rule(self, action: int, name: str, *cmps: tuple[int, int, int, int]) -> None:
        nr = self.lib.seccomp_syscall_resolve_name(name.encode())
        if nr == -1:
            return  # unknown to this libseccomp: it cannot be called here either
        if nr < 0:
            return  # a pseudo-number: the call does not exist on this architecture
        arr = self.ffi.new("struct scmp_arg_cmp[]", list(cmps) or [(0, 0, 0, 0)])
        self._check(self.lib.seccomp_rule_add_array(self.ctx, action, nr, len(cmps), arr), name)

    def export(self) -> bytes:
        fd = os.memfd_create("aiogaol-seccomp", os.MFD_CLOEXEC)
        try:
            self._check(self.lib.seccomp_export_bpf(self.ctx, fd), "export")
            size = os.fstat(fd).st_size
            data = os.pread(fd, size, 0)
        finally:
            os.close(fd)
        if not data or len(data) % 8:
            raise SandboxSetupError("compile seccomp filter", errno.EINVAL, f"exported {len(data)} bytes")
        return data

    def close(self) -> None:
        self.lib.seccomp_release(self.ctx)


def _low32(arg: int, value: int) -> tuple[int, int, int, int]:
    """arg's lower 32 bits equal value (how the kernel reads an int argument)."""
    return (arg, _CMP_MASKED_EQ, _LOW32, value)


def _masked(arg: int, mask: int, value: int) -> tuple[int, int, int, int]:
    return (arg, _CMP_MASKED_EQ, mask, value)


@functools.lru_cache(maxsize=64)
def compile_filter(policy: SeccompPolicy) -> bytes:
    """The BPF program (``struct sock_filter`` array) for a policy; raises SeccompUnavailable."""
    f = _Filter()
    try:
        eperm, enosys = act_errno(errno.EPERM), act_errno(errno.ENOSYS)
        for name in DENIED_EPERM:
            f.rule(eperm, name)
        for name in DENIED_ENOSYS:
            f.rule(enosys, name)
        # New namespaces: one rule per flag, since a rule can test an argument only once.
        for flag in _CLONE_NS_FLAGS:
            f.rule(eperm, "clone", _masked(0, flag, flag))
        for flag in (*_CLONE_NS_FLAGS, CLONE_NEWTIME):
            f.rule(eperm, "unshare", _masked(0, flag, flag))
        # Terminal injection into whoever shares our terminal.
        for request in (TIOCSTI, TIOCLINUX):
            f.rule(eperm, "ioctl", _low32(1, request))
        _personality(f, eperm)
        _sockets(f, policy, eperm)
        if policy.host_ipc_denied:
            for name in HOST_IPC:
                f.rule(eperm, name)
        return f.export()
    finally:
        f.close()


def _personality(f: _Filter, action: int) -> None:
    """Only PER_LINUX, PER_LINUX32, UNAME26 and the query: READ_IMPLIES_EXEC, MMAP_PAGE_ZERO and the
    address-space flags weaken exploit mitigations for the program and everything it runs."""
    for bit in range(31):
        b = 1 << bit
        if not b & _PERSONALITY_ALLOWED_BITS:
            # bit set while bit 31 is clear: a real persona with a forbidden flag
            f.rule(action, "personality", _masked(0, b | 0x80000000, b))
        # bit 31 set with any bit clear: not the query 0xffffffff, so a forbidden value
        f.rule(action, "personality", _masked(0, b | 0x80000000, 0x80000000))


def aligned_blocks(values: frozenset[int], limit: int) -> list[tuple[int, int]]:
    """The values below limit (a power of two) as (start, size) blocks, each size a power of two and start
    a multiple of it: a block is one masked comparison, ``arg & ~(size - 1) == start``."""
    blocks: list[tuple[int, int]] = []
    start = 0
    while start < limit:
        if start not in values:
            start += 1
            continue
        size = 1
        while (start % (size * 2) == 0 and start + size * 2 <= limit
               and all(v in values for v in range(start + size, start + size * 2))):
            size *= 2
        blocks.append((start, size))
        start += size
    return blocks


def _deny_families(f: _Filter, action: int, name: str, allowed: set[int]) -> None:
    forbidden = frozenset(range(_AF_LIMIT)) - allowed
    for start, size in aligned_blocks(forbidden, _AF_LIMIT):
        f.rule(action, name, _masked(0, _LOW32 & ~(size - 1), start))


def _sockets(f: _Filter, policy: SeccompPolicy, action: int) -> None:
    allowed = set(policy.families)
    if not policy.unix_socket:
        allowed.discard(AF_UNIX)
    _deny_families(f, action, "socket", allowed)
    _deny_families(f, action, "socketpair", {AF_UNIX})
    if policy.tcp_only:
        for family in (AF_INET, AF_INET6):
            if family not in allowed:
                continue
            kinds = frozenset(range(_SOCK_TYPE_MASK + 1)) - {SOCK_STREAM}
            for start, size in aligned_blocks(kinds, _SOCK_TYPE_MASK + 1):
                f.rule(action, "socket", _low32(0, family), _masked(1, _SOCK_TYPE_MASK & ~(size - 1), start))
            # SOCK_STREAM also makes SCTP and MPTCP sockets, which Landlock's TCP rules may not cover.
            for proto in (IPPROTO_SCTP, IPPROTO_MPTCP):
                f.rule(action, "socket", _low32(0, family), _low32(2, proto))
        # listen() on an unbound socket binds an ephemeral port without a bind() that Landlock sees.
        f.rule(action, "listen")
        # TCP Fast Open connects from sendto/sendmsg, past the connect hook Landlock checks.
        f.rule(action, "sendto", _masked(3, MSG_FASTOPEN, MSG_FASTOPEN))
        f.rule(action, "sendmsg", _masked(2, MSG_FASTOPEN, MSG_FASTOPEN))
        f.rule(action, "sendmmsg", _masked(3, MSG_FASTOPEN, MSG_FASTOPEN))


def policy_for(profile: "Profile", *, jail: bool) -> SeccompPolicy:
    """The socket kinds a profile's ``NetworkOutbound`` rules need, and nothing more.

    ``jail`` is False in the fallback, where there is no IPC or network namespace: System V IPC and
    message queues are then the host's and are denied, and so is ``socket(AF_UNIX)``, since Landlock
    (ABI 7) cannot restrict which socket path is connected to (``socketpair`` stays allowed).
    """
    from ._profile import AllAddresses, NetworkOutbound, Tcp

    families = {AF_UNIX}
    tcp_only = False
    addresses = [op.address for op in profile.operations if isinstance(op, NetworkOutbound)]
    if any(isinstance(a, AllAddresses) for a in addresses):
        families |= {AF_INET, AF_INET6, AF_NETLINK}
    elif any(isinstance(a, Tcp) for a in addresses):
        families |= {AF_INET, AF_INET6}
        tcp_only = True
    return SeccompPolicy(frozenset(families), tcp_only=tcp_only, unix_socket=jail, host_ipc_denied=not jail)
