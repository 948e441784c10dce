"""Real programs keep working behind the allow-list filter: Python (threads, multiprocessing, asyncio,
sqlite3, ssl), gcc/g++ and make (a C and a C++ program built and run), node, bash and a JVM when one is
installed.  Each runs in a real jail with what it needs bound read-only, a writable work directory and
an explicit ``Tmpfs("/dev/shm")`` (POSIX semaphores for multiprocessing).

A system call the filter was not written for answers ENOSYS, so these runs also show that the runtimes'
fallbacks work (glibc's clone3 -> clone, libuv's io_uring -> thread pool).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

import aiogaol
from aiogaol import FileReadAll, FileWriteAll, Subpath, Tmpfs

pytestmark = pytest.mark.asyncio


def _profile(work: Path, *extra: aiogaol.Operation) -> aiogaol.Profile:
    """The host's programs read-only, work writable.  A root server's program runs as nobody: the modes
    of work and of the files the test put there let it in."""
    work.chmod(0o777)
    for entry in work.iterdir():
        entry.chmod(0o666)
    return aiogaol.python_profile([FileWriteAll(Subpath(str(work))), Tmpfs("/dev/shm"), *extra])


async def _run(profile: aiogaol.Profile, argv: list[str], work: Path, timeout: float = 240) -> str:
    """Run argv in the jail in work; return its stdout, failing with its stderr on a non-zero exit."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8"}
    proc = await aiogaol.create_sandboxed_subprocess(profile, *argv, cwd=str(work), env=env,
                                                     stdin=aiogaol.DEVNULL, stdout=aiogaol.PIPE,
                                                     stderr=aiogaol.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, f"{argv[0]} exited {proc.returncode}: {(err or b'').decode(errors='replace')}"
    return (out or b"").decode()


def _need(tool: str) -> str:
    path = shutil.which(tool, path="/usr/bin:/bin")
    if path is None:
        pytest.skip(f"{tool} is not installed (.ci/debian-deps.sh installs it)")
    return path


PYTHON = textwrap.dedent("""
    import asyncio, concurrent.futures, hashlib, json, multiprocessing, os, sqlite3, ssl, sys, threading

    def square(x):
        return x * x

    async def echo():
        got = []
        async def handle(reader, writer):
            writer.write(await reader.read(100)); await writer.drain(); writer.close()
        server = await asyncio.start_unix_server(handle, path="s.sock")
        reader, writer = await asyncio.open_unix_connection("s.sock")
        writer.write(b"ping"); await writer.drain()
        got.append((await reader.read(100)).decode())
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "print(6 * 7)",
                                                    stdout=asyncio.subprocess.PIPE)
        got.append((await proc.communicate())[0].decode().strip())
        writer.close(); server.close()
        await asyncio.sleep(0.01)
        return got

    if __name__ == "__main__":
        out = {}
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            out["threads"] = sum(ex.map(square, range(10)))
        for method in ("fork", "spawn", "forkserver"):
            with multiprocessing.get_context(method).Pool(2) as pool:
                out[method] = sum(pool.map(square, range(10)))
        lock = multiprocessing.Semaphore(1)  # a POSIX semaphore in /dev/shm
        with lock:
            out["semaphore"] = True
        out["asyncio"] = asyncio.run(echo())
        db = sqlite3.connect(os.path.join(os.getcwd(), "t.db"))
        db.execute("pragma journal_mode=wal")  # WAL: a shared-memory index by mmap
        db.execute("create table t (x)"); db.executemany("insert into t values (?)", [(i,) for i in range(100)])
        db.commit()
        out["sqlite3"] = db.execute("select sum(x) from t").fetchone()[0]
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(sys.argv[1], sys.argv[2])
        client_ctx = ssl.create_default_context(cafile=sys.argv[1])
        client_ctx.check_hostname = False
        a, b = __import__("socket").socketpair()
        def serve():
            with ctx.wrap_socket(a, server_side=True) as s:
                s.sendall(s.recv(100).upper())
        t = threading.Thread(target=serve); t.start()
        with client_ctx.wrap_socket(b) as c:
            c.sendall(b"tls"); out["ssl"] = [c.recv(100).decode(), c.version()]
        t.join()
        out["hash"] = hashlib.sha256(b"x").hexdigest()[:8]
        print(json.dumps(out))
""")


async def test_python_threads_multiprocessing_asyncio_sqlite_ssl(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: it makes the test's certificate")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=jail",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True, timeout=60)
    (tmp_path / "probe.py").write_text(PYTHON)
    profile = _profile(tmp_path, FileReadAll(Subpath("/etc/ssl")))
    import json

    out = json.loads(await _run(profile, [aiogaol.python_executable(), "probe.py", "cert.pem", "key.pem"], tmp_path))
    assert out == {"threads": 285, "fork": 285, "spawn": 285, "forkserver": 285, "semaphore": True,
                   "asyncio": ["ping", "42"], "sqlite3": 4950, "ssl": ["TLS", out["ssl"][1]],
                   "hash": "2d711642"}
    assert out["ssl"][1].startswith("TLSv1.")


MAKEFILE = """\
all: hello-c hello-cxx
\t./hello-c
\t./hello-cxx
hello-c: hello.c
\tgcc -O1 -pthread -o $@ $<
hello-cxx: hello.cpp
\tg++ -O1 -pthread -o $@ $<
"""

HELLO_C = r"""
#include <pthread.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
static void *work(void *arg) { return (void *)((long)arg * 2); }
int main(void) {
    pthread_t t; void *r; int status; pid_t pid;
    pthread_create(&t, NULL, work, (void *)21); pthread_join(t, &r);
    pid = fork();
    if (pid == 0) _exit(3);
    waitpid(pid, &status, 0);
    printf("c %ld %d\n", (long)r, WEXITSTATUS(status));
    return 0;
}
"""

HELLO_CPP = r"""
#include <future>
#include <iostream>
#include <map>
#include <stdexcept>
#include <string>
#include <thread>
int main() {
    std::map<std::string, int> m{{"a", 1}, {"b", 2}};
    auto f = std::async(std::launch::async, [&] { return m["a"] + m["b"]; });
    int caught = 0;
    try { throw std::runtime_error("x"); } catch (const std::exception &) { caught = 1; }
    std::thread t([] {}); t.join();
    std::cout << "c++ " << f.get() << " " << caught << std::endl;
    return 0;
}
"""


async def test_gcc_gxx_and_make_build_and_run(tmp_path: Path) -> None:
    for tool in ("gcc", "g++", "make"):
        _need(tool)
    (tmp_path / "Makefile").write_text(MAKEFILE)
    (tmp_path / "hello.c").write_text(HELLO_C)
    (tmp_path / "hello.cpp").write_text(HELLO_CPP)
    out = await _run(_profile(tmp_path), ["/usr/bin/make", "-s"], tmp_path)
    assert out.splitlines()[-2:] == ["c 42 3", "c++ 3 1"]


NODE = textwrap.dedent("""
    const { Worker } = require('worker_threads');
    const cp = require('child_process'), crypto = require('crypto'), fs = require('fs'), os = require('os');
    const zlib = require('zlib');
    (async () => {
        const w = await new Promise((ok, bad) => {
            const worker = new Worker('require("worker_threads").parentPort.postMessage(6 * 7)', { eval: true });
            worker.on('message', ok); worker.on('error', bad);
        });
        await fs.promises.writeFile('n.txt', 'node');  // libuv: io_uring (ENOSYS here) or its thread pool
        const read = await fs.promises.readFile('n.txt', 'utf8');
        const child = cp.spawnSync(process.execPath, ['-e', 'console.log(7)']).stdout.toString().trim();
        const gz = zlib.gunzipSync(zlib.gzipSync('zz')).toString();
        const hash = crypto.createHash('sha256').update('x').digest('hex').slice(0, 8);
        const ifaces = Object.keys(os.networkInterfaces());  // getifaddrs: netlink NETLINK_ROUTE
        console.log(JSON.stringify({ w, read, child, gz, hash, bytes: crypto.randomBytes(4).length,
                                     ifaces: Array.isArray(ifaces) }));
    })().catch((e) => { console.error(e); process.exit(1); });
""")


async def test_node(tmp_path: Path) -> None:
    node = _need("node")
    import json

    out = json.loads(await _run(_profile(tmp_path), [os.path.realpath(node), "-e", NODE], tmp_path))
    assert out == {"w": 42, "read": "node", "child": "7", "gz": "zz", "hash": "2d711642", "bytes": 4,
                   "ifaces": True}


BASH = r"""
set -eu
n=$(for i in 1 2 3; do echo "$i"; done | wc -l)
x=$( (exit 3) || echo "sub $?")
cat > b.txt <<EOF
heredoc
EOF
sleep 0.01 &
wait $!
read -r line < b.txt
echo "$n|$x|$line|$(printf '%s' abc | tr a-c A-C)|$(( 6 * 7 ))"
"""


async def test_bash(tmp_path: Path) -> None:
    bash = _need("bash")
    out = await _run(_profile(tmp_path), [os.path.realpath(bash), "-c", BASH], tmp_path)
    assert out.strip() == "3|sub 3|heredoc|ABC|42"


JAVA = """
import java.util.concurrent.*;
import java.util.stream.*;
public class Hello {
    public static void main(String[] args) throws Exception {
        ExecutorService pool = Executors.newFixedThreadPool(4);
        Future<Integer> f = pool.submit(() -> IntStream.range(0, 10).parallel().map(x -> x * x).sum());
        int sum = f.get();
        pool.shutdown();
        Process p = new ProcessBuilder("/bin/sh", "-c", "exit 3").start();
        System.out.println("java " + sum + " " + p.waitFor());
    }
}
"""


async def test_jvm(tmp_path: Path) -> None:
    java = shutil.which("java", path="/usr/bin:/bin")
    if java is None:
        pytest.skip("no JVM is installed (none is required: install openjdk to run this test)")
    (tmp_path / "Hello.java").write_text(JAVA)
    # Debian keeps the JVM's configuration (java.security...) under /etc, linked from its lib tree.
    etc = [FileReadAll(Subpath(str(p))) for p in Path("/etc").glob("java-*")]
    # Small reservations: without a cgroup the memory limit is RLIMIT_AS, which a default JVM's
    # address-space reservations exceed.
    argv = [os.path.realpath(java), "-Xmx128m", "-XX:ReservedCodeCacheSize=64m", "-XX:CompressedClassSpaceSize=64m",
            "-XX:MaxMetaspaceSize=128m", "Hello.java"]
    out = await _run(_profile(tmp_path, *etc), argv, tmp_path)
    assert out.strip().splitlines()[-1] == "java 285 3"
