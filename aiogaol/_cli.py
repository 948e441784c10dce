"""The ``aiogaol`` command: ``run`` one program in a jail, ``check`` this kernel, ``batch`` many jobs,
``serve`` a SandboxFusion-compatible code-execution service (the extra ``aiogaol[serve]``).

``run`` behaves like the program it runs, so it can stand in a shell pipeline or a Makefile: stdin,
stdout and stderr are the program's own, and the exit status is passed through (128+N when signal N
ended it, as a shell reports it).  aiogaol's own outcomes use the codes of ``timeout(1)`` and
``env(1)``/``podman``: 124 timed out, 125 the jail could not be built, 126 not executable, 127 not found.

Profiles come from flags in the spirit of bubblewrap (``--ro``, ``--rw``, ``--tmpfs``...), from a TOML
file (``--profile FILE``, see examples/profiles/) or by name (``--profile system|python|none``).
"""

from __future__ import annotations

import argparse
import decimal
import json
import math
import os
import re
import signal
import stat
import sys
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import anyio

from . import _cputime, _ready
from ._anyio_process import spawn
from ._errors import (AiogaolError, ProfileError, ProgramNotFoundError, ProgramPermissionError,
                      SandboxSetupError, UnsupportedOperation, UserNamespacesUnavailable)
from ._check import check
from ._kernel import KernelReport
from ._limits import DEFAULT_LIMITS, MAX_SECONDS, Limits, check_limit
from ._plan import compile_profile
from ._pool import Job, Pool
from ._profile import (AllAddresses, FileReadAll, FileReadMetadata, FileWriteAll, Literal, LocalSocket,
                       NetworkOutbound, Operation, Profile, Subpath, SystemInfoRead, Tcp, Tmpfs)
from ._run import Result, Status, _Outcome, _watch_jail_cpu, not_run

EXIT_TIMED_OUT, EXIT_SETUP_FAILED, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND = 124, 125, 126, 127
EXIT_USAGE = 2

READY_PROFILES = ("system", "python", "none")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class UsageError(Exception):
    """A mistake in the command line or a profile file: reported in one line, exit status 2."""


def parse_size(text: object, what: str = "size") -> int:
    """``1048576``, ``512k``, ``256M``, ``1G``, ``2GiB``: binary units, as ulimit and bubblewrap use.
    Exact (Decimal, not float): a size of many digits is refused by the limit's range, not by an overflow."""
    if isinstance(text, bool) or not isinstance(text, (int, str)):
        raise UsageError(f"{what}: expected a size such as 256M or a number of bytes, not {_show(text)}")
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE.match(text)
        if not m or len(text) > 64:
            raise UsageError(f"{what}: expected a size such as 64M or 1G, not {_show(text)}")
        value = int(decimal.Decimal(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0:
        raise UsageError(f"{what} must be positive, not {_show(text)}")
    return value


def parse_shm_size(text: object, what: str) -> int:
    """A size for the jail's /dev/shm, or 0 (also "0") for none."""
    if not isinstance(text, bool) and text in (0, "0"):
        return 0
    return parse_size(text, what)


def parse_seconds(text: object, what: str) -> float:
    """Seconds from the command line (a string) or a profile file (a number: a bool or a string is refused)."""
    if isinstance(text, bool) or not isinstance(text, (int, float, str)):
        raise UsageError(f"{what}: expected a number of seconds, not {_show(text)}")
    try:
        value = float(text)
    except (OverflowError, ValueError):
        raise UsageError(f"{what}: expected a number of seconds, not {_show(text)}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_SECONDS):
        raise UsageError(f"{what} must be a number of seconds, more than 0 and at most {MAX_SECONDS:g}, "
                         f"not {_show(text)}")
    return value


def _one_line(message: str) -> str:
    """A message as one printable line: a newline or a terminal escape in a path the user gave (or a
    fuzzer) is shown escaped, as repr() would, never acted on by the terminal."""
    if message.isprintable():
        return message
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in message)


def _show(value: object) -> str:
    """A value in an error message: its repr, cut short (a fuzzer's megabyte string stays one line)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------------------------------
# Profiles: by name, from TOML, and from flags


@dataclass
class ProfileSpec:
    """What the command line and a profile file say, before it becomes a Profile and Limits.
    ``options`` are Profile's keyword arguments (a profile file's top-level keys that are not operations)."""

    operations: list[Operation] = field(default_factory=list)
    limits: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # Profile's loopback, shm_size, devpts


def ready_profile(name: str) -> list[Operation]:
    if name == "system":
        return list(_ready.system_profile().operations)
    if name == "python":
        return list(_ready.python_profile().operations)
    if name == "none":
        return []
    raise UsageError(f"no ready-made profile {name!r}; the names are {', '.join(READY_PROFILES)}")


class _Bad(Exception):
    """A value of a profile file that is not what its field takes: (what was expected, the value)."""

    def __init__(self, expected: str, value: object) -> None:
        super().__init__(expected, value)
        self.expected = expected
        self.value = value


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Bad("true or false", value)
    return value


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad("an integer", value)
    return value


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise _Bad("a string", value)
    return value


def _list_of(value: object, expected: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Bad(f"a list of {expected}", value)
    return value


_PATTERN = 'a path string or {path = "...", literal = true|false}'


def _pattern(entry: object) -> Literal | Subpath:
    """A path string is a Subpath (the tree); ``{path = "...", literal = true}`` the entry alone."""
    if isinstance(entry, str):
        return Subpath(entry)
    if isinstance(entry, dict) and set(entry) <= {"path", "literal"} and isinstance(entry.get("path"), str) \
            and isinstance(entry.get("literal", False), bool):
        return Literal(entry["path"]) if entry.get("literal") else Subpath(entry["path"])
    raise _Bad(_PATTERN, entry)


def _paths(op: type[FileReadAll | FileWriteAll | FileReadMetadata]) -> Callable[[ProfileSpec, object], None]:
    def parse(spec: ProfileSpec, value: object) -> None:
        spec.operations += [op(_pattern(e)) for e in _list_of(value, _PATTERN + " entries")]
    return parse


_TMPFS = '"PATH[:SIZE]" or {path = "...", size = "16M" or bytes}'


def _tmpfs(spec: ProfileSpec, value: object) -> None:
    for entry in _list_of(value, _TMPFS + " entries"):
        if isinstance(entry, str):
            spec.operations.append(parse_tmpfs(entry))
        elif isinstance(entry, dict) and set(entry) <= {"path", "size"} and isinstance(entry.get("path"), str):
            size = parse_size(entry["size"], "size") if "size" in entry else None
            spec.operations.append(Tmpfs(entry["path"], size) if size is not None else Tmpfs(entry["path"]))
        else:
            raise _Bad(_TMPFS, entry)


def _network(spec: ProfileSpec, value: object) -> None:
    if value == "all" and isinstance(value, str):
        spec.operations.append(NetworkOutbound(AllAddresses()))
    elif value != "none" or not isinstance(value, str):
        raise _Bad('"none" or "all" (use tcp = [...] for ports)', value)


def _tcp(spec: ProfileSpec, value: object) -> None:
    spec.operations += [NetworkOutbound(Tcp(_int(port))) for port in _list_of(value, "port numbers")]


def _unix(spec: ProfileSpec, value: object) -> None:
    spec.operations += [NetworkOutbound(LocalSocket(_str(sock))) for sock in _list_of(value, "socket paths")]


def _system_info(spec: ProfileSpec, value: object) -> None:
    if _bool(value):
        spec.operations.append(SystemInfoRead())


def _option(name: str, check: Callable[[object], object]) -> Callable[[ProfileSpec, object], None]:
    """A Profile keyword argument, checked for its type here and for its range by Profile itself."""
    def parse(spec: ProfileSpec, value: object) -> None:
        spec.options[name] = check(value)
    return parse


def _limit_seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad("a number of seconds", value)
    return float(value)


def _limit_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _Bad('a size: bytes or a string such as "256M"', value)
    return parse_size(value)


def _shm_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _Bad('a size: bytes, a string such as "64M", or 0 for no /dev/shm', value)
    return parse_shm_size(value, "shm_size")


# [limits]: key -> parser of its value; the range is Limits' own (check_limit).
_LIMIT_FIELDS: dict[str, Callable[[object], object]] = {
    "wall_time": _limit_seconds, "cpu_time": _limit_seconds, "memory": _limit_size, "file_size": _limit_size,
    "output": _limit_size, "processes": _int, "open_files": _int, "nice": _int, "core_dumps": _bool,
}


def _limits(spec: ProfileSpec, value: object) -> None:
    if not isinstance(value, dict):
        raise _Bad("a table: [limits]", value)
    for key, item in value.items():
        if key not in _LIMIT_FIELDS:
            raise UsageError(f"limits.{key}: unknown key; [limits] takes {', '.join(sorted(_LIMIT_FIELDS))}")
        try:
            parsed = _LIMIT_FIELDS[key](item)
            check_limit(key, parsed)
        except _Bad as e:
            raise UsageError(f"limits.{key}: expected {e.expected}, not {_show(e.value)}") from None
        except UsageError as e:
            raise UsageError(f"limits.{key}: {e}") from None
        except ProfileError as e:
            raise UsageError(f"limits.{key}: {e}") from None
        spec.limits[key] = parsed


# Every key of a profile file and the parser of its value: one type each, anything else an error naming
# the file, the key and what it takes.  ``extends`` is read first (the base comes before the rules).
# A new key is one line here (a Profile keyword argument: ``"name": _option("name", _bool)``).
PROFILE_FIELDS: dict[str, Callable[[ProfileSpec, object], None]] = {
    "read": _paths(FileReadAll),
    "write": _paths(FileWriteAll),
    "metadata": _paths(FileReadMetadata),
    "tmpfs": _tmpfs,
    "network": _network,
    "tcp": _tcp,
    "unix": _unix,
    "system_info": _system_info,
    "limits": _limits,
    "loopback": _option("loopback", _bool),
    "shm_size": _option("shm_size", _shm_size),
    "devpts": _option("devpts", _bool),
}
_PROFILE_KEYS = {"extends", *PROFILE_FIELDS}
MAX_PROFILE_BYTES = 1 << 20  # a profile is a page of text; more is a mistake (or /dev/zero)


def _read_profile_text(path: str) -> str:
    """The file's text, or a UsageError naming the problem: missing, a directory, a device, too large,
    unreadable, not UTF-8."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except (OSError, ValueError) as e:
        raise UsageError(f"profile {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            kind = "a directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "not a regular file"
            raise UsageError(f"profile {path}: {kind}; a profile is a TOML file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_PROFILE_BYTES + 1)
    except OSError as e:
        raise UsageError(f"profile {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_PROFILE_BYTES:
        raise UsageError(f"profile {path}: larger than {MAX_PROFILE_BYTES >> 20} MiB; a profile is a short TOML file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"profile {path}: not UTF-8 (byte {e.start}: {_show(data[e.start:e.start + 4])}); "
                         "TOML files are UTF-8") from None


def load_profile_file(path: str) -> ProfileSpec:
    """Read a TOML profile (format in docs/profiles.md and examples/profiles/).  Every key has one type;
    unknown keys are errors: a misspelt rule in a sandbox policy must not pass unnoticed.  Every problem
    is a UsageError naming the file and the key."""
    text = _read_profile_text(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"profile {path}: {e}") from None
    except RecursionError:
        raise UsageError(f"profile {path}: nested too deeply to be a profile") from None
    unknown = set(doc) - _PROFILE_KEYS
    if unknown:
        raise UsageError(f"profile {path}: unknown key(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(sorted(_PROFILE_KEYS))}")
    spec = ProfileSpec()
    base = doc.get("extends", "none")
    if not isinstance(base, str) or base not in READY_PROFILES:
        raise UsageError(f"profile {path}: extends: expected one of {', '.join(READY_PROFILES)}, not {_show(base)}")
    spec.operations += ready_profile(base)
    for key, parse in PROFILE_FIELDS.items():
        if key not in doc:
            continue
        try:
            parse(spec, doc[key])
        except _Bad as e:
            raise UsageError(f"profile {path}: {key}: expected {e.expected}, not {_show(e.value)}") from None
        except (UsageError, ProfileError) as e:  # ProfileTypeError too; range errors of the operations
            raise UsageError(f"profile {path}: {'' if key == 'limits' else key + ': '}{e}") from None
    return spec


def parse_tmpfs(text: str) -> Tmpfs:
    path, sep, size = text.partition(":")
    return Tmpfs(path, parse_size(size, f"tmpfs {path}")) if sep else Tmpfs(path)


def _add_profile_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("profile (what the program may do; nothing else is allowed)")
    g.add_argument("--profile", metavar="FILE|NAME", default="system",
                   help="a TOML profile file or a ready-made profile: system (default: the host's "
                        "programs and libraries, read-only), python (the host's Python too), none")
    g.add_argument("--ro", metavar="PATH", action="append", default=[], help="read this tree (FileReadAll)")
    g.add_argument("--rw", metavar="PATH", action="append", default=[], help="read and write this tree")
    g.add_argument("--metadata", metavar="PATH", action="append", default=[],
                   help="stat this tree, not read it (FileReadMetadata)")
    g.add_argument("--tmpfs", metavar="PATH[:SIZE]", action="append", default=[],
                   help="a private scratch directory, 64M unless SIZE is given")
    net = g.add_mutually_exclusive_group()
    net.add_argument("--net", action="store_true", help="the host's network (NetworkOutbound(AllAddresses()))")
    net.add_argument("--tcp", metavar="PORT", type=int, action="append", default=[],
                     help="TCP connections to this port only")
    g.add_argument("--unix", metavar="PATH", action="append", default=[], help="connect to this Unix socket")
    g.add_argument("--system-info", action="store_true", help="read /proc/sys (SystemInfoRead)")
    g.add_argument("--no-loopback", action="store_true",
                   help="no loopback in the jail's own network namespace (default: 127.0.0.1 and ::1 up)")
    g.add_argument("--shm-size", metavar="SIZE",
                   help="size of the jail's private /dev/shm (default 64M; 0 for none)")
    g.add_argument("--no-devpts", action="store_true", help="no private devpts (no ptys) in the jail")
    lim = p.add_argument_group("limits")
    lim.add_argument("--timeout", metavar="S", help="wall-clock seconds, then SIGTERM, a grace, SIGKILL")
    lim.add_argument("--cpu", metavar="S", help="CPU seconds")
    lim.add_argument("--memory", metavar="SIZE", help="address space, e.g. 256M")
    lim.add_argument("--processes", metavar="N", type=int, help="processes in the jail")
    lim.add_argument("--output", metavar="SIZE", help="bytes of stdout and of stderr kept (--json, batch)")
    lim.add_argument("--nice", metavar="N", type=int,
                     help="the jail's niceness, 0 to 19 (default 19: it yields the CPU to everything else)")


def build_profile(ns: argparse.Namespace) -> tuple[Profile, Limits]:
    """The Profile and Limits the options describe: the base profile, then each flag's operation."""
    spec = ProfileSpec()
    source = "command line"
    if ns.profile in READY_PROFILES:
        spec.operations += ready_profile(ns.profile)
    elif os.path.exists(ns.profile) or ns.profile.endswith(".toml") or os.sep in ns.profile:
        spec = load_profile_file(ns.profile)
        source = f"profile {ns.profile} with the command line"
    else:
        raise UsageError(f"--profile {ns.profile}: neither a file nor one of {', '.join(READY_PROFILES)}")
    try:
        spec.operations += [FileReadAll(Subpath(os.path.abspath(p))) for p in ns.ro]
        spec.operations += [FileWriteAll(Subpath(os.path.abspath(p))) for p in ns.rw]
        spec.operations += [FileReadMetadata(Subpath(os.path.abspath(p))) for p in ns.metadata]
        spec.operations += [parse_tmpfs(t) for t in ns.tmpfs]
        if ns.net:
            spec.operations.append(NetworkOutbound(AllAddresses()))
        spec.operations += [NetworkOutbound(Tcp(port)) for port in ns.tcp]
        spec.operations += [NetworkOutbound(LocalSocket(os.path.abspath(p))) for p in ns.unix]
        if ns.system_info:
            spec.operations.append(SystemInfoRead())
        options = dict(spec.options)
        if ns.no_loopback:
            options["loopback"] = False
        if ns.shm_size is not None:
            options["shm_size"] = parse_shm_size(ns.shm_size, "--shm-size")
        if ns.no_devpts:
            options["devpts"] = False
        profile = Profile(spec.operations, **options)
    except UnsupportedOperation:
        raise  # the kernel, not the input: exit 125 as a jail that cannot be built
    except (TypeError, ValueError) as e:
        raise UsageError(f"{source}: {e}") from None
    limits = dict(spec.limits)
    if ns.timeout is not None:
        limits["wall_time"] = parse_seconds(ns.timeout, "--timeout")
    if ns.cpu is not None:
        limits["cpu_time"] = parse_seconds(ns.cpu, "--cpu")
    if ns.memory is not None:
        limits["memory"] = parse_size(ns.memory, "--memory")
    if ns.processes is not None:
        limits["processes"] = ns.processes
    if ns.output is not None:
        limits["output"] = parse_size(ns.output, "--output")
    if ns.nice is not None:
        limits["nice"] = ns.nice
    try:
        return profile, DEFAULT_LIMITS.replace(**limits)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{source}: {e}") from None


# --------------------------------------------------------------------------------------------------
# aiogaol run


def _exit_status(returncode: int) -> int:
    """What a shell would report: the exit code, or 128+N for signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _setup_failure(e: OSError, stderr: TextIO) -> int:
    print(f"aiogaol: {_one_line(str(e))}", file=stderr)
    if isinstance(e, ProgramNotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(e, ProgramPermissionError):
        return EXIT_NOT_EXECUTABLE
    return EXIT_SETUP_FAILED


def _report(result: Result, isolation: str | None) -> dict[str, Any]:
    report = result.to_dict()
    del report["id"], report["latency"]
    report["isolation"] = isolation
    return report


async def _run_inherited(profile: Profile, limits: Limits, argv: list[str], env: dict[str, str] | None,
                         cwd: str | None, stderr: TextIO) -> int:
    """The program on our own stdin/stdout/stderr; our SIGINT, SIGTERM and SIGHUP are passed on, since it
    leads a session of its own and the terminal no longer signals it."""
    async with await spawn(profile, argv, stdin=None, stdout=None, stderr=None, env=env, cwd=cwd,
                           limits=limits) as proc:
        async with anyio.create_task_group() as tg:
            async def forward() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
                    async for signum in signals:
                        proc.send_signal(signum)

            tg.start_soon(forward)
            # --cpu as given and for the jail as a whole, as aiogaol.run enforces it (RLIMIT_CPU alone
            # counts whole seconds of one process).
            outcome = _Outcome()
            if limits.cpu_time is not None and (proc._jail.cgroup is not None or _cputime.available()):
                tg.start_soon(_watch_jail_cpu, proc._jail, limits.cpu_time, outcome, anyio.CancelScope())
            with anyio.move_on_after(limits.wall_time if limits.wall_time else math.inf) as deadline:
                returncode = await proc.wait()
            tg.cancel_scope.cancel()
    if deadline.cancelled_caught:
        print(f"aiogaol: timed out after {limits.wall_time:g} s", file=stderr)
        return EXIT_TIMED_OUT
    if outcome.jail_cpu_capped:
        print(f"aiogaol: CPU time limit of {limits.cpu_time:g} s reached ({outcome.cpu_source})", file=stderr)
        return 128 + signal.SIGXCPU  # what RLIMIT_CPU's own SIGXCPU gives
    return _exit_status(returncode)


async def _run_json(profile: Profile, limits: Limits, argv: list[str], env: dict[str, str] | None,
                    cwd: str | None, stdin: Any, stdout: TextIO) -> int:
    data = None
    if stdin is not None and not stdin.isatty():
        data = stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read().encode()
    async with Pool(profile, size=1, limits=limits) as pool:
        result = await pool.run(argv, input=data or None, env=env, cwd=cwd)
    print(json.dumps(_report(result, pool.isolation), indent=2), file=stdout)
    if result.status == "error":
        if isinstance(result.exception, ProgramNotFoundError):
            return EXIT_NOT_FOUND
        return EXIT_NOT_EXECUTABLE if isinstance(result.exception, ProgramPermissionError) else EXIT_SETUP_FAILED
    if result.status == "timed-out":
        return EXIT_TIMED_OUT
    return _exit_status(result.returncode) if result.returncode is not None else EXIT_SETUP_FAILED


def cmd_run(ns: argparse.Namespace, stdin: Any, stdout: TextIO, stderr: TextIO) -> int:
    profile, limits = build_profile(ns)
    argv = list(ns.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    bad_env = next((e for e in ns.env if "=" not in e), None)
    if bad_env is not None:
        raise UsageError(f"--env takes NAME=VALUE, not {_show(bad_env)}")
    env = dict(e.split("=", 1) for e in ns.env) if ns.env else None
    if ns.explain:
        print(compile_profile(profile).explain(), file=stdout)
        shown = {k: v for k, v in vars(limits).items() if v is not None}
        print("limits: " + ", ".join(f"{k}={v}" for k, v in shown.items()), file=stdout)
        if argv:
            print("program: " + " ".join(argv), file=stdout)
        return 0
    if not argv:
        raise UsageError("nothing to run: aiogaol run [OPTIONS] -- PROGRAM [ARGS...]")
    try:
        if ns.json:
            return anyio.run(_run_json, profile, limits, argv, env, ns.cwd, stdin, stdout)
        return anyio.run(_run_inherited, profile, limits, argv, env, ns.cwd, stderr)
    except (SandboxSetupError, UserNamespacesUnavailable) as e:
        return _setup_failure(e, stderr)


# --------------------------------------------------------------------------------------------------
# aiogaol check


def verdict(report: KernelReport) -> tuple[bool, list[str]]:
    """Whether full jails work here, and what a person should know, one sentence a line."""
    notes: list[str] = []
    if not report.seccomp or not report.libseccomp:
        return False, ["verdict: aiogaol cannot sandbox here: it needs seccomp and libseccomp.so.2 "
                       "(apt-get install libseccomp2)"]
    if not report.pidfd:
        return False, ["verdict: aiogaol cannot run here: it needs pidfds (Linux 5.3 or later)"]
    if not report.landlock_abi:
        notes.append("without Landlock the mount jail and seccomp remain, but FileReadMetadata and "
                     "per-port Tcp rules are refused")
    elif report.landlock_abi < 6:
        notes.append(f"Landlock ABI {report.landlock_abi} < 6: per-port Tcp rules are refused, and the "
                     "landlock fallback is unavailable")
    if not report.cgroup2:
        notes.append("no cgroup v2 hierarchy: memory and process limits are enforced with rlimits")
    if report.user_namespaces:
        return True, ["verdict: full jails available (user, PID, mount, IPC, UTS, cgroup and network "
                      "namespaces, with Landlock and seccomp behind them)", *notes]
    fallback = report.landlock_abi >= 6
    return False, ["verdict: no jails here: user namespaces are forbidden (" +
                   (report.user_namespaces_reason or "unknown reason") + ")",
                   "isolation='landlock' can still run programs, with weaker guarantees (docs/security.md)"
                   if fallback else "and Landlock is too old for the fallback: nothing can be sandboxed",
                   *notes]


def cmd_check(ns: argparse.Namespace, stdout: TextIO) -> int:
    report = check()
    ok, lines = verdict(report)
    if ns.json:
        print(json.dumps({**vars(report), "jails": ok, "verdict": lines}, indent=2), file=stdout)
        return 0 if ok else 1
    print("aiogaol check: what this kernel lets aiogaol enforce", file=stdout)
    for line in report.lines():
        print("  " + line, file=stdout)
    for line in lines:
        print(line, file=stdout)
    return 0 if ok else 1


# --------------------------------------------------------------------------------------------------
# aiogaol batch


_JOB_KEYS = ("argv", "id", "input", "timeout", "env", "cwd")


def _job(item: object, number: int) -> Job:
    """One decoded line as a Job, or ValueError saying what is wrong with it."""
    if isinstance(item, list):
        item = {"argv": item}
    if not isinstance(item, dict):
        raise ValueError(f"a line must be a JSON object or a list, not {type(item).__name__}")
    unknown = set(item) - set(_JOB_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))}; a job takes {', '.join(_JOB_KEYS)}")
    argv = item.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError("argv must be a non-empty list of strings")
    job_id = item.get("id", number)
    if not (job_id is None or isinstance(job_id, (str, int, float))):
        raise ValueError("id must be a string, a number or null")
    data = item.get("input")
    if data is not None and not isinstance(data, str):
        raise ValueError("input must be a string")
    timeout = item.get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise ValueError("timeout must be a number of seconds")
        if not (math.isfinite(timeout) and 0 < timeout <= MAX_SECONDS):
            raise ValueError(f"timeout must be more than 0 and at most {MAX_SECONDS:g} seconds, not {timeout!r}")
    env = item.get("env")
    if env is not None and not (isinstance(env, dict) and all(isinstance(v, str) for v in env.values())):
        raise ValueError("env must be an object of strings")
    cwd = item.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise ValueError("cwd must be a string (an absolute path in the jail)")
    try:
        encoded = data.encode() if data else None
    except UnicodeEncodeError:
        raise ValueError("input holds a lone surrogate (\\udXXX): not encodable as UTF-8") from None
    return Job(argv, encoded, float(timeout) if timeout is not None else None, env, cwd, job_id)


def _refused(number: int, error: str, limits: Limits) -> Result:
    return not_run((), Status.ERROR, "the line was refused", limits, error=error, id=number)


def read_jobs(lines: Iterable[bytes | str], bad: list[Result],
              limits: Limits = DEFAULT_LIMITS) -> Iterator[Job]:
    """One JSON object a line: ``{"argv": [...], "id": ..., "input": "...", "timeout": S, "env": {...},
    "cwd": "..."}``, or a bare JSON list (the argv).  Lines are bytes (or str) decoded one by one, so a
    bad line (not UTF-8, not JSON, nested too deeply, a wrong type) becomes an "error" result for that
    line and the others still run."""
    for number, raw in enumerate(lines, 1):
        try:
            line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError as e:
            bad.append(_refused(number, f"line {number}: not UTF-8 (byte {e.start})", limits))
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            yield _job(json.loads(line), number)
        except RecursionError:
            bad.append(_refused(number, f"line {number}: nested too deeply", limits))
        except ValueError as e:  # json.JSONDecodeError included
            bad.append(_refused(number, f"line {number}: {e}", limits))


class Progress:
    """A one-line progress bar on a terminal; nothing at all when stderr is a file or a pipe."""

    def __init__(self, stream: TextIO, total: int | None) -> None:
        self.stream = stream
        self.total = total
        self.enabled = stream.isatty()
        self._last = 0.0

    def update(self, pool: Pool, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        s = pool.stats()
        if self.total:
            filled = int(30 * s.done / self.total)
            head = f"[{'#' * filled}{'.' * (30 - filled)}] {s.done}/{self.total}"
        else:
            head = f"{s.done} done"
        self.stream.write(f"\r{head}  running {s.running}  failed {s.failed}\x1b[K")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _fmt_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


async def _batch(profile: Profile, limits: Limits, source: Iterable[bytes | str], total: int | None, jobs_n: int,
                 stdout: TextIO, stderr: TextIO) -> int:
    bad: list[Result] = []
    counts = dict.fromkeys(Status, 0)
    progress = Progress(stderr, total)
    started = time.monotonic()
    async with Pool(profile, size=jobs_n, limits=limits) as pool:
        async for result in pool.map(read_jobs(source, bad, limits)):
            while bad:
                early = bad.pop(0)
                counts[early.status] += 1
                print(json.dumps(early.to_dict()), file=stdout, flush=True)
            counts[result.status] += 1
            print(json.dumps(result.to_dict()), file=stdout, flush=True)
            progress.update(pool)
        stats = pool.stats()
    for early in bad:
        counts[early.status] += 1
        print(json.dumps(early.to_dict()), file=stdout, flush=True)
    progress.finish()
    done = sum(counts.values())
    parts = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    print(f"aiogaol batch: {done} jobs in {time.monotonic() - started:.2f}s with {jobs_n} at a time: "
          f"{parts or 'nothing to do'}; latency p50 {_fmt_seconds(stats.p50)} p90 {_fmt_seconds(stats.p90)} "
          f"p99 {_fmt_seconds(stats.p99)}", file=stderr)
    return 0 if counts[Status.OK] == done else 1


def cmd_batch(ns: argparse.Namespace, stdin: Any, stdout: TextIO, stderr: TextIO) -> int:
    profile, limits = build_profile(ns)
    if ns.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    if ns.file == "-":
        # Bytes, decoded line by line: one line that is not UTF-8 must not take the others with it.
        source = stdin.buffer if hasattr(stdin, "buffer") else stdin
        return anyio.run(_batch, profile, limits, source, None, ns.jobs, stdout, stderr)
    try:
        f = open(ns.file, "rb")
    except (OSError, ValueError) as e:
        raise UsageError(f"{ns.file}: {getattr(e, 'strerror', None) or e}") from None
    with f:
        try:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise UsageError(f"{ns.file}: not a regular file; give a JSON-lines file, or - for stdin")
            total = sum(1 for line in f if line.strip() and not line.lstrip().startswith(b"#"))
            f.seek(0)
        except OSError as e:
            raise UsageError(f"{ns.file}: {e.strerror or e}") from None
        return anyio.run(_batch, profile, limits, f, total, ns.jobs, stdout, stderr)


# --------------------------------------------------------------------------------------------------
# aiogaol serve


SERVE_EXTRA = ("starlette", "uvicorn", "prometheus_client")


def cmd_serve(ns: argparse.Namespace) -> int:
    """The service lives in the extra: its imports are made here, not at the top, so that the core and
    the other subcommands never need Starlette or uvicorn."""
    import importlib
    for module in SERVE_EXTRA:
        try:
            importlib.import_module(module)
        except ImportError:
            raise UsageError(f"aiogaol serve needs its extra: pip install 'aiogaol[serve]' "
                             f"(missing: {module})") from None
    if ns.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    if ns.queue < 0:
        raise UsageError("--queue must be 0 or more")
    if not 0 <= ns.port <= 65535:
        raise UsageError(f"--port must be 0 to 65535, not {ns.port}")
    ok, lines = verdict(check())
    if not ok:  # fail closed: a service that cannot jail must not start and answer every request badly
        raise AiogaolError(f"aiogaol serve cannot start: {lines[0].removeprefix('verdict: ')}")
    from ._serve import LanguageTableError, load_table, serve
    try:
        load_table(ns.languages)  # a bad table is a one-line error now, not at the first request
    except LanguageTableError as e:
        raise UsageError(str(e)) from None
    serve(ns.host, ns.port, concurrency=ns.concurrency, queue=ns.queue, languages=ns.languages)
    return 0


# --------------------------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiogaol", description="Run untrusted programs in Linux jails.")
    sub = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run one program in a jail, like a plain command",
                         description="Run PROGRAM in a jail; its exit status is passed through "
                                     "(128+N for signal N; 124 timed out, 125 jail failed, 126/127 not "
                                     "executable/found).")
    _add_profile_options(run)
    run.add_argument("--env", metavar="NAME=VALUE", action="append", default=[],
                     help="the program's environment (nothing of ours is passed on, only a minimal PATH)")
    run.add_argument("--cwd", metavar="PATH", help="working directory inside the jail (default /)")
    run.add_argument("--json", action="store_true",
                     help="capture the output and print a JSON report (status, output, usage) instead")
    run.add_argument("--explain", action="store_true", help="print the jail the profile builds; run nothing")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- PROGRAM ARGS")
    chk = sub.add_parser("check", help="what this kernel supports, and why not",
                         description="Probe the kernel for every mechanism aiogaol uses; exit 1 without jails.")
    chk.add_argument("--json", action="store_true", help="machine-readable")
    batch = sub.add_parser("batch", help="run a JSON-lines file of jobs through a pool",
                           description="Run each line of JOBS.jsonl ({\"argv\": [...], \"input\": ..., "
                                       "\"timeout\": ..., \"id\": ...}) in its own jail, N at a time; one JSON "
                                       "result a line on stdout, progress and a summary on stderr; exit 1 "
                                       "if any job was not ok.")
    batch.add_argument("file", metavar="JOBS.jsonl", help="the jobs, or - for stdin")
    batch.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 4, metavar="N",
                       help="jails at once (default: the number of CPUs)")
    _add_profile_options(batch)
    srv = sub.add_parser("serve", help="a SandboxFusion-compatible code-execution service (aiogaol[serve])",
                         description="Serve POST /run_code and /run_jupyter (SandboxFusion's API) on HTTP, "
                                     "every request in jails of its own; GET /languages, /metrics, /health.")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    srv.add_argument("--port", type=int, default=8080, help="port (default 8080, as SandboxFusion's)")
    srv.add_argument("--concurrency", type=int, default=os.cpu_count() or 4, metavar="N",
                     help="requests in jails at once (default: the number of CPUs)")
    srv.add_argument("--queue", type=int, default=64, metavar="N",
                     help="requests waiting for a slot before the next gets 503 (default 64)")
    srv.add_argument("--languages", metavar="FILE",
                     help="a TOML language table added to the shipped one (see docs/service.md)")
    return parser


def main(argv: Sequence[str] | None = None, *, stdin: Any = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    parser = make_parser()
    ns = parser.parse_args(argv)
    try:
        if ns.command_name == "run":
            return cmd_run(ns, stdin, stdout, stderr)
        if ns.command_name == "check":
            return cmd_check(ns, stdout)
        if ns.command_name == "serve":
            return cmd_serve(ns)
        return cmd_batch(ns, stdin, stdout, stderr)
    except UsageError as e:
        print(f"aiogaol: {_one_line(str(e))}", file=stderr)
        return EXIT_USAGE
    except UnsupportedOperation as e:  # the kernel cannot enforce the profile: the jail cannot be built
        print(f"aiogaol: {_one_line(str(e))}", file=stderr)
        return EXIT_SETUP_FAILED
    except ProfileError as e:  # an argument refused by the library (a relative --cwd, a NUL in --env...)
        print(f"aiogaol: {_one_line(str(e))}", file=stderr)
        return EXIT_USAGE
    except AiogaolError as e:
        print(f"aiogaol: {_one_line(str(e))}", file=stderr)
        return EXIT_SETUP_FAILED
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except BrokenPipeError:
        # Whoever read our output went away (``aiogaol batch ... | head``): stop quietly, as a program
        # killed by SIGPIPE would, and keep the interpreter's final flush from raising again.
        if stdout is sys.stdout:
            try:
                devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
            except (OSError, ValueError):
                pass
        return 128 + signal.SIGPIPE
