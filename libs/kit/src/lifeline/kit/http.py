"""FastAPI applications with the platform's edges, and uvicorn servers embedded in a running event loop.

:func:`create_http_app` gives every service the same probes (``/healthz``, ``/readyz``), Prometheus
``/metrics``, problem details and tracing. :func:`serve_http` runs an app on the current loop without
touching signal handlers, so that one process can host several services and the launcher owns shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import Any, Final

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder
from starlette.responses import Response

from lifeline.kit.i18n import DEFAULT_LANGUAGE
from lifeline.kit.problems import install_problem_handlers
from lifeline.kit.telemetry import instrument_fastapi

__all__ = ["HttpServer", "ReadinessCheck", "create_http_app", "serve_http"]

ReadinessCheck = Callable[[], Awaitable[bool]]

READINESS_TIMEOUT_S: Final = 2.0

_log = logging.getLogger(__name__)


async def _run_check(check: ReadinessCheck, limit_s: float) -> str:
    try:
        async with asyncio.timeout(limit_s):
            ok = await check()
    except TimeoutError:
        return "timeout"
    except Exception:
        _log.warning("readiness check raised", exc_info=True)
        return "error"
    return "ok" if ok else "failing"


def create_http_app(
    *,
    title: str,
    version: str,
    lifespan: Callable[[FastAPI], contextlib.AbstractAsyncContextManager[Any]] | None = None,
    readiness: Mapping[str, ReadinessCheck] | None = None,
    default_language: str = DEFAULT_LANGUAGE,
    readiness_timeout: float = READINESS_TIMEOUT_S,
) -> FastAPI:
    """A FastAPI app with problem details, tracing, /healthz, /readyz and /metrics."""
    app = FastAPI(title=title, version=version, lifespan=lifespan)
    # Services add checks once their connections exist: app.state.readiness[name] = check.
    app.state.readiness = dict(readiness or {})
    install_problem_handlers(app, default_language=default_language)
    instrument_fastapi(app)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        checks: dict[str, ReadinessCheck] = dict(request.app.state.readiness)
        names = list(checks)
        outcomes = await asyncio.gather(*(_run_check(checks[n], readiness_timeout) for n in names))
        results = dict(zip(names, outcomes, strict=True))
        failing = [n for n, outcome in results.items() if outcome != "ok"]
        if failing:
            return JSONResponse(
                {"status": "not ready", "checks": results, "failing": failing},
                status_code=503,
                headers={"Cache-Control": "no-store"},
            )
        return JSONResponse({"status": "ready", "checks": results}, headers={"Cache-Control": "no-store"})

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(REGISTRY), media_type=content_type)

    return app


class _EmbeddedServer(uvicorn.Server):
    # The launcher owns SIGINT/SIGTERM for all services of the process; uvicorn would take them over and
    # re-raise them when it stops.
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HttpServer:
    """A uvicorn server running as a task of the current loop; ``port`` is the port actually bound."""

    def __init__(self, server: uvicorn.Server, task: asyncio.Task[None], host: str, port: int) -> None:
        self.server = server
        self.task = task
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        """Base URL for clients, e.g. ``http://127.0.0.1:8080``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        """Stop accepting connections, finish running requests and the app's lifespan, then return."""
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def serve_http(
    app: Any, host: str = "127.0.0.1", port: int = 0, *, graceful_timeout: int | None = 10
) -> HttpServer:
    """Start serving ``app`` in the current event loop; returns once it listens (or raises if it cannot)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        # Logging is configured once for the process (telemetry.configure_logging), not per server.
        log_config=None,
        server_header=False,
        # Requests are traced (OpenTelemetry) and writes audit-logged; a log line per request on top
        # costs more than the request itself on small ones.
        access_log=False,
        timeout_graceful_shutdown=graceful_timeout,
    )
    server = _EmbeddedServer(config)

    async def run() -> None:
        try:
            await server.serve()
        except SystemExit as exc:
            # uvicorn exits the process when it cannot bind or the lifespan fails; here that would
            # take down every other service of the process instead of just failing this start.
            raise RuntimeError(
                f"HTTP server on {host}:{port} failed to start (exit code {exc.code})"
            ) from None

    task = asyncio.create_task(run(), name=f"http:{host}:{port}")
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError(f"HTTP server on {host}:{port} stopped during start-up")
        await asyncio.sleep(0.01)
    sockets = server.servers[0].sockets
    bound = sockets[0].getsockname()[1] if sockets else port
    return HttpServer(server, task, host, int(bound))
