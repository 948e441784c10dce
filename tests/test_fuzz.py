"""Fuzzing the inputs (issue 12): every input gives a result or a named error, never a traceback, a
hang or a jail wider than asked.

Hypothesis drives the Python API (Limits, Profile operations, run()'s arguments), TOML profiles (built
from the known keys with values of any type, mutated copies of the example profiles, raw bytes) through
the CLI's loader and ``aiogaol run --profile FILE`` in-process, and JSON-lines batches (random JSON,
raw bytes, deep nesting, wrong types).  "Named error" means an ``aiogaol.AiogaolError`` from the API,
and from the CLI an exit status with exactly one ``aiogaol: ...`` line on stderr (any exception escaping
``main`` fails the test).  The jails that do start are checked against a canary file that no generated
profile grants.  Bounded: ``max_examples`` per test, no deadline; the whole module takes about a minute
on two cores.  The last test prints how many inputs of each kind were tried.
"""

from __future__ import annotations

import collections
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is in the test extra: pip install -e '.[test]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import aiogaol  # noqa: E402
from aiogaol import AiogaolError, Limits, ProfileError  # noqa: E402
from aiogaol._cli import UsageError, load_profile_file, main, read_jobs  # noqa: E402
from aiogaol._limits import MAX_INT, MAX_SECONDS  # noqa: E402

COUNTS: collections.Counter[str] = collections.Counter()
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "profiles"
FAST = settings(max_examples=500, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def spawning(n: int) -> settings:
    return settings(FAST, max_examples=n)


# --------------------------------------------------------------------------------------------------
# The canary: a file no generated profile grants (its tree is never among the generated paths)


@pytest.fixture(scope="module")
def canary() -> Iterator[Path]:
    base = "/var/tmp" if os.access("/var/tmp", os.W_OK) else None
    top = Path(tempfile.mkdtemp(prefix="aiogaol-fuzz-", dir=base))
    top.chmod(0o755)  # readable by anyone: if a jail cannot read it, the jail is why
    path = top / "canary"
    path.write_text("CANARY-7f3a\n")
    path.chmod(0o644)
    yield path
    shutil.rmtree(top)


# Paths drawn for profiles: real and missing, files and trees, relative, odd bytes; never the canary's
# tree or one of its ancestors.
PATHS = st.sampled_from(["/etc", "/etc/passwd", "/usr", "/usr/bin", "/tmp", "/dev/null", "/proc", "/nonexistent",
                         "/nonexistent/deeper", "relative", "", ".", "/etc/../usr", "//etc", "/etc/\x00x",
                         "/\udcff", "/\ud800", "/home", "/run", "/sys/kernel"])
GOOD_PATHS = st.sampled_from(["/etc", "/etc/passwd", "/usr", "/usr/bin", "/tmp", "/dev/null", "/nonexistent",
                              "/nonexistent/deeper", "/etc/../usr", "//etc", "/home", "/run", "/sys/kernel"])
ANY_VALUE: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8) | PATHS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)


def no_traceback_cli(*args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    """``aiogaol ARGS`` in-process; a bad input must end in exactly one ``aiogaol:`` line."""
    out, err = io.StringIO(), io.StringIO()
    try:
        code = main(list(args), stdin=io.TextIOWrapper(io.BytesIO(stdin)), stdout=out, stderr=err)
    except SystemExit as e:  # argparse: its usage text, exit 2
        assert e.code == 2, e
        return 2, out.getvalue(), err.getvalue()
    if code == 2:
        lines = err.getvalue().rstrip("\n").split("\n")  # "\n" only: a path may hold U+0085 or U+2028
        assert len(lines) == 1 and lines[0].startswith("aiogaol: "), err.getvalue()
    return code, out.getvalue(), err.getvalue()


# --------------------------------------------------------------------------------------------------
# The Python API

LIMIT_FIELDS = ["wall_time", "cpu_time", "memory", "processes", "file_size", "open_files", "output",
                "core_dumps", "cgroup", "nice"]
LIMIT_VALUES = (st.none() | st.integers(min_value=1, max_value=1 << 40) | st.floats(min_value=0.01, max_value=1e4)
                | st.integers(min_value=0, max_value=19) | st.booleans()
                | st.integers(min_value=-(1 << 70), max_value=1 << 70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6) | st.binary(max_size=4)
                | st.sampled_from(["auto", "none", "/sys/fs/cgroup", "relative"]))


LIMIT_RIGHT = {
    "wall_time": st.floats(min_value=0.001, max_value=1e6), "cpu_time": st.floats(min_value=0.001, max_value=1e6),
    "memory": st.integers(min_value=1, max_value=1 << 62), "processes": st.integers(min_value=1, max_value=1 << 20),
    "file_size": st.integers(min_value=1, max_value=1 << 62), "open_files": st.integers(min_value=1, max_value=4096),
    "output": st.integers(min_value=1, max_value=1 << 62), "core_dumps": st.booleans(),
    "cgroup": st.sampled_from(["auto", "none", "/sys/fs/cgroup"]), "nice": st.integers(min_value=0, max_value=19),
}


@st.composite
def limit_kwargs(draw: st.DrawFn) -> dict[str, Any]:
    """Each field right for its type and range with probability 0.8, else anything."""
    out = {}
    for name in draw(st.lists(st.sampled_from(LIMIT_FIELDS), unique=True, max_size=5)):
        out[name] = draw(LIMIT_RIGHT[name] if draw(st.integers(0, 4)) else LIMIT_VALUES)
    return out


@FAST
@given(limit_kwargs())
def test_limits_are_valid_or_refused_by_name(kwargs: dict[str, Any]) -> None:
    COUNTS["Limits(...)"] += 1
    try:
        limits = Limits(**kwargs)
    except ProfileError as e:
        COUNTS["Limits refused"] += 1
        assert "Limits." in str(e)
        return
    for name in ("wall_time", "cpu_time"):
        value = getattr(limits, name)
        assert value is None or (not isinstance(value, bool) and math.isfinite(value) and 0 < value <= MAX_SECONDS)
    for name in ("memory", "processes", "file_size", "open_files", "output"):
        value = getattr(limits, name)
        assert value is None or (type(value) is int and 0 < value <= MAX_INT)
    for _, soft, hard in limits.rlimits():
        assert 0 <= soft <= hard < (1 << 64) - 1  # never RLIM_INFINITY by accident, never EINVAL


def operation() -> st.SearchStrategy[Any]:
    """A recipe (constructor, arguments...) for an operation, built inside the test: construction is
    what is under test, so it must not happen while hypothesis draws."""
    pattern = st.tuples(st.sampled_from([aiogaol.Subpath, aiogaol.Literal]),
                        st.one_of(*[GOOD_PATHS] * 4, PATHS, ANY_VALUE))
    wrap = st.one_of(pattern, pattern, pattern, st.tuples(st.just("raw"), ANY_VALUE))

    return st.one_of(
        st.tuples(st.sampled_from([aiogaol.FileReadAll, aiogaol.FileWriteAll, aiogaol.FileReadMetadata]), wrap),
        st.tuples(st.just(aiogaol.Tmpfs), st.sampled_from(["/tmp", "/var/tmp", "/scratch"]) | PATHS | ANY_VALUE),
        st.tuples(st.just(aiogaol.NetworkOutbound), st.one_of(
            st.tuples(st.just(aiogaol.AllAddresses)),
            st.tuples(st.just(aiogaol.Tcp), st.integers(min_value=-5, max_value=70000) | ANY_VALUE),
            st.tuples(st.just(aiogaol.LocalSocket), st.sampled_from(["/run/no.sock", "/dev/log"]) | PATHS | ANY_VALUE),
            st.tuples(st.just("raw"), ANY_VALUE))),
        st.tuples(st.just(aiogaol.SystemInfoRead)),
        st.tuples(st.just("raw"), ANY_VALUE),
    )


def build(spec: Any) -> Any:
    if not isinstance(spec, tuple) or not spec:
        return spec
    kind, *args = spec
    if kind == "raw":
        return args[0]
    return kind(*[build(a) for a in args])


@FAST
@given(st.lists(operation(), max_size=4), st.booleans())
def test_profiles_are_built_or_refused_by_name(specs: list[tuple[Any, ...]], as_tuple: bool) -> None:
    COUNTS["Profile(...)"] += 1
    try:
        ops = [build(s) for s in specs]
        profile = aiogaol.Profile(tuple(ops) if as_tuple else ops)
    except ProfileError:
        COUNTS["Profile refused"] += 1
        return
    except (aiogaol.SandboxSetupError, aiogaol.UserNamespacesUnavailable):
        return
    for op in profile:
        path = getattr(getattr(op, "pattern", None), "path", None) or getattr(op, "path", None)
        if path is not None:
            assert path.startswith("/") and "\0" not in path
    aiogaol.explain(profile)  # compiles: every accepted profile can be turned into a jail plan


def sometimes_wrong(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a valid value (so that jails do start), now and then anything at all."""
    return st.one_of(good, good, good, ANY_VALUE)


RUN_KWARGS = st.fixed_dictionaries({}, optional={
    "grace_period": sometimes_wrong(st.floats(min_value=0, max_value=1)),
    "input": sometimes_wrong(st.none() | st.binary(max_size=8)),
    "env": sometimes_wrong(st.none() | st.dictionaries(st.text("ABCxyz_", min_size=1, max_size=4),
                                                        st.text(max_size=4), max_size=2)),
    "cwd": sometimes_wrong(st.sampled_from([None, "/", "/usr", "/nonexistent"])),
    "isolation": sometimes_wrong(st.just("namespaces")),
    "limits": sometimes_wrong(st.none() | st.just(Limits(wall_time=5, cpu_time=0.5, memory=1 << 30))),
})


@spawning(100)
@given(RUN_KWARGS, st.sampled_from([["true"], ["echo", "x"], [], "true", ["/no/such"], [b"true", "a\x00b"]]))
def test_run_arguments_give_a_result_or_a_named_error(kwargs: dict[str, Any], argv: Any) -> None:
    COUNTS["run(...)"] += 1
    profile = aiogaol.system_profile()

    async def once() -> None:
        with anyio.fail_after(30):
            try:
                result = await aiogaol.run(profile, argv, **kwargs)
            except AiogaolError:
                COUNTS["run refused"] += 1
                return
        COUNTS["run started a jail"] += 1
        assert isinstance(result.status, aiogaol.Status)

    anyio.run(once)


# --------------------------------------------------------------------------------------------------
# TOML profiles


def toml_value(value: Any) -> str:
    """A TOML spelling of a generated value (tomllib reads, nothing here writes TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string, \uXXXX escapes included
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return '""'  # None has no TOML spelling


PROFILE_KEYS = ["extends", "read", "write", "metadata", "tmpfs", "network", "tcp", "unix", "system_info", "reed"]
LIMIT_KEYS = ["wall_time", "cpu_time", "memory", "processes", "file_size", "open_files", "output", "nice",
              "core_dumps", "wal_time"]
GOOD_VALUES = {
    "extends": st.sampled_from(["none", "system", "python", "pythn"]),
    "read": st.lists(PATHS | st.fixed_dictionaries({"path": PATHS}, optional={"literal": st.booleans()}), max_size=3),
    "write": st.lists(st.sampled_from(["/tmp", "/nonexistent"]), max_size=1),
    "metadata": st.lists(PATHS, max_size=2),
    "tmpfs": st.lists(st.sampled_from(["/tmp", "/tmp:8M", "/tmp:lots", "tmp", "/"])
                      | st.fixed_dictionaries({"path": PATHS}, optional={"size": st.sampled_from(["16M", 4096, 0])}),
                      max_size=2),
    "network": st.sampled_from(["none", "all", "some"]),
    "tcp": st.lists(st.integers(min_value=-1, max_value=70000), max_size=2),
    "unix": st.lists(PATHS, max_size=1),
    "system_info": st.booleans(),
}
LIMIT_GOOD = {
    "wall_time": st.floats(min_value=0, max_value=1e12), "cpu_time": st.sampled_from([0.5, 1, 2.5, 0, -1]),
    "memory": st.sampled_from(["256M", "1G", "0", "lots", 1 << 30, 1 << 63]),
    "processes": st.integers(min_value=-2, max_value=1 << 23), "nice": st.integers(min_value=-1, max_value=25),
}


VALID_VALUES = {
    "extends": st.sampled_from(["none", "system", "python"]),
    "read": st.lists(GOOD_PATHS | st.fixed_dictionaries({"path": GOOD_PATHS}, optional={"literal": st.booleans()}),
                     max_size=3),
    "write": st.lists(st.just("/tmp"), max_size=1),
    "metadata": st.lists(GOOD_PATHS, max_size=2),
    "tmpfs": st.lists(st.sampled_from(["/tmp", "/tmp:8M", "/scratch:1M"]), max_size=2),
    "network": st.sampled_from(["none", "all"]),
    "tcp": st.lists(st.integers(min_value=1, max_value=65535), max_size=2),
    "system_info": st.booleans(),
}
VALID_LIMITS = {"wall_time": st.floats(min_value=1, max_value=30), "cpu_time": st.sampled_from([0.5, 1, 2.5]),
                "memory": st.sampled_from(["256M", "1G", 1 << 30]), "processes": st.integers(min_value=4, max_value=64),
                "nice": st.integers(min_value=0, max_value=19)}


@st.composite
def toml_documents(draw: st.DrawFn, wrong: float = 0.5) -> bytes:
    """A profile of the known keys (and a misspelt one), each value of its type with probability
    1 - ``wrong``, else of any type."""
    def value_for(good: st.SearchStrategy[Any] | None) -> Any:
        right = good is not None and draw(st.floats(min_value=0, max_value=1)) >= wrong
        return draw(good if right and good is not None else ANY_VALUE)

    values, limits = (GOOD_VALUES, LIMIT_GOOD) if wrong else (VALID_VALUES, VALID_LIMITS)
    keys = [k for k in PROFILE_KEYS if wrong or k in values]
    lines = []
    for key in draw(st.lists(st.sampled_from(keys), unique=True, max_size=5)):
        lines.append(f"{key} = {toml_value(value_for(values.get(key)))}")
    if draw(st.booleans()):
        lines.append("[limits]")
        for key in draw(st.lists(st.sampled_from([k for k in LIMIT_KEYS if k in limits or wrong]),
                                 unique=True, max_size=4)):
            lines.append(f"{key} = {toml_value(value_for(limits.get(key)))}")
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")


@st.composite
def mutated_examples(draw: st.DrawFn) -> bytes:
    text = bytearray(draw(st.sampled_from(sorted(EXAMPLES.glob("*.toml")))).read_bytes())
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        at = draw(st.integers(min_value=0, max_value=len(text)))
        how = draw(st.sampled_from(["insert", "delete", "replace"]))
        chunk = draw(st.binary(min_size=1, max_size=4) | st.sampled_from([b"[", b"]", b"{", b"\"", b"=", b"\n",
                                                                           b"\xff", b"true", b"0", b"#"]))
        if how == "insert":
            text[at:at] = chunk
        elif how == "delete":
            del text[at:at + len(chunk)]
        else:
            text[at:at + len(chunk)] = chunk
    return bytes(text)


PROFILE_BYTES = (toml_documents() | mutated_examples() | st.binary(max_size=64)
                 | st.integers(min_value=1, max_value=3000).map(lambda n: b"a = " + b"[" * n + b"]" * n))


@FAST
@given(PROFILE_BYTES)
def test_profile_files_load_or_are_refused_by_name(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    COUNTS["profile file"] += 1
    path = tmp_path_factory.mktemp("p", numbered=True) / "p.toml"
    path.write_bytes(data)
    try:
        spec = load_profile_file(str(path))
    except UsageError as e:
        COUNTS["profile file refused"] += 1
        assert str(path) in str(e) and "\n" not in str(e)
        return
    for op in spec.operations:
        assert isinstance(op, (aiogaol.FileReadAll, aiogaol.FileWriteAll, aiogaol.FileReadMetadata, aiogaol.Tmpfs,
                               aiogaol.NetworkOutbound, aiogaol.SystemInfoRead))
    code, out, err = no_traceback_cli("run", "--profile", str(path), "--explain")
    assert code in (0, 2, 125), err
    COUNTS[f"profile file --explain exit {code}"] += 1


@spawning(100)
@given(toml_documents(wrong=0.0) | toml_documents(wrong=0.1) | mutated_examples())
def test_profiles_that_spawn_never_show_the_canary(tmp_path_factory: pytest.TempPathFactory, canary: Path,
                                                    data: bytes) -> None:
    COUNTS["profile file run"] += 1
    path = tmp_path_factory.mktemp("p", numbered=True) / "p.toml"
    path.write_bytes(b'extends = "system"\n' + data if not data.startswith(b"extends") else data)
    code, out, err = no_traceback_cli("run", "--profile", str(path), "--json", "--", "cat", str(canary))
    COUNTS[f"profile file run exit {code}"] += 1
    assert "CANARY-7f3a" not in out and "CANARY-7f3a" not in err
    if code not in (2, 125):
        report = json.loads(out)
        assert report["status"] != "ok", report  # cat could not read it


def test_the_canary_check_can_fail(tmp_path: Path, canary: Path) -> None:
    """The control: a profile that grants the canary's tree does show it, so the check above means something."""
    path = tmp_path / "p.toml"
    path.write_text(f'extends = "system"\nread = ["{canary.parent}"]\n')
    code, out, err = no_traceback_cli("run", "--profile", str(path), "--json", "--", "cat", str(canary))
    assert code == 0 and "CANARY-7f3a" in json.loads(out)["stdout"], (out, err)


FLAGS = ["--timeout", "--cpu", "--memory", "--processes", "--output", "--nice", "--tmpfs", "--tcp", "--ro",
         "--rw", "--metadata", "--unix", "--env", "--cwd", "--profile"]
FLAG_TEXT = st.one_of(st.sampled_from(["0", "-1", "1", "0.5", "nan", "inf", "1e400", "9" * 40, "256M", "1.5G", "lots",
                                       "/tmp", "/tmp:8M", "/etc", "relative", "A=1", "A", "=", "none", "system"]),
                      st.text(max_size=6).filter(lambda t: "\0" not in t))


@FAST
@given(st.lists(st.tuples(st.sampled_from(FLAGS), FLAG_TEXT), max_size=4))
def test_run_flags_are_taken_or_refused_in_one_line(flags: list[tuple[str, str]]) -> None:
    COUNTS["run flags"] += 1
    argv = [part for flag, value in flags for part in (flag, value)]
    code, out, err = no_traceback_cli("run", *argv, "--explain")
    COUNTS[f"run flags --explain exit {code}"] += 1
    assert code in (0, 2, 125), err


# --------------------------------------------------------------------------------------------------
# JSON-lines batches

JOB = st.fixed_dictionaries({"argv": st.sampled_from([["true"], ["echo", "hi"], [], ["true", 1], "true"])},
                            optional={"id": ANY_VALUE, "input": ANY_VALUE | st.text(max_size=4),
                                      "timeout": ANY_VALUE | st.floats(min_value=0.5, max_value=5),
                                      "env": ANY_VALUE | st.dictionaries(st.text(max_size=3), st.text(max_size=3)),
                                      "cwd": PATHS, "extra": ANY_VALUE})
LINE = st.one_of(
    JOB.map(lambda j: json.dumps(j).encode()),
    ANY_VALUE.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=24).filter(lambda b: b"\n" not in b),
    st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(min_value=1, max_value=3000).map(lambda n: b'{"argv": ["true"], "id": ' + b"[" * n + b"]" * n + b"}"),
)


def is_job_line(line: bytes) -> bool:
    """What read_jobs skips: blank lines and comments (blank as str.strip sees it, once decoded)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return bool(text.strip()) and not text.lstrip().startswith("#")


@FAST
@given(st.lists(LINE, max_size=8))
def test_batch_lines_become_jobs_or_error_results(lines: list[bytes]) -> None:
    COUNTS["batch line (parsed)"] += len(lines)
    bad: list[aiogaol.Result] = []
    jobs = list(read_jobs([line + b"\n" for line in lines], bad))
    assert len(jobs) + len(bad) == sum(map(is_job_line, lines))
    for result in bad:
        assert result.status is aiogaol.Status.ERROR and result.error
        json.dumps(result.to_dict())
    for job in jobs:
        assert isinstance(job.argv, list) and job.argv and all(isinstance(a, str) for a in job.argv)
        json.dumps(job.id)


@spawning(50)
@given(st.lists(LINE, min_size=1, max_size=4))
def test_batches_give_one_result_a_line(lines: list[bytes]) -> None:
    COUNTS["batch run"] += 1
    data = b"\n".join(lines) + b"\n"
    code, out, err = no_traceback_cli("batch", "-", "--jobs", "2", "--timeout", "10", stdin=data)
    wanted = sum(map(is_job_line, data.split(b"\n")))
    results = [json.loads(line) for line in out.splitlines()]
    assert code in (0, 1) and len(results) == wanted, (out, err)
    COUNTS["batch run results"] += len(results)
    assert all(isinstance(aiogaol.Status(r["status"]), aiogaol.Status) for r in results)


def test_zz_report_the_input_counts(capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print("\nfuzz inputs: " + ", ".join(f"{k} {v}" for k, v in sorted(COUNTS.items())))
    if COUNTS:  # absent when run alone (-k)
        assert COUNTS["profile file"] > 0 and COUNTS["batch line (parsed)"] > 0
