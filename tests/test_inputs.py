"""Bad input gets a named error, early; limits and statuses say what they did (issue 11 item 5, issue 12).

Everything here runs the real code: the CLI in-process through ``aiogaol._cli.main`` (so a traceback is
a test failure, not a line on stderr) and real jails where a limit must be seen to act.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import aiogaol
from aiogaol import Limits, ProfileError, ProfileTypeError, Status
from aiogaol._cli import UsageError, load_profile_file, main

pytestmark = pytest.mark.anyio


def cli(*args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    """``aiogaol ARGS`` in this process: (exit status, stdout, stderr).  Any exception fails the test."""
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), stdin=io.TextIOWrapper(io.BytesIO(stdin)), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def one_line(text: str) -> str:
    lines = text.rstrip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("aiogaol: "), text
    return lines[0]


# --------------------------------------------------------------------------------------------------
# A. Profile files: one type per field; the Python API alike

WRONG_FIELDS = [
    ('system_info = "false"', "system_info"),
    ('system_info = "no"', "system_info"),
    ('system_info = "0"', "system_info"),
    ("system_info = 0", "system_info"),
    ("system_info = 1", "system_info"),
    ('read = "/etc"', "read"),
    ("read = [1]", "read"),
    ('read = [{path = "/etc", literal = "yes"}]', "read"),
    ('write = [{path = "/tmp", mode = "rw"}]', "write"),
    ('metadata = [["/etc"]]', "metadata"),
    ('tcp = ["443"]', "tcp"),
    ("tcp = [true]", "tcp"),
    ("tcp = [70000]", "tcp"),
    ("network = true", "network"),
    ('network = "All"', "network"),
    ('unix = "/run/x.sock"', "unix"),
    ("extends = 1", "extends"),
    ('extends = "pythn"', "extends"),
    ('tmpfs = [{path = "/tmp", size = 1.5}]', "tmpfs"),
    ('tmpfs = [{path = "/tmp", size = true}]', "tmpfs"),
    ('tmpfs = ["tmp"]', "tmpfs"),
    ('limits = 3', "limits"),
    ('[limits]\nwall_time = "5"', "limits.wall_time"),
    ("[limits]\nwall_time = true", "limits.wall_time"),
    ("[limits]\ncpu_time = nan", "limits.cpu_time"),
    ("[limits]\ncpu_time = inf", "limits.cpu_time"),
    ("[limits]\nmemory = true", "limits.memory"),
    ("[limits]\nmemory = 18446744073709551616", "limits.memory"),  # not even a TOML integer
    ('[limits]\nmemory = "99999999999999999999999999G"', "limits.memory"),
    ("[limits]\nprocesses = 2.5", "limits.processes"),
    ("[limits]\nprocesses = 0", "limits.processes"),
    ('[limits]\nnice = "1"', "limits.nice"),
    ("[limits]\nnice = 20", "limits.nice"),
    ('[limits]\ncore_dumps = "yes"', "limits.core_dumps"),
    ("[limits]\nwal_time = 5", "limits.wal_time"),
    ('reed = ["/srv"]', "reed"),
]


@pytest.mark.parametrize(("text", "field"), WRONG_FIELDS, ids=[f for _, f in WRONG_FIELDS])
def test_a_profile_field_of_the_wrong_type_is_refused_by_name(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(text + "\n")
    if field != "limits.memory" or "1844" not in text:  # that one is a TOML syntax error, named as such
        with pytest.raises(UsageError, match=field.replace(".", r"\.")):
            load_profile_file(str(path))
    code, out, err = cli("run", "--profile", str(path), "--", "true")
    line = one_line(err)
    assert code == 2 and out == "" and str(path) in line, err


def test_system_info_false_does_not_grant_proc_sys(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("system_info = false\n")
    assert not any(isinstance(op, aiogaol.SystemInfoRead) for op in load_profile_file(str(path)).operations)
    path.write_text("system_info = true\n")
    assert any(isinstance(op, aiogaol.SystemInfoRead) for op in load_profile_file(str(path)).operations)


def test_python_api_wrong_types_are_profile_errors() -> None:
    cases: list[Any] = [
        lambda: aiogaol.Tcp(True), lambda: aiogaol.Tcp("443"), lambda: aiogaol.Tcp(0),
        lambda: aiogaol.Tmpfs("/tmp", size=True), lambda: aiogaol.Tmpfs("/tmp", size=1 << 64),
        lambda: aiogaol.Subpath(1), lambda: aiogaol.Literal(None), lambda: aiogaol.Subpath("/\ud800"),
        lambda: aiogaol.Subpath("relative"), lambda: aiogaol.FileReadAll("/etc"),
        lambda: aiogaol.NetworkOutbound(443), lambda: aiogaol.Profile(5), lambda: aiogaol.Profile("/etc"),
        lambda: aiogaol.Profile([aiogaol.Tcp(80)]), lambda: aiogaol.Profile() + 5,  # type: ignore[operator]
        lambda: Limits(processes=True), lambda: Limits(memory=1.5), lambda: Limits(core_dumps=1),
        lambda: Limits(cgroup=b"/sys/fs/cgroup"), lambda: Limits(nice=True),
        lambda: aiogaol.DEFAULT_LIMITS.replace(wal_time=5),
    ]
    for case in cases:
        with pytest.raises(ProfileError):
            case()
    # Wrong types are also TypeErrors, as Python code expects.
    for case in cases[:2] + cases[15:17]:
        with pytest.raises(TypeError):
            case()
    # bytes and PathLike paths are paths, decoded as the filesystem does
    assert aiogaol.Subpath(b"/tmp").path == "/tmp" and aiogaol.Subpath(Path("/tmp")).path == "/tmp"
    assert aiogaol.Subpath(b"/tmp/\xff").path == os.fsdecode(b"/tmp/\xff")


# --------------------------------------------------------------------------------------------------
# B. The CLI: one line and exit 2, never a traceback; a bad batch line is that line's error result


def test_a_non_utf8_or_deeply_nested_profile_is_one_line_and_exit_2(tmp_path: Path) -> None:
    cases = {
        "latin1.toml": 'read = ["/caf\xe9"]\n'.encode("latin-1"),
        "deep.toml": b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n",
        "deeptable.toml": b"a = " + b"{b = " * 3000 + b"1" + b"}" * 3000 + b"\n",
        "nul.toml": b'read = ["/etc\x00"]\n',
        "empty.toml": b"",
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        code, _, err = cli("run", "--profile", str(path), "--explain")
        if name == "empty.toml":
            assert code == 0, err  # every key is optional: an empty file is the empty profile
            continue
        line = one_line(err)
        assert code == 2 and str(path) in line, err
    assert "UTF-8" in one_line(cli("run", "--profile", str(tmp_path / "latin1.toml"), "--", "true")[2])
    assert "nested too deeply" in cli("run", "--profile", str(tmp_path / "deep.toml"), "--", "true")[2]


def test_profile_paths_that_are_not_profile_files(tmp_path: Path) -> None:
    for path, words in ((tmp_path, "directory"), ("/dev/zero", "not a regular file"),
                        (tmp_path / "missing.toml", "No such file")):
        code, _, err = cli("run", "--profile", str(path), "--", "true")
        assert code == 2 and words in one_line(err), err
    if os.geteuid() != 0:
        locked = tmp_path / "locked.toml"
        locked.write_text("")
        locked.chmod(0)
        code, _, err = cli("run", "--profile", str(locked), "--", "true")
        assert code == 2 and "Permission denied" in one_line(err)


BAD_ARGS = [
    (["run", "--env", "NOEQUALS", "--", "true"], "--env"),
    (["run", "--memory", "9" * 400, "--", "true"], "memory"),
    (["run", "--memory", "1e3", "--", "true"], "memory"),
    (["run", "--timeout", "nan", "--", "true"], "--timeout"),
    (["run", "--timeout", "1e400", "--", "true"], "--timeout"),
    (["run", "--timeout", "1e12", "--", "true"], "--timeout"),
    (["run", "--cpu", "-1", "--", "true"], "--cpu"),
    (["run", "--processes", "0", "--", "true"], "processes"),
    (["run", "--nice", "99", "--", "true"], "nice"),
    (["run", "--tcp", "0", "--", "true"], "Tcp"),
    (["run", "--tmpfs", "/tmp:lots", "--", "true"], "tmpfs"),
    (["run", "--cwd", "relative", "--", "true"], "cwd"),
    (["run", "--env", "A\x00=1", "--", "true"], "NUL"),
    (["run", "--", ""], "program is empty"),
    (["run", "--profile", "no\nsuch", "--", "true"], "--profile no\\nsuch"),
    (["run", "--rw", "/no/such\n\x1b[2J", "--", "true"], "/no/such\\n\\x1b[2J does not exist"),
    (["run", "--"], "nothing to run"),
    (["run", "--json", "--cwd", "rel", "--", "true"], "cwd"),
    (["batch", "/no/such/jobs.jsonl"], "No such file"),
    (["batch", "/"], "directory"),
    (["batch", "-", "--jobs", "0"], "--jobs"),
    (["batch", "-", "--jobs", "100000000"], "size"),
]


@pytest.mark.parametrize(("argv", "words"), BAD_ARGS, ids=[" ".join(a)[:40] for a, _ in BAD_ARGS])
def test_bad_command_lines_are_one_line_and_exit_2(argv: list[str], words: str) -> None:
    code, out, err = cli(*argv)
    assert code == 2 and words in one_line(err), (code, err)


def test_a_bad_batch_line_is_an_error_result_and_the_others_run(tmp_path: Path) -> None:
    lines = [
        b'{"id": "first", "argv": ["echo", "one"]}',
        b'{"id": "latin1", "argv": ["echo", "caf\xe9"]}',
        b"[" * 100000 + b"]" * 100000,
        b'{"id": "deep", "argv": ["echo"], "env": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}",
        b'{"id": "badtimeout", "argv": ["true"], "timeout": "soon"}',
        b'{"id": "nantimeout", "argv": ["true"], "timeout": NaN}',
        b'{"id": "inftimeout", "argv": ["true"], "timeout": 1e400}',
        b'{"id": "booltimeout", "argv": ["true"], "timeout": true}',
        b'{"id": "badenv", "argv": ["true"], "env": ["A=1"]}',
        b'{"id": "badcwd", "argv": ["true"], "cwd": 5}',
        b'{"id": "relcwd", "argv": ["true"], "cwd": "rel"}',
        b'{"id": {"nested": 1}, "argv": ["true"]}',
        b'{"id": "surrogate", "argv": ["true"], "input": "\\udc80"}',
        b'{"id": "nularg", "argv": ["echo", "a\\u0000b"]}',
        b'"just a string"',
        b'{"id": "last", "argv": ["echo", "two"]}',
    ]
    data = b"\n".join(lines) + b"\n"
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(data)
    for source, stdin in ((str(jobs), b""), ("-", data)):
        code, out, err = cli("batch", source, "--jobs", "2", stdin=stdin)
        results = [json.loads(line) for line in out.splitlines()]
        assert code == 1 and len(results) == len(lines), (out, err)
        by_id = {str(r["id"]): r for r in results}
        assert by_id["first"]["stdout"] == "one\n" and by_id["last"]["stdout"] == "two\n"
        assert by_id["first"]["status"] == "ok" and by_id["first"]["evidence"] == "exit status 0"
        errors = [r for r in results if r["status"] == "error"]
        assert len(errors) == len(lines) - 2
        assert all(r["error"] for r in errors), errors
        assert any("not UTF-8" in r["error"] for r in errors)
        assert sum("nested too deeply" in r["error"] for r in errors) == 2
        assert "16 jobs" in err and "2 ok, 14 error" in err


def test_a_reader_that_goes_away_is_not_a_traceback(tmp_path: Path) -> None:
    """``aiogaol batch jobs | head -1``: the pipe breaks under the second result; exit 141 as SIGPIPE would."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('["echo", "a"]\n["echo", "b"]\n["echo", "c"]\n')
    for source in (str(jobs), "-"):
        r, w = os.pipe()
        os.close(r)  # nobody reads: the first write breaks the pipe
        try:
            done = subprocess.run([sys.executable, "-m", "aiogaol", "batch", source, "-j", "1"], stdout=w,
                                  stderr=subprocess.PIPE, input=jobs.read_text(), text=True, timeout=60)
        finally:
            os.close(w)
        assert "Traceback" not in done.stderr and done.returncode == 141, done.stderr


def test_batch_counts_every_status_a_job_can_end_in(tmp_path: Path) -> None:
    """A job that hit a limit has a status the summary must count (it raised KeyError before)."""
    python = aiogaol.python_executable()
    data = json.dumps({"id": "hog", "argv": [python, "-c", "x = bytearray(1 << 30)"]}) + "\n"
    code, out, err = cli("batch", "-", "--profile", "python", "--memory", "256M", stdin=data.encode())
    result = json.loads(out)
    assert code == 1 and result["status"] in ("memory-limit", "nonzero-exit"), (out, err)
    assert result["status"] == "memory-limit" and "inferred" in result["evidence"]
    assert "1 memory-limit" in err


# --------------------------------------------------------------------------------------------------
# C. Limits and per-call arguments: checked when made, with the field and the range

NUMBERS = [math.nan, math.inf, -math.inf, -1, 0, True, "1", 1 << 64]


@pytest.mark.parametrize("name", ["wall_time", "cpu_time", "memory", "processes", "file_size", "open_files",
                                  "output", "nice"])
def test_limits_refuse_what_the_kernel_cannot_take(name: str) -> None:
    for value in NUMBERS + [2.5 if name not in ("wall_time", "cpu_time") else 1e10]:
        if name == "nice" and value == 0:
            continue
        with pytest.raises(ProfileError, match=f"Limits.{name}") as caught:
            Limits(**{name: value})
        if isinstance(value, (bool, str)) or (isinstance(value, float) and name not in ("wall_time", "cpu_time")):
            assert isinstance(caught.value, ProfileTypeError)
    with pytest.raises(ProfileError, match="fs.nr_open"):
        Limits(open_files=(1 << 40))
    with pytest.raises(ProfileError, match="processes"):
        Limits(processes=1 << 22)
    assert Limits(wall_time=0.25, cpu_time=1, memory=(1 << 63) - 1).cpu_time == 1


async def test_run_and_pool_arguments_are_checked_before_anything_starts(py_profile: aiogaol.Profile) -> None:
    for kwargs in ({"grace_period": math.nan}, {"grace_period": math.inf}, {"grace_period": -1},
                   {"grace_period": True}, {"input": "text"}, {"limits": {"wall_time": 1}},
                   {"isolation": "chroot"}, {"cwd": "relative"}, {"env": ["A=1"]}, {"pass_fds": [1]}):
        with pytest.raises(ProfileError):
            await aiogaol.run(py_profile, ["true"], **kwargs)  # type: ignore[arg-type]
    for argv in ("true", [], b"true"):
        with pytest.raises(ProfileError):
            await aiogaol.run(py_profile, argv)  # type: ignore[arg-type]
    for kwargs in ({"timeout": math.nan}, {"timeout": math.inf}, {"timeout": 0}, {"size": True},
                   {"size": 0}, {"grace_period": math.nan}, {"isolation": 3}, {"env": "A=1"}):
        with pytest.raises(ProfileError):
            aiogaol.Pool(py_profile, **kwargs)  # type: ignore[arg-type]
    async with aiogaol.Pool(py_profile, size=1) as pool:
        for kwargs in ({"timeout": math.nan}, {"timeout": -math.inf}, {"input": "text"}):
            with pytest.raises(ProfileError):
                await pool.run(["true"], **kwargs)  # type: ignore[arg-type]
        bad = [r async for r in pool.map([aiogaol.Job(["true"], timeout=math.nan)])]
        assert bad[0].status is Status.ERROR and "timeout" in (bad[0].error or "")


# --------------------------------------------------------------------------------------------------
# D. Limits that say what they did; one spelling of each status


async def test_status_has_one_spelling_everywhere(py_profile: aiogaol.Profile) -> None:
    assert str(Status.OK) == "ok" and f"{Status.MEMORY_LIMIT}" == "memory-limit" and Status.OK == "ok"
    r = await aiogaol.run(py_profile, ["true"])
    async with aiogaol.Pool(py_profile, size=1) as pool:
        j = await pool.run(["true"])
    assert str(r.status) == str(j.status) == "ok" and r.status is j.status is Status.OK
    assert r.evidence == j.evidence == "exit status 0"
    assert r.meta()["status"] == j.to_dict()["status"] == "ok"
    assert type(r) is type(j) is aiogaol.Result  # one type for run's and the pool's results
    assert not hasattr(aiogaol._pool, "STATUSES") and not hasattr(aiogaol._pool, "OK")  # one spelling: Status


async def test_a_fractional_cpu_time_is_enforced_as_given(py_profile: aiogaol.Profile, python: str) -> None:
    """RLIMIT_CPU counts whole seconds: 0.3 s used to run for about 1 s of CPU."""
    from aiogaol import _cputime

    if not _cputime.available():
        pytest.skip("this kernel does not list children in /proc (CONFIG_PROC_CHILDREN): cpu_time is "
                    "rounded up to whole seconds by RLIMIT_CPU, as docs/limits.md says")
    limits = Limits(cpu_time=0.3, wall_time=30)
    r = await aiogaol.run(py_profile, [python, "-c", "while True: pass"], limits=limits)
    assert r.status is Status.CPU_LIMIT, r.evidence
    assert 0.3 <= r.cpu_time < 0.7, r.cpu_time
    if r.cgroup is None:
        assert "/proc/PID/stat" in r.evidence and "/proc/PID/stat" in r.enforced_by["cpu_time"]
    async with aiogaol.Pool(py_profile, size=1, limits=limits) as pool:
        j = await pool.run([python, "-c", "while True: pass"])
    assert j.status is Status.CPU_LIMIT and "the event loop killed it" in j.evidence, j.evidence
    assert j.cpu_time is not None and j.cpu_time < 0.7, j.cpu_time


def test_the_cli_enforces_a_fractional_cpu_limit(python: str) -> None:
    from aiogaol import _cputime

    if not _cputime.available():
        pytest.skip("this kernel does not list children in /proc (CONFIG_PROC_CHILDREN)")
    code, _, err = cli("run", "--profile", "python", "--cpu", "0.3", "--", python, "-c", "while True: pass")
    assert code == 128 + 24 and "CPU time limit of 0.3 s" in err, (code, err)  # 24: SIGXCPU


async def test_cpu_time_holds_the_whole_jail_without_a_cgroup(py_profile: aiogaol.Profile, python: str) -> None:
    """Four spinning processes under cpu_time=0.6: each had 1 s of RLIMIT_CPU (4 s together) before."""
    from aiogaol import _cputime

    if not _cputime.available():
        pytest.skip("this kernel does not list children in /proc (CONFIG_PROC_CHILDREN)")
    code = "import os\nfor _ in range(3):\n    if os.fork() == 0:\n        break\nwhile True: pass"
    r = await aiogaol.run(py_profile, [python, "-c", code], limits=Limits(cpu_time=0.6, wall_time=60))
    assert r.status is Status.CPU_LIMIT, r.evidence
    assert r.cpu_time < 1.5, r.cpu_time


async def test_node_under_rlimit_as_is_memory_limit_with_evidence() -> None:
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("node is not installed (apt-get install nodejs; .ci/debian-deps.sh adds it)")
    profile = aiogaol.system_profile()
    limits = Limits(memory=256 << 20, wall_time=30, cgroup="none")
    r = await aiogaol.run(profile, [node, "-e", "console.log(1)"], limits=limits)
    if r.status is Status.OK:
        pytest.skip("this node starts under a 256 MiB address space: nothing to attribute")
    assert r.status is Status.MEMORY_LIMIT, (r.evidence, r.stderr)
    assert r.evidence.startswith("inferred") and "RLIMIT_AS" in r.evidence
    async with aiogaol.Pool(profile, size=1, limits=limits) as pool:
        j = await pool.run([node, "-e", "console.log(1)"])
    assert j.status is Status.MEMORY_LIMIT and j.evidence == r.evidence.replace(str(r.returncode), str(j.returncode))


async def test_pool_results_say_how_their_status_was_known(py_profile: aiogaol.Profile, python: str) -> None:
    async with aiogaol.Pool(py_profile, size=2, limits=Limits(memory=256 << 20)) as pool:
        hog = await pool.run([python, "-c", "x = bytearray(1 << 30)"])
        slow = await pool.run(["sleep", "30"], timeout=0.3)
        gone = await pool.run(["/no/such/program"])
    assert hog.status is Status.MEMORY_LIMIT and "MemoryError" in hog.evidence and "inferred" in hog.evidence
    assert slow.status is Status.TIMED_OUT and "deadline" in slow.evidence
    assert gone.status is Status.ERROR and gone.evidence
