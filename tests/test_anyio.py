"""``aiogaol.spawn``: an anyio Process over a real jail, the same on asyncio and trio."""

from __future__ import annotations

import gc
import signal
import warnings

import anyio
import anyio.abc
import pytest

import aiogaol

from .conftest import open_fds, zombie_children

pytestmark = pytest.mark.anyio

IGNORE_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"


async def read_all(stream: anyio.abc.ByteReceiveStream | None) -> bytes:
    assert stream is not None
    chunks = []
    async for chunk in stream:
        chunks.append(chunk)
    return b"".join(chunks)


async def test_is_an_anyio_process_with_byte_streams(py_profile: aiogaol.Profile, python: str) -> None:
    async with await aiogaol.spawn(py_profile, [python, "-c", "print('hi')"]) as proc:
        assert isinstance(proc, anyio.abc.Process)
        assert isinstance(proc.stdin, anyio.abc.ByteSendStream)
        assert isinstance(proc.stdout, anyio.abc.ByteReceiveStream)
        assert isinstance(proc.stderr, anyio.abc.ByteReceiveStream)
        assert await read_all(proc.stdout) == b"hi\n"
        assert await proc.wait() == 0
        assert proc.returncode == 0
        assert proc.pid > 0
        assert proc.usage is not None and proc.usage.wall_time > 0
        assert proc.isolation == "namespaces"


async def test_stdin_round_trip_and_exit_code(py_profile: aiogaol.Profile, python: str) -> None:
    code = "import sys; data = sys.stdin.buffer.read(); sys.stdout.buffer.write(data[::-1]); sys.exit(7)"
    async with await aiogaol.spawn(py_profile, [python, "-c", code]) as proc:
        assert proc.stdin is not None
        await proc.stdin.send(b"abc")
        await proc.stdin.aclose()
        assert await read_all(proc.stdout) == b"cba"
        assert await proc.wait() == 7


async def test_a_megabyte_each_way_goes_through_full_pipes(py_profile: aiogaol.Profile, python: str) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, sixteen times a pipe's capacity
    code = "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read())"
    async with await aiogaol.spawn(py_profile, [python, "-c", code], stderr=aiogaol.DEVNULL) as proc:
        assert proc.stdin is not None and proc.stderr is None

        async def feed() -> None:
            assert proc.stdin is not None
            await proc.stdin.send(payload)
            await proc.stdin.aclose()

        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            echoed = await read_all(proc.stdout)
        assert echoed == payload
        assert await proc.wait() == 0


async def test_stderr_to_stdout(py_profile: aiogaol.Profile, python: str) -> None:
    code = "import sys; print('out', flush=True); print('err', file=sys.stderr, flush=True)"
    async with await aiogaol.spawn(py_profile, [python, "-c", code], stdin=aiogaol.DEVNULL,
                                   stderr=aiogaol.STDOUT) as proc:
        assert proc.stdin is None and proc.stderr is None
        assert await read_all(proc.stdout) == b"out\nerr\n"


async def test_terminate_gives_minus_sigterm(py_profile: aiogaol.Profile, python: str) -> None:
    async with await aiogaol.spawn(py_profile, [python, "-c", "import time; print(1, flush=True); time.sleep(60)"]) as proc:
        assert proc.stdout is not None
        assert await proc.stdout.receive() == b"1\n"
        proc.terminate()
        assert await proc.wait() == -signal.SIGTERM


async def test_kill_gives_minus_sigkill(py_profile: aiogaol.Profile, python: str) -> None:
    async with await aiogaol.spawn(py_profile, [python, "-c", IGNORE_TERM]) as proc:
        assert proc.stdout is not None
        await proc.stdout.receive()
        proc.kill()
        assert await proc.wait() == -signal.SIGKILL
        proc.kill()  # after exit: a no-op, as in trio, never a signal to a reused PID
        proc.send_signal(signal.SIGTERM)


async def test_leaving_the_block_terminates_a_running_jail(py_profile: aiogaol.Profile, python: str) -> None:
    async with await aiogaol.spawn(py_profile, [python, "-c", "import time; time.sleep(60)"]) as proc:
        pass
    assert proc.returncode == -signal.SIGTERM
    assert zombie_children() == []


async def test_cancellation_kills_a_program_that_ignores_sigterm(py_profile: aiogaol.Profile, python: str) -> None:
    with anyio.move_on_after(30) as outer:
        async with await aiogaol.spawn(py_profile, [python, "-c", IGNORE_TERM], grace_period=0.2) as proc:
            assert proc.stdout is not None
            assert await proc.stdout.receive() == b"ready\n"
            with anyio.CancelScope() as scope:
                scope.cancel()
                async with proc:  # the cancelled block still terminates, waits, kills and reaps
                    await proc.wait()
    assert not outer.cancelled_caught
    assert proc.returncode == -signal.SIGKILL
    assert zombie_children() == []


async def test_cancelled_wait_leaves_the_program_running(py_profile: aiogaol.Profile, python: str) -> None:
    async with await aiogaol.spawn(py_profile, [python, "-c", "import time; time.sleep(60)"]) as proc:
        with anyio.move_on_after(0.2):
            await proc.wait()
        assert proc.returncode is None
        proc.kill()
        assert await proc.wait() == -signal.SIGKILL


async def test_many_waiters_and_returncode_readers_agree(py_profile: aiogaol.Profile, python: str) -> None:
    """Only one task may wait on a pidfd; the others queue, and a ``returncode`` read that reaps wakes
    the task parked on the pidfd instead of leaving it on a closed fd."""
    seen: list[int] = []
    async with await aiogaol.spawn(py_profile, [python, "-c", "import time; time.sleep(0.3)"]) as proc:
        async def waiter() -> None:
            seen.append(await proc.wait())

        async def poller() -> None:
            while proc.returncode is None:
                await anyio.sleep(0.01)
            seen.append(proc.returncode)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(waiter)
                tg.start_soon(poller)
    assert seen == [0, 0, 0, 0]


async def test_missing_program_raises_and_leaks_nothing() -> None:
    profile = aiogaol.system_profile()
    for attempt in range(2):  # the first may open what stays open for good (the profile's plan cache)
        before = open_fds()
        with pytest.raises(FileNotFoundError) as info:
            await aiogaol.spawn(profile, ["/no/such/program"])
        assert isinstance(info.value, aiogaol.ProgramNotFoundError)
    assert open_fds() <= before
    assert zombie_children() == []


async def test_bad_arguments_fail_before_anything_starts(py_profile: aiogaol.Profile, python: str) -> None:
    with pytest.raises(TypeError):
        await aiogaol.spawn(py_profile, "echo hi")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await aiogaol.spawn(py_profile, [])
    with pytest.raises(ValueError):
        await aiogaol.spawn(py_profile, [python], grace_period=-1)
    with pytest.raises(ValueError):
        await aiogaol.spawn(py_profile, [python], cwd="relative")


async def test_a_spawn_cancelled_at_once_leaves_no_jail(py_profile: aiogaol.Profile, python: str) -> None:
    before = open_fds()
    for delay in (0, 0.001, 0.003, 0.01):
        with anyio.move_on_after(delay):
            async with await aiogaol.spawn(py_profile, [python, "-c", "import time; time.sleep(60)"]):
                await anyio.sleep(60)
    assert zombie_children() == []
    assert open_fds() <= before


async def test_thirty_at_once_and_no_fd_or_zombie_left(py_profile: aiogaol.Profile, python: str) -> None:
    before = open_fds()
    outputs: dict[int, bytes] = {}

    async def one(i: int) -> None:
        async with await aiogaol.spawn(py_profile, [python, "-c", f"print({i})"], stdin=aiogaol.DEVNULL) as proc:
            outputs[i] = await read_all(proc.stdout)
            assert await proc.wait() == 0

    async with anyio.create_task_group() as tg:
        for i in range(30):
            tg.start_soon(one, i)
    assert outputs == {i: f"{i}\n".encode() for i in range(30)}
    assert open_fds() <= before
    assert zombie_children() == []


async def test_a_dropped_process_is_killed_and_reaped(py_profile: aiogaol.Profile, python: str) -> None:
    proc = await aiogaol.spawn(py_profile, [python, "-c", "import time; time.sleep(60)"])
    jail = proc._jail
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del proc
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught)
    assert jail.returncode == -signal.SIGKILL
    assert zombie_children() == []


async def test_receive_after_close_raises_closed(py_profile: aiogaol.Profile, python: str) -> None:
    async with await aiogaol.spawn(py_profile, [python, "-c", "pass"]) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        await proc.stdout.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await proc.stdout.receive()
        await proc.wait()
        await proc.stdin.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await proc.stdin.send(b"x")
