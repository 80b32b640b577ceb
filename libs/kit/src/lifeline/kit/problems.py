"""RFC 9457 problem details: one error type for the service layer, rendered for REST and gRPC.

Services raise :class:`ProblemError` with message keys (see :mod:`lifeline.kit.i18n`); the REST edge
renders it as ``application/problem+json`` in the language the request asked for, and the gRPC edge packs
it into the rich status (see :mod:`lifeline.kit.grpc`).
"""

from __future__ import annotations

import dataclasses
import http
import json
import logging
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from opentelemetry import trace
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lifeline.kit.i18n import DEFAULT_LANGUAGE, has, negotiate, t
from lifeline.kit.telemetry import current_trace_id
from lifeline.v1 import common_pb2

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "PROBLEM_TYPE_BASE",
    "FieldError",
    "ProblemError",
    "install_problem_handlers",
    "problem_from_proto",
    "problem_response",
    "problem_to_proto",
    "validation_field_errors",
]

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
PROBLEM_TYPE_BASE: Final = "https://lifeline.dev/problems/"
ABOUT_BLANK: Final = "about:blank"

_log = logging.getLogger(__name__)

STATUS_KEYS: Final[Mapping[int, str]] = {
    400: "problem.bad_request",
    401: "problem.unauthorized",
    403: "problem.forbidden",
    404: "problem.not_found",
    405: "problem.method_not_allowed",
    406: "problem.not_acceptable",
    409: "problem.conflict",
    410: "problem.gone",
    412: "problem.precondition_failed",
    413: "problem.payload_too_large",
    415: "problem.unsupported_media_type",
    422: "problem.validation_failed",
    429: "problem.too_many_requests",
    500: "problem.internal_error",
    501: "problem.not_implemented",
    503: "problem.service_unavailable",
    504: "problem.gateway_timeout",
}
# Members a problem body may not override through extensions.
_STANDARD_MEMBERS: Final = frozenset({"type", "title", "status", "detail", "instance", "errors"})


def _slug_of(key: str) -> str:
    return re.sub(r"[._]+", "-", key.removeprefix("problem.")).strip("-").lower()


@dataclasses.dataclass(frozen=True)
class FieldError:
    """One thing wrong with one field; ``reason`` is a message key or literal text."""

    field: str
    code: str
    reason: str
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def render(self, lang: str) -> dict[str, str]:
        """The field error as a JSON object with the reason in ``lang``."""
        return {"field": self.field, "code": self.code, "reason": t(self.reason, lang, **self.params)}


class ProblemError(Exception):
    """An error the client should see: HTTP status, localizable title and detail, field errors, headers.

    ``title`` and ``detail`` are message keys (rendered in the client's language with ``params``) or
    literal text. Without a title the generic title of the status is used. The type URI is
    ``https://lifeline.dev/problems/<slug>``, the slug derived from the title key unless given.
    """

    def __init__(
        self,
        status: int = 400,
        title: str | None = None,
        *,
        detail: str | None = None,
        slug: str | None = None,
        type_uri: str | None = None,
        errors: Iterable[FieldError | Mapping[str, str]] = (),
        headers: Mapping[str, str] | None = None,
        instance: str | None = None,
        params: Mapping[str, Any] | None = None,
        retry_after: int | None = None,
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        status_key = STATUS_KEYS.get(status)
        self.status = status
        self.title = title or status_key or _phrase(status)
        self.detail = detail
        self.errors: list[FieldError] = [
            e if isinstance(e, FieldError) else FieldError(e["field"], e.get("code", ""), e.get("reason", ""))
            for e in errors
        ]
        self.headers: dict[str, str] = dict(headers or {})
        self.instance = instance
        self.params: dict[str, Any] = dict(params or {})
        self.extensions: dict[str, Any] = dict(extensions or {})
        if retry_after is not None:
            self.headers["Retry-After"] = str(retry_after)
            self.params.setdefault("retry_after", retry_after)
        if type_uri is None:
            if slug is None:
                if has(self.title):
                    slug = _slug_of(self.title)
                elif status_key is not None:
                    slug = _slug_of(status_key)
            type_uri = PROBLEM_TYPE_BASE + slug if slug else ABOUT_BLANK
        self.type_uri = type_uri
        super().__init__(f"{status} {self.title}" + (f": {detail}" if detail else ""))

    def render(self, lang: str = DEFAULT_LANGUAGE, *, instance: str | None = None) -> dict[str, Any]:
        """The problem as an RFC 9457 JSON object with title, detail and reasons in ``lang``."""
        body: dict[str, Any] = {
            "type": self.type_uri,
            "title": t(self.title, lang, **self.params),
            "status": self.status,
        }
        if self.detail:
            body["detail"] = t(self.detail, lang, **self.params)
        if self.instance or instance:
            body["instance"] = self.instance or instance
        if self.errors:
            body["errors"] = [e.render(lang) for e in self.errors]
        for key, value in self.extensions.items():
            if key not in _STANDARD_MEMBERS:
                body[key] = value
        trace_id = current_trace_id()
        if trace_id and "trace_id" not in body:
            body["trace_id"] = trace_id
        return body

    def to_proto(self, lang: str = DEFAULT_LANGUAGE) -> common_pb2.Problem:
        """The problem as the ``lifeline.v1.Problem`` message, rendered in ``lang``."""
        return problem_to_proto(self, lang=lang)


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def problem_to_proto(problem: ProblemError | Mapping[str, Any], *, lang: str = DEFAULT_LANGUAGE) -> common_pb2.Problem:
    """Map a ProblemError (rendered in ``lang``) or a rendered problem body to ``lifeline.v1.Problem``."""
    body = problem.render(lang) if isinstance(problem, ProblemError) else problem
    return common_pb2.Problem(
        type=str(body.get("type") or ABOUT_BLANK),
        title=str(body.get("title") or ""),
        status=int(body.get("status") or 0),
        detail=str(body.get("detail") or ""),
        instance=str(body.get("instance") or ""),
        errors=[
            common_pb2.FieldViolation(
                field=str(e.get("field", "")), code=str(e.get("code", "")), reason=str(e.get("reason", ""))
            )
            for e in body.get("errors") or ()
        ],
    )


def problem_from_proto(problem: common_pb2.Problem) -> ProblemError:
    """A ProblemError carrying an already rendered ``lifeline.v1.Problem`` (e.g. to relay it over REST)."""
    return ProblemError(
        problem.status or 500,
        problem.title or None,
        detail=problem.detail or None,
        type_uri=problem.type or ABOUT_BLANK,
        instance=problem.instance or None,
        errors=[FieldError(e.field, e.code, e.reason) for e in problem.errors],
    )


# --- REST ---------------------------------------------------------------------------------------------------


def problem_response(problem: ProblemError, *, lang: str, instance: str | None = None) -> Response:
    """The ``application/problem+json`` response for a problem, in ``lang``."""
    headers = {**problem.headers, "Content-Language": lang, "Vary": "Accept-Language"}
    return JSONResponse(
        problem.render(lang, instance=instance),
        status_code=problem.status,
        headers=headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def _body_allowed(status: int) -> bool:
    return not (status < 200 or status in {204, 205, 304})


def _field_path(loc: Sequence[Any]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def validation_field_errors(errors: Iterable[Mapping[str, Any]], prefix: str = "") -> list[FieldError]:
    """Pydantic error dicts as FieldErrors (localizable where a ``validation.<type>`` key exists)."""
    out: list[FieldError] = []
    for err in errors:
        code = str(err.get("type", "invalid"))
        key = f"validation.{code}"
        path = _field_path([prefix, *err.get("loc", ())] if prefix else err.get("loc", ()))
        if has(key):
            ctx = err.get("ctx") or {}
            out.append(FieldError(path, code, key, {k: str(v) for k, v in ctx.items()}))
        else:
            out.append(FieldError(path, code, str(err.get("msg", ""))))
    return out


def _validation_problem(exc: RequestValidationError) -> ProblemError:
    errors = validation_field_errors(exc.errors())
    return ProblemError(422, detail="problem.validation_failed.detail", errors=errors, params={"count": len(errors)})


def _http_problem(exc: StarletteHTTPException) -> ProblemError:
    detail: str | None
    if isinstance(exc.detail, str):
        # Starlette fills in the reason phrase when no detail was given; the localized title says that.
        detail = None if exc.detail in {"", _phrase(exc.status_code)} else exc.detail
    elif exc.detail is None:
        detail = None
    else:
        detail = json.dumps(exc.detail, ensure_ascii=False, default=str)
    return ProblemError(exc.status_code, detail=detail, headers=exc.headers)


def _internal_problem() -> ProblemError:
    # Without tracing there is no trace id; a random reference still lets a log line be found.
    reference = current_trace_id() or uuid.uuid4().hex
    return ProblemError(
        500,
        detail="problem.internal_error.detail",
        params={"trace_id": reference},
        extensions={"trace_id": reference},
    )


def _record_unhandled(request: Request, exc: BaseException) -> None:
    span = trace.get_current_span()
    if span.is_recording():
        span.record_exception(exc)
        span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
    _log.error(
        "unhandled error in %s %s",
        request.method,
        request.url.path,
        exc_info=(type(exc), exc, exc.__traceback__),
        extra={"http_method": request.method, "http_path": request.url.path},
    )


class _UnhandledErrorMiddleware:
    # Answers unhandled errors itself rather than leaving them to Starlette's ServerErrorMiddleware,
    # which re-raises them so that the server logs every one a second time.
    def __init__(self, app: ASGIApp, language_of: Any) -> None:
        self.app = app
        self.language_of = language_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            request = Request(scope)
            _record_unhandled(request, exc)
            response = problem_response(_internal_problem(), lang=self.language_of(request), instance=request.url.path)
            await response(scope, receive, send)


def install_problem_handlers(app: FastAPI, *, default_language: str = DEFAULT_LANGUAGE) -> None:
    """Render ProblemError, HTTPException, validation errors and unhandled errors as problem+json."""

    def language_of(request: Request) -> str:
        return negotiate(request.headers.get("accept-language"), default=default_language)

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProblemError)
        return problem_response(exc, lang=language_of(request), instance=request.url.path)

    async def on_http_exception(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if not _body_allowed(exc.status_code):
            return Response(status_code=exc.status_code, headers=exc.headers)
        return problem_response(_http_problem(exc), lang=language_of(request), instance=request.url.path)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return problem_response(_validation_problem(exc), lang=language_of(request), instance=request.url.path)

    async def on_unhandled(request: Request, exc: Exception) -> Response:
        # Reached only for errors raised outside the catch-all middleware (e.g. by another middleware).
        _record_unhandled(request, exc)
        return problem_response(_internal_problem(), lang=language_of(request), instance=request.url.path)

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unhandled)
    app.add_middleware(_UnhandledErrorMiddleware, language_of=language_of)
