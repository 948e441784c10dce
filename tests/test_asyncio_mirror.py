"""The asyncio face mirrors asyncio.create_subprocess_exec: same arguments, same process members."""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap

import pytest

import aiogaol

from .conftest import open_fds, zombie_children
from .jailtools import run_python

pytestmark = pytest.mark.asyncio


async def test_quick_start_from_the_issue(python: str) -> None:
    profile = aiogaol.Profile([aiogaol.FileReadAll(aiogaol.Subpath("/usr")), aiogaol.FileReadAll(aiogaol.Subpath("/lib")),
                               aiogaol.FileReadAll(aiogaol.Literal("/etc/ld.so.cache"))])
    proc = await aiogaol.create_sandboxed_subprocess(profile, "/usr/bin/env", "echo", "42",
                                                     stdout=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert (out, err, proc.returncode) == (b"42\n", None, 0)


async def test_stdin_stdout_round_trip(py_profile: aiogaol.Profile, python: str) -> None:
    rc, out, _ = await run_python(py_profile, python, "import sys; sys.stdout.write(sys.stdin.read().upper())",
                                  input=b"hello jail")
    assert (rc, out) == (0, b"HELLO JAIL")


async def test_eight_mib_of_output_without_deadlock(py_profile: aiogaol.Profile, python: str) -> None:
    size = 8 << 20
    rc, out, _ = await run_python(py_profile, python, f"import sys; sys.stdout.buffer.write(b'x' * {size})")
    assert rc == 0 and len(out) == size and out == b"x" * size


async def test_stderr_to_stdout(py_profile: aiogaol.Profile, python: str) -> None:
    proc = await aiogaol.create_sandboxed_subprocess(
        py_profile, python, "-c", "import sys; print('out', flush=True); print('err', file=sys.stderr, flush=True)",
        stdout=aiogaol.PIPE, stderr=aiogaol.STDOUT)
    out, err = await proc.communicate()
    assert out == b"out\nerr\n" and err is None and proc.stderr is None


async def test_streams_are_asyncio_streams(py_profile: aiogaol.Profile, python: str) -> None:
    proc = await aiogaol.create_sandboxed_subprocess(py_profile, python, "-c", "import sys; print(input())",
                                                     stdin=aiogaol.PIPE, stdout=aiogaol.PIPE)
    assert isinstance(proc.stdin, asyncio.StreamWriter)
    assert isinstance(proc.stdout, asyncio.StreamReader)
    proc.stdin.write(b"line\n")
    await proc.stdin.drain()
    assert await proc.stdout.readline() == b"line\n"
    assert await proc.wait() == 0


async def test_limit_is_the_stream_limit(py_profile: aiogaol.Profile, python: str) -> None:
    proc = await aiogaol.create_sandboxed_subprocess(py_profile, python, "-c", "print('y' * 5000)",
                                                     stdout=aiogaol.PIPE, limit=1000)
    assert proc.stdout is not None
    with pytest.raises(ValueError):
        await proc.stdout.readline()
    await proc.wait()
    await proc.aclose()


async def test_wait_returns_on_exit_not_on_pipe_close(py_profile: aiogaol.Profile) -> None:
    """A background child holding stdout must not delay wait(); init takes it down with the program."""
    proc = await aiogaol.create_sandboxed_subprocess(aiogaol.system_profile(), "/bin/sh", "-c",
                                                     "sleep 100 & exit 3", stdout=aiogaol.PIPE)
    assert await asyncio.wait_for(proc.wait(), 30) == 3
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.read(), 30) == b""


async def test_cancelled_wait_leaves_the_process_running(py_profile: aiogaol.Profile, python: str) -> None:
    proc = await aiogaol.create_sandboxed_subprocess(py_profile, python, "-c", "import time; time.sleep(60)")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(proc.wait(), 0.2)
    assert proc.returncode is None
    proc.kill()
    assert await proc.wait() == -signal.SIGKILL


async def test_signals_after_exit_raise_process_lookup_error() -> None:
    proc = await aiogaol.create_sandboxed_subprocess(aiogaol.system_profile(), "/bin/true")
    assert await proc.wait() == 0
    for send in (proc.terminate, proc.kill, lambda: proc.send_signal(signal.SIGUSR1)):
        with pytest.raises(ProcessLookupError):
            send()


async def test_async_with_kills_and_reaps(py_profile: aiogaol.Profile, python: str) -> None:
    async with await aiogaol.create_sandboxed_subprocess(py_profile, python, "-c", "import time; time.sleep(60)") as proc:
        pid = proc.pid
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(f"/proc/{pid}")
    assert zombie_children() == []


async def test_cancelling_the_spawn_leaves_nothing_behind(py_profile: aiogaol.Profile, python: str) -> None:
    fds = open_fds()
    for delay_steps in range(12):
        task = asyncio.ensure_future(aiogaol.create_sandboxed_subprocess(
            py_profile, python, "-c", "import time; time.sleep(60)", stdout=aiogaol.PIPE))
        for _ in range(delay_steps):
            await asyncio.sleep(0)
        task.cancel()
        try:
            proc = await task
        except asyncio.CancelledError:
            continue
        await proc.aclose()  # the spawn finished before the cancel landed
    assert zombie_children() == []
    assert len(open_fds()) <= len(fds) + 2


async def test_usage_is_reported_after_wait(py_profile: aiogaol.Profile, python: str) -> None:
    proc = await aiogaol.create_sandboxed_subprocess(py_profile, python, "-c", textwrap.dedent("""
        import time
        end = time.process_time() + 0.3
        while time.process_time() < end: pass
        block = bytearray(64 << 20)
        for i in range(0, len(block), 4096): block[i] = 1
    """))
    assert proc.usage is None
    await proc.wait()
    assert proc.usage is not None
    assert proc.usage.cpu_time >= 0.25
    assert proc.usage.max_rss >= 64 << 20
    assert proc.usage.wall_time >= proc.usage.cpu_time * 0.5


@pytest.mark.parametrize("kwargs, message", [
    ({"text": True}, "text must not be True"),
    ({"shell": True}, "shell must be False"),
    ({"universal_newlines": True}, "universal_newlines must be False"),
    ({"bufsize": 1}, "bufsize must be 0"),
    ({"encoding": "utf-8"}, "encoding must be None"),
    ({"errors": "strict"}, "errors must be None"),
    ({"preexec_fn": lambda: None}, "preexec_fn"),
    ({"close_fds": False}, "close_fds"),
    ({"user": "nobody"}, "user"),
])
async def test_unsupported_arguments_are_refused_like_asyncio(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await aiogaol.create_sandboxed_subprocess(aiogaol.system_profile(), "/bin/true", **kwargs)  # type: ignore[arg-type]


async def test_unknown_keyword_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="no_such_option"):
        await aiogaol.create_sandboxed_subprocess(aiogaol.system_profile(), "/bin/true", no_such_option=1)


async def test_a_dropped_process_is_killed_and_reaped(py_profile: aiogaol.Profile, python: str) -> None:
    import gc
    import warnings

    proc = await aiogaol.create_sandboxed_subprocess(py_profile, python, "-c", "import time; time.sleep(60)")
    pid = proc.pid
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del proc
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught)
    assert not os.path.exists(f"/proc/{pid}")
    assert zombie_children() == []
