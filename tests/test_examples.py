"""The examples run, and say what they should: each is started as a user would start it."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_example(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_quickstart(backend: str) -> None:
    done = run_example(str(EXAMPLES / "quickstart.py"), backend)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "hello world from pid 2" in out
    assert "exit status 0 isolation namespaces" in out
    assert "reading /etc/passwd: FileNotFoundError" in out
    assert "pool.run: ok 5050" in out
    assert "job 8: timed-out" in out


def test_pool_judges_hostile_submissions_without_harming_honest_ones() -> None:
    done = run_example(str(EXAMPLES / "pool.py"), "--jobs", "8")
    assert done.returncode == 0, done.stdout + done.stderr
    verdicts = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines()[:-1]}
    assert verdicts["correct"] == "AC" and verdicts["correct-11"] == "AC"
    assert verdicts["wrong-answer"] == "WA"
    assert verdicts["runtime-error"] == "RE"
    for looping in ("infinite-loop", "sleeps-forever", "ignores-sigterm", "fork-bomb"):
        assert verdicts[looping] == "TLE", looping
    assert verdicts["memory-hog"] == "MLE"
    assert verdicts["output-flood"] == "OLE"
    assert verdicts["reads-host-secrets"] == "RE"
    assert verdicts["phones-home"] == "RE"
    assert "75 runs" in done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / "server.py"), "--port", str(port), "--jobs", "4"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/stats", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the server did not start: {proc.communicate()}") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown: the pool's lifespan ends
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, err


@pytest.mark.anyio
async def test_server_runs_concurrent_requests_in_jails(server: str) -> None:
    honest = {f"n{i}": (f"print(int(input()) * {i})", "7") for i in range(12)}
    hostile = {
        "loop": ("while True: pass", ""),
        "fork-bomb": ("import os\nwhile True:\n    try: os.fork()\n    except OSError: pass", ""),
        "snoop": ("print(open('/etc/passwd').read())", ""),
    }
    replies: dict[str, httpx.Response] = {}
    async with httpx.AsyncClient(base_url=server, timeout=60) as client:
        async def post(name: str, source: str, data: str) -> None:
            replies[name] = await client.post("/run", json={"source": source, "input": data})

        async with anyio.create_task_group() as tg:
            for name, (source, data) in {**hostile, **honest}.items():
                tg.start_soon(post, name, source, data)
        assert (await client.post("/run", content=b"not json")).status_code == 400
        stats = (await client.get("/stats")).json()
    for i in range(12):
        reply = replies[f"n{i}"].json()
        assert reply["status"] == "ok", reply
        assert reply["stdout"] == f"{7 * i}\n"
    assert replies["loop"].json()["status"] in ("timed-out", "cpu-limit")  # wall or CPU time
    assert replies["fork-bomb"].json()["status"] in ("timed-out", "cpu-limit", "process-limit")
    snoop = replies["snoop"].json()
    assert snoop["status"] == "nonzero-exit" and "FileNotFoundError" in snoop["stderr"]
    assert stats["done"] == 15 and stats["size"] == 4 and stats["running"] == 0


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_python_pool_example(backend: str) -> None:
    done = run_example(str(EXAMPLES / "python_pool.py"), backend)
    assert done.returncode == 0, done.stdout + done.stderr
    status = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines()[:-1]}
    assert status == {"sum": "ok", "argv": "ok", "leaves-state": "ok", "finds-state": "ok", "crashes": "signalled",
                      "raises": "nonzero-exit", "loops": "timed-out", "reads-host": "nonzero-exit"}
    assert "'45'" in done.stdout and "'False False'" in done.stdout and "ValueError: bad input" in done.stdout
    assert "40 jobs, 1 warm interpreter(s) started" in done.stdout


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_code_interpreter_session(backend: str) -> None:
    done = run_example(str(EXAMPLES / "code_interpreter.py"), backend)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert ("./add says 5" in out) or ("sh says 5" in out)
    assert "[load] ok value=3" in out
    assert "[best] ok value='42' stdout='best is grace'" in out
    assert "report.txt: grace leads with 42" in out
    assert "[error] error error=ZeroDivisionError: division by zero" in out
    assert "[still there] ok value=3" in out
    assert "[hung] timed-out error=KeyboardInterrupt" in out
    assert "[after hung] ok value='grace'" in out
    assert "[stubborn] timed-out (state lost: the kernel was restarted)" in out
    assert "[fresh kernel] ok value=False" in out
    assert "report.txt" in out.split("files:")[1] and "closed: True" in out


def test_ray_pool_example_runs_a_batch_over_two_nodes() -> None:
    pytest.importorskip("ray", reason="Ray is not installed here (pip install 'aiogaol[ray]')")
    done = run_example(str(EXAMPLES / "ray_pool.py"), "--copies", "2", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    status = {line.split()[0]: line.split()[1] for line in lines[:-1]}
    assert status["squares-10"] == "ok" and "'285'" in done.stdout
    assert status["squares-10000"] == "ok" and "'333283335000'" in done.stdout
    assert status["loops"] in ("timed-out", "cpu-limit") and status["fork-bomb"] in ("timed-out", "cpu-limit",
                                                                                       "process-limit")
    assert status["reads-host"] == "nonzero-exit"
    assert lines[-1].startswith("14 jobs on 2 nodes"), lines[-1]
