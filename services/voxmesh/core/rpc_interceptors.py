"""Server interceptors shared by every service: request id + logs, metrics, error mapping.

grpc.aio interceptors only see handlers, so each one here is an async context manager run
around the handler's behaviour, for unary and streaming RPCs alike (see ``_wrap``).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import grpc
import prometheus_client
import structlog

from voxmesh.core import domain_errors as errors
from voxmesh.core.structured_logging import get_logger, new_request_id

REQUEST_ID_KEY = "x-request-id"

_log = get_logger(__name__)

_STATUS_BY_ERROR: tuple[tuple[type[errors.DomainError], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.OutOfRange, grpc.StatusCode.OUT_OF_RANGE),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Aborted, grpc.StatusCode.ABORTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.NotBuiltYet, grpc.StatusCode.UNIMPLEMENTED),
)


def status_for(error: errors.DomainError) -> grpc.StatusCode:
    for error_type, code in _STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.UNKNOWN


def error_for_status(code: grpc.StatusCode, message: str) -> errors.DomainError:
    """The domain error a status stands for (a refusal carried as data, e.g. one AppendLink
    entry), so it reaches the client as the same status; UNAVAILABLE for any other code."""
    for error_type, mapped in _STATUS_BY_ERROR:
        if mapped == code:
            return error_type(message)
    return errors.Unavailable(message)


def client_status(error: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The status a client sees for ``error``, or None when it is an internal failure.

    Domain errors map by type; a downstream voxmesh call's status passes on as is.
    """
    if isinstance(error, errors.DomainError):
        return status_for(error), str(error)
    if isinstance(error, grpc.aio.AioRpcError):
        code = error.code()
        details = error.details() or code.name
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            details = f"a backing service is unavailable: {details}"
        return code, details
    return None


if TYPE_CHECKING:  # generic in grpc-stubs only, not at run time
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor

Around = Callable[[str, grpc.aio.ServicerContext[Any, Any]], AbstractAsyncContextManager[None]]


def _wrap(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, around: Around
) -> grpc.RpcMethodHandler[Any, Any]:
    """Return a copy of ``handler`` whose behaviour runs inside ``around(method, context)``."""

    def unary_response(behavior: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with around(method, context):
                return await behavior(request, context)

        return call

    def stream_response(behavior: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with around(method, context):
                result = behavior(request, context)
                if inspect.isasyncgen(result):
                    async for item in result:
                        yield item
                else:  # a coroutine that writes with context.write()
                    await result

        return call

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            unary_response(handler.unary_unary),
            handler.request_deserializer,
            handler.response_serializer,
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            stream_response(handler.unary_stream),
            handler.request_deserializer,
            handler.response_serializer,
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            unary_response(handler.stream_unary),
            handler.request_deserializer,
            handler.response_serializer,
        )
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(
        stream_response(handler.stream_stream),
        handler.request_deserializer,
        handler.response_serializer,
    )


class AroundInterceptor(_ServerInterceptor):
    """Runs ``around`` as an async context manager around every RPC it applies to."""

    def applies_to(self, method: str) -> bool:
        return True

    def around(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AbstractAsyncContextManager[None]:
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or not self.applies_to(handler_call_details.method):
            return handler  # None: unknown method, grpc answers UNIMPLEMENTED itself
        return _wrap(handler, handler_call_details.method, self.around)


def _metadata_value(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str | None:
    for item_key, value in context.invocation_metadata() or ():
        if item_key == key:
            return value.decode() if isinstance(value, bytes) else value
    return None


class RequestContextInterceptor(AroundInterceptor):
    """Binds a request id (the caller's ``x-request-id`` or a new one) to every log line."""

    @asynccontextmanager
    async def around(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        request_id = _metadata_value(context, REQUEST_ID_KEY) or new_request_id()
        structlog.contextvars.bind_contextvars(request_id=request_id, rpc=method)
        context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
        try:
            yield
        finally:
            structlog.contextvars.unbind_contextvars("request_id", "rpc")


RPC_STARTED = prometheus_client.Counter(
    "voxmesh_rpc_started_total", "RPCs started.", ["service", "method"]
)
RPC_HANDLED = prometheus_client.Counter(
    "voxmesh_rpc_handled_total", "RPCs finished, by status code.", ["service", "method", "code"]
)
RPC_SECONDS = prometheus_client.Histogram(
    "voxmesh_rpc_handling_seconds",
    "Time from an RPC's start to its end.",
    ["service", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60, 600),
)
RPC_IN_FLIGHT = prometheus_client.Gauge(
    "voxmesh_rpc_in_flight", "RPCs being handled now.", ["service"]
)


def _code_name(context: grpc.aio.ServicerContext[Any, Any], failed: bool) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):  # some grpc versions keep the raw integer
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status.name
    return "UNKNOWN" if failed else "OK"


class MetricsInterceptor(AroundInterceptor):
    """Prometheus counters and latency histograms per method and status code."""

    def __init__(self, service: str) -> None:
        self._service = service
        # When the last call other than a health check started (monotonic): a draining
        # server waits until callers have stopped sending it new calls.
        self.last_call_started = 0.0

    @asynccontextmanager
    async def around(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        name = method.rsplit("/", 1)[-1]
        if not method.startswith("/grpc.health."):
            self.last_call_started = time.monotonic()
        RPC_STARTED.labels(self._service, name).inc()
        in_flight = RPC_IN_FLIGHT.labels(self._service)
        in_flight.inc()
        started = time.perf_counter()
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            in_flight.dec()
            RPC_SECONDS.labels(self._service, name).observe(time.perf_counter() - started)
            RPC_HANDLED.labels(self._service, name, _code_name(context, failed)).inc()


class ErrorMappingInterceptor(AroundInterceptor):
    """The one place where domain errors become gRPC statuses; anything else is INTERNAL."""

    @asynccontextmanager
    async def around(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        try:
            yield
        except grpc.aio.AbortError:
            raise
        except (errors.DomainError, grpc.aio.AioRpcError) as exc:
            # A refusal, or a call to another voxmesh service that failed with a precise
            # status: pass it on.
            code, details = client_status(exc) or (grpc.StatusCode.UNKNOWN, "")
            _log.info("rpc refused", code=code.name, reason=details)
            await context.abort(code, details)
        except Exception:
            # Never leak internals or crash the server: log it whole, tell the client little.
            _log.exception("rpc failed")
            request_id = structlog.contextvars.get_contextvars().get("request_id", "-")
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})"
            )
