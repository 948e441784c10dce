"""`make demo`: several jails at once, each trying things; prints what each could and could not do."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import textwrap
import time

import aiogaol

PROBE = textwrap.dedent("""
    import ctypes, json, os, socket, sys
    libc = ctypes.CDLL(None, use_errno=True)
    def check(ok, why):
        if not ok:
            raise PermissionError(why)
    def mount():
        if libc.mount(b"none", b"/usr", b"tmpfs", 0, None) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    def attempt(name, fn):
        try:
            fn(); return (name, True, "")
        except Exception as e:
            return (name, False, type(e).__name__ + ": " + (e.strerror if isinstance(e, OSError) and e.strerror else str(e)))
    def connect():
        s = socket.socket(); s.settimeout(2); s.connect(("127.0.0.1", int(sys.argv[1])))
    results = [
        attempt("read /etc/passwd", lambda: open("/etc/passwd").read()),
        attempt("read the allowed secret", lambda: open(sys.argv[2]).read()),
        attempt("write the allowed secret", lambda: open(sys.argv[2], "w").write("x")),
        attempt("create /evil in the jail root", lambda: open("/evil", "w").close()),
        attempt("write /tmp scratch", lambda: open("/tmp/scratch", "w").write("ok")),
        attempt("connect to the host's 127.0.0.1", connect),
        attempt("see host processes", lambda: check(len([p for p in os.listdir("/proc") if p.isdigit()]) > 2,
                                                     "only PIDs 1 and 2 exist")),
        attempt("mount over /usr", mount),
    ]
    print(json.dumps({"pid": os.getpid(), "uid": os.getuid(), "results": results}))
""")


async def main() -> None:
    report = aiogaol.check()
    print("aiogaol demo: this kernel")
    for line in report.lines():
        print("  " + line)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    # Not under /tmp, which one of the jails replaces with its own scratch tmpfs.
    with tempfile.NamedTemporaryFile("w", delete=False, prefix="aiogaol-demo-", dir="/var/tmp") as f:
        f.write("the secret")
        secret = f.name
    # The jail's user is nobody when the server is root (otherwise the caller): the profile grants
    # access, file permissions still apply.
    os.chmod(secret, 0o644)
    python = aiogaol.python_executable()
    base = aiogaol.python_profile()
    jails = {
        "bare python": base,
        "python + read secret": base + [aiogaol.FileReadAll(aiogaol.Literal(secret))],
        "python + scratch /tmp": base + [aiogaol.Tmpfs("/tmp", 8 << 20)],
        "python + network": base + [aiogaol.NetworkOutbound(aiogaol.AllAddresses()),
                                    aiogaol.FileReadAll(aiogaol.Literal(secret))],
    }
    print(f"\nthe plan of 'python + read secret':\n{textwrap.indent(aiogaol.explain(jails['python + read secret']), '  ')}")

    async def run(name: str, profile: aiogaol.Profile) -> tuple[str, str, aiogaol.SandboxedProcess]:
        proc = await aiogaol.create_sandboxed_subprocess(profile, python, "-c", PROBE, str(port), secret,
                                                         stdout=aiogaol.PIPE, stderr=aiogaol.PIPE)
        out, err = await proc.communicate()
        return name, (out or b"").decode() or (err or b"").decode(), proc

    started = time.perf_counter()
    outcomes = await asyncio.gather(*(run(n, p) for n, p in jails.items()))
    elapsed = time.perf_counter() - started
    import json

    for name, output, proc in outcomes:
        data = json.loads(output)
        assert proc.usage is not None
        print(f"\n[{name}] pid {data['pid']} in its namespace, uid {data['uid']}, exit {proc.returncode}, "
              f"cpu {proc.usage.cpu_time * 1000:.0f} ms, max rss {proc.usage.max_rss >> 20} MiB")
        for what, ok, why in data["results"]:
            print(f"    {'could    ' if ok else 'could not'}  {what}{'' if ok else '  (' + why + ')'}")
    while True:  # the network jail's connections
        listener.setblocking(False)
        try:
            listener.accept()[0].close()
        except BlockingIOError:
            break
    listener.close()
    with open(secret) as f:
        print(f"\nthe secret on the host is still {f.read()!r}")
    os.unlink(secret)

    proc = await aiogaol.create_sandboxed_subprocess(aiogaol.system_profile(), "/bin/sleep", "60")
    proc.terminate()
    print(f"terminate() of a jailed sleep: returncode {await proc.wait()}")
    try:
        await aiogaol.create_sandboxed_subprocess(aiogaol.system_profile(), "/usr/bin/no-such-program")
    except FileNotFoundError as e:
        print(f"a missing program: {type(e).__name__}: {e}")
    print(f"\n{len(jails)} jails ran concurrently in {elapsed * 1000:.0f} ms")


if __name__ == "__main__":
    asyncio.run(main())
