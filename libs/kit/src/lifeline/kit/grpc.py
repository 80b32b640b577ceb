"""grpc.aio servers with health, reflection, tracing and problem details; problems on the client side.

A servicer reports an error to the client by raising :class:`~lifeline.kit.problems.ProblemError` (mapped
to a gRPC status code) or by calling :func:`abort_with_problem`; either way the client receives the
``lifeline.v1.Problem`` in the rich status (``grpc-status-details-bin``) and reads it back with
:func:`problem_from_rpc_error`. Unexpected exceptions become INTERNAL without leaking their text.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, NoReturn

import grpc
import grpc.aio
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health as health_module
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2_grpc

from lifeline.kit.auth import DEFAULT_PUBLIC_METHODS, AuthError, Principal, TokenVerifier, _principal_var
from lifeline.kit.i18n import DEFAULT_LANGUAGE, negotiate
from lifeline.kit.problems import ProblemError
from lifeline.kit.telemetry import current_trace_id, grpc_server_interceptors
from lifeline.v1 import common_pb2

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "GRPC_DETAILS_METADATA_KEY",
    "AuthInterceptor",
    "GrpcServer",
    "abort_with_problem",
    "grpc_code_for_status",
    "problem_from_rpc_error",
    "start_grpc_server",
]

DEFAULT_MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
GRPC_DETAILS_METADATA_KEY: Final = "grpc-status-details-bin"
HEALTH_SERVICE: Final[str] = health_module.SERVICE_NAME
REFLECTION_SERVICE: Final[str] = "grpc.reflection.v1alpha.ServerReflection"

_log = logging.getLogger(__name__)

AddServicerFn = Callable[[Any, grpc.aio.Server], None]

_CODES_BY_STATUS: Final = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    412: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_code_for_status(status: int) -> grpc.StatusCode:
    """The gRPC status code matching an HTTP status (google.rpc.Code's documented mapping)."""
    code = _CODES_BY_STATUS.get(status)
    if code is not None:
        return code
    if 400 <= status < 500:
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INTERNAL if status >= 500 else grpc.StatusCode.UNKNOWN


def _metadata_language(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "accept-language" and isinstance(value, str):
            return negotiate(value)
    return DEFAULT_LANGUAGE


async def abort_with_problem(
    context: grpc.aio.ServicerContext[Any, Any],
    code: grpc.StatusCode,
    problem: common_pb2.Problem | ProblemError,
) -> NoReturn:
    """End the call with ``code`` and the Problem (plus BadRequest field violations) as rich status."""
    if isinstance(problem, ProblemError):
        # Clients ask for a language with an accept-language metadata entry, as over HTTP.
        problem = problem.to_proto(_metadata_language(context))
    message = f"{problem.title}: {problem.detail}" if problem.detail else problem.title
    status = status_pb2.Status(code=code.value[0], message=message)
    packed = any_pb2.Any()
    packed.Pack(problem)
    status.details.append(packed)
    if problem.errors:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=e.field, description=e.reason, reason=e.code)
                for e in problem.errors
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        status.details.append(packed)
    await context.abort(code, message, trailing_metadata=((GRPC_DETAILS_METADATA_KEY, status.SerializeToString()),))


def problem_from_rpc_error(err: grpc.RpcError) -> common_pb2.Problem | None:
    """The Problem a Lifeline server attached to a failed call, or None if it sent none."""
    trailing = getattr(err, "trailing_metadata", None)
    if not callable(trailing):
        return None
    for key, value in trailing() or ():
        if key != GRPC_DETAILS_METADATA_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(common_pb2.Problem.DESCRIPTOR):
                problem = common_pb2.Problem()
                detail.Unpack(problem)
                return problem
    return None


# --- server side --------------------------------------------------------------------------------------------


def _internal_problem() -> ProblemError:
    reference = current_trace_id() or ""
    return ProblemError(
        500,
        detail="problem.internal_error.detail",
        params={"trace_id": reference or "-"},
        extensions={"trace_id": reference},
    )


async def _report(context: grpc.aio.ServicerContext[Any, Any], method: str, exc: Exception) -> NoReturn:
    if isinstance(exc, ProblemError):
        await abort_with_problem(context, grpc_code_for_status(exc.status), exc)
    # grpc.aio would send "Unexpected <class>: <message>" to the client: internals must stay here.
    _log.error("unhandled error in %s", method, exc_info=exc, extra={"rpc_method": method})
    await abort_with_problem(context, grpc.StatusCode.INTERNAL, _internal_problem())


def _wrap_unary(method: str, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _report(context, method, exc)

    return wrapped


def _wrap_streaming(method: str, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            async for response in behavior(request, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _report(context, method, exc)

    return wrapped


def _wrap(method: str, behavior: Any) -> Any:
    if inspect.isasyncgenfunction(behavior):
        return _wrap_streaming(method, behavior)
    if inspect.iscoroutinefunction(behavior):
        return _wrap_unary(method, behavior)
    # Synchronous behaviours run on grpc's thread pool; they are left as they are.
    return behavior


class ProblemInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Turns ProblemError into its gRPC status with details and hides unexpected errors behind INTERNAL."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """Wrap the behaviour of the method handler the call resolves to."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        h: Any = handler
        if h.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap(method, h.unary_unary), h.request_deserializer, h.response_serializer
            )
        if h.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap(method, h.unary_stream), h.request_deserializer, h.response_serializer
            )
        if h.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap(method, h.stream_unary), h.request_deserializer, h.response_serializer
            )
        if h.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _wrap(method, h.stream_stream), h.request_deserializer, h.response_serializer
            )
        return handler


class GrpcServer:
    """A started grpc.aio server with its health servicer; ``port`` is the port actually bound."""

    def __init__(
        self,
        server: grpc.aio.Server,
        health: Any,
        *,
        host: str,
        port: int,
        service_names: Sequence[str],
    ) -> None:
        self.server = server
        self.health = health
        self.host = host
        self.port = port
        self.service_names = tuple(service_names)
        self._stopped = False

    @property
    def address(self) -> str:
        """``host:port`` for clients to dial."""
        return f"{_host_for_url(self.host)}:{self.port}"

    async def set_serving(self, name: str, serving: bool) -> None:
        """Report one service as SERVING or NOT_SERVING; the empty name sets the whole server and all."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        names: Iterable[str] = (health_module.OVERALL_HEALTH, *self.service_names) if name == "" else (name,)
        for each in names:
            await self.health.set(each, status)

    async def stop(self, grace: float | None = 5.0) -> None:
        """Report NOT_SERVING, then stop accepting calls and let running ones finish within ``grace``."""
        if self._stopped:
            return
        self._stopped = True
        # Load balancers watching health drain the server before the port closes.
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)

    async def wait_for_termination(self) -> None:
        """Block until the server has stopped."""
        await self.server.wait_for_termination()


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class _LazyReflection:
    """gRPC server reflection, built on its first call.

    Only operators' tools (grpcurl, Postman) call it; the reflection servicer imports protobuf's own
    descriptor module, ~3 MB of every service's RSS, so a process that is never asked pays nothing.
    """

    def __init__(self, service_names: Sequence[str]) -> None:
        self._service_names = tuple(service_names)
        self._servicer: Any = None

    async def ServerReflectionInfo(  # the RPC's name in grpc/reflection/v1alpha
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        if self._servicer is None:
            from grpc_reflection.v1alpha import reflection

            self._servicer = reflection.aio.ReflectionServicer(self._service_names)  # type: ignore[attr-defined]
        async for response in self._servicer.ServerReflectionInfo(request_iterator, context):
            yield response


async def start_grpc_server(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    servicers: Sequence[tuple[AddServicerFn, Any]],
    service_names: Sequence[str],
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    reuse_port: bool = False,
) -> GrpcServer:
    """Start a grpc.aio server with the servicers, health, reflection, tracing and problem details.

    With `reuse_port` other processes serving on the same port with it share the connections."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # gRPC sets SO_REUSEPORT unless told otherwise: a second server on a taken port would then start
        # silently and share its traffic. Only where asked for (ServiceSettings.reuse_port).
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]
    server = grpc.aio.server(
        interceptors=[*grpc_server_interceptors(), ProblemInterceptor(), *interceptors],
        options=options,
    )
    for add, servicer in servicers:
        add(servicer, server)
    health = health_module.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        _LazyReflection([*service_names, HEALTH_SERVICE, REFLECTION_SERVICE]), server
    )
    bound = server.add_insecure_port(f"{_host_for_url(host)}:{port}")
    if bound == 0:
        raise OSError(f"gRPC server could not bind {host}:{port}")
    await server.start()
    result = GrpcServer(server, health, host=host, port=bound, service_names=service_names)
    await result.set_serving("", True)
    _log.info("gRPC server listening on %s", result.address, extra={"grpc_services": list(service_names)})
    return result


# ---- authentication (here, not in kit.auth: a process that serves no gRPC need not import grpc) ----

if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
    _Handler = grpc.RpcMethodHandler[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor
    _Handler = grpc.RpcMethodHandler

_Behavior = Callable[..., Any]
_STOP = object()
# A method handler's kinds: its attribute, the grpc factory of such a handler, whether it streams responses.
_HANDLER_KINDS: Final = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
)


class AuthInterceptor(_ServerInterceptor):
    """grpc.aio interceptor: requires a valid ``authorization: Bearer`` metadata on non-public methods.

    Verification runs inside the wrapped method handler (not in ``intercept_service``) so the
    principal's contextvar is set in the very context the servicer runs in.
    """

    def __init__(self, verifier: TokenVerifier, public_methods: Iterable[str] | None = None) -> None:
        self._verifier = verifier
        methods = set(DEFAULT_PUBLIC_METHODS if public_methods is None else public_methods)
        # "/pkg.Service/*" makes a whole service public.
        self._public_services = {m[:-1] for m in methods if m.endswith("/*")}
        self._public = {m for m in methods if not m.endswith("/*")}

    def _is_public(self, method: str) -> bool:
        return method in self._public or any(method.startswith(p) for p in self._public_services)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        """Wrap the method's handler so that the call is authenticated first."""
        handler = await continuation(handler_call_details)
        if handler is None or self._is_public(handler_call_details.method):
            return handler
        return self._wrap(handler)

    async def _authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        authorization = None
        for key, value in context.invocation_metadata() or ():
            if key.lower() == "authorization":
                authorization = value.decode() if isinstance(value, bytes) else value
                break
        try:
            return await self._verifier.verify_authorization(authorization)
        except AuthError as err:
            if err.code == "missing_token":
                err = AuthError(err.code, "no bearer token: send metadata 'authorization: Bearer <access token>'")
            await self._abort(context, err)
            raise  # unreachable: abort raises

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext[Any, Any], err: AuthError) -> NoReturn:
        await context.abort(err.grpc_status, f"{err.code}: {err.message}")

    def _wrap(self, handler: _Handler) -> _Handler:
        # The handler's one behavior, wrapped, in a handler of the same kind with the same (de)serializers.
        for kind, make, streaming in _HANDLER_KINDS:
            behavior = getattr(handler, kind)
            if behavior is not None:
                wrap = self._wrap_stream_response if streaming else self._wrap_unary_response
                return make(
                    wrap(behavior),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler

    def _wrap_unary_response(self, behavior: _Behavior) -> _Behavior:
        async def authenticated(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            principal = await self._authenticate(context)
            token = _principal_var.set(principal)
            try:
                if inspect.iscoroutinefunction(behavior):
                    return await behavior(request, context)
                # A synchronous servicer method: off the event loop, with the principal's context.
                return await asyncio.to_thread(behavior, request, context)
            except AuthError as err:
                # Servicers may call principal.require_region()/require_role(): map to a status.
                await self._abort(context, err)
            finally:
                _reset(token)

        return authenticated

    def _wrap_stream_response(self, behavior: _Behavior) -> _Behavior:
        # grpc.aio chooses the streaming style from the function kind, so the wrapper keeps the kind of
        # the wrapped behavior: a coroutine (context.write style) or an async generator.
        if inspect.iscoroutinefunction(behavior):

            async def authenticated_writer(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
                principal = await self._authenticate(context)
                token = _principal_var.set(principal)
                try:
                    await behavior(request, context)
                except AuthError as err:
                    await self._abort(context, err)
                finally:
                    _reset(token)

            return authenticated_writer

        async def authenticated_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            principal = await self._authenticate(context)
            token = _principal_var.set(principal)
            try:
                result = behavior(request, context)
                if hasattr(result, "__aiter__"):
                    async for message in result:
                        yield message
                elif result is not None:
                    # A synchronous generator: each step in a worker thread, keeping the loop free.
                    iterator = iter(result)
                    ctx = contextvars.copy_context()
                    while (message := await asyncio.to_thread(ctx.run, _next_or_stop, iterator)) is not _STOP:
                        yield message
            except AuthError as err:
                await self._abort(context, err)
            finally:
                _reset(token)

        return authenticated_stream


def _next_or_stop(iterator: Iterator[Any]) -> Any:
    return next(iterator, _STOP)


def _reset(token: contextvars.Token[Principal | None]) -> None:
    # An async generator finalized from another context (e.g. on cancellation) cannot reset (ValueError);
    # the per-call task context is discarded anyway.
    with contextlib.suppress(ValueError):
        _principal_var.reset(token)
