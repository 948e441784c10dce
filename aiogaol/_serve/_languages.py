"""The language table of ``aiogaol serve``: what each language's jail reads and which commands it runs.

Policy only: the table is data (``languages.toml``, shipped beside this module, plus ``--languages FILE``),
checked here key by key so that a mistake in a table is one line naming the language and the key.
Whether a language works on this host is not decided here but by running its probe (``_runner.probe``).
"""

from __future__ import annotations

import os
import re
import shutil
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from .._profile import FileReadAll, FileWriteAll, Operation, Profile, Subpath, Tmpfs
from .._ready import python_executable, python_profile, system_profile

PROFILES = ("system", "python")
_KEYS = {"source", "compile", "run", "inline", "profile", "read", "env", "memory", "processes", "probe", "aliases"}
MAX_TABLE_BYTES = 1 << 20
SCRATCH = 64 << 20  # the jail's private /tmp (compilers put their temporary files there)


class LanguageTableError(ValueError):
    """A language table that cannot be used as written (the CLI prints it in one line)."""


_SIZE = re.compile(r"^([1-9][0-9]{0,12})([KMG]?)$")


def _size(value: object, what: str) -> int:
    """``memory = "3G"`` (K, M, G: binary units) or a number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = _SIZE.match(value) if isinstance(value, str) else None
    if m is None:
        raise LanguageTableError(f"{what}: expected a size such as \"2G\" or \"512M\", or bytes")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]


@dataclass(frozen=True)
class Language:
    """One language as the table gives it, its placeholders not yet filled in."""

    name: str
    source: str
    run: tuple[str, ...]
    compile: tuple[str, ...] | None = None
    inline: tuple[str, ...] | None = None
    profile: str = "system"
    read: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    memory: int | None = None
    processes: int | None = None
    probe: str | None = None
    aliases: tuple[str, ...] = ()

    def profile_for(self, workdir: str | None) -> Profile:
        """The jail of one step: the ready-made profile, the toolchain's trees, a private /tmp and,
        when the request has one, its working directory (read-write)."""
        ops: list[Operation] = [FileReadAll(Subpath(fill(p, workdir=""))) for p in self.read]
        ops.append(Tmpfs("/tmp", SCRATCH))
        if workdir is not None:
            ops.append(FileWriteAll(Subpath(workdir)))
        return python_profile(ops) if self.profile == "python" else system_profile(ops)

    def argv(self, template: Sequence[str], *, workdir: str, code: str = "") -> list[str]:
        argv = [fill(a, workdir=workdir, source=self.source, code=code) for a in template]
        if "/" not in argv[0]:
            found = shutil.which(argv[0])
            if found is None:
                raise LanguageUnavailable(f"{argv[0]} is not on the server's PATH")
            argv[0] = found
        return argv

    def environment(self, workdir: str) -> dict[str, str]:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir}
        env.update({k: fill(v, workdir=workdir) for k, v in self.env.items()})
        return env


class LanguageUnavailable(Exception):
    """The language's tools are missing here (its probe fails with this reason)."""


def fill(text: str, *, workdir: str, source: str = "", code: str = "") -> str:
    """Replace the table's placeholders.  Plain ``str.replace``, not ``str.format``: a brace in a
    command (a shell snippet) or in the request's code must stay as it is."""
    if text == "{code}":
        return code
    for key, value in (("{python}", python_executable()), ("{home}", os.path.expanduser("~")),
                       ("{workdir}", workdir), ("{source}", source)):
        text = text.replace(key, value)
    return text


def _argv(name: str, key: str, value: object) -> tuple[str, ...]:
    if not (isinstance(value, list) and value and all(isinstance(a, str) and a for a in value)):
        raise LanguageTableError(f"languages.{name}.{key}: expected a non-empty list of non-empty strings")
    return tuple(value)


def _language(name: str, table: object) -> Language:
    if not isinstance(table, dict):
        raise LanguageTableError(f"languages.{name}: expected a table ([{name}])")
    unknown = set(table) - _KEYS
    if unknown:
        raise LanguageTableError(f"languages.{name}: unknown key(s) {', '.join(sorted(unknown))}; "
                                 f"a language takes {', '.join(sorted(_KEYS))}")
    for key in ("source", "run"):
        if key not in table:
            raise LanguageTableError(f"languages.{name}: missing key {key!r}")
    source = table["source"]
    if not isinstance(source, str) or not source or "/" in source or source in (".", ".."):
        raise LanguageTableError(f"languages.{name}.source: expected a file name (no slash)")
    profile = table.get("profile", "system")
    if profile not in PROFILES:
        raise LanguageTableError(f"languages.{name}.profile: expected one of {', '.join(PROFILES)}")
    read = table.get("read", [])
    if not (isinstance(read, list) and all(isinstance(p, str) and p for p in read)):
        raise LanguageTableError(f"languages.{name}.read: expected a list of paths")
    env = table.get("env", {})
    if not (isinstance(env, dict) and all(isinstance(v, str) for v in env.values())):
        raise LanguageTableError(f"languages.{name}.env: expected a table of strings")
    probe = table.get("probe")
    if probe is not None and not isinstance(probe, str):
        raise LanguageTableError(f"languages.{name}.probe: expected a string (a program)")
    aliases = table.get("aliases", [])
    if not (isinstance(aliases, list) and all(isinstance(a, str) and a for a in aliases)):
        raise LanguageTableError(f"languages.{name}.aliases: expected a list of names")
    processes = table.get("processes")
    if processes is not None and (isinstance(processes, bool) or not isinstance(processes, int)
                                  or processes < 1):
        raise LanguageTableError(f"languages.{name}.processes: expected a positive integer")
    memory = _size(table["memory"], f"languages.{name}.memory") if "memory" in table else None
    return Language(
        name=name, source=source, run=_argv(name, "run", table["run"]),
        compile=_argv(name, "compile", table["compile"]) if "compile" in table else None,
        inline=_argv(name, "inline", table["inline"]) if "inline" in table else None,
        profile=profile, read=tuple(read), env=dict(env), memory=memory, processes=processes, probe=probe,
        aliases=tuple(aliases))


def parse_table(text: str, origin: str) -> dict[str, Language]:
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise LanguageTableError(f"{origin}: not TOML: {e}") from None
    return {name: _language(name, table) for name, table in data.items()}


def shipped_table() -> dict[str, Language]:
    text = resources.files("aiogaol._serve").joinpath("languages.toml").read_text("utf-8")
    return parse_table(text, "languages.toml")


def load_table(extra: str | os.PathLike[str] | None = None) -> dict[str, Language]:
    """The shipped table, with the tables of ``extra`` (a TOML file) added or replacing theirs."""
    table = shipped_table()
    if extra is not None:
        try:
            with open(extra, "rb") as f:
                raw = f.read(MAX_TABLE_BYTES + 1)
        except OSError as e:
            raise LanguageTableError(f"{os.fspath(extra)}: {e.strerror or e}") from None
        if len(raw) > MAX_TABLE_BYTES:
            raise LanguageTableError(f"{os.fspath(extra)}: larger than {MAX_TABLE_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise LanguageTableError(f"{os.fspath(extra)}: not UTF-8") from None
        table.update(parse_table(text, os.fspath(extra)))
    return table
