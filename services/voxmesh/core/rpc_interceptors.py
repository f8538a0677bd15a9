"""Server interceptors shared by every service: request id + logs, metrics, error mapping,
undecodable requests, request field checks.

grpc.aio interceptors only see handlers, so most here are an async context manager run
around the handler's behaviour, for unary and streaming RPCs alike (see ``_wrap``).
"""

from __future__ import annotations

import contextvars
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import prometheus_client
import structlog
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from voxmesh.core import domain_errors as errors
from voxmesh.core.structured_logging import LogRateLimit, get_logger, new_request_id

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


STATUS_DETAILS_KEY = "grpc-status-details-bin"


def retry_status_details(code: grpc.StatusCode, message: str, retry_after_s: float) -> bytes:
    """A ``google.rpc.Status`` carrying a ``RetryInfo`` delay (for grpc-status-details-bin)."""
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(max(1_000_000, int(retry_after_s * 1e9)))  # at least 1 ms
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    encoded: bytes = status.SerializeToString()
    return encoded


def _refusal_trailers(
    error: BaseException,
    code: grpc.StatusCode,
    details: str,
    context: grpc.aio.ServicerContext[Any, Any],
) -> tuple[tuple[str, str | bytes], ...]:
    """The call's trailers, plus the retry delay of a rate-limit refusal."""
    retry_after_s = getattr(error, "retry_after_s", None)
    if not isinstance(error, errors.ResourceExhausted) or retry_after_s is None:
        return ()
    trailers = tuple(context.trailing_metadata() or ())
    return (
        *trailers,
        (STATUS_DETAILS_KEY, retry_status_details(code, details, retry_after_s)),
    )


T = TypeVar("T")

if TYPE_CHECKING:  # generic in grpc-stubs only, not at run time
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor
ServerInterceptor = _ServerInterceptor  # what ServiceParts.interceptors holds

Around = Callable[[str, grpc.aio.ServicerContext[Any, Any]], AbstractAsyncContextManager[None]]


def restore(var: contextvars.ContextVar[T], token: contextvars.Token[T], empty: T) -> None:
    """Undo an ``around``'s ``var.set``. A streaming call the client cancelled leaves its
    generator to the event loop's finaliser, which closes it in another context where the
    token is not valid (a ValueError, logged as a traceback per call): that context ends
    with the call, so ``empty`` is set instead."""
    try:
        var.reset(token)
    except ValueError:
        var.set(empty)


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


LOG_LINES_LEFT_OUT = prometheus_client.Counter(
    "voxmesh_log_lines_left_out_total",
    "Refusal log lines left out by the rate limit (the refusals are still counted by code).",
    ["service"],
)


class ErrorMappingInterceptor(AroundInterceptor):
    """The one place where domain errors become gRPC statuses; anything else is INTERNAL.

    Refusals are what a client can cause at will, so their log line is rate limited per
    status code, whatever the method (10 a second, then a count of those left out).
    """

    def __init__(self, service: str = "", refusal_log: LogRateLimit | None = None) -> None:
        self._service = service
        self._refusal_log = refusal_log or LogRateLimit()

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
            trailers = _refusal_trailers(exc, code, details, context)
            if trailers:
                # Rate-limited: counted in metrics, not logged (a flood must not fill the disk).
                await context.abort(code, details, trailing_metadata=trailers)
            # Keyed by status alone: a flood spread over every method is still a few lines.
            left_out = self._refusal_log.admit(code)
            if left_out is None:
                LOG_LINES_LEFT_OUT.labels(self._service).inc()
            else:
                _log.info("rpc refused", code=code.name, reason=details, left_out=left_out)
            await context.abort(code, details)
        except Exception:
            # Never leak internals or crash the server: log it whole, tell the client little.
            _log.exception("rpc failed")
            request_id = structlog.contextvars.get_contextvars().get("request_id", "-")
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})"
            )


# -- undecodable requests ------------------------------------------------------------------


class UndecodableRequest:
    """What a unary method receives instead of its request when the bytes do not decode."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _undecodable_reason(deserializer: Callable[[bytes], Any], raw: bytes, exc: Exception) -> str:
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    type_name = getattr(descriptor, "full_name", "the request type")
    # protobuf says "Error parsing message with type '<name>': <why>": keep the why.
    why = str(exc).rpartition("': ")[2] or type(exc).__name__
    return f"the request ({len(raw)} bytes) does not decode as {type_name}: {why}"


def _decoding(deserializer: Callable[[bytes], Any], streaming: bool) -> Callable[[bytes], Any]:
    """``deserializer`` with its failure turned into a refusal instead of grpc's UNKNOWN.

    A unary request is decoded before any handler code runs, where an exception becomes
    UNKNOWN plus a traceback in the log: return a marker instead, refused by the handler.
    A streamed request is decoded inside the handler's read, so raising there is refused.
    """

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:
            reason = _undecodable_reason(deserializer, raw, exc)
            if streaming:
                raise errors.InvalidArgument(reason) from None
            return UndecodableRequest(reason)

    return decode


def _decoded(request: Any) -> Any:
    if isinstance(request, UndecodableRequest):
        raise errors.InvalidArgument(request.reason)
    return request


class RequestDecodingInterceptor(_ServerInterceptor):
    """Undecodable request bytes answer INVALID_ARGUMENT, for every method of the server.

    The innermost interceptor: a refusal here comes after authentication, and is mapped
    (and its log line rate limited) by the error mapping like any other.
    """

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        if handler.request_streaming:  # decoded in the handler's reads: nothing to wrap
            return _with_deserializer(handler, _decoding(handler.request_deserializer, True))

        def checked(behavior: Callable[..., Any]) -> Callable[..., Any]:
            if inspect.isasyncgenfunction(behavior):

                async def stream(request: Any, context: Any) -> Any:
                    async for item in behavior(_decoded(request), context):
                        yield item

                return stream

            async def unary(request: Any, context: Any) -> Any:
                return await behavior(_decoded(request), context)

            return unary

        return _with_deserializer(handler, _decoding(handler.request_deserializer, False), checked)


def _with_deserializer(
    handler: grpc.RpcMethodHandler[Any, Any],
    deserializer: Callable[[bytes], Any],
    change: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """A copy of ``handler`` with another request deserializer (and behaviour)."""

    def behavior(original: Callable[..., Any]) -> Callable[..., Any]:
        return change(original) if change is not None else original

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            behavior(handler.unary_unary), deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            behavior(handler.unary_stream), deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            behavior(handler.stream_unary), deserializer, handler.response_serializer
        )
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(
        behavior(handler.stream_stream), deserializer, handler.response_serializer
    )


# -- request field checks ------------------------------------------------------------------


class FieldCheckInterceptor(_ServerInterceptor):
    """Runs ``check`` on every unary request of the given services before their handler.

    Requests of client-streaming methods are the servicer's to check (a stream's first
    frame, say), so nothing is added per frame on the live path.
    """

    def __init__(self, check: Callable[[Message], None], services: Collection[str]) -> None:
        self._check = check
        self._prefixes = tuple(f"/{name}/" for name in services)

    def _checked(self, request: Any) -> Any:
        if isinstance(request, Message):  # an UndecodableRequest is refused further in
            self._check(request)
        return request

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if (
            handler is None
            or handler.request_streaming
            or not handler_call_details.method.startswith(self._prefixes)
        ):
            return handler
        checked = self._checked

        def change(behavior: Callable[..., Any]) -> Callable[..., Any]:
            if inspect.isasyncgenfunction(behavior):

                async def stream(request: Any, context: Any) -> Any:
                    async for item in behavior(checked(request), context):
                        yield item

                return stream

            async def unary(request: Any, context: Any) -> Any:
                return await behavior(checked(request), context)

            return unary

        assert handler.request_deserializer is not None
        return _with_deserializer(handler, handler.request_deserializer, change)
