from __future__ import annotations

import pytest
from temporalio.contrib.opentelemetry import TracingInterceptor

from telemetry import interceptors


def test_tracing_is_off_unless_an_exporter_is_named() -> None:
    assert interceptors(None) == []
    assert isinstance(interceptors("console")[0], TracingInterceptor)
    from opentelemetry import trace

    trace.get_tracer_provider().shutdown()  # type: ignore[attr-defined]  # flush now, not onto pytest's closed stdout


def test_unknown_exporter_is_refused_at_start() -> None:
    import telemetry

    telemetry._configured = False
    try:
        with pytest.raises(ValueError, match="unknown"):
            interceptors("carrier-pigeon")
    finally:
        telemetry._configured = True
