"""OpenTelemetry tracing for every service, and Cloud Logging's trace fields on log lines.

Off by default (``tracing.enabled = false``): then nothing is installed — no interceptor on
the gRPC server or on mesh channels, no span, nothing exported — and the live path pays one
flag check per *message* (never per chunk) where a trace context would ride in a frame.

On: a TracerProvider exporting over OTLP/gRPC (batched, from the SDK's own thread), the
``grpc.aio`` server interceptor and client interceptors of opentelemetry-instrumentation-grpc
(W3C ``traceparent`` in metadata, so a trace starts from Envoy's or the client's), and a
trace context carried per message in frames of links that outlive one message (router peer
links), because a long-lived stream's own metadata names only whoever opened it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, MutableMapping
from typing import Any

from voxmesh.core.settings import ServiceKind, Settings

TRACEPARENT = "traceparent"
_state: dict[str, Any] = {"enabled": False, "provider": None}


def tracing_enabled() -> bool:
    enabled: bool = _state["enabled"]
    return enabled


def configure_tracing(settings: Settings, kind: ServiceKind | str) -> bool:
    """Install the tracer provider and OTLP exporter if tracing is on; True if it is."""
    tracing = settings.tracing
    if not tracing.enabled:
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create(
            {
                "service.name": f"voxmesh-{kind}",
                "service.namespace": "voxmesh",
                "deployment.environment": settings.environment,
                "cloud.availability_zone": settings.zone,
            }
        ),
        sampler=ParentBased(TraceIdRatioBased(tracing.sample_ratio)),
    )
    exporter = OTLPSpanExporter(endpoint=tracing.otlp_endpoint, insecure=tracing.otlp_insecure)
    # Exported from the processor's thread, in batches: never on the event loop's path.
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=1000))
    trace.set_tracer_provider(provider)
    _state.update(enabled=True, provider=provider)
    return True


def shutdown_tracing() -> None:
    """Flush and stop the exporter (after a drain, so the last spans are sent)."""
    provider = _state["provider"]
    if provider is not None:
        provider.shutdown()
    _state.update(enabled=False, provider=None)


def server_interceptors() -> list[Any]:
    """The grpc.aio server interceptor, outermost, when tracing is on; else none."""
    if not tracing_enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]


def client_interceptors() -> list[Any]:
    """grpc.aio client interceptors (all four call shapes) when tracing is on; else none."""
    if not tracing_enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())


def current_traceparent() -> str:
    """The current span's W3C ``traceparent``, to carry in a frame; "" when not tracing."""
    if not tracing_enabled():
        return ""
    from opentelemetry.propagate import inject

    carrier: MutableMapping[str, str] = {}
    inject(carrier)
    return carrier.get(TRACEPARENT, "")


@contextlib.contextmanager
def continued_span(name: str, traceparent: str, **attributes: str) -> Iterator[None]:
    """A span continuing the trace named by ``traceparent`` (from a frame); no-op without."""
    if not traceparent or not tracing_enabled():
        yield
        return
    from opentelemetry import trace
    from opentelemetry.propagate import extract

    parent = extract({TRACEPARENT: traceparent})
    tracer = trace.get_tracer("voxmesh")
    with tracer.start_as_current_span(
        name, context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
    ):
        yield


def cloud_trace_fields(project: str) -> Any:
    """A structlog processor: the current span as Cloud Logging's trace fields."""
    from opentelemetry import trace

    def add_trace(logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            event["logging.googleapis.com/trace"] = (
                f"projects/{project}/traces/{context.trace_id:032x}"
            )
            event["logging.googleapis.com/spanId"] = f"{context.span_id:016x}"
            event["logging.googleapis.com/trace_sampled"] = context.trace_flags.sampled
        return event

    return add_trace


def trace_project(settings: Settings) -> str | None:
    """The project named in log lines' trace field, or None when tracing is off."""
    if not settings.tracing.enabled:
        return None
    return settings.tracing.gcp_project or settings.spanner.project
