"""The metrics exporters: Prometheus and OpenTelemetry listeners, alone and behind a real middleware.

The listeners are first fed events and timings directly (what a driver calls), then scraped after a
scripted workload through the ASGI, WSGI and Flask adapters on the memory and Redis backends:
Prometheus through ``generate_latest`` on a fresh registry, OpenTelemetry through the SDK's in-memory
metric reader and span exporter.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sessionmw.core.events import EVENT_KINDS, SessionEvent
from sessionmw.metrics import DURATION_BUCKETS, OpenTelemetryListener, PrometheusListener

SECRET = "test-secret"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# -- reading what an exporter exports ---------------------------------------------------------


def scrape(registry: CollectorRegistry) -> Samples:
    """Every sample of ``registry`` as Prometheus serves it, parsed back from the text format."""
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    """The value of one sample; a missing sample fails the test, naming what there is."""
    key = (name, frozenset(labels.items()))
    assert key in samples, f"{name}{labels} not scraped; have {sorted(n for n, _ in samples if n.startswith(name))}"
    return samples[key]


def events(samples: Samples) -> dict[str, float]:
    """The non-zero event counts, as ``kind`` or ``kind/reason``."""
    out = {}
    for (name, labels), value in samples.items():
        if name == "sessionmw_events_total" and value:
            d = dict(labels)
            out[d["kind"] + (f"/{d['reason']}" if d["reason"] else "")] = value
    return out


def otel_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """The data points of every instrument the reader collected, by instrument name."""
    out: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def otel_counts(points: list[Any]) -> dict[tuple[tuple[str, Any], ...], Any]:
    """A counter's values by their sorted attributes."""
    return {tuple(sorted(p.attributes.items())): p.value for p in points}


@pytest.fixture
def otel() -> Iterator[tuple[MeterProvider, InMemoryMetricReader, TracerProvider, InMemorySpanExporter]]:
    """A meter provider with an in-memory reader and a tracer provider with an in-memory exporter."""
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    spans = InMemorySpanExporter()
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(spans))
    yield meters, reader, tracers, spans
    meters.shutdown()
    tracers.shutdown()


# -- the listeners alone ----------------------------------------------------------------------


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)


def test_importing_sessionmw_metrics_imports_neither_library() -> None:
    proc = run_python(
        """
        import sys
        import sessionmw.metrics
        from sessionmw.metrics import OpenTelemetryListener, PrometheusListener
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("prometheus_client", "opentelemetry"))
        assert not loaded, loaded
        """
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("blocked", "listener", "extra"),
    [
        pytest.param("prometheus_client", "PrometheusListener", "prometheus", id="prometheus"),
        pytest.param("opentelemetry", "OpenTelemetryListener", "otel", id="otel"),
    ],
)
def test_a_listener_without_its_library_names_the_extra(blocked: str, listener: str, extra: str) -> None:
    # A None in sys.modules makes that import fail, as if the package were not installed.
    proc = run_python(
        f"""
        import sys
        for name in ("{blocked}", "{blocked}.metrics", "{blocked}.trace"):
            sys.modules[name] = None
        from sessionmw.metrics import {listener}
        try:
            {listener}()
        except ImportError as exc:
            print(exc)
        else:
            raise SystemExit("no ImportError")
        """
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"pip install 'sessionmw[{extra}]'" in proc.stdout


def test_prometheus_counts_every_kind_from_zero_by_kind_and_reason() -> None:
    registry = CollectorRegistry()
    listener = PrometheusListener(registry)
    before = scrape(registry)
    for kind in EVENT_KINDS:
        if kind not in ("expired", "terminated"):
            assert sample(before, "sessionmw_events_total", kind=kind, reason="") == 0
    assert sample(before, "sessionmw_events_total", kind="expired", reason="idle") == 0
    assert sample(before, "sessionmw_events_total", kind="terminated", reason="user_limit") == 0

    listener(SessionEvent("created", handle="h1"))
    for _ in range(3):
        listener(SessionEvent("loaded", handle="h1", path="/x"))
    listener(SessionEvent("expired", handle="h1", reason="absolute"))
    listener(SessionEvent("terminated", handle="h2", user_id="u", reason="admin"))
    after = scrape(registry)
    assert events(after) == {"created": 1, "loaded": 3, "expired/absolute": 1, "terminated/admin": 1}


def test_prometheus_histograms_and_gauge_from_timings() -> None:
    registry = CollectorRegistry()
    listener = PrometheusListener(registry)
    listener(SessionEvent("lock_waited", handle="h", seconds=0.003))
    listener(SessionEvent("lock_waited", handle="h", seconds=45.0))
    listener(SessionEvent("lock_timeout", handle="h", seconds=120.0))  # counted, not a wait that got the lock
    listener.lock_held(0.0004)
    listener.backend_call("try_lock", 0.0002)
    listener.backend_call("try_lock", 0.7)
    listener.backend_call("save", 0.02)
    listener.waiting(+1)
    listener.waiting(+1)
    listener.waiting(-1)
    s = scrape(registry)

    wait = "sessionmw_lock_wait_seconds"
    assert sample(s, wait + "_count") == 2
    assert sample(s, wait + "_sum") == pytest.approx(45.003)
    assert sample(s, wait + "_bucket", le="0.0025") == 0
    assert sample(s, wait + "_bucket", le="0.005") == 1
    assert sample(s, wait + "_bucket", le="30.0") == 1
    assert sample(s, wait + "_bucket", le="60.0") == 2
    assert sample(s, wait + "_bucket", le="+Inf") == 2
    assert sample(s, "sessionmw_lock_hold_seconds_bucket", le="0.0005") == 1
    assert sample(s, "sessionmw_lock_hold_seconds_bucket", le="0.00025") == 0

    op = "sessionmw_backend_operation_seconds"
    assert sample(s, op + "_count", operation="try_lock") == 2
    assert sample(s, op + "_bucket", operation="try_lock", le="0.00025") == 1
    assert sample(s, op + "_bucket", operation="try_lock", le="1.0") == 2
    assert sample(s, op + "_count", operation="save") == 1
    assert sample(s, "sessionmw_lock_waiting_requests") == 1
    # The buckets the docs promise: 0.1 ms to 2 minutes, then +Inf.
    bounds = sorted(float(dict(labels)["le"]) for name, labels in s if name == wait + "_bucket")
    assert bounds == [*DURATION_BUCKETS, float("inf")]
    assert DURATION_BUCKETS[0] == 0.0001 and DURATION_BUCKETS[-1] == 120.0


def test_two_prometheus_listeners_on_one_registry_share_its_series() -> None:
    registry = CollectorRegistry()
    a, b = PrometheusListener(registry), PrometheusListener(registry)
    a(SessionEvent("created"))
    b(SessionEvent("created"))
    b.waiting(1)
    a.waiting(1)
    s = scrape(registry)
    assert sample(s, "sessionmw_events_total", kind="created", reason="") == 2
    assert sample(s, "sessionmw_lock_waiting_requests") == 2
    # Another registry is counted apart.
    other = CollectorRegistry()
    PrometheusListener(other)(SessionEvent("loaded"))
    assert sample(scrape(registry), "sessionmw_events_total", kind="loaded", reason="") == 0
    assert sample(scrape(other), "sessionmw_events_total", kind="loaded", reason="") == 1


def test_a_foreign_metric_of_the_same_name_is_a_clear_error_leaving_nothing_registered() -> None:
    registry = CollectorRegistry()
    Counter("sessionmw_lock_waiting_requests", "someone else's", registry=registry)
    with pytest.raises(ValueError, match="another registry"):
        PrometheusListener(registry)
    names = {name for name, _ in scrape(registry)}
    assert names == {"sessionmw_lock_waiting_requests_total", "sessionmw_lock_waiting_requests_created"}


def test_prometheus_listener_defaults_to_the_default_registry() -> None:
    from prometheus_client import REGISTRY

    listener = PrometheusListener()
    assert listener.registry is REGISTRY
    before = REGISTRY.get_sample_value("sessionmw_events_total", {"kind": "too_large", "reason": ""})
    PrometheusListener()(SessionEvent("too_large"))  # a second one on it does not clash
    assert REGISTRY.get_sample_value("sessionmw_events_total", {"kind": "too_large", "reason": ""}) == (before or 0) + 1


def test_opentelemetry_instruments_from_events_and_timings(otel: Any) -> None:
    meters, reader, _, _ = otel
    listener = OpenTelemetryListener(meters.get_meter("test"))
    listener(SessionEvent("created", handle="h"))
    listener(SessionEvent("loaded", handle="h"))
    listener(SessionEvent("loaded", handle="h"))
    listener(SessionEvent("expired", handle="h", reason="idle"))
    listener(SessionEvent("lock_waited", handle="h", seconds=0.003))
    listener.lock_held(0.0004)
    listener.backend_call("try_lock", 0.0002)
    listener.waiting(+1)
    listener.waiting(+1)
    listener.waiting(-1)
    points = otel_points(reader)
    assert otel_counts(points["sessionmw.events"]) == {
        (("kind", "created"),): 1,
        (("kind", "loaded"),): 2,
        (("kind", "expired"), ("reason", "idle")): 1,
        (("kind", "lock_waited"),): 1,
    }
    (wait,) = points["sessionmw.lock.wait"]
    assert tuple(wait.explicit_bounds) == DURATION_BUCKETS  # seconds, not the SDK's millisecond defaults
    assert wait.count == 1 and wait.sum == pytest.approx(0.003)
    assert wait.bucket_counts[DURATION_BUCKETS.index(0.005)] == 1
    (hold,) = points["sessionmw.lock.hold"]
    assert hold.bucket_counts[DURATION_BUCKETS.index(0.0005)] == 1
    (op,) = points["sessionmw.backend.operation"]
    assert dict(op.attributes) == {"operation": "try_lock"}
    assert op.bucket_counts[DURATION_BUCKETS.index(0.00025)] == 1
    (waiting,) = points["sessionmw.lock.waiting_requests"]
    assert waiting.value == 1


def test_opentelemetry_span_per_backend_operation_set_back_by_its_duration(otel: Any) -> None:
    meters, _, tracers, spans = otel
    tracer = tracers.get_tracer("test")
    listener = OpenTelemetryListener(meters.get_meter("test"), tracer=tracer)
    with tracer.start_as_current_span("request") as parent:
        before = time.time_ns()
        listener.backend_call("save", 0.25)
        after = time.time_ns()
    (span,) = [s for s in spans.get_finished_spans() if s.name != "request"]
    assert span.name == "sessionmw save"
    assert span.kind.name == "CLIENT"
    assert dict(span.attributes) == {"operation": "save"}
    assert span.end_time - span.start_time == 250_000_000
    assert before <= span.end_time <= after
    assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id


def test_opentelemetry_without_a_tracer_makes_no_span(otel: Any) -> None:
    meters, reader, tracers, spans = otel
    OpenTelemetryListener(meters.get_meter("test")).backend_call("save", 0.01)
    assert spans.get_finished_spans() == ()
    assert otel_points(reader)["sessionmw.backend.operation"][0].count == 1


def test_two_opentelemetry_listeners_on_one_meter_add_up(otel: Any) -> None:
    meters, reader, _, _ = otel
    meter = meters.get_meter("test")
    OpenTelemetryListener(meter)(SessionEvent("created"))
    OpenTelemetryListener(meter)(SessionEvent("created"))
    assert otel_counts(otel_points(reader)["sessionmw.events"]) == {(("kind", "created"),): 2}
