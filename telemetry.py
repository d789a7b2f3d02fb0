"""OpenTelemetry tracing for the worker and the API's Temporal client.

Temporal's TracingInterceptor puts every workflow, activity, signal and update in a span, linked from
the API's update-with-start through the worker. Spans go to the exporter named by
`WE_OTEL_EXPORTER` ("console" for stdout; unset: tracing stays a no-op).
"""

from __future__ import annotations

from temporalio.client import Interceptor
from temporalio.contrib.opentelemetry import TracingInterceptor

_configured = False


def interceptors(exporter: str | None) -> list[Interceptor]:
    global _configured
    if not exporter:
        return []
    if not _configured:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

        if exporter != "console":
            raise ValueError(f"unknown WE_OTEL_EXPORTER {exporter!r} (supported: console)")
        provider = TracerProvider(resource=Resource.create({"service.name": "withdrawal-engine"}))
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        trace.set_tracer_provider(provider)
        _configured = True
    return [TracingInterceptor()]
