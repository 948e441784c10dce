"""The HTTP face of ``aiogaol serve``: Starlette routes over the runner, admission control and metrics.

Routes: ``POST /run_code`` and ``POST /run_jupyter`` (SandboxFusion's), ``GET /languages`` (those whose
probe ran here, and why the others did not), ``GET /metrics`` (Prometheus' text format), ``GET /health``
and SandboxFusion's ``GET /v1/ping``.  A body is read up to ``max_body`` bytes and refused past it (413)
before it is parsed; JSON that does not parse, or a field of the wrong kind, is a 4xx naming the field;
an unknown language a 400 listing the known ones.  What goes wrong inside a request after it was
admitted is SandboxFusion's answer for it, a 200 with status SandboxError and a message, and a line in
the server's log (never a traceback to the client).

Metrics use prometheus_client, in a registry of this application's own (not the process-wide default,
so two apps in one process, as in the tests, do not share counters): it gets the exposition format,
label escaping and histogram buckets right, which a few hand-written lines would have to relearn.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._admission import Admission, Full
from ._languages import Language
from ._runner import Runner, Settings
from ._schema import SANDBOX_ERROR, BadRequest, run_code_request, run_jupyter_request
from ._workspace import make_spool, remove_tree

log = logging.getLogger("aiogaol.serve")

MAX_BODY = 32 << 20  # bytes of one request body (code and base64 files)
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    def __init__(self, admission: Admission, warm: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("aiogaol_serve_requests", "HTTP requests answered, by route and HTTP code",
                                ["route", "code"], registry=self.registry)
        self.statuses = Counter("aiogaol_serve_results", "Answers of the run routes, by SandboxFusion status",
                                ["route", "status"], registry=self.registry)
        self.verdicts = Counter("aiogaol_serve_verdicts", "Steps run, by aiogaol status (ok, timed-out, "
                                "memory-limit...)", ["step", "verdict"], registry=self.registry)
        self.rejected = Counter("aiogaol_serve_rejected", "Requests refused with 503: the queue was full",
                                registry=self.registry)
        self.abandoned = Counter("aiogaol_serve_abandoned", "Requests cancelled because their client went away",
                                 registry=self.registry)
        self.latency = Histogram("aiogaol_serve_request_seconds", "Seconds from a run request's arrival to "
                                 "its answer, queueing included", ["route"], buckets=_BUCKETS,
                                 registry=self.registry)
        running = Gauge("aiogaol_serve_running", "Requests in jails now", registry=self.registry)
        running.set_function(lambda: admission.running)
        queued = Gauge("aiogaol_serve_queued", "Requests waiting for a slot now", registry=self.registry)
        queued.set_function(lambda: admission.waiting)
        Gauge("aiogaol_serve_concurrency", "The cap on requests in jails at once",
              registry=self.registry).set(admission.concurrency)
        Gauge("aiogaol_serve_queue_capacity", "The bound of the queue", registry=self.registry).set(admission.queue)
        for key, what in (("jobs", "python steps run on a warm PythonPool so far"),
                          ("pools", "warm PythonPools open now (one per distinct limits)"),
                          ("zygote_starts", "warm interpreters started so far (restarts included)")):
            gauge = Gauge(f"aiogaol_serve_warm_python_{key}", what.capitalize(), registry=self.registry)
            gauge.set_function(functools.partial(_stat, warm, key))

    def count(self, route: str, reply: dict[str, Any]) -> None:
        self.statuses.labels(route, str(reply.get("status"))).inc()
        for step in ("compile_result", "run_result", "driver"):
            res = reply.get(step)
            if isinstance(res, dict) and "aiogaol_status" in res:
                self.verdicts.labels(step.split("_")[0], str(res["aiogaol_status"])).inc()


def _stat(stats: Callable[[], dict[str, int]], key: str) -> float:
    return float(stats().get(key, 0))


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


async def _read_json(request: Request, limit: int) -> object:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise BadRequest(413, f"the body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest(413, f"the body is more than {limit} bytes")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise BadRequest(400, "the body is not UTF-8 JSON") from None
    except RecursionError:
        raise BadRequest(400, "the JSON is nested too deeply") from None
    except ValueError as e:
        raise BadRequest(400, f"the body is not JSON: {e}") from None


def make_app(languages: dict[str, Language], *, concurrency: int = 8, queue: int = 64,
             settings: Settings | None = None, max_body: int = MAX_BODY, announce: bool = False) -> Starlette:
    """The service as an ASGI application; its lifespan probes the languages and owns the spool."""
    admission = Admission(concurrency, queue)
    state: dict[str, Runner] = {}

    def warm_stats() -> dict[str, int]:
        runner = state.get("runner")
        return runner.warm.stats() if runner is not None and runner.warm is not None else {}

    metrics = Metrics(admission, warm_stats)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        spool = make_spool()
        runner = Runner(languages, spool, settings, concurrency=concurrency)
        try:
            await runner.open()  # the warm python first: python's probe runs on it
            await runner.probe_all()
            state["runner"] = runner
            if announce:
                print(f"aiogaol serve: languages {', '.join(runner.available) or 'none'}"
                      + "".join(f"; no {n} ({why})" for n, why in runner.unavailable.items()),
                      file=sys.stderr, flush=True)
            yield
        finally:
            await runner.aclose()
            remove_tree(spool)

    def counted(route: str, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                response = await handler(request)
            except BadRequest as e:
                response = _error(e.status, e.message)
            except ClientDisconnect:
                response = _error(400, "the client went away before the body was read")
            metrics.requests.labels(route, str(response.status_code)).inc()
            return response
        return endpoint

    async def admitted(request: Request, route: str, started: float,
                       work: Callable[[], Awaitable[dict[str, Any]]]) -> Response:
        """Run ``work`` in a slot; a client that goes away (its disconnect is the next ASGI message once
        the body is read) cancels it, queued or running: its jails are killed and reaped, its place freed."""
        reply: dict[str, Any] | None = None

        async def until_gone(scope: anyio.CancelScope) -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            scope.cancel()

        full: Full | None = None
        async with anyio.create_task_group() as tg:  # (an exception in here would come out as a group)
            tg.start_soon(until_gone, tg.cancel_scope)
            try:
                async with admission.slot():
                    try:
                        reply = await work()
                    except Exception as e:  # a bug of ours: SandboxFusion's answer, and our log
                        log.exception("%s failed", route)
                        reply = {"status": SANDBOX_ERROR, "message": f"internal error: {type(e).__name__}: {e}",
                                 "executor_pod_name": None, "files": {}}
            except Full as e:
                full = e
            tg.cancel_scope.cancel()
        if full is not None:
            metrics.rejected.inc()
            return _error(503, str(full), {"Retry-After": str(full.retry_after)})
        if reply is None:
            metrics.abandoned.inc()
            return _error(499, "the client went away; its request was cancelled")
        metrics.latency.labels(route).observe(time.monotonic() - started)
        metrics.count(route, reply)
        return JSONResponse(reply)

    async def run_code(request: Request) -> Response:
        started = time.monotonic()
        req = run_code_request(await _read_json(request, max_body))
        runner = state["runner"]
        runner.settings.check_memory(req.memory_limit_MB)
        language = runner.available.get(req.language)
        if language is None:
            known = ", ".join(runner.available) or "none"
            raise BadRequest(400, f"language {req.language[:40]!r} is not offered here; the languages are {known}")
        return await admitted(request, "/run_code", started, lambda: runner.run_code(req, language))

    async def run_jupyter(request: Request) -> Response:
        started = time.monotonic()
        req = run_jupyter_request(await _read_json(request, max_body))
        runner = state["runner"]
        runner.settings.check_memory(req.memory_limit_MB)
        return await admitted(request, "/run_jupyter", started, lambda: runner.run_jupyter(req))

    async def list_languages(request: Request) -> Response:
        runner = state["runner"]
        return JSONResponse({"languages": list(runner.available),
                             "details": {n: {"compiled": lang.compile is not None, "source": lang.source}
                                         for n, lang in runner.available.items()},
                             "unavailable": runner.unavailable})

    async def health(request: Request) -> Response:
        runner = state.get("runner")
        return JSONResponse({"status": "ok" if runner else "starting", "running": admission.running,
                             "queued": admission.waiting, "concurrency": admission.concurrency,
                             "queue": admission.queue, "languages": len(runner.available) if runner else 0,
                             "warm_python": warm_stats()},
                            status_code=200 if runner else 503)

    async def ping(request: Request) -> Response:
        return JSONResponse("pong")

    async def metrics_route(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, f"no route {request.url.path[:100]}; the routes are /run_code, /run_jupyter, "
                           "/languages, /metrics, /health, /v1/ping")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return _error(405, f"{request.method} is not allowed on {request.url.path[:100]}")

    routes = [
        Route("/run_code", counted("/run_code", run_code), methods=["POST"]),
        Route("/run_jupyter", counted("/run_jupyter", run_jupyter), methods=["POST"]),
        Route("/languages", counted("/languages", list_languages), methods=["GET"]),
        Route("/health", counted("/health", health), methods=["GET"]),
        Route("/v1/ping", counted("/v1/ping", ping), methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_allowed})
