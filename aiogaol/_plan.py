"""From a Profile to the helper's instructions: namespace flags and an ordered mount list.

The plan is data (like bubblewrap's list of setup operations); the C helper executes it top to bottom.
A profile's plan is compiled once and cached, since profiles are immutable and hashable; each spawn only
adds its own fds, directory and program.  ``explain()`` prints a plan for people.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ._errors import ProfileError, ProfileTypeError
from ._profile import (AllAddresses, FileReadAll, FileReadMetadata, FileWriteAll, Literal, LocalSocket,
                       NetworkOutbound, Profile, ResolvedPath, SystemInfoRead, Tcp, Tmpfs, check_path)

MINIMAL_PATH = "/usr/local/bin:/usr/bin:/bin"
NOBODY = 65534
JAIL_ROOT_SIZE = 1 << 20  # the jail's own root holds only mount points


@dataclass(frozen=True)
class MountStep:
    """One entry of the helper's set-up list."""

    kind: str  # dir, symlink, ro, rw, tmpfs, proc, dev, mask, ro-self, shm, devpts
    target: str
    source: str = ""
    size: int = 0
    mode: int = 0
    # A bind's source as Profile.resolve found it: the helper opens the source without following any
    # symlink and refuses to bind anything else ("bind source changed"; docs/security.md).
    dev: int = 0
    ino: int = 0

    def args(self) -> list[str]:
        if self.kind == "dir":
            return ["--dir", self.target]
        if self.kind == "symlink":
            return ["--symlink", self.source, self.target]
        if self.kind in ("ro", "rw"):
            return [f"--{self.kind}", self.source, self.target, str(self.dev), str(self.ino)]
        if self.kind == "tmpfs":
            return ["--tmpfs", self.target, str(self.size), format(self.mode, "o")]
        if self.kind == "shm":
            return ["--shm", self.target, str(self.size)]
        return [f"--{self.kind}", self.target]

    def describe(self) -> str:
        if self.kind == "symlink":
            return f"symlink {self.target} -> {self.source}"
        if self.kind in ("ro", "rw"):
            return f"bind    {self.source} -> {self.target} ({'read-only' if self.kind == 'ro' else 'read-write'}, nosuid, nodev)"
        if self.kind == "tmpfs":
            return f"tmpfs   {self.target} ({self.size} bytes)"
        if self.kind == "mask":
            return f"mask    {self.target} (empty, read-only; skipped where this kernel lacks it)"
        if self.kind == "ro-self":
            return f"ro      {self.target} (bound read-only over itself; skipped where absent)"
        if self.kind == "shm":
            return f"shm     {self.target} (tmpfs, {self.size} bytes, writable, nosuid, nodev, noexec)"
        if self.kind == "devpts":
            return f"devpts  {self.target} (a private instance: the jail's ptys only; /dev/ptmx -> pts/ptmx)"
        return f"{self.kind:<7} {self.target}"


@dataclass(frozen=True)
class JailPlan:
    """Everything about a spawn that depends only on the profile."""

    unshare_net: bool
    steps: tuple[MountStep, ...]
    args: tuple[str, ...]
    seccomp: bytes = b""  # BPF, written into a fresh pipe for each spawn (see _jail.launch)
    isolation: str = "namespaces"  # or "landlock", the fallback (see _fallback)
    security: tuple[str, ...] = ()  # the Landlock ruleset and filter, described for people
    loopback: bool = False  # the jail's own network namespace has lo up

    @functools.cached_property
    def args_bytes(self) -> tuple[bytes, ...]:
        """The profile's part of the helper's argv, encoded once per plan rather than once per spawn."""
        return tuple(os.fsencode(a) for a in self.args)

    def explain(self) -> str:
        if self.isolation == "namespaces":
            net = (", net (its own loopback, 127.0.0.1 and ::1, up; nothing else)" if self.loopback else
                   ", net (no interface up)") if self.unshare_net else " (host network)"
            lines = ["namespaces: user, pid, mount, ipc, uts, cgroup" + net]
        else:
            lines = ["isolation: landlock only (no namespaces; the host's tree, PIDs, network and IPC)"]
        lines.append(identity_line(self.isolation == "namespaces"))
        lines += [f"  {step.describe()}" for step in self.steps]
        lines += list(self.security)
        if self.seccomp:
            lines.append(f"seccomp: {len(self.seccomp) // 8} BPF instructions, native architecture only")
        return "\n".join(lines)


# Docker's masked paths, and a few more kernel interfaces a program has no business reading (symbols,
# kernel memory and page maps, the kernel log, keys, the interrupt and timer tables).  A directory gets
# an empty read-only tmpfs, a file /dev/null bound read-only; a path this kernel lacks is skipped.
PROC_MASKED = ("/proc/acpi", "/proc/asound", "/proc/config.gz", "/proc/interrupts", "/proc/iomem",
               "/proc/ioports", "/proc/kallsyms", "/proc/kcore", "/proc/key-users", "/proc/keys",
               "/proc/kmsg", "/proc/kpagecgroup", "/proc/kpagecount", "/proc/kpageflags",
               "/proc/latency_stats", "/proc/modules", "/proc/sched_debug", "/proc/scsi", "/proc/slabinfo",
               "/proc/timer_list", "/proc/timer_stats", "/proc/vmallocinfo")
# Docker's read-only paths, bound read-only over themselves.  /proc/sys is masked outright unless the
# profile has SystemInfoRead, which makes it readable (read-only).
PROC_READ_ONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sysrq-trigger")
# Masked wherever a bind of the host's /sys would show them.
SYS_MASKED = ("/sys/firmware", "/sys/devices/virtual/powercap")


def identity_line(jail: bool = True) -> str:
    """Who the jail's processes are on the host, for explain(): it depends on the server, not the plan."""
    if os.geteuid() == 0 and _nobody_mapped() and not jail:
        return (f"identity: init starts as the server (root) and becomes nobody ({NOBODY}:{NOBODY}) before the "
                f"program starts; the program runs as nobody; once the program has exec'd, init holds no "
                f"capability, has no_new_privs, is not dumpable and runs under a seccomp filter of its own")
    if os.geteuid() == 0 and _nobody_mapped():
        return (f"identity: init builds the jail as root in its user namespace (the server's uid 0), then, "
                f"before the program starts, becomes nobody ({NOBODY}:{NOBODY}) as the program is; once the program "
                f"has exec'd, init holds no capability, has no_new_privs, is not dumpable and runs under "
                f"a seccomp filter of its own")
    return (f"identity: init and the program run as the server's user ({os.geteuid()}:{os.getegid()}) on "
            f"the host; once the program has exec'd, init holds no capability, has no_new_privs, is "
            f"not dumpable and runs under a seccomp filter of its own")


def _depth(path: str) -> int:
    return 0 if path == "/" else path.count("/")


def _under(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree.rstrip("/") + "/")


@functools.cache
def _root_symlinks() -> tuple[tuple[str, str], ...]:
    found = []
    for name in sorted(os.listdir("/")):
        path = "/" + name
        if os.path.islink(path):
            found.append((path, os.readlink(path)))
    return tuple(found)


_plans_epoch = 0  # bumped by clear_plans: a plan kept on a profile object from before is not used


def compile_profile(profile: Profile) -> JailPlan:
    """The profile's plan, cached per profile *and* what its paths resolved to: two equal profiles made
    at different times may have found different objects (a file replaced since), and each plan checks
    for its own.  A profile object never changes (its paths are resolved once, when it is made), so its
    plan is also kept on the object itself: every spawn asks, and hashing a whole profile for the
    shared cache costs more than the rest of building the request."""
    kept = profile.__dict__.get("_plan")
    if kept is not None and kept[0] == _plans_epoch:
        return kept[1]  # type: ignore[no-any-return]
    plan = _compile(profile, tuple(profile.resolved.values()))
    object.__setattr__(profile, "_plan", (_plans_epoch, plan))
    return plan


def clear_plans() -> None:
    """Forget every compiled plan (tests that compile as another kernel would)."""
    global _plans_epoch
    _plans_epoch += 1
    _compile.cache_clear()


@functools.lru_cache(maxsize=256)
def _compile(profile: Profile, resolution: tuple[ResolvedPath, ...]) -> JailPlan:
    binds: dict[str, MountStep] = {}
    links: dict[str, str] = {}
    extra: list[MountStep] = []
    system_info = False
    unshare_net = True

    def add_links(r: ResolvedPath) -> None:
        for link, text in r.links:
            links.setdefault(link, text)

    def bind(r: ResolvedPath, kind: str, literal: bool) -> None:
        if r.kind == "missing":
            return  # a read rule for a path this host lacks grants nothing (gaol does the same)
        add_links(r)
        if literal and r.kind == "dir":
            step = MountStep("dir", r.real)  # the entry itself, not its contents
        else:
            step = MountStep(kind, r.real, source=r.real, dev=r.dev, ino=r.ino)
        previous = binds.get(r.real)
        if previous is None or previous.kind in ("dir",) or (previous.kind == "ro" and kind == "rw"):
            binds[r.real] = step

    for op in profile.operations:
        if isinstance(op, FileReadAll):
            bind(profile.resolved[op.pattern.path], "ro", isinstance(op.pattern, Literal))
        elif isinstance(op, FileWriteAll):
            bind(profile.resolved[op.pattern.path], "rw", isinstance(op.pattern, Literal))
        elif isinstance(op, FileReadMetadata):
            # Bound read-only so that stat sees it; Landlock grants it no right, so opening, listing
            # and exec fail: the precise meaning that mounts alone cannot give.
            bind(profile.resolved[op.pattern.path], "ro", isinstance(op.pattern, Literal))
        elif isinstance(op, Tmpfs):
            extra.append(MountStep("tmpfs", op.path, size=op.size, mode=0o1777))
        elif isinstance(op, SystemInfoRead):
            system_info = True
        elif isinstance(op, NetworkOutbound):
            if isinstance(op.address, AllAddresses):
                unshare_net = False
            elif isinstance(op.address, Tcp):
                unshare_net = False  # the host's network, cut down to these ports by Landlock and seccomp
            elif isinstance(op.address, LocalSocket):
                bind(profile.resolved[op.address.path], "ro", True)

    trees = [s.target for s in binds.values() if s.kind in ("ro", "rw")]
    # The union of the rules is what is allowed: a bind inside a tree that is already bound with at
    # least the same access adds nothing (and could not get a mount point in a read-only tree anyway).
    for key, s in list(binds.items()):
        for t in binds.values():
            if t is not s and t.kind in ("ro", "rw") and _under(s.target, t.target) and (
                    s.kind != "rw" or t.kind == "rw"):
                del binds[key]
                break
    steps: list[MountStep] = [MountStep("proc", "/proc"), MountStep("dev", "/dev")]
    steps.append(MountStep("ro-self", "/proc/sys") if system_info else MountStep("mask", "/proc/sys"))
    steps += [MountStep("ro-self", path) for path in PROC_READ_ONLY]
    steps += [MountStep("mask", path) for path in PROC_MASKED]
    # An explicit Tmpfs("/dev/shm") rule wins over the default /dev/shm (its size, its mode).
    if profile.shm_size and not any(s.target == "/dev/shm" for s in extra):
        steps.append(MountStep("shm", "/dev/shm", size=profile.shm_size))
    if profile.devpts:
        steps.append(MountStep("devpts", "/dev/pts"))
    ordered = sorted([*binds.values(), *extra], key=lambda s: (_depth(s.target), s.target))
    for s in ordered:
        if s.target == "/" and s.kind in ("ro", "rw"):
            raise ProfileError("binding the whole host root is not a jail; list the trees the program needs")
        if _under(s.target, "/proc") or (_under(s.target, "/dev") and s.kind != "tmpfs"):
            continue  # the jail brings its own /proc and /dev
        steps.append(s)
    # A bind of the host's /sys (or a tree above these) would show the firmware tables and the power
    # capping controls: masked after the binds, as under /proc.  An explicit bind beneath one is kept.
    for path in SYS_MASKED:
        if any(_under(path, tree) and path != tree for tree in trees):
            steps.append(MountStep("mask", path))
    # The host's top-level symlinks into a tree the jail already has (merged /usr: /lib64 -> usr/lib64,
    # where the ELF interpreter lives) grant nothing new, and without them no binary would start.
    for link, text in _root_symlinks():
        target = os.path.normpath(os.path.join("/", text))
        if any(_under(target, tree) for tree in trees):
            links.setdefault(link, text)
    for link, text in sorted(links.items()):
        if any(_under(link, tree) for tree in trees):
            continue  # already inside a bound tree
        steps.append(MountStep("symlink", link, source=text))
    args: list[str] = ["--root-size", str(JAIL_ROOT_SIZE)]
    if unshare_net:
        args.append("--unshare-net")
        if profile.loopback:
            args.append("--loopback")
    from ._init_filter import init_filter_args

    args += init_filter_args()
    for s in steps:
        args += s.args()
    # The second and third walls: Landlock over the jail's paths, and the seccomp filter.
    from . import _kernel, _landlock, _seccomp

    rules = _landlock.rules_for(profile, abi=_kernel.landlock_abi(), jail=True)
    if rules is not None:
        args += rules.args()
    seccomp = _seccomp.compile_filter(_seccomp.policy_for(profile, jail=True))
    return JailPlan(unshare_net, tuple(steps), tuple(args), seccomp=seccomp,
                    security=tuple(rules.describe()) if rules is not None else ("landlock: absent",),
                    loopback=unshare_net and profile.loopback)


# --------------------------------------------------------------------------------------------------
# Per-spawn arguments


def _check_arg(value: object, what: str) -> bytes:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        try:
            value = os.fsencode(value)
        except UnicodeEncodeError:
            raise ProfileError(f"{what} {value!r} cannot be encoded for the kernel (a lone surrogate?)") from None
    if not isinstance(value, bytes):
        raise ProfileTypeError(f"{what} must be str, bytes or os.PathLike, not {type(value).__name__}")
    if b"\0" in value:
        raise ProfileError(f"{what} {value!r} contains a NUL byte")
    return value


def program_argv(program: object, args: Sequence[object]) -> list[bytes]:
    argv = [_check_arg(program, "program")]
    if not argv[0]:
        raise ProfileError("program is empty")
    argv += [_check_arg(a, f"argument {i}") for i, a in enumerate(args, 1)]
    return argv


def environment(env: Mapping[object, object] | None) -> list[bytes]:
    """Only what the caller passes, plus a minimal PATH: the server's own environment never flows in."""
    result: dict[bytes, bytes] = {}
    if env is not None:
        if not isinstance(env, Mapping):
            raise ProfileTypeError(f"env must be a mapping, not {type(env).__name__}")
        for key, value in env.items():
            k = _check_arg(key, "environment name")
            if not k or b"=" in k:
                raise ProfileError(f"environment name {k!r} is empty or contains '='")
            result[k] = _check_arg(value, f"environment value of {k.decode(errors='replace')}")
    result.setdefault(b"PATH", MINIMAL_PATH.encode())
    return [k + b"=" + v for k, v in result.items()]


def jail_cwd(cwd: object) -> str:
    if cwd is None:
        return "/"
    return check_path(cwd, "cwd")


@functools.cache
def _nobody_mapped() -> bool:
    """Whether nobody exists in our own user namespace (not in one made with only root mapped, as
    ``unshare --map-root-user`` does): the program can only switch to an identity that is mapped."""
    try:
        with open("/proc/self/uid_map", encoding="ascii") as f:
            for line in f:
                first, _, count = (int(x) for x in line.split())
                if first <= NOBODY < first + count:
                    return True
    except (OSError, ValueError):
        return True
    return False


def helper_argv(plan: JailPlan, *, err_fd: int, lifeline_fd: int, keep_fds: Sequence[int], cwd: str,
                umask: int | None, rlimits: Sequence[tuple[int, int, int]], nice: int | None,
                seccomp_fd: int | None, extra: Sequence[str], argv: Sequence[bytes]) -> list[bytes]:
    # Built as bytes straight away (numbers formatted by %d): this runs at every spawn, on the loop.
    head = [b"aiogaol-jail", b"--err", b"%d" % err_fd, b"--lifeline", b"%d" % lifeline_fd, b"--chdir",
            os.fsencode(cwd)]
    if umask is not None:
        # The server's umask of the moment: the spawner's own is the one it was started with.
        head += [b"--umask", b"%o" % umask]
    if os.geteuid() == 0 and _nobody_mapped():
        # A root server's program runs as nobody: root's files are not its own, root's groups are gone.
        head += [b"--uid", b"%d" % NOBODY, b"--gid", b"%d" % NOBODY]
    for fd in keep_fds:
        head += [b"--keep", b"%d" % fd]
    for resource, soft, hard in rlimits:
        head += [b"--rlimit", b"%d" % resource, b"%d" % soft, b"%d" % hard]
    if nice is not None:
        head += [b"--nice", b"%d" % nice]
    if seccomp_fd is not None:
        head += [b"--seccomp-fd", b"%d" % seccomp_fd]
    head += [os.fsencode(a) for a in extra]
    return head + [*plan.args_bytes, b"--", *argv]
