"""``aiogaol serve``: a real server on loopback (the CLI in a subprocess, and one app in a thread for the
admission tests), real HTTP clients (httpx, and SandboxFusion's own client package), real jails."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

pytest.importorskip("starlette", reason="aiogaol[serve] is not installed")
pytest.importorskip("uvicorn", reason="aiogaol[serve] is not installed")
pytest.importorskip("prometheus_client", reason="aiogaol[serve] is not installed")

import uvicorn  # noqa: E402

from aiogaol._serve import load_table, make_app  # noqa: E402
from aiogaol._serve._runner import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the clients' loop; the server (uvicorn) is asyncio's in any case


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[str] | None = None, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            detail = proc.communicate() if proc is not None else ""
            raise AssertionError(f"the server did not start: {detail}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``aiogaol serve`` as a user starts it; a queue large enough for the 200 concurrent requests.
    Its TMPDIR is a directory of ours, so that we can see that it leaves nothing behind."""
    port = free_port()
    tmpdir = tmp_path_factory.mktemp("serve-tmp")
    proc = subprocess.Popen([sys.executable, "-m", "aiogaol", "serve", "--port", str(port), "--concurrency", "4",
                             "--queue", "256"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(tmpdir)})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown: the lifespan removes the spool
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert list(tmpdir.iterdir()) == []  # every working directory and the spool itself are gone
    print(err, file=sys.stderr)


@pytest.fixture(scope="module")
def small() -> Iterator[str]:
    """An app with one slot, a queue of one and a 1 MiB body limit, in a thread of this process."""
    table = {k: v for k, v in load_table().items() if k == "bash"}
    app = make_app(table, concurrency=1, queue=1, max_body=1 << 20,
                   settings=Settings(output=64 << 10, workdir_size=8 << 20))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url)
        yield url
    finally:
        server.should_exit = True
        thread.join(60)
    assert not thread.is_alive()


def post(url: str, route: str, body: Any, timeout: float = 120) -> dict[str, Any]:
    reply = httpx.post(url + route, json=body, timeout=timeout)
    assert reply.status_code == 200, reply.text
    data: dict[str, Any] = reply.json()
    return data


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# A program per language that reads a line and answers with it doubled; the table's own probe for any
# other language the host has.
ECHO = {
    "python": "print(int(input()) * 2)",
    "bash": "read x; echo $((x * 2))",
    "c": "#include <stdio.h>\nint main(void) { int x; scanf(\"%d\", &x); printf(\"%d\\n\", 2 * x); }",
    "cpp": "#include <iostream>\nint main() { int x; std::cin >> x; std::cout << 2 * x << std::endl; }",
    "nodejs": "const x = require('fs').readFileSync(0, 'utf8'); console.log(2 * parseInt(x));",
    "go": "package main\nimport \"fmt\"\nfunc main() { var x int; fmt.Scan(&x); fmt.Println(2 * x) }",
    "java": "import java.util.*;\npublic class Main { public static void main(String[] a) { "
            "System.out.println(2 * new Scanner(System.in).nextInt()); } }",
    "rust": "fn main() { let mut s = String::new(); std::io::stdin().read_line(&mut s).unwrap(); "
            "println!(\"{}\", 2 * s.trim().parse::<i64>().unwrap()); }",
    "perl": "my $x = <STDIN>; print 2 * $x, \"\\n\";",
    "php": "<?php echo 2 * intval(fgets(STDIN)), \"\\n\";",
    "ruby": "puts 2 * gets.to_i",
    "lua": "print(2 * io.read('n'))",
}


def test_languages_lists_what_works_here(service: str) -> None:
    data = httpx.get(service + "/languages").json()
    # The brief's five are on every host this suite runs on (.ci/debian-deps.sh installs them).
    for name in ("python", "bash", "c", "cpp", "nodejs"):
        assert name in data["languages"], data
    for name, why in data["unavailable"].items():
        assert name not in data["languages"] and why, data
    print("available:", data["languages"], "unavailable:", data["unavailable"])


def test_every_language_the_host_has_runs_with_stdin(service: str) -> None:
    languages = httpx.get(service + "/languages").json()["languages"]
    table = load_table()
    for name in languages:
        if name not in table:
            continue  # an alias (js), tested below
        if name in ECHO:
            reply = post(service, "/run_code", {"code": ECHO[name], "language": name, "stdin": "21\n",
                                                "compile_timeout": 60, "run_timeout": 30})
            assert reply["status"] == "Success", (name, reply)
            assert reply["run_result"]["stdout"].strip() == "42", (name, reply)
        else:
            reply = post(service, "/run_code", {"code": table[name].probe, "language": name,
                                                "compile_timeout": 60, "run_timeout": 30})
            assert "aiogaol-probe" in reply["run_result"]["stdout"], (name, reply)
        assert reply["run_result"]["status"] == "Finished"
        assert reply["run_result"]["return_code"] == 0
        assert reply["run_result"]["aiogaol_status"] == "ok"
        assert (reply["compile_result"] is not None) == (table[name].compile is not None), name


def test_an_alias_answers_as_its_language(service: str) -> None:
    assert "js" in httpx.get(service + "/languages").json()["languages"]
    reply = post(service, "/run_code", {"code": "console.log(6 * 7)", "language": "js"})
    assert reply["run_result"]["stdout"] == "42\n"


def test_compile_error_is_failed_with_the_compilers_words(service: str) -> None:
    reply = post(service, "/run_code", {"code": "int main(void) { return nope; }", "language": "c"})
    assert reply["status"] == "Failed"
    assert reply["run_result"] is None  # nothing ran
    compiled = reply["compile_result"]
    assert compiled["status"] == "Finished" and compiled["return_code"] != 0
    assert "nope" in compiled["stderr"] and "error" in compiled["stderr"]


def test_nonzero_exit_is_failed_with_the_code(service: str) -> None:
    reply = post(service, "/run_code", {"code": "import sys; print('out'); sys.exit(3)", "language": "python"})
    assert reply["status"] == "Failed"
    assert reply["run_result"]["return_code"] == 3 and reply["run_result"]["stdout"] == "out\n"


def test_run_timeout_is_time_limit_exceeded(service: str) -> None:
    reply = post(service, "/run_code", {"code": "print('started', flush=True)\nwhile True: pass",
                                        "language": "python", "run_timeout": 1})
    assert reply["status"] == "Failed"
    run = reply["run_result"]
    assert run["status"] == "TimeLimitExceeded" and run["return_code"] is None
    assert run["stdout"] == "started\n"  # what it printed before the deadline is kept
    assert 1 <= run["execution_time"] < 30
    assert run["aiogaol_status"] == "timed-out"


def test_compile_timeout_is_enforced(service: str) -> None:
    # 4e10 steps of constant evaluation in little memory (reading /dev/zero instead would run out of
    # memory first on a fast machine): only the 1 s given to the compile step ends it.
    code = ("constexpr long f() { long s = 0; for (long i = 0; i < 200000; i++) for (long j = 0; j < 200000; j++) "
            "s += i ^ j; return s; }\nstatic_assert(f() != 1, \"\");\nint main() {}\n")
    reply = post(service, "/run_code", {"code": code, "language": "cpp", "compile_timeout": 1})
    assert reply["status"] == "Failed"
    assert reply["compile_result"]["status"] == "TimeLimitExceeded", reply["compile_result"]
    assert reply["compile_result"]["aiogaol_status"] == "timed-out"
    assert 1 <= reply["compile_result"]["execution_time"] < 30
    assert reply["run_result"] is None


def test_memory_hog_gets_the_memory_verdict(service: str) -> None:
    reply = post(service, "/run_code", {"code": "x = bytearray(1 << 30)\nprint(len(x))", "language": "python",
                                        "memory_limit_MB": 128})
    assert reply["status"] == "Failed"
    run = reply["run_result"]
    assert run["status"] == "Finished" and run["return_code"] != 0
    assert run["memory_limit_exceeded"] is True, run
    assert run["aiogaol_status"] == "memory-limit"
    assert "MemoryError" in run["stderr"]


def test_fork_bomb_ends_and_the_service_stays_up(service: str) -> None:
    # The classic, and then a wait so that the shell outlives its first wave: the deadline ends it.
    reply = post(service, "/run_code", {"code": ":(){ :|:& };:\nsleep 5", "language": "bash", "run_timeout": 3})
    assert reply["status"] == "Failed", reply
    assert reply["run_result"]["status"] == "TimeLimitExceeded"
    assert reply["run_result"]["execution_time"] < 30
    again = post(service, "/run_code", {"code": "echo still here", "language": "bash"})
    assert again["run_result"]["stdout"] == "still here\n"


def test_output_flood_is_cut_and_flagged(service: str) -> None:
    reply = post(service, "/run_code", {"code": "import sys\nwhile True: sys.stdout.write('y' * 65536)",
                                        "language": "python", "run_timeout": 20})
    run = reply["run_result"]
    assert reply["status"] == "Failed"
    assert run["output_limit_exceeded"] is True and run["stdout_truncated"] is True, run["aiogaol_status"]
    assert 0 < len(run["stdout"]) <= 8 << 20
    assert set(run["stdout"]) == {"y"}


def test_files_in_and_fetch_files_out(service: str) -> None:
    code = ("import os\ndata = open('data/in.txt').read()\nopen('out.txt', 'w').write(data.upper())\n"
            "os.makedirs('deep/er')\nopen('deep/er/blob.bin', 'wb').write(bytes(range(256)))\n"
            "print(sorted(os.listdir('.')))")
    reply = post(service, "/run_code", {"code": code, "language": "python",
                                        "files": {"data/in.txt": b64(b"hello files"), "skip.txt": None},
                                        "fetch_files": ["out.txt", "deep/er/blob.bin", "missing.txt"]})
    assert reply["status"] == "Success", reply
    assert base64.b64decode(reply["files"]["out.txt"]) == b"HELLO FILES"
    assert base64.b64decode(reply["files"]["deep/er/blob.bin"]) == bytes(range(256))
    assert "missing.txt" not in reply["files"]
    assert reply["files_skipped"]["missing.txt"] == "not found"
    assert "skip.txt" not in reply["run_result"]["stdout"]  # a null file is skipped, as SandboxFusion does


def test_fetch_files_never_follow_a_planted_symlink(service: str) -> None:
    code = ("import os\nos.symlink('/etc/passwd', 'leak')\nos.mkdir('d')\nos.symlink('/etc', 'd/etc')\n"
            "os.mkfifo('pipe')\nprint('planted')")
    reply = post(service, "/run_code", {"code": code, "language": "python",
                                        "fetch_files": ["leak", "d/etc/passwd", "pipe"]})
    assert reply["run_result"]["stdout"] == "planted\n", reply
    assert reply["files"] == {}
    assert set(reply["files_skipped"]) == {"leak", "d/etc/passwd", "pipe"}
    assert reply["files_skipped"]["pipe"] == "not a regular file"
    assert reply["files_skipped"]["leak"] == reply["files_skipped"]["d/etc/passwd"] == "a symlink (not followed)"


def test_a_request_does_not_see_another_requests_files(service: str) -> None:
    first = post(service, "/run_code", {"code": "import os; print(os.getcwd())", "language": "python",
                                        "files": {"secret.txt": b64(b"mine")}})
    where = first["run_result"]["stdout"].strip()
    second = post(service, "/run_code", {"code": f"import os; print(os.path.exists({where!r}), "
                                                 f"os.listdir(os.path.dirname({where!r})))",
                                         "language": "python", "files": {"x": b64(b"")}})
    exists, listing = second["run_result"]["stdout"].strip().split(" ", 1)
    assert exists == "False" and "secret.txt" not in listing and os.path.basename(where) not in listing


def test_jupyter_session_keeps_state_across_cells(service: str) -> None:
    cells = ["a = 123", "a", "print(a)", "import sys; sys.stderr.write('stderr message')",
             "raise RuntimeError('error message')", "import os; os.system('echo from a child')",
             "b = a + 1\nb * 2", "open('made.txt', 'w').write(open('given.txt').read() * 2)"]
    reply = post(service, "/run_jupyter", {"cells": cells, "files": {"given.txt": b64(b"ab")},
                                           "fetch_files": ["made.txt"]})
    assert reply["status"] == "Success", reply
    got = reply["cells"]
    assert len(got) == len(cells)
    assert got[0] == {"stdout": "", "stderr": "", "display": [], "error": [], "stdout_truncated": False,
                      "stderr_truncated": False}
    assert got[1]["display"] == [{"text/plain": "123"}]
    assert got[2]["stdout"] == "123\n"
    assert got[3]["stderr"] == "stderr message"
    assert got[4]["error"][0]["ename"] == "RuntimeError" and got[4]["error"][0]["evalue"] == "error message"
    assert any("error message" in line for line in got[4]["error"][0]["traceback"])
    assert got[5]["stdout"] == "from a child\n"
    assert got[6]["display"] == [{"text/plain": "248"}]
    assert base64.b64decode(reply["files"]["made.txt"]) == b"abab"
    assert reply["driver"]["status"] == "Finished"


def test_jupyter_cell_timeout_and_total_timeout(service: str) -> None:
    reply = post(service, "/run_jupyter", {"cells": ["import time; time.sleep(60)", "1 + 1"], "cell_timeout": 1})
    assert reply["status"] == "Success"
    assert reply["cells"][0]["error"][0]["ename"] == "TimeoutError"
    assert reply["cells"][1]["display"] == [{"text/plain": "2"}]
    reply = post(service, "/run_jupyter", {"cells": ["x = 1", "while True: pass", "x"], "total_timeout": 2})
    assert reply["status"] == "Failed"
    assert reply["driver"]["status"] == "TimeLimitExceeded"
    assert len(reply["cells"]) == 1  # the cell that finished before the deadline is reported


def warm_python(url: str) -> dict[str, int]:
    """The warm python's figures, as /metrics shows them."""
    figures = {}
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("aiogaol_serve_warm_python_"):
            name, value = line.split()
            figures[name.removeprefix("aiogaol_serve_warm_python_")] = int(float(value))
    assert set(figures) == {"jobs", "pools", "zygote_starts"}, figures
    return figures


def test_python_without_files_runs_on_the_warm_pool(service: str) -> None:
    before = warm_python(service)
    assert before["pools"] >= 1 and before["zygote_starts"] >= 1  # opened with the service
    assert httpx.get(service + "/health", timeout=30).json()["warm_python"]["pools"] == before["pools"]
    code = "import os, sys\nopen('scratch', 'w').write('x')\nprint(os.getcwd(), input(), sys.flags.isolated)"
    warm = post(service, "/run_code", {"code": code, "language": "python", "stdin": "21\n"})
    assert warm["status"] == "Success", warm
    # The pool's jobs start isolated (-I) and in the jail's private /tmp, as the cold path's python -c does.
    assert warm["run_result"]["stdout"] == "/tmp 21 1\n"
    after = warm_python(service)
    assert after["jobs"] == before["jobs"] + 1 and after["zygote_starts"] == before["zygote_starts"]
    # A request with files runs cold (a jail holding its working directory), field for field the same.
    cold = post(service, "/run_code", {"code": "import sys; print(sys.flags.isolated)", "language": "python",
                                       "files": {"in.txt": b64(b"")}})
    assert cold["run_result"]["stdout"] == "0\n"
    assert warm_python(service)["jobs"] == after["jobs"]
    assert set(cold) == set(warm) and set(cold["run_result"]) == set(warm["run_result"])
    assert isinstance(warm["run_result"]["execution_time"], float) and warm["run_result"]["return_code"] == 0
    # Its verdicts are aiogaol's, as on the cold path: a timeout, a non-zero exit, a memory limit.
    slow = post(service, "/run_code", {"code": "while True: pass", "language": "python", "run_timeout": 1})
    assert slow["run_result"]["status"] == "TimeLimitExceeded" and slow["run_result"]["return_code"] is None
    failed = post(service, "/run_code", {"code": "raise SystemExit(3)", "language": "python"})
    assert failed["status"] == "Failed" and failed["run_result"]["return_code"] == 3
    # Another memory limit is another pool (its rlimits are the jail plan's), made at its first request.
    hog = post(service, "/run_code", {"code": "x = bytearray(400 << 20)", "language": "python",
                                      "memory_limit_MB": 200})
    assert hog["status"] == "Failed" and "MemoryError" in hog["run_result"]["stderr"], hog
    final = warm_python(service)
    assert final["pools"] == before["pools"] + 1 and final["jobs"] == after["jobs"] + 3


def test_jupyter_files_in_subdirectories_and_fetch_beneath_the_workspace(service: str) -> None:
    cells = ["import os; print(os.getcwd(), open('d/e/in.txt').read())",
             "os.symlink('/etc/passwd', 'link'); os.makedirs('out'); open('out/r.txt', 'w').write('made')"]
    reply = post(service, "/run_jupyter", {"cells": cells, "files": {"d/e/in.txt": b64(b"given")},
                                           "fetch_files": ["out/r.txt", "link", "missing.txt"]})
    assert reply["status"] == "Success", reply
    assert reply["cells"][0]["stdout"] == "/work given\n" and reply["cells"][1]["error"] == []
    assert {k: base64.b64decode(v) for k, v in reply["files"].items()} == {"out/r.txt": b"made"}
    assert set(reply["files_skipped"]) == {"link", "missing.txt"}, reply["files_skipped"]


def test_jupyter_hung_cell_loses_the_state_and_the_session_goes_on(service: str) -> None:
    hung = "import time\nwhile True:\n    try:\n        time.sleep(60)\n    except KeyboardInterrupt:\n        pass"
    reply = post(service, "/run_jupyter", {"cells": ["x = 5", "x", hung, "x", "y = 1\ny + 1"], "cell_timeout": 2})
    assert reply["status"] == "Success", reply
    cells = reply["cells"]
    assert len(cells) == 5 and cells[1]["display"] == [{"text/plain": "5"}]
    assert cells[2]["error"][0]["ename"] == "TimeoutError" and "state is lost" in cells[2]["error"][0]["evalue"]
    assert cells[3]["error"][0]["ename"] == "NameError"  # a fresh kernel: x is gone
    assert cells[4]["display"] == [{"text/plain": "2"}]


def test_jupyter_cell_that_kills_the_sandbox_ends_only_its_session(service: str) -> None:
    # PID 2 is the sandbox's agent.  SIGKILL lands when the agent next runs and init then tears the jail
    # down, so a cell that returned at once could still be answered (and the next one too) by its kernel
    # in between, on a loaded machine: the cell goes on running, as real code would, until the jail ends.
    cells = ["x = 1", "import os, signal, time; os.kill(2, signal.SIGKILL); time.sleep(30)", "x"]
    reply = post(service, "/run_jupyter", {"cells": cells})
    assert reply["status"] == "Failed" and reply["driver"]["aiogaol_status"] == "sandbox-ended", reply
    assert reply["driver"]["return_code"] == -9 and "agent" in reply["message"]
    assert reply["cells"][0]["error"] == [] and len(reply["cells"]) < 3
    assert post(service, "/run_jupyter", {"cells": ["6 * 7"]})["cells"][0]["display"] == [{"text/plain": "42"}]


def test_jupyter_memory_limit_is_an_error_cell(service: str) -> None:
    reply = post(service, "/run_jupyter", {"cells": ["x = bytearray(600 << 20)", "len('still here')"],
                                           "memory_limit_MB": 300})
    assert reply["status"] == "Success", reply
    assert reply["cells"][0]["error"][0]["ename"] == "MemoryError"
    assert reply["cells"][1]["display"] == [{"text/plain": "10"}]


def warm_interpreters() -> set[int]:
    """This process's children that are PythonPool warm interpreters."""
    found = set()
    for task in Path("/proc/self/task").iterdir():
        try:  # a thread (a worker of another test's server) may end meanwhile, a child too
            pids = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                if b"_aiogaol_zygote" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.add(int(pid))
            except OSError:
                pass
    return found


def test_a_jupyter_workspace_is_a_capped_tmpfs_and_shutdown_closes_the_warm_pool() -> None:
    """An app with python only and an 8 MiB working directory, in a thread: the sandbox's workspace is
    a tmpfs of that size (a write past it is ENOSPC in the cell), and the app's shutdown stops its warm
    interpreter."""
    table = {k: v for k, v in load_table().items() if k == "python"}
    app = make_app(table, concurrency=1, queue=1, settings=Settings(workdir_size=8 << 20))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    before = warm_interpreters()
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url)
        assert warm_python(url)["pools"] == 1 and warm_interpreters() - before  # the app's own
        cells = ["try:\n    open('big', 'wb').write(b'x' * (16 << 20))\nexcept OSError as e:\n    print(e.errno)",
                 "import os; os.path.getsize('big') <= 8 << 20"]
        reply = post(url, "/run_jupyter", {"cells": cells})
        assert reply["cells"][0]["stdout"] == "28\n" and reply["cells"][1]["display"] == [{"text/plain": "True"}]
    finally:
        server.should_exit = True
        thread.join(60)
    assert not thread.is_alive()
    assert warm_interpreters() <= before  # the app's warm interpreter was stopped and reaped with it


@pytest.mark.anyio
async def test_200_concurrent_requests_all_answered(service: str) -> None:
    replies: dict[int, dict[str, Any]] = {}
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=service, timeout=300, limits=limits) as client:
        async def one(i: int) -> None:
            r = await client.post("/run_code", json={"code": f"print({i} * {i})", "language": "python"})
            assert r.status_code == 200, r.text
            replies[i] = r.json()

        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(one, i)
        health = (await client.get("/health")).json()
    assert len(replies) == 200
    for i, reply in replies.items():
        assert reply["status"] == "Success", reply
        assert reply["run_result"]["stdout"] == f"{i * i}\n"
    assert health["running"] == 0 and health["queued"] == 0


@pytest.mark.anyio
async def test_full_queue_is_503_with_retry_after(small: str) -> None:
    async with httpx.AsyncClient(base_url=small, timeout=60) as client:
        async def health(key: str, want: int) -> None:
            for _ in range(300):
                if (await client.get("/health")).json()[key] == want:
                    return
                await anyio.sleep(0.05)
            raise AssertionError(f"{key} never reached {want}")

        replies: list[httpx.Response] = []

        async def slow() -> None:
            replies.append(await client.post("/run_code", json={"code": "sleep 1.5; echo done", "language": "bash"}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            await health("running", 1)
            tg.start_soon(slow)
            await health("queued", 1)
            refused = await client.post("/run_code", json={"code": "echo no room", "language": "bash"})
        assert refused.status_code == 503
        assert int(refused.headers["Retry-After"]) >= 1
        assert "full" in refused.json()["detail"]
        assert [r.status_code for r in replies] == [200, 200]
        assert all(r.json()["run_result"]["stdout"] == "done\n" for r in replies)
        metrics = (await client.get("/metrics")).text
    assert "aiogaol_serve_rejected_total 1.0" in metrics


@pytest.mark.anyio
async def test_a_client_that_goes_away_frees_its_slot(small: str) -> None:
    async with httpx.AsyncClient(base_url=small, timeout=60) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/run_code", json={"code": "sleep 60", "language": "bash", "run_timeout": 60},
                              timeout=1.5)
        # Long before the program's 60 s: the request was cancelled, its jail killed, its slot freed.
        for _ in range(200):
            if (await client.get("/health")).json()["running"] == 0:
                break
            await anyio.sleep(0.05)
        else:
            raise AssertionError("the slot of a request whose client left was never freed")
        reply = await client.post("/run_code", json={"code": "echo next", "language": "bash"})
        assert reply.json()["run_result"]["stdout"] == "next\n"
        assert "aiogaol_serve_abandoned_total 1.0" in (await client.get("/metrics")).text


@pytest.mark.parametrize("hide", [False, True], ids=["plain", "in-a-mode-000-directory"])
def test_a_working_directory_that_outgrows_its_cap_is_stopped(small: str, hide: bool) -> None:
    # 64 MiB against a cap of 8 MiB; hidden, the directory is unreadable before the watch can look.
    code = ("mkdir d; for i in $(seq 64); do head -c 1048576 /dev/zero > d/f$i; done; "
            + ("chmod 000 d; " if hide else "") + "sleep 30")
    started = time.monotonic()
    reply = post(small, "/run_code", {"code": code, "language": "bash", "run_timeout": 60, "fetch_files": ["d/f1"]})
    assert reply["run_result"]["aiogaol_status"] == "disk-limit", reply
    assert reply["status"] == "Failed" and reply["run_result"]["return_code"] == -9
    assert time.monotonic() - started < 30  # stopped by the watch, not by the 60 s deadline


BAD = [
    ("unknown language", {"code": "x", "language": "cobol-2099"}, 400, "not offered here"),
    ("no code", {"language": "bash"}, 422, "code"),
    ("no language", {"code": "echo"}, 422, "language"),
    ("timeout of a wrong type", {"code": "echo", "language": "bash", "run_timeout": "soon"}, 422, "run_timeout"),
    ("negative timeout", {"code": "echo", "language": "bash", "run_timeout": -1}, 422, "run_timeout"),
    ("endless timeout", {"code": "echo", "language": "bash", "compile_timeout": 1e9}, 422, "compile_timeout"),
    ("memory of a wrong type", {"code": "echo", "language": "bash", "memory_limit_MB": "lots"}, 422, "memory"),
    ("too much memory", {"code": "echo", "language": "bash", "memory_limit_MB": 1 << 19}, 422, "allows"),
    ("stdin not a string", {"code": "echo", "language": "bash", "stdin": 5}, 422, "stdin"),
    ("files not an object", {"code": "echo", "language": "bash", "files": ["a"]}, 422, "files"),
    ("bad base64", {"code": "echo", "language": "bash", "files": {"a.txt": "***"}}, 400, "base64"),
    ("absolute file", {"code": "echo", "language": "bash", "files": {"/etc/x": ""}}, 400, "absolute"),
    ("file outside", {"code": "echo", "language": "bash", "files": {"a/../../x": ""}}, 400, "leaves"),
    ("fetch outside", {"code": "echo", "language": "bash", "fetch_files": ["../../etc/passwd"]}, 400, "leaves"),
    ("fetch absolute", {"code": "echo", "language": "bash", "fetch_files": ["/etc/passwd"]}, 400, "absolute"),
    ("fetch not a list", {"code": "echo", "language": "bash", "fetch_files": "a"}, 422, "fetch_files"),
    ("not an object", ["echo"], 422, "object"),
    ("code not UTF-8", {"code": "echo \ud800", "language": "bash"}, 400, "surrogate"),
    ("stdin not UTF-8", {"code": "cat", "language": "bash", "stdin": "\udfff"}, 400, "surrogate"),
]


@pytest.mark.parametrize("name,body,status,words", BAD, ids=[b[0] for b in BAD])
def test_bad_run_code_requests_get_a_4xx_with_a_reason(small: str, name: str, body: Any, status: int,
                                                        words: str) -> None:
    # json.dumps escapes a lone surrogate (\\ud800), as a client's JSON would carry it.
    reply = httpx.post(small + "/run_code", content=json.dumps(body).encode(), timeout=30)
    assert reply.status_code == status, reply.text
    assert words in reply.json()["detail"]
    assert "Traceback" not in reply.text


def test_malformed_bodies_and_routes_get_a_4xx(small: str) -> None:
    cases = [
        (httpx.post(small + "/run_code", content=b"{not json", timeout=30), 400, "not JSON"),
        (httpx.post(small + "/run_code", content=b"\xff\xfe{}", timeout=30), 400, "JSON"),
        (httpx.post(small + "/run_code", content=b"[" * 100_000 + b"]" * 100_000, timeout=30), 400, "JSON"),
        (httpx.post(small + "/run_code", content=b"x" * (2 << 20), timeout=30), 413, "limit"),
        (httpx.post(small + "/run_jupyter", json={"cells": "print(1)"}, timeout=30), 422, "cells"),
        (httpx.post(small + "/run_jupyter", json={"cells": [], "kernel": "julia"}, timeout=30), 422, "kernel"),
        (httpx.get(small + "/run_code", timeout=30), 405, "not allowed"),
        (httpx.get(small + "/nowhere", timeout=30), 404, "no route"),
    ]
    for reply, status, words in cases:
        assert reply.status_code == status, (reply.request.url, reply.text)
        assert words in reply.json()["detail"], reply.text
        assert "Traceback" not in reply.text
    assert httpx.get(small + "/health", timeout=30).json()["status"] == "ok"  # and it still serves


def test_metrics_and_health(service: str) -> None:
    post(service, "/run_code", {"code": "print(1)", "language": "python"})
    post(service, "/run_code", {"code": "exit 1", "language": "bash"})
    text = httpx.get(service + "/metrics").text
    assert 'aiogaol_serve_requests_total{code="200",route="/run_code"}' in text
    assert 'aiogaol_serve_results_total{route="/run_code",status="Success"}' in text
    assert 'aiogaol_serve_results_total{route="/run_code",status="Failed"}' in text
    assert 'aiogaol_serve_verdicts_total{step="run",verdict="nonzero-exit"}' in text
    assert 'aiogaol_serve_request_seconds_bucket{le="0.5",route="/run_code"}' in text
    assert "aiogaol_serve_queued 0.0" in text and "aiogaol_serve_concurrency 4.0" in text
    health = httpx.get(service + "/health").json()
    assert health["status"] == "ok" and health["concurrency"] == 4 and health["queue"] == 256
    assert httpx.get(service + "/v1/ping").json() == "pong"  # SandboxFusion's own health route


def test_sandbox_fusion_client_package_works_unchanged(service: str) -> None:
    sandbox_fusion = pytest.importorskip("sandbox_fusion", reason="the sandbox-fusion client is not installed")
    from sandbox_fusion import (RunCodeRequest, RunJupyterRequest, RunStatus, run_code, run_jupyter,
                                summary_run_code_result, SummaryMapping)

    reply = run_code(RunCodeRequest(code="print(6 * 7)", language="python"), endpoint=service, max_attempts=1)
    assert reply.status == RunStatus.Success
    assert reply.run_result is not None and reply.run_result.stdout == "42\n"
    assert reply.run_result.cpu_time is not None  # a field its model has and SandboxFusion leaves out
    cpp = run_code(RunCodeRequest(code="#include <cstdio>\nint main(){std::puts(\"hi\");}", language="cpp"),
                   endpoint=service, max_attempts=1)
    assert cpp.compile_result is not None and cpp.run_result is not None and cpp.run_result.stdout == "hi\n"
    late = run_code(RunCodeRequest(code="import time; time.sleep(10)", language="python", run_timeout=1),
                    endpoint=service, max_attempts=1)
    mapping = SummaryMapping(RunTimeout="TLE", CompileFailed="CE")
    assert summary_run_code_result(late, mapping) == "TLE"
    broken = run_code(RunCodeRequest(code="int main( {", language="cpp"), endpoint=service, max_attempts=1)
    assert summary_run_code_result(broken, mapping) == "CE"
    files = run_code(RunCodeRequest(code="open('o', 'w').write(open('i').read()[::-1])", language="python",
                                    files={"i": b64(b"abc")}, fetch_files=["o"]), endpoint=service, max_attempts=1)
    assert base64.b64decode(files.files["o"]) == b"cba"
    nb = run_jupyter(RunJupyterRequest(cells=["x = 2", "x ** 10"]), endpoint=service, max_attempts=1)
    assert nb.status == RunStatus.Success and nb.cells[1].display == [{"text/plain": "1024"}]
    print("sandbox_fusion", getattr(sandbox_fusion, "__version__", "0.3.x"), "->", json.dumps(reply.dict()))


def test_cli_without_the_extra_names_it(tmp_path: Path) -> None:
    # A Python that cannot import the extra: a sitecustomize that hides starlette from the finder.
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nclass Hide:\n    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'starlette':\n            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Hide())\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    done = subprocess.run([sys.executable, "-m", "aiogaol", "serve"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "pip install 'aiogaol[serve]'" in done.stderr, done.stderr


def test_serve_refuses_to_start_where_it_cannot_jail() -> None:
    """Fail closed, for real: in a user namespace whose user.max_user_namespaces is 0."""
    script = (f"echo 0 > /proc/sys/user/max_user_namespaces && cd {ROOT} && "
              f"exec {sys.executable} -m aiogaol serve --port {free_port()}")
    done = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c", script], capture_output=True,
                          text=True, timeout=60)
    if "unshare failed" in done.stderr:
        pytest.skip(f"cannot create the outer user namespace here: {done.stderr.strip()}")
    assert done.returncode == 125, done.stderr
    assert done.stderr.startswith("aiogaol: aiogaol serve cannot start: no jails here: user namespaces are "
                                  "forbidden"), done.stderr
    assert done.stderr.count("\n") == 1


def test_cli_refuses_a_bad_language_table(tmp_path: Path) -> None:
    table = tmp_path / "langs.toml"
    table.write_text('[brainfuck]\nsource = "a.bf"\nrun = "bf a.bf"\n')
    done = subprocess.run([sys.executable, "-m", "aiogaol", "serve", "--languages", str(table)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == "aiogaol: languages.brainfuck.run: expected a non-empty list of non-empty strings\n"
    done = subprocess.run([sys.executable, "-m", "aiogaol", "serve", "--concurrency", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--concurrency" in done.stderr


def test_a_language_table_extends_the_shipped_one(tmp_path: Path) -> None:
    table = tmp_path / "langs.toml"
    table.write_text('[sh]\nsource = "main.sh"\nrun = ["sh", "main.sh"]\nprobe = "echo aiogaol-probe"\n')
    langs = load_table(table)
    assert "sh" in langs and "python" in langs and langs["sh"].run == ("sh", "main.sh")
