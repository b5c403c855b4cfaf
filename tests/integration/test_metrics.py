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
import uuid
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
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from sessionmw import SessionMiddleware, WSGISessionMiddleware
from sessionmw.core.events import EVENT_KINDS, SessionEvent
from sessionmw.metrics import DURATION_BUCKETS, OpenTelemetryListener, PrometheusListener

from ..apps import STARLETTE_ROUTES, make_flask_app
from ..apps import _wsgi_app as wsgi_test_app

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


# -- behind a real middleware -----------------------------------------------------------------

ADAPTERS = ["asgi", "wsgi", "flask"]
BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.service("redis")),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """A memory backend of its own, or the test Redis server."""
    if request.param == "memory":
        return f"memory://metrics-{uuid.uuid4().hex[:8]}"
    return str(request.getfixturevalue("redis_url"))


class Gate:
    """What the ``/gate`` route does: count, say it holds the lock, and wait to be let go."""

    def __init__(self) -> None:
        self.inside = threading.Event()
        self.open = threading.Event()

    def hold(self, session: Any) -> None:
        session["n"] = session.get("n", 0) + 1
        self.inside.set()
        assert self.open.wait(60), "the test never opened the gate"


def make_app(adapter: str, gate: Gate, **options: Any) -> Any:
    """The test app of tests/apps.py on ``adapter``, with a ``/gate`` route."""
    options.setdefault("secret_key", SECRET)
    if adapter == "asgi":

        def gate_route(request: Request) -> PlainTextResponse:  # sync: Starlette runs it in a thread
            gate.hold(request.session)
            return PlainTextResponse("let go")

        routes = [*STARLETTE_ROUTES, Route("/gate", gate_route)]
        return Starlette(routes=routes, middleware=[Middleware(SessionMiddleware, **options)])
    if adapter == "wsgi":

        def app(environ: dict[str, Any], start_response: Any) -> Any:
            if environ["PATH_INFO"] == "/gate":
                gate.hold(environ["sessionmw.session"])
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"let go"]
            return wsgi_test_app(environ, start_response)

        return WSGISessionMiddleware(app, read_only_paths=("/view",), **options)
    flask_app = make_flask_app(**options)

    def flask_gate() -> str:
        import flask

        gate.hold(flask.session)
        return "let go"

    flask_app.add_url_rule("/gate", "gate", flask_gate)
    return flask_app


@contextmanager
def client_for(app: Any, adapter: str) -> Iterator[httpx2.Client]:
    """A client calling ``app`` in process: Starlette's TestClient, or httpx2 over WSGI."""
    if adapter == "asgi":
        with TestClient(app) as client:
            yield client
        return
    with httpx2.Client(transport=httpx2.WSGITransport(app=app), base_url="http://testserver") as client:
        yield client


def workload(client: httpx2.Client, increments: int) -> None:
    """Create a session, write it ``increments`` times, read it, regenerate it, log in, end it."""
    assert client.get("/inc").json() == {"n": 1}
    for i in range(increments):
        assert client.get("/inc").json() == {"n": i + 2}
    assert client.get("/view").status_code == 200
    assert client.get("/regen").status_code == 200
    assert client.get("/login/u1").status_code == 200
    assert client.get("/invalidate").status_code == 200


def until(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait for ``check()``; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def contend(client: httpx2.Client, gate: Gate, waiting: Callable[[], float]) -> None:
    """Two requests of one session: ``/gate`` holds the lock until ``/inc`` is seen queued behind it."""
    assert client.get("/inc").status_code == 200
    results: dict[str, int] = {}

    def get(path: str) -> None:
        results[path] = client.get(path).status_code

    holder = threading.Thread(target=get, args=("/gate",))
    holder.start()
    assert gate.inside.wait(30)
    waiter = threading.Thread(target=get, args=("/inc",))
    waiter.start()
    try:
        until("the second request to queue for the lock", lambda: waiting() == 1)
    finally:
        gate.open.set()
        holder.join(30)
        waiter.join(30)
    assert results == {"/gate": 200, "/inc": 200}
    assert client.get("/view").json()["session"] == {"n": 3}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_prometheus_after_a_workload(adapter: str, backend: str, key_prefix: str) -> None:
    registry = CollectorRegistry()
    app = make_app(adapter, Gate(), backend=backend, key_prefix=key_prefix, listeners=[PrometheusListener(registry)])
    with client_for(app, adapter) as client:
        workload(client, increments=5)
    s = scrape(registry)
    # 1 + 5 increments, then a read, a regenerate, a login (which regenerates) and the end.
    assert events(s) == {"created": 1, "loaded": 5 + 4, "regenerated": 2, "bound": 1, "invalidated": 1}
    op = "sessionmw_backend_operation_seconds_count"
    assert sample(s, op, operation="create") == 3  # the first request, and each new id
    assert sample(s, op, operation="lock_and_load") == 5 + 3  # every read-write request with a cookie
    assert sample(s, op, operation="load") == 1  # the read-only one, without the lock
    assert sample(s, op, operation="save") == 5
    # A lock per read-write request with a cookie, each let go once; nobody waited.
    assert sample(s, "sessionmw_lock_hold_seconds_count") == 5 + 3
    assert sample(s, "sessionmw_lock_hold_seconds_bucket", le="+Inf") == 5 + 3
    assert sample(s, "sessionmw_lock_wait_seconds_count") == 0
    assert sample(s, "sessionmw_lock_waiting_requests") == 0


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_prometheus_sees_a_request_queue_for_the_lock(adapter: str, backend: str, key_prefix: str) -> None:
    registry = CollectorRegistry()
    gate = Gate()
    app = make_app(adapter, gate, backend=backend, key_prefix=key_prefix, listeners=[PrometheusListener(registry)])

    def waiting() -> float:
        return sample(scrape(registry), "sessionmw_lock_waiting_requests")

    with client_for(app, adapter) as client:
        contend(client, gate, waiting)
    s = scrape(registry)
    assert sample(s, "sessionmw_events_total", kind="lock_waited", reason="") == 1
    assert sample(s, "sessionmw_lock_wait_seconds_count") == 1
    assert sample(s, "sessionmw_lock_wait_seconds_bucket", le="+Inf") == 1
    # It waited at least as long as it took the test to see it queued: more than nothing.
    assert sample(s, "sessionmw_lock_wait_seconds_bucket", le="0.0001") == 0
    assert sample(s, "sessionmw_lock_wait_seconds_sum") > 0
    assert sample(s, "sessionmw_lock_waiting_requests") == 0
    assert sample(s, "sessionmw_lock_hold_seconds_count") == 2


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_opentelemetry_after_a_workload(adapter: str, backend: str, key_prefix: str, otel: Any) -> None:
    meters, reader, tracers, spans = otel
    gate = Gate()
    listener = OpenTelemetryListener(meters.get_meter("sessionmw"), tracer=tracers.get_tracer("sessionmw"))
    app = make_app(adapter, gate, backend=backend, key_prefix=key_prefix, listeners=[listener])
    with client_for(app, adapter) as client:
        workload(client, increments=2)
        contend(
            client, gate, lambda: sum(p.value for p in otel_points(reader).get("sessionmw.lock.waiting_requests", []))
        )
    points = otel_points(reader)
    assert otel_counts(points["sessionmw.events"]) == {
        (("kind", "created"),): 2,  # the workload's and the contention's
        (("kind", "loaded"),): 2 + 4 + 3,
        (("kind", "regenerated"),): 2,
        (("kind", "bound"),): 1,
        (("kind", "invalidated"),): 1,
        (("kind", "lock_waited"),): 1,
    }
    (wait,) = points["sessionmw.lock.wait"]
    assert wait.count == 1 and wait.bucket_counts[0] == 0
    (hold,) = points["sessionmw.lock.hold"]
    assert hold.count == (2 + 3) + 2
    ops = {p.attributes["operation"]: p.count for p in points["sessionmw.backend.operation"]}
    assert ops["create"] == 3 + 1 and ops["load"] == 1 + 1 and ops["save"] == 2 + 2
    (waiting,) = points["sessionmw.lock.waiting_requests"]
    assert waiting.value == 0
    # One CLIENT span per backend operation, named after it.
    finished = spans.get_finished_spans()
    assert sorted({s.name for s in finished}) == sorted({f"sessionmw {op}" for op in ops})
    assert len(finished) == sum(ops.values())


@pytest.mark.parametrize("adapter", ["wsgi", "flask"])
def test_opentelemetry_backend_spans_are_children_of_the_request_span(adapter: str, otel: Any) -> None:
    # A sync app runs the request in the caller's thread, so a span current there is the request's.
    meters, _, tracers, spans = otel
    tracer = tracers.get_tracer("test")
    listener = OpenTelemetryListener(meters.get_meter("sessionmw"), tracer=tracer)
    app = make_app(adapter, Gate(), backend=f"memory://metrics-{uuid.uuid4().hex[:8]}", listeners=[listener])
    with client_for(app, adapter) as client:
        with tracer.start_as_current_span("GET /inc") as request_span:
            assert client.get("/inc").status_code == 200
    backend_spans = [s for s in spans.get_finished_spans() if s.name.startswith("sessionmw ")]
    assert [s.name for s in backend_spans] == ["sessionmw create"]
    assert backend_spans[0].parent is not None
    assert backend_spans[0].parent.span_id == request_span.get_span_context().span_id


def test_opentelemetry_listener_defaults_to_the_global_meter_provider() -> None:
    # The global provider can be set once per process: in a child process, not in this one.
    proc = run_python(
        """
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from sessionmw.core.events import SessionEvent
        from sessionmw.metrics import OpenTelemetryListener

        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        OpenTelemetryListener()(SessionEvent("stale_id"))
        (scope,) = reader.get_metrics_data().resource_metrics[0].scope_metrics
        assert scope.scope.name == "sessionmw", scope.scope
        (metric,) = scope.metrics
        assert metric.name == "sessionmw.events"
        assert [(dict(p.attributes), p.value) for p in metric.data.data_points] == [({"kind": "stale_id"}, 1)]
        """
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
