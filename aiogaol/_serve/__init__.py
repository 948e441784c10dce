"""``aiogaol serve``: a code-execution service that speaks SandboxFusion's HTTP API, on aiogaol's jails.

The extra ``aiogaol[serve]`` (Starlette, uvicorn, prometheus_client); the core never imports this
package.  ``_schema`` holds the request and response models, ``_languages`` the language table,
``_workspace`` a request's working directory, ``_warm`` the warm python pools, ``_session`` a
run_jupyter session on a sandbox, ``_runner`` what a request does, ``_admission`` the cap and queue,
``_app`` the routes.  See docs/service.md.
"""

from __future__ import annotations

from ._app import make_app
from ._languages import Language, LanguageTableError, load_table
from ._runner import Settings

__all__ = ["Language", "LanguageTableError", "Settings", "load_table", "make_app", "serve"]


def serve(host: str = "127.0.0.1", port: int = 8080, *, concurrency: int = 8, queue: int = 64,
          languages: str | None = None) -> None:
    """Run the service until interrupted (uvicorn on asyncio; SIGINT or SIGTERM end it gracefully,
    and every jail is reaped before it returns)."""
    import uvicorn
    app = make_app(load_table(languages), concurrency=concurrency, queue=queue, announce=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
