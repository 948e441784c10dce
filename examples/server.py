"""A small code-runner service: POST a Python program, get back what it did, run in a pool of jails.

    python examples/server.py [--host 127.0.0.1] [--port 8000] [--jobs 8]

    curl -s localhost:8000/run -d '{"source": "print(input()[::-1])", "input": "hello"}'
    curl -s localhost:8000/stats

Starlette and uvicorn (asyncio); the pool lives for the server's lifespan, so its jails are reaped
before the server exits.  Every request gets its own jail with limits and a deadline: a submission that
loops, floods or forks cannot slow the requests beside it beyond their share of the pool.  When
``--max-waiting`` requests already wait for a slot, the next one gets 503 at once rather than a queue
that grows without bound.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import aiogaol

LIMITS = aiogaol.Limits(wall_time=2.0, cpu_time=1.0, memory=256 << 20, processes=16, output=256 << 10)
MAX_SOURCE = 64 << 10


def make_app(jobs: int = 8, max_waiting: int = 64) -> Starlette:
    profile = aiogaol.python_profile([aiogaol.Tmpfs("/tmp", 16 << 20)])
    python = aiogaol.python_executable()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with aiogaol.Pool(profile, size=jobs, limits=LIMITS) as pool:
            yield {"pool": pool}

    async def run(request: Request) -> JSONResponse:
        pool: aiogaol.Pool = request.state.pool
        try:
            body = json.loads(await request.body())
            source, data = body["source"], body.get("input", "")
            if not isinstance(source, str) or not isinstance(data, str) or len(source) > MAX_SOURCE:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'expected {"source": "...", "input": "..."}'}, status_code=400)
        if pool.stats().waiting >= max_waiting:
            return JSONResponse({"error": "busy, try again"}, status_code=503, headers={"Retry-After": "1"})
        result = await pool.run([python, "-c", source], input=data.encode() or None, cwd="/tmp")
        reply = result.to_dict()
        del reply["argv"], reply["id"]
        return JSONResponse(reply)

    async def stats(request: Request) -> JSONResponse:
        pool: aiogaol.Pool = request.state.pool
        return JSONResponse(vars(pool.stats()))

    return Starlette(routes=[Route("/run", run, methods=["POST"]), Route("/stats", stats)], lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run posted Python programs in jails.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--jobs", type=int, default=8, help="jails at once")
    parser.add_argument("--max-waiting", type=int, default=64, help="requests queued before 503")
    ns = parser.parse_args()
    uvicorn.run(make_app(ns.jobs, ns.max_waiting), host=ns.host, port=ns.port, log_level="warning")


if __name__ == "__main__":
    main()
