"""FastAPI applications with the platform's edges, and uvicorn servers embedded in a running event loop.

:func:`create_http_app` gives every service the same probes (``/healthz``, ``/readyz``), Prometheus
``/metrics``, problem details and tracing. :func:`serve_http` runs an app on the current loop without
touching signal handlers, so that one process can host several services and the launcher owns shutdown.

:func:`add_fast_route` serves one hot route as plain ASGI in front of FastAPI's middleware and routing,
which cost more than the work of a small request (a one-reading POST): same problem details, same
server span, the handler parses and authenticates itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from opentelemetry import context as otel_context
from opentelemetry import trace
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from lifeline.kit.i18n import DEFAULT_LANGUAGE, negotiate
from lifeline.kit.problems import (
    PROBLEM_MEDIA_TYPE,
    ProblemError,
    _http_problem,
    _internal_problem,
    _record_unhandled,
    install_problem_handlers,
)
from lifeline.kit.telemetry import extract_trace_context, instrument_fastapi

__all__ = [
    "FastRequest",
    "FastResponse",
    "HttpServer",
    "ReadinessCheck",
    "add_fast_route",
    "create_http_app",
    "serve_http",
]

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
    _install_fast_routes(app, default_language)

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


# --- fast routes -------------------------------------------------------------------------------------------

_tracer = trace.get_tracer("lifeline.kit.http")


class FastRequest:
    """What a fast route's handler gets: the ASGI scope, its headers by lower-case name, and the body."""

    __slots__ = ("_receive", "headers", "scope")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self._receive = receive
        # A handful of headers: one dict is cheaper than a search per header asked for.
        self.headers: dict[str, str] = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}

    @property
    def app(self) -> Any:
        """The FastAPI application (its ``state`` carries the service's objects)."""
        return self.scope["app"]

    @property
    def client(self) -> str | None:
        """``host:port`` of the caller, for the audit log."""
        client = self.scope.get("client")
        return f"{client[0]}:{client[1]}" if client else None

    async def body(self, limit: int, too_large: Callable[[int], ProblemError]) -> bytes:
        """The request body; ``too_large(limit)`` is raised as soon as it exceeds ``limit`` bytes."""
        declared = self.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise too_large(limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _ClientGone(Exception):
    """The client went away before its request body arrived: there is no one to answer."""


@dataclass(frozen=True, slots=True)
class FastResponse:
    body: bytes
    status: int = 200
    media_type: str = "application/json"


FastHandler = Callable[[FastRequest], Awaitable[FastResponse]]


def add_fast_route(app: FastAPI, method: str, path: str, handler: FastHandler) -> None:
    """Serve ``method path`` (exact path) with ``handler`` ahead of FastAPI's middleware and routing.

    The handler raises ProblemError (or HTTPException, as auth does) for a whole-request error; it is
    rendered as by the app's problem handlers. A SERVER span named ``"<method> <path>"`` covers the
    request, continuing the caller's trace. Keep the FastAPI route too, for the OpenAPI description.
    """
    app.state.fast_routes[(method.upper(), path)] = handler


def _install_fast_routes(app: FastAPI, default_language: str) -> None:
    routes: dict[tuple[str, str], FastHandler] = {}
    app.state.fast_routes = routes
    app.state.fast_routes_language = default_language
    build = app.build_middleware_stack  # already wrapped by the OpenTelemetry instrumentation

    def build_middleware_stack() -> ASGIApp:
        return _FastRoutes(build(), routes, default_language)

    app.build_middleware_stack = build_middleware_stack  # type: ignore[method-assign]


class _FastRoutes:
    """Answers the fast routes, hands everything else to ``app``.

    Installed twice: inside the app's middleware stack (so the app answers fast routes however it is
    served, e.g. by a test transport) and by :func:`serve_http` in front of the app itself (``owner``),
    which also skips FastAPI's and Starlette's own ``__call__``: FastAPI's native telemetry checks
    (providers, a walk of the middleware stack) ran for every request only to find that the
    OpenTelemetry instrumentation already traces it."""

    def __init__(
        self,
        app: ASGIApp,
        routes: Mapping[tuple[str, str], FastHandler],
        default_language: str,
        owner: FastAPI | None = None,
    ) -> None:
        self.app = app
        self.routes = routes
        self.default_language = default_language
        self.owner = owner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.routes.get((scope.get("method", ""), scope.get("path", ""))) if self.routes else None
        if handler is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.owner is not None:
            scope["app"] = self.owner  # what Starlette's __call__ would have set
        request = FastRequest(scope, receive)
        path = scope["path"]
        span = _tracer.start_span(
            f"{scope['method']} {path}",
            context=extract_trace_context(request.headers),
            kind=trace.SpanKind.SERVER,
        )
        if span.is_recording():
            span.set_attributes(
                {
                    "http.method": scope["method"],
                    "http.route": path,
                    "http.target": path,
                    "http.scheme": scope.get("scheme", "http"),
                    "http.flavor": scope.get("http_version", "1.1"),
                    "net.peer.ip": (scope.get("client") or ("",))[0],
                }
            )
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            # _ClientGone: the client hung up before its answer; no one to answer, the span just ends.
            with contextlib.suppress(_ClientGone):
                status = await self._answer(handler, request, send)
                if span.is_recording():
                    span.set_attribute("http.status_code", status)
                    if status >= 500:
                        span.set_status(trace.Status(trace.StatusCode.ERROR))
        finally:
            otel_context.detach(token)
            span.end()

    async def _answer(self, handler: FastHandler, request: FastRequest, send: Send) -> int:
        headers: Mapping[str, str] = {}
        try:
            response = await handler(request)
            status, body, media_type = response.status, response.body, response.media_type
        except _ClientGone:
            raise
        except Exception as exc:
            if isinstance(exc, ProblemError):
                problem = exc
            elif isinstance(exc, StarletteHTTPException):
                problem = _http_problem(exc)
            else:
                _record_unhandled(Request(request.scope), exc)
                problem = _internal_problem()
            lang = negotiate(request.headers.get("accept-language"), default=self.default_language)
            status, media_type = problem.status, PROBLEM_MEDIA_TYPE
            # As JSONResponse renders it, so both ways give the same bytes.
            rendered = problem.render(lang, instance=request.scope["path"])
            body = json.dumps(rendered, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
            headers = {**problem.headers, "Content-Language": lang, "Vary": "Accept-Language"}
        raw = [(b"content-type", media_type.encode()), (b"content-length", str(len(body)).encode())]
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
        return status


class _CoalescingTransport:
    """A connection's transport whose writes of one turn of the event loop leave as one.

    uvicorn writes a response's head and its body separately, each a system call at once (the
    socket is writable): two sends per small response where one does, and a send costs ~5-20 µs of
    CPU on the benchmark machine (a trivial route behind serve_http: ~75 -> ~64 µs a request). The writes are
    joined and sent at the end of the turn, in order; closing sends what is pending first. Past
    ``FLUSH_BYTES`` they go at once, so that the transport's flow control (pause_writing) still holds
    back a response streamed without a pause.
    """

    FLUSH_BYTES: Final = 64 * 1024

    __slots__ = ("_loop", "_pending", "_pending_bytes", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= self.FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending = []
        self._pending_bytes = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._pending_bytes

    def __getattr__(self, name: str) -> Any:
        # Everything else (flow control, extra info, abort) is the real transport's.
        return getattr(self._transport, name)


def _http_protocol() -> Any:
    """uvicorn's httptools protocol with coalesced writes, or "auto" where httptools is missing."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - httptools is a dependency of uvicorn[standard]
        return "auto"

    class CoalescingHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(_CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

    return CoalescingHttpToolsProtocol


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


def _with_fast_routes(app: Any) -> Any:
    """``app`` behind its fast routes' dispatch, when it has fast routes (see :class:`_FastRoutes`)."""
    state = getattr(app, "state", None)
    routes = getattr(state, "fast_routes", None)
    # A root_path would have to be set on the scope as FastAPI does; no service uses one. Without fast
    # routes (yet), nothing to skip: a route added later is still answered by the in-stack dispatch.
    if not routes or not isinstance(app, FastAPI) or app.root_path:
        return app
    return _FastRoutes(app, routes, state.fast_routes_language, owner=app)  # type: ignore[union-attr]


def _shared_socket(host: str, port: int) -> socket.socket:
    """A listening address other processes may bind too (SO_REUSEPORT): the kernel spreads connections."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_http(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    graceful_timeout: int | None = 10,
    reuse_port: bool = False,
) -> HttpServer:
    """Start serving ``app`` in the current event loop; returns once it listens (or raises if it cannot).

    With `reuse_port` other processes serving on the same port with it share the connections."""
    config = uvicorn.Config(
        _with_fast_routes(app),
        host=host,
        port=port,
        lifespan="on",
        http=_http_protocol(),
        # No service serves WebSockets (live feeds are SSE): "auto" would import a WebSocket library.
        ws="none",
        # Logging is configured once for the process (telemetry.configure_logging), not per server.
        log_config=None,
        server_header=False,
        # Requests are traced (OpenTelemetry) and writes audit-logged; a log line per request on top
        # costs more than the request itself on small ones.
        access_log=False,
        timeout_graceful_shutdown=graceful_timeout,
    )
    server = _EmbeddedServer(config)
    shared = [_shared_socket(host, port)] if reuse_port else None

    async def run() -> None:
        try:
            await server.serve(sockets=shared)
        except SystemExit as exc:
            # uvicorn exits the process when it cannot bind or the lifespan fails; here that would
            # take down every other service of the process instead of just failing this start.
            raise RuntimeError(f"HTTP server on {host}:{port} failed to start (exit code {exc.code})") from None

    task = asyncio.create_task(run(), name=f"http:{host}:{port}")
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError(f"HTTP server on {host}:{port} stopped during start-up")
        await asyncio.sleep(0.01)
    sockets = server.servers[0].sockets
    bound = sockets[0].getsockname()[1] if sockets else port
    return HttpServer(server, task, host, int(bound))
