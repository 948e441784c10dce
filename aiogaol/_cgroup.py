"""cgroup v2: one cgroup per jail, under a parent the caller may write, found at run time.

rlimits are per process: a program that spreads over many processes escapes RLIMIT_AS and RLIMIT_CPU by
that factor, and a failed allocation leaves no trace the server can see.  A cgroup bounds the jail as a
whole (``memory.max``, ``pids.max``), reports what happened (``memory.events`` counts OOM kills,
``pids.events`` refused forks) and measures the whole jail (``cpu.stat``, ``memory.peak``).

Where the parent comes from, in order: ``Limits(cgroup=path)``; ``AIOGAOL_CGROUP`` in the environment;
the server's own cgroup when it is the root of a cgroup v2 hierarchy we can write (a container with a
private cgroup namespace, a VM).  A non-root cgroup that holds the server itself cannot hand controllers
to children (cgroup v2's "no internal processes" rule), so the usual set-up under systemd is a delegated
unit whose processes sit in a leaf and whose directory is named in ``AIOGAOL_CGROUP``; see docs/limits.md.

Placing the jail is the C helper's work (``--cgroup-fd``, clone3 ``CLONE_INTO_CGROUP``): no Python runs
in a forked child.  Everything here is plain file I/O on cgroupfs, which is in-kernel and does not block.
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
from dataclasses import dataclass, field

from ._errors import ProfileError

ENV_VAR = "AIOGAOL_CGROUP"
WANTED = ("memory", "pids", "cpu")
_counter = itertools.count()
_lock = threading.Lock()
# Cgroups whose rmdir found them still populated (a task exits before its css_set is released): retried
# at every later create and finish instead of blocking the event loop.
_pending_removal: list[str] = []


@dataclass(frozen=True)
class CgroupParent:
    """A cgroup v2 directory we may create jails' cgroups in, and the controllers its children get."""

    path: str
    controllers: frozenset[str]


@dataclass(frozen=True)
class CgroupReport:
    """What the kernel counted for one jail's cgroup, read after the jail ended."""

    path: str
    controllers: frozenset[str]
    cpu_time: float | None  # cpu.stat usage_usec of every process of the jail, in seconds
    memory_peak: int | None  # memory.peak (Linux 5.19+), bytes
    oom_kills: int  # memory.events oom_kill: processes the kernel killed at memory.max
    memory_max_hits: int  # memory.events max: times the jail reached memory.max (reclaim, then OOM)
    pids_max_hits: int  # pids.events max: forks refused at pids.max


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except OSError:
        return None


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _keyed(text: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def _cgroup2_mounts() -> list[tuple[str, str]]:
    """(root inside the hierarchy, mount point) of every cgroup2 mount we can see."""
    out = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                sep = parts.index("-")
                if parts[sep + 1] == "cgroup2":
                    out.append((parts[3], parts[4].replace("\\040", " ")))
    except (OSError, ValueError):
        pass
    return out


def own_cgroup() -> str | None:
    """The directory of this process's cgroup v2, when a cgroup2 mount shows it."""
    text = _read("/proc/self/cgroup") or ""
    rel = next((line[3:] for line in text.splitlines() if line.startswith("0::")), None)
    if rel is None:
        return None
    for root, mount in _cgroup2_mounts():
        if rel == root or rel.startswith(root.rstrip("/") + "/"):
            path = os.path.join(mount, rel[len(root):].lstrip("/"))
            if os.path.isfile(os.path.join(path, "cgroup.procs")):
                return path.rstrip("/") or "/"
    return None


def _is_root(path: str) -> bool:
    # The root of a hierarchy lacks cgroup.events (and cgroup.type), which every other cgroup has; it is
    # also the only cgroup exempt from "no internal processes", so the server may live in it and still
    # hand controllers down.
    return not os.path.exists(os.path.join(path, "cgroup.events"))


def parent_at(path: str, *, enable: bool) -> CgroupParent:
    """Check that ``path`` is a cgroup v2 directory we can create children in; with ``enable``, hand the
    wanted controllers it has to its children (allowed at a root, refused elsewhere while it holds
    processes, which is why a parent must be a directory of its own)."""
    path = os.path.abspath(os.fspath(path))
    if _read(os.path.join(path, "cgroup.subtree_control")) is None or not os.path.isfile(
            os.path.join(path, "cgroup.procs")) or os.path.exists(os.path.join(path, "tasks")):
        raise ProfileError(f"{path} is not a cgroup v2 directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "cannot create cgroups here (not delegated to this user)", path)
    available = set((_read(os.path.join(path, "cgroup.controllers")) or "").split())
    enabled = set((_read(os.path.join(path, "cgroup.subtree_control")) or "").split())
    missing = [c for c in WANTED if c in available and c not in enabled]
    if enable and missing:
        try:
            _write(os.path.join(path, "cgroup.subtree_control"), " ".join("+" + c for c in missing))
        except OSError:
            pass  # EBUSY (processes live here) or EACCES: use what is already enabled
        enabled = set((_read(os.path.join(path, "cgroup.subtree_control")) or "").split())
    return CgroupParent(path, frozenset(c for c in WANTED if c in enabled))


_auto: tuple[CgroupParent | None, str] | None = None


def find_parent(requested: str | None) -> tuple[CgroupParent | None, str]:
    """The parent for a jail's cgroup, or None and the reason there is none (said in every report).

    ``requested`` is ``Limits.cgroup``: "auto", "none", or a path (an error if unusable: the caller
    asked for it, so falling back silently would be a lie).
    """
    global _auto
    if requested == "none":
        return None, "cgroups not wanted (Limits.cgroup='none')"
    if requested not in (None, "auto"):
        return parent_at(requested, enable=True), f"Limits.cgroup={requested}"
    env = os.environ.get(ENV_VAR)
    if env:
        return parent_at(env, enable=True), f"{ENV_VAR}={env}"
    with _lock:
        if _auto is None:
            _auto = _detect()
        return _auto


def _detect() -> tuple[CgroupParent | None, str]:
    own = own_cgroup()
    if own is None:
        return None, "no cgroup v2 hierarchy holds this process (cgroup v1 only?)"
    if not _is_root(own):
        return None, (f"this process's cgroup {own} is not a root, so it cannot delegate controllers to "
                      f"jails; set {ENV_VAR} to a delegated cgroup directory")
    try:
        parent = parent_at(own, enable=True)
    except OSError as e:
        return None, f"cannot create cgroups in {own}: {e.strerror}"
    if not parent.controllers & {"memory", "pids"}:
        available = (_read(os.path.join(own, "cgroup.controllers")) or "").split()
        return None, (f"the cgroup v2 hierarchy at {own} offers none of memory, pids "
                      f"(controllers: {' '.join(available) or 'none'}; the others are bound to cgroup v1)")
    return parent, f"auto: {own}"


@dataclass
class JailCgroup:
    """The cgroup of one jail: created before the spawn, read and removed after the reap."""

    path: str
    controllers: frozenset[str]
    fd: int = -1
    report: CgroupReport | None = field(default=None)

    @classmethod
    def create(cls, parent: CgroupParent, *, memory: int | None, processes: int | None) -> "JailCgroup":
        _retry_removals()
        name = f"aiogaol-{os.getpid()}-{next(_counter)}"
        path = os.path.join(parent.path, name)
        os.mkdir(path, 0o755)
        cg = cls(path, parent.controllers)
        try:
            if "memory" in cg.controllers and memory is not None:
                _write(os.path.join(path, "memory.max"), str(memory))
                if os.path.exists(os.path.join(path, "memory.swap.max")):
                    _write(os.path.join(path, "memory.swap.max"), "0")  # swap would stretch memory.max
            if "pids" in cg.controllers and processes is not None:
                # +1: the jail's init, which RLIMIT_NPROC (counted for the program's user) leaves out.
                _write(os.path.join(path, "pids.max"), str(processes + 1))
            cg.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except BaseException:
            cg.remove()
            raise
        return cg

    def read_report(self) -> CgroupReport:
        """Read the counters; call once the jail is reaped (they are final then)."""
        def j(name: str) -> str:
            return os.path.join(self.path, name)

        cpu = _keyed(_read(j("cpu.stat"))).get("usage_usec")
        peak = (_read(j("memory.peak")) or "").strip()
        mem = _keyed(_read(j("memory.events")))
        pids = _keyed(_read(j("pids.events")))
        self.report = CgroupReport(self.path, self.controllers, cpu / 1e6 if cpu is not None else None,
                                   int(peak) if peak.isdigit() else None, mem.get("oom_kill", 0),
                                   mem.get("max", 0), pids.get("max", 0))
        return self.report

    def cpu_time(self) -> float | None:
        """CPU seconds of the whole jail so far (the event loop polls it for a jail-wide cpu_time)."""
        usec = _keyed(_read(os.path.join(self.path, "cpu.stat"))).get("usage_usec")
        return usec / 1e6 if usec is not None else None

    def close_fd(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove(self) -> None:
        """Remove the (empty) cgroup; if a task is still on its way out, kill what is left and retry later."""
        self.close_fd()
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            try:
                _write(os.path.join(self.path, "cgroup.kill"), "1")  # Linux 5.14+
            except OSError:
                pass
            with _lock:
                _pending_removal.append(self.path)


def _retry_removals() -> None:
    with _lock:
        paths, _pending_removal[:] = list(_pending_removal), []
    for path in paths:
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError:
            with _lock:
                _pending_removal.append(path)


def for_limits(memory: int | None, processes: int | None, requested: str) -> tuple[JailCgroup | None, str]:
    """A fresh cgroup for one jail, or None and why not (the report carries the reason)."""
    parent, reason = find_parent(requested)
    if parent is None:
        return None, reason
    return JailCgroup.create(parent, memory=memory, processes=processes), reason
