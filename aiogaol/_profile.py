"""What a jailed program may do: gaol's operations and path/address patterns, plus our extensions.

Pure policy.  Nothing here makes a syscall except looking at the host's paths to resolve symlinks, which
the issue demands happen once, when the profile is made, so that a rule cannot be redirected later.
Whether the running kernel can enforce an operation is judged here (``support``) from ``_kernel``'s facts,
exactly as gaol asks its platform module for ``OperationSupport``; ``_kernel`` knows nothing of profiles,
so the two do not import each other.
"""

from __future__ import annotations

import enum
import itertools
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Union

from . import _kernel
from ._errors import ProfileError, ProfileTypeError, UnsupportedOperation


def check_path(value: object, what: str) -> str:
    """An absolute, NUL-free, normalised path, or a ProfileError/TypeError that says what to fix."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if not isinstance(value, str):
        raise ProfileTypeError(f"{what} must be a str, bytes or os.PathLike path, not {type(value).__name__}")
    if "\0" in value:
        raise ProfileError(f"{what} {value!r} contains a NUL byte")
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        raise ProfileError(f"{what} {value!r} cannot be encoded for the kernel (a lone surrogate?)") from None
    if not value.startswith("/"):
        raise ProfileError(f"{what} {value!r} is relative: profiles take absolute paths")
    normal = os.path.normpath(value)
    if normal.startswith("//"):
        normal = "/" + normal.lstrip("/")
    return normal


# --------------------------------------------------------------------------------------------------
# Patterns


@dataclass(frozen=True)
class Literal:
    """Exactly this file, or this directory entry (not what is inside the directory)."""

    path: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", check_path(self.path, "Literal path"))


@dataclass(frozen=True)
class Subpath:
    """This directory and everything beneath it (or this one file)."""

    path: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", check_path(self.path, "Subpath path"))


PathPattern = Union[Literal, Subpath]


@dataclass(frozen=True)
class AllAddresses:
    """Any address, any protocol: the host's network as it is."""


@dataclass(frozen=True)
class Tcp:
    """TCP connections to this port."""

    port: int

    def __post_init__(self) -> None:
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ProfileTypeError(f"Tcp port must be an int, not {type(self.port).__name__}")
        if not 0 < self.port < 65536:
            raise ProfileError(f"Tcp port {self.port} is outside 1..65535")


@dataclass(frozen=True)
class LocalSocket:
    """This Unix-domain socket (a path on the host)."""

    path: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", check_path(self.path, "LocalSocket path"))


AddressPattern = Union[AllAddresses, Tcp, LocalSocket]


# --------------------------------------------------------------------------------------------------
# Operations (gaol's four, then ours)


def _check_pattern(value: object, op: str) -> None:
    if not isinstance(value, (Literal, Subpath)):
        raise ProfileTypeError(f"{op} takes Literal(...) or Subpath(...), not {value!r}")


@dataclass(frozen=True)
class FileReadAll:
    """All file-related reading of this file or tree (gaol's meaning)."""

    pattern: PathPattern

    def __post_init__(self) -> None:
        _check_pattern(self.pattern, "FileReadAll")


@dataclass(frozen=True)
class FileReadMetadata:
    """Only metadata (stat, readlink) of this file or tree (gaol's meaning)."""

    pattern: PathPattern

    def __post_init__(self) -> None:
        _check_pattern(self.pattern, "FileReadMetadata")


@dataclass(frozen=True)
class NetworkOutbound:
    """Outbound connections to these addresses (gaol's meaning)."""

    address: AddressPattern

    def __post_init__(self) -> None:
        if not isinstance(self.address, (AllAddresses, Tcp, LocalSocket)):
            raise ProfileTypeError("NetworkOutbound takes AllAddresses(), Tcp(port) or LocalSocket(path), "
                                   f"not {self.address!r}")


@dataclass(frozen=True)
class SystemInfoRead:
    """System information may be read (on Linux: /proc/sys)."""


@dataclass(frozen=True)
class FileWriteAll:
    """Read and write this file or tree of the host (a read-write bind).  Our extension."""

    pattern: PathPattern

    def __post_init__(self) -> None:
        _check_pattern(self.pattern, "FileWriteAll")


DEFAULT_TMPFS_SIZE = 64 << 20
MAX_TMPFS_SIZE = (1 << 63) - 1  # what the mount option's size= can say


@dataclass(frozen=True)
class Tmpfs:
    """A private, size-capped scratch directory that vanishes with the jail.  Our extension."""

    path: str
    size: int = DEFAULT_TMPFS_SIZE

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", check_path(self.path, "Tmpfs path"))
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise ProfileTypeError(f"Tmpfs size must be an int (bytes), not {type(self.size).__name__}")
        if not 0 < self.size <= MAX_TMPFS_SIZE:
            raise ProfileError(f"Tmpfs size must be from 1 to {MAX_TMPFS_SIZE} bytes, not {self.size}")
        if self.path == "/":
            raise ProfileError("Tmpfs('/') would replace the jail's root; pick a directory")


Operation = Union[FileReadAll, FileReadMetadata, NetworkOutbound, SystemInfoRead, FileWriteAll, Tmpfs]
OPERATION_TYPES = (FileReadAll, FileReadMetadata, NetworkOutbound, SystemInfoRead, FileWriteAll, Tmpfs)


class OperationSupportLevel(enum.Enum):
    """gaol's support levels, answered for the running kernel."""

    NEVER_ALLOWED = "never allowed"
    CAN_BE_ALLOWED = "can be allowed"
    CANNOT_BE_ALLOWED_PRECISELY = "cannot be allowed precisely"
    ALWAYS_ALLOWED = "always allowed"


def support(op: Operation) -> tuple[OperationSupportLevel, str]:
    """gaol's OperationSupport for this kernel: the level, and the reason when it is not CAN_BE_ALLOWED.

    A judgement of policy on a fact of the platform: the operation is ours, the Landlock ABI is
    ``_kernel``'s (read through the module, so that a test can stand in for another kernel).
    """
    if isinstance(op, FileReadMetadata):
        # The path is bound so that stat sees it, and Landlock (any ABI) grants it no right: open,
        # listing and exec fail.  Without Landlock only the mounts remain, which cannot say "stat only".
        if _kernel.landlock_abi() < 1:
            return (OperationSupportLevel.CANNOT_BE_ALLOWED_PRECISELY,
                    "metadata-only access needs Landlock, which this kernel lacks (or has disabled); "
                    "use FileReadAll to grant reading")
        return OperationSupportLevel.CAN_BE_ALLOWED, ""
    if isinstance(op, NetworkOutbound) and isinstance(op.address, Tcp):
        # Connect to that port only: Landlock's TCP rules (ABI 4) for the port and against bind, and its
        # abstract-socket scope (ABI 6), since the jail then shares the host's network namespace and so
        # its abstract Unix sockets; the seccomp filter refuses every other kind of socket.
        abi = _kernel.landlock_abi()
        if abi < 6:
            return (OperationSupportLevel.CANNOT_BE_ALLOWED_PRECISELY,
                    f"per-port TCP needs Landlock ABI 6 (TCP port rules and abstract-socket scoping, Linux "
                    f"6.12); this kernel has ABI {abi}; use NetworkOutbound(AllAddresses())")
        return OperationSupportLevel.CAN_BE_ALLOWED, ""
    if isinstance(op, NetworkOutbound) and isinstance(op.address, LocalSocket):
        return OperationSupportLevel.CAN_BE_ALLOWED, ""
    return OperationSupportLevel.CAN_BE_ALLOWED, ""


# --------------------------------------------------------------------------------------------------
# Host path resolution


@dataclass(frozen=True)
class ResolvedPath:
    """Where a rule's path really is on the host, and the symlinks met on the way there.

    The jail recreates those symlinks (so ``/lib -> usr/lib`` still works inside) and binds only the real
    target, so a later change of a symlink on the host cannot point the rule somewhere else.  ``dev`` and
    ``ino`` name the object found there (0 when missing): the helper binds and Landlock-opens ``real``
    without following any symlink and refuses to start if what it opens is not this object (see
    docs/security.md, "Binds by handle").
    """

    requested: str
    real: str
    links: tuple[tuple[str, str], ...]  # (link path, link text)
    kind: str  # "dir", "file", "socket", "other" or "missing"
    dev: int = 0
    ino: int = 0


def resolve(path: str) -> ResolvedPath:
    links: list[tuple[str, str]] = []
    budget = 40  # the kernel's own limit on symlinks followed in one lookup

    def walk(p: str) -> str:
        nonlocal budget
        current = "/"
        parts = [c for c in p.split("/") if c]
        while parts:
            comp = parts.pop(0)
            if comp == "..":
                current = os.path.dirname(current) or "/"
                continue
            candidate = os.path.join(current, comp)
            try:
                is_link = stat.S_ISLNK(os.lstat(candidate).st_mode)
            except OSError:
                return os.path.join(candidate, *parts) if parts else candidate
            if not is_link:
                current = candidate
                continue
            budget -= 1
            if budget < 0:
                raise ProfileError(f"too many levels of symbolic links resolving {path!r}")
            text = os.readlink(candidate)
            links.append((candidate, text))
            base = "/" if text.startswith("/") else current
            current = walk(os.path.normpath(os.path.join(base, text)))
        return current

    real = walk(path)
    dev = ino = 0
    try:
        st = os.lstat(real)  # walk() followed every link, so real names no link (unless one just appeared)
        mode = st.st_mode
    except OSError:
        kind = "missing"
    else:
        dev, ino = st.st_dev, st.st_ino
        if stat.S_ISLNK(mode):
            kind = "other"  # a link made since the walk: never bound (the helper refuses links)
        elif stat.S_ISDIR(mode):
            kind = "dir"
        elif stat.S_ISSOCK(mode):
            kind = "socket"
        elif stat.S_ISREG(mode):
            kind = "file"
        else:
            kind = "other"
    return ResolvedPath(path, real, tuple(links), kind, dev, ino)


# --------------------------------------------------------------------------------------------------
# Profile

DEFAULT_SHM_SIZE = 64 << 20  # the jail's /dev/shm: enough for multiprocessing, capped like Docker's
MAX_SHM_SIZE = 1 << 40


@dataclass(frozen=True)
class Profile:
    """An immutable, hashable whitelist of operations, checked against what this kernel can enforce.

    Everything not listed is forbidden.  Construction raises ``UnsupportedOperation`` (a ``ValueError``)
    naming the operation when the kernel cannot enforce it exactly as written: never silently widened.
    """

    operations: tuple[Operation, ...]
    resolved: dict[str, ResolvedPath] = field(compare=False, hash=False, repr=False)
    # What programs expect of a machine, inside the jail only (see docs/security.md): a loopback of the
    # jail's own, a size-capped /dev/shm, a devpts instance of its own.  Each can be turned off.
    loopback: bool = True
    shm_size: int = DEFAULT_SHM_SIZE
    devpts: bool = True

    def __init__(self, operations: Iterable[Operation] = (), *, loopback: bool = True,
                 shm_size: int = DEFAULT_SHM_SIZE, devpts: bool = True) -> None:
        if isinstance(operations, (str, bytes)):
            raise ProfileTypeError("Profile takes an iterable of operations, not a string")
        for name, flag in (("loopback", loopback), ("devpts", devpts)):
            if not isinstance(flag, bool):
                raise ProfileTypeError(f"Profile {name} must be True or False, not {flag!r}")
        if isinstance(shm_size, bool) or not isinstance(shm_size, int):
            raise ProfileTypeError(f"Profile shm_size must be an int (bytes; 0 for no /dev/shm), not {shm_size!r}")
        if not 0 <= shm_size <= MAX_SHM_SIZE:
            raise ProfileError(f"Profile shm_size must be between 0 (no /dev/shm) and {MAX_SHM_SIZE} bytes, "
                               f"not {shm_size}")
        if 0 < shm_size < 4096:
            raise ProfileError(f"Profile shm_size {shm_size} is below one page (4096 bytes); 0 turns /dev/shm off")
        try:
            items = list(operations)
        except TypeError:
            raise ProfileTypeError("Profile takes an iterable of operations (FileReadAll(...), Tmpfs(...), ...), "
                                   f"not {type(operations).__name__}") from None
        ops: list[Operation] = []
        for op in items:
            if not isinstance(op, OPERATION_TYPES):
                raise ProfileTypeError(f"not a profile operation: {op!r}")
            if op not in ops:
                ops.append(op)
        for op in ops:
            level, reason = support(op)  # a platform fact, asked once per operation
            if level is not OperationSupportLevel.CAN_BE_ALLOWED:
                raise UnsupportedOperation(op, reason)
        resolved: dict[str, ResolvedPath] = {}
        for path in _paths_of(ops):
            if path not in resolved:
                resolved[path] = resolve(path)
        for op in ops:
            _check_against_host(op, resolved)
        object.__setattr__(self, "operations", tuple(ops))
        object.__setattr__(self, "resolved", resolved)
        object.__setattr__(self, "loopback", loopback)
        object.__setattr__(self, "shm_size", shm_size)
        object.__setattr__(self, "devpts", devpts)

    def __getstate__(self) -> dict[str, object]:
        """What a pickle (a Ray task's argument, say) carries: never the plan compiled here and kept on
        this object (``_plan.compile_profile``), which names this host's files."""
        state = dict(self.__dict__)
        state.pop("_plan", None)
        return state

    def __iter__(self) -> Iterator[Operation]:
        return iter(self.operations)

    def __len__(self) -> int:
        return len(self.operations)

    def __add__(self, other: "Profile | Iterable[Operation]") -> "Profile":
        return Profile(itertools.chain(self.operations, other), loopback=self.loopback,
                       shm_size=self.shm_size, devpts=self.devpts)

    def allows_network(self) -> bool:
        return any(isinstance(op, NetworkOutbound) and isinstance(op.address, AllAddresses) for op in self.operations)

    def __repr__(self) -> str:
        options = "".join(f", {name}={getattr(self, name)!r}" for name, default in
                          (("loopback", True), ("shm_size", DEFAULT_SHM_SIZE), ("devpts", True))
                          if getattr(self, name) != default)
        return f"Profile({list(self.operations)!r}{options})"


def _paths_of(ops: Iterable[Operation]) -> Iterator[str]:
    for op in ops:
        if isinstance(op, (FileReadAll, FileReadMetadata, FileWriteAll)):
            yield op.pattern.path
        elif isinstance(op, NetworkOutbound) and isinstance(op.address, LocalSocket):
            yield op.address.path


def _check_against_host(op: Operation, resolved: dict[str, ResolvedPath]) -> None:
    if isinstance(op, FileWriteAll):
        r = resolved[op.pattern.path]
        if r.kind == "missing":
            raise ProfileError(f"{op!r}: {r.requested} does not exist on the host")
        if isinstance(op.pattern, Literal) and r.kind == "dir":
            raise ProfileError(f"{op!r}: a Literal directory grants the entry, not its contents; use Subpath to write in it")
    elif isinstance(op, NetworkOutbound) and isinstance(op.address, LocalSocket):
        r = resolved[op.address.path]
        if r.kind != "socket":
            raise ProfileError(f"{op!r}: {r.requested} is not a Unix socket on the host ({r.kind})")
