"""The ``aiogaol`` command, run as a user would run it: a separate process, real jails."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from aiogaol import python_executable
from aiogaol._cli import UsageError, parse_size

ROOT = Path(__file__).resolve().parent.parent
PROFILES = sorted(glob.glob(str(ROOT / "examples" / "profiles" / "*.toml")))


def aiogaol(*args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aiogaol", *args], input=input, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def test_run_passes_output_and_exit_status_through() -> None:
    done = aiogaol("run", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (done.returncode, done.stdout, done.stderr) == (7, "out\n", "err\n")


def test_run_reports_a_signal_as_128_plus_n() -> None:
    assert aiogaol("run", "--", "sh", "-c", "kill -KILL $$").returncode == 128 + signal.SIGKILL


def test_run_reads_our_stdin() -> None:
    done = aiogaol("run", "--", "tr", "a-z", "A-Z", input="shout\n")
    assert (done.returncode, done.stdout) == (0, "SHOUT\n")


def test_run_timeout_is_124_and_missing_program_127() -> None:
    done = aiogaol("run", "--timeout", "0.3", "--", "sleep", "30")
    assert done.returncode == 124 and "timed out" in done.stderr
    done = aiogaol("run", "--", "/no/such/program")
    assert done.returncode == 127 and "ENOENT" in done.stderr


def test_the_host_is_invisible_unless_granted(tmp_path: Path) -> None:
    # A root caller's program runs as nobody: the directory must be writable by others.
    tmp_path.chmod(0o777)
    (tmp_path / "note").write_text("visible")
    (tmp_path / "note").chmod(0o666)
    assert aiogaol("run", "--", "cat", str(tmp_path / "note")).returncode == 1
    done = aiogaol("run", "--ro", str(tmp_path), "--", "cat", str(tmp_path / "note"))
    assert (done.returncode, done.stdout) == (0, "visible")
    done = aiogaol("run", "--ro", str(tmp_path), "--", "sh", "-c", f"echo x > {tmp_path}/new")
    assert done.returncode != 0 and not (tmp_path / "new").exists()
    done = aiogaol("run", "--rw", str(tmp_path), "--", "sh", "-c", f"echo written > {tmp_path}/new")
    assert done.returncode == 0 and (tmp_path / "new").read_text() == "written\n"


def test_nice_from_the_flag_and_from_a_profile_file(tmp_path: Path) -> None:
    """The niceness the kernel reports in the jail (/proc/self/stat, field 19): 19 by default, else as asked."""
    show = ["--", "sh", "-c", "cut -d' ' -f19 /proc/self/stat"]
    assert aiogaol("run", *show).stdout == "19\n"
    assert aiogaol("run", "--nice", "7", *show).stdout == "7\n"
    profile = tmp_path / "p.toml"
    profile.write_text('extends = "system"\n[limits]\nnice = 3\n')
    assert aiogaol("run", "--profile", str(profile), *show).stdout == "3\n"
    profile.write_text('extends = "system"\n[limits]\nnice = 20\n')
    done = aiogaol("run", "--profile", str(profile), *show)
    assert done.returncode == 2 and "nice" in done.stderr
    done = aiogaol("run", "--nice", "-1", *show)
    assert done.returncode == 2 and "between 0 and 19" in done.stderr


def test_tmpfs_and_memory_limit() -> None:
    done = aiogaol("run", "--tmpfs", "/scratch:1M", "--", "sh", "-c", "echo hi > /scratch/f && cat /scratch/f")
    assert (done.returncode, done.stdout) == (0, "hi\n")
    done = aiogaol("run", "--tmpfs", "/scratch:1M", "--", "sh", "-c",
                   "head -c 2000000 /dev/zero > /scratch/big")
    assert done.returncode != 0  # the tmpfs is full at 1 MiB
    done = aiogaol("run", "--profile", "python", "--memory", "64M", "--", python_executable(), "-c",
                   "x = bytearray(512 << 20)")
    assert done.returncode == 1 and "MemoryError" in done.stderr


def test_json_prints_a_report() -> None:
    done = aiogaol("run", "--json", "--cpu", "5", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert done.returncode == 3
    report = json.loads(done.stdout)
    assert report["status"] == "nonzero-exit"
    assert (report["returncode"], report["stdout"], report["stderr"]) == (3, "out\n", "err\n")
    assert report["wall_time"] > 0 and report["max_rss"] > 0
    assert report["isolation"] == "namespaces"


def test_explain_prints_the_jail_and_runs_nothing() -> None:
    done = aiogaol("run", "--explain", "--net", "--tmpfs", "/tmp", "--", "sh", "-c", "exit 9")
    assert done.returncode == 0
    assert "(host network)" in done.stdout
    assert "tmpfs   /tmp" in done.stdout
    assert "seccomp:" in done.stdout and "program: sh -c exit 9" in done.stdout


@pytest.mark.parametrize("path", PROFILES, ids=[os.path.basename(p) for p in PROFILES])
def test_example_profiles_load_and_run(path: str) -> None:
    assert aiogaol("run", "--profile", path, "--explain").returncode == 0
    assert aiogaol("run", "--profile", path, "--", "true").returncode == 0


def test_judge_profile_limits_apply() -> None:
    done = aiogaol("run", "--profile", str(ROOT / "examples/profiles/judge.toml"), "--json", "--",
                   "python3", "-c", "open('/tmp/f', 'w').write('x' * (2 << 20))")
    report = json.loads(done.stdout)
    # file_size = 1M: Python ignores SIGXFSZ, so the write fails with EFBIG instead
    assert report["status"] == "file-size-limit" and "File too large" in report["stderr"]


def test_bad_profiles_are_usage_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('extends = "system"\nreed = ["/srv"]\n')
    done = aiogaol("run", "--profile", str(bad), "--", "true")
    assert done.returncode == 2 and "unknown key(s) reed" in done.stderr
    bad.write_text("read = [\n")
    assert aiogaol("run", "--profile", str(bad), "--", "true").returncode == 2
    done = aiogaol("run", "--profile", "nonesuch", "--", "true")
    assert done.returncode == 2 and "system, python, none" in done.stderr
    assert aiogaol("run", "--ro", "relative/path/../..", "--memory", "lots", "--", "true").returncode == 2
    assert aiogaol("run").returncode == 2


def test_check_prints_each_mechanism_and_a_verdict() -> None:
    done = aiogaol("check")
    assert done.returncode == 0, done.stdout
    for word in ("user namespaces", "landlock", "seccomp", "pidfd", "cgroup v2"):
        assert word in done.stdout
    assert "verdict: full jails available" in done.stdout
    assert json.loads(aiogaol("check", "--json").stdout)["jails"] is True


def test_batch_prints_a_result_per_line_and_a_summary(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    lines = [{"id": f"echo{i}", "argv": ["echo", str(i)]} for i in range(6)]
    lines += [{"id": "upper", "argv": ["tr", "a-z", "A-Z"], "input": "abc"},
              {"id": "fails", "argv": ["sh", "-c", "exit 3"]},
              {"id": "loops", "argv": ["sh", "-c", "while :; do :; done"], "timeout": 0.3}]
    jobs.write_text("\n".join(json.dumps(line) for line in lines) + '\n["true"]\nnot json\n')
    done = aiogaol("batch", str(jobs), "--jobs", "3")
    assert done.returncode == 1  # some jobs were not ok
    results = {r["id"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert len(results) == 11
    assert all(results[f"echo{i}"]["stdout"] == f"{i}\n" for i in range(6))
    assert results["upper"]["stdout"] == "ABC"
    assert results["fails"]["status"] == "nonzero-exit"
    assert results["loops"]["status"] == "timed-out"
    assert results[10]["status"] == "ok"  # a bare list is an argv; the id is its line number
    assert results[11]["status"] == "error" and "line 11" in results[11]["error"]
    assert "\r" not in done.stderr  # no progress bar when stderr is not a terminal
    assert "11 jobs" in done.stderr and "8 ok, 1 nonzero-exit, 1 timed-out, 1 error" in done.stderr


def test_batch_reads_stdin_and_all_ok_is_zero() -> None:
    done = aiogaol("batch", "-", "-j", "2", input='["echo", "a"]\n["echo", "b"]\n')
    assert done.returncode == 0
    assert sorted(json.loads(line)["stdout"] for line in done.stdout.splitlines()) == ["a\n", "b\n"]


def test_parse_size() -> None:
    assert parse_size("1048576") == 1 << 20
    assert parse_size("512k") == 512 << 10
    assert parse_size("256M") == 256 << 20
    assert parse_size("2GiB") == 2 << 30
    assert parse_size("1.5G") == 3 << 29
    for bad in ("", "lots", "-1M", "0"):
        with pytest.raises(UsageError):
            parse_size(bad)
