"""`make demo` runs examples/demo.py; it must keep working and keep saying true things."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_runs_and_reports_the_walls() -> None:
    done = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "demo.py")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "could not  read /etc/passwd" in out
    assert "could      read the allowed secret" in out
    assert "could not  write the allowed secret  (OSError: Read-only file system)" in out
    assert "could      connect to the host's 127.0.0.1" in out
    assert "could not  mount over /usr" in out
    assert "terminate() of a jailed sleep: returncode -15" in out
    assert "the secret on the host is still 'the secret'" in out
