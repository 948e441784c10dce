"""The Landlock wall: a profile's file and network rules as a Landlock ruleset, for the ABI of this kernel.

In the namespace jail this is the second wall behind the mounts: even a path that is mounted (a
``FileReadMetadata`` tree is bound so that ``stat`` works) is opened, listed, written or executed only as
the rules say.  In the fallback (no user namespaces) it is the main wall, over the host's own tree.

Pure planning: the rules are data (access masks and paths), turned into ``--landlock``/``--ll-path``/
``--ll-port`` arguments for the helper, which opens each path inside the jail and restricts itself.  It
opens them without following any symlink (``openat2`` ``RESOLVE_NO_SYMLINKS``), and in the fallback, where
they are the host's own paths, checks that each is still the object the profile resolved (device and inode).
The access bits are Landlock's UAPI values (``linux/landlock.h``), filtered by the ABI read at run time,
because asking an older kernel to handle a right it does not know fails the whole ruleset.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._profile import (AllAddresses, FileReadAll, FileReadMetadata, FileWriteAll, Literal, NetworkOutbound,
                       Profile, ResolvedPath, SystemInfoRead, Tcp, Tmpfs)

# Filesystem rights, with the ABI that introduced them.
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5

NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4

SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

# Rights that make sense on a file (the kernel refuses a file rule carrying directory rights).
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV

READ = EXECUTE | READ_FILE | READ_DIR
# Everything but creating device nodes (the mounts are nodev as well; this says it twice).
WRITE = ((1 << 16) - 1) & ~(MAKE_CHAR | MAKE_BLOCK)

# The jail's own trees: its /dev holds only the harmless nodes, its /proc is its own PID namespace's.
JAIL_DEV = READ_FILE | WRITE_FILE | READ_DIR | IOCTL_DEV
JAIL_PROC = READ_FILE | WRITE_FILE | READ_DIR
# In the fallback /dev and /proc are the host's: named nodes only, and /proc read-only.
HOST_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
HOST_PROC = READ_FILE | READ_DIR


def handled_fs(abi: int) -> int:
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


@dataclass(frozen=True)
class LandlockRules:
    """A ruleset: what is handled (denied unless a rule allows it), and the rules."""

    fs_handled: int
    net_handled: int
    scoped: int
    paths: tuple[tuple[int, str], ...]  # (allowed access, path as the program sees it)
    ports: tuple[tuple[int, int], ...]  # (allowed access, TCP port)
    # path -> (st_dev, st_ino) the helper must find there; only host paths (the fallback) have one
    expect: tuple[tuple[str, int, int], ...] = ()

    def args(self) -> list[str]:
        out = ["--landlock", str(self.fs_handled), str(self.net_handled), str(self.scoped)]
        expect = {path: (dev, ino) for path, dev, ino in self.expect}
        for access, path in self.paths:
            dev, ino = expect.get(path, (0, 0))
            out += ["--ll-path", str(access), path, str(dev), str(ino)]
        for access, port in self.ports:
            out += ["--ll-port", str(access), str(port)]
        return out

    def describe(self) -> list[str]:
        lines = [f"landlock: fs handled {self.fs_handled:#x}, net handled {self.net_handled:#x}, "
                 f"scoped {self.scoped:#x}"]
        lines += [f"  allow {access:#06x} beneath {path}" for access, path in self.paths]
        lines += [f"  allow tcp connect to port {port}" for _, port in self.ports]
        return lines


def _under(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree.rstrip("/") + "/")


def rules_for(profile: Profile, *, abi: int, jail: bool) -> LandlockRules | None:
    """The ruleset enforcing ``profile``, or None when this kernel has no Landlock.

    ``jail`` says whether the paths are seen through the namespace jail (its own /dev and /proc, a root
    holding only mount points) or are the host's (the fallback).
    """
    if abi < 1:
        return None
    fs = handled_fs(abi)
    grants: dict[str, int] = {}
    metadata_only: list[str] = []
    # In the jail a rule's path is a mount point or lies in a bind, which the helper checked when it made
    # it; in the fallback it is the host's path itself, checked here.
    expect: dict[str, tuple[int, int]] = {}

    def grant(r: ResolvedPath, access: int) -> None:
        if r.kind == "missing":
            return  # nothing there to open: such a rule grants nothing (as the mounts do)
        if r.kind != "dir":
            access &= FILE_RIGHTS
        grants[r.real] = grants.get(r.real, 0) | (access & fs)
        if not jail:
            expect[r.real] = (r.dev, r.ino)

    for op in profile.operations:
        if isinstance(op, FileReadAll):
            r = profile.resolved[op.pattern.path]
            if isinstance(op.pattern, Literal) and r.kind == "dir":
                continue  # the entry, not its contents: decided below, once all rules are known
            grant(r, READ)
        elif isinstance(op, FileWriteAll):
            grant(profile.resolved[op.pattern.path], WRITE)
        elif isinstance(op, FileReadMetadata):
            r = profile.resolved[op.pattern.path]
            if r.kind != "missing":
                metadata_only.append(r.real)
        elif isinstance(op, Tmpfs):
            grants[op.path] = grants.get(op.path, 0) | (WRITE & fs)

    # A Literal directory may be listed in the jail, where it is an empty mount point (never in the
    # fallback, where it is the host's full directory), unless a tree that may only be stat'ed lies
    # beneath it: a Landlock rule always reaches everything below its path.
    for op in profile.operations:
        if jail and isinstance(op, FileReadAll) and isinstance(op.pattern, Literal):
            r = profile.resolved[op.pattern.path]
            if r.kind == "dir" and not any(_under(m, r.real) for m in metadata_only):
                grants[r.real] = grants.get(r.real, 0) | READ_DIR

    if jail:
        grants["/dev"] = grants.get("/dev", 0) | (JAIL_DEV & fs)
        grants["/proc"] = grants.get("/proc", 0) | (JAIL_PROC & fs)
        # The jail's own /dev/shm (Profile.shm_size): written like a Tmpfs rule's tree (noexec anyway).
        if profile.shm_size:
            grants["/dev/shm"] = grants.get("/dev/shm", 0) | (WRITE & fs)
        # The jail's skeleton (its root and the directories leading to the binds) may be listed: it
        # holds nothing but mount points.  Not when a metadata-only tree exists, which would become
        # listable too.
        if not metadata_only:
            grants["/"] = grants.get("/", 0) | READ_DIR
    else:
        for dev in HOST_DEVICES:
            grants[dev] = grants.get(dev, 0) | ((READ_FILE | WRITE_FILE) & fs)
        # The host's /proc shows every process and /proc/sys; without SystemInfoRead the program sees
        # only its own entry.  The helper opens "/proc/self" in the program itself, before exec, so the
        # rule lands on the program's /proc/PID (its children do not get theirs).
        if any(isinstance(op, SystemInfoRead) for op in profile.operations):
            grants["/proc"] = grants.get("/proc", 0) | (HOST_PROC & fs)
        else:
            grants["/proc/self"] = grants.get("/proc/self", 0) | (HOST_PROC & fs)

    net = 0
    ports: list[tuple[int, int]] = []
    # In the jail without a network rule the program has a network namespace of its own, whose only
    # interface is its loopback: nothing outside to reach, so TCP is left unhandled there (a server on
    # 127.0.0.1 inside the jail works).  With Tcp(port) it shares the host's, and TCP stays handled.
    host_net = not jail or any(isinstance(op, NetworkOutbound) and isinstance(op.address, (AllAddresses, Tcp))
                               for op in profile.operations)
    if abi >= 4 and host_net and not any(isinstance(op, NetworkOutbound) and isinstance(op.address, AllAddresses)
                                         for op in profile.operations):
        net = NET_BIND_TCP | NET_CONNECT_TCP
        for op in profile.operations:
            if isinstance(op, NetworkOutbound) and isinstance(op.address, Tcp):
                ports.append((NET_CONNECT_TCP, op.address.port))
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    paths = tuple(sorted((access, path) for path, access in grants.items() if access))
    return LandlockRules(fs, net, scoped, tuple(sorted(paths, key=lambda p: p[1])), tuple(sorted(set(ports))),
                         tuple(sorted((path, dev, ino) for path, (dev, ino) in expect.items() if path in grants)))
