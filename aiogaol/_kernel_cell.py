"""The Python kernel that ``Sandbox.run_code`` runs inside a sandbox: this file's source is its program.

It runs in the sandbox's jail under the host's (or the given) interpreter, started with ``-I -u -c``, so
nothing here may import aiogaol.  It speaks to the server on fds of its own, never on stdout: requests on
fd 3, replies on fd 4, each a 4-byte big-endian length and a JSON object.  A cell's stdout and stderr are
fds 1 and 2 (pipes the server reads) and its stdin is /dev/null, so whatever a cell prints or reads, the
protocol cannot be confused by it.

SIGINT is blocked except while a cell's own code runs, and a stale one is dropped before each cell, so
the server's interrupt (at a cell's timeout) lands in the cell as KeyboardInterrupt and nowhere else.
The last statement of a cell, when it is an expression, is compiled in "eval" mode, as a REPL does, and
its repr is the cell's value.
"""

SOURCE = r'''
import ast, json, linecache, os, signal, struct, sys, traceback

_HDR = struct.Struct(">I")
_VALUE_MAX = 65536
_TEXT_MAX = 65536
_SIGINT = {signal.SIGINT}
os.set_inheritable(3, False)
os.set_inheritable(4, False)


def _read_exact(n):
    buf = b""
    while len(buf) < n:
        try:
            chunk = os.read(3, n - len(buf))
        except InterruptedError:
            continue
        if not chunk:
            raise SystemExit(0)
        buf += chunk
    return buf


def _send(obj):
    data = json.dumps(obj).encode()
    view = memoryview(_HDR.pack(len(data)) + data)
    while view:
        view = view[os.write(4, view):]


def _cap(text, limit=_TEXT_MAX):
    return text if len(text) <= limit else text[:limit] + "... (truncated)"


def _error(exc, skip):
    tb = exc.__traceback__
    for _ in range(skip):
        if tb is not None:
            tb = tb.tb_next
    return {"type": type(exc).__name__, "message": _cap(str(exc)),
            "traceback": _cap("".join(traceback.format_exception(type(exc), exc, tb)))}


def _run(code, name, ns):
    try:
        tree = ast.parse(code, name, "exec")
    except BaseException as exc:
        return {"status": "error", "value": None, "error": _error(exc, 99)}
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    try:
        body = compile(tree, name, "exec")
        final = compile(last, name, "eval") if last is not None else None
    except BaseException as exc:
        return {"status": "error", "value": None, "error": _error(exc, 99)}
    value = None
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGINT)
        try:
            exec(body, ns)
            if final is not None:
                value = eval(final, ns)
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, _SIGINT)
    except KeyboardInterrupt as exc:
        return {"status": "interrupted", "value": None, "error": _error(exc, 1)}
    except BaseException as exc:
        return {"status": "error", "value": None, "error": _error(exc, 1)}
    text = None
    if value is not None:
        ns["_"] = value
        try:
            text = _cap(repr(value), _VALUE_MAX)
        except BaseException as exc:
            return {"status": "error", "value": None, "error": _error(exc, 0)}
    return {"status": "ok", "value": text, "error": None}


def main():
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGINT)
    ns = {"__name__": "__main__", "__builtins__": __builtins__}
    n = 0
    while True:
        (size,) = _HDR.unpack(_read_exact(4))
        request = json.loads(_read_exact(size))
        n += 1
        name = "<cell %d>" % n
        code = request["code"]
        linecache.cache[name] = (len(code), None, code.splitlines(True), name)
        # A stale interrupt (sent just as the last cell ended) is dropped, not delivered to this one.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            reply = _run(code, name, ns)
        except KeyboardInterrupt as exc:
            reply = {"status": "interrupted", "value": None, "error": _error(exc, 99)}
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        _send(reply)


main()
'''
