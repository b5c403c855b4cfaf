"""Session events and timings as OpenTelemetry metrics and spans (opentelemetry-api, extra ``sessionmw[otel]``).

Rules of this module: opentelemetry is imported when an :class:`OpenTelemetryListener` is built, never
when this module is. The instruments are named so that OpenTelemetry's Prometheus translation (dots to
underscores, the unit ``s`` as ``_seconds``, ``_total`` on counters) gives exactly the names of
:class:`~sessionmw.metrics.PrometheusListener`: one dashboard reads either. Asking a meter twice for
the same instrument returns the same one, so two listeners on one meter provider add up.

Spans: the drivers report a backend operation after the fact, as ``backend_call(op, seconds)``. The
span is therefore made when the call is reported, with its start time set back by ``seconds``
(``start_span(start_time=now - seconds)``, then ``end(end_time=now)``); it is a child of whatever
span is current in the request (the framework's server span), since the drivers report in the
request's own context. A span of the client library's own instrumentation (redis-py's, say) made
during the call is its sibling, not its child.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..core.events import SessionEvent
from ._common import DURATION_BUCKETS, operation_name, require

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter
    from opentelemetry.trace import Tracer

__all__ = ["OpenTelemetryListener"]

#: Instrument names (OpenTelemetry's; the Prometheus names in the module docstring).
EVENTS = "sessionmw.events"
LOCK_WAIT = "sessionmw.lock.wait"
LOCK_HOLD = "sessionmw.lock.hold"
BACKEND_OPERATION = "sessionmw.backend.operation"
LOCK_WAITING = "sessionmw.lock.waiting_requests"


class OpenTelemetryListener:
    """A session listener that counts events and times locks and backend calls with an OpenTelemetry meter.

    Pass it in ``listeners=[OpenTelemetryListener()]`` (Flask: ``SESSION_LISTENERS``). Instruments: the
    counter ``sessionmw.events`` (attributes ``kind`` and, where the kind has one, ``reason``), the
    histograms ``sessionmw.lock.wait``, ``sessionmw.lock.hold`` and ``sessionmw.backend.operation``
    (attribute ``operation``), in seconds with buckets from 0.1 ms to 2 min, and the up-down counter
    ``sessionmw.lock.waiting_requests``. With a tracer, every backend operation is also a span
    ``sessionmw <operation>`` (kind CLIENT) under the request's current span.

    :param meter: the meter to make the instruments with; ``None`` for
        ``opentelemetry.metrics.get_meter("sessionmw")`` from the global meter provider.
    :param tracer: the tracer to make backend spans with; ``None`` for no spans.
    :raises ImportError: opentelemetry-api is not installed (``pip install 'sessionmw[otel]'``).
    """

    __slots__ = (
        "_backend",
        "_backend_attrs",
        "_client_kind",
        "_event_attrs",
        "_events",
        "_lock_hold",
        "_lock_wait",
        "_waiting",
        "meter",
        "tracer",
    )

    def __init__(self, meter: Meter | None = None, tracer: Tracer | None = None) -> None:
        metrics = require(
            "opentelemetry.metrics", package="opentelemetry-api", extra="otel", user="OpenTelemetryListener"
        )
        trace = require("opentelemetry.trace", package="opentelemetry-api", extra="otel", user="OpenTelemetryListener")
        if meter is None:
            from .. import __version__

            meter = metrics.get_meter("sessionmw", __version__)
        #: The meter the instruments belong to.
        self.meter: Meter = meter
        #: The tracer of the backend spans, or None.
        self.tracer: Tracer | None = tracer
        self._events = meter.create_counter(
            EVENTS, unit="{event}", description="Session lifecycle events, by kind and reason."
        )
        self._lock_wait = meter.create_histogram(
            LOCK_WAIT,
            unit="s",
            description="Seconds a request waited for a session lock it then got (lock_waited events).",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._lock_hold = meter.create_histogram(
            LOCK_HOLD,
            unit="s",
            description="Seconds a request held a session lock.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._backend = meter.create_histogram(
            BACKEND_OPERATION,
            unit="s",
            description="Seconds one backend operation took, by operation.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._waiting = meter.create_up_down_counter(
            LOCK_WAITING, unit="{request}", description="Requests now queued for a session lock in this process."
        )
        # Attribute mappings built once per kind and operation: a record() allocates nothing more.
        self._event_attrs: dict[tuple[str, str | None], Mapping[str, str]] = {}
        self._backend_attrs: dict[str, Mapping[str, str]] = {}
        self._client_kind: Any = trace.SpanKind.CLIENT

    def __call__(self, event: SessionEvent) -> None:
        """Count ``event``; a ``lock_waited`` event's wait is also recorded in the lock-wait histogram."""
        key = (event.kind, event.reason)
        attrs = self._event_attrs.get(key)
        if attrs is None:
            attrs = {"kind": event.kind} if event.reason is None else {"kind": event.kind, "reason": event.reason}
            self._event_attrs[key] = attrs
        self._events.add(1, attrs)
        if event.kind == "lock_waited" and event.seconds is not None:
            self._lock_wait.record(event.seconds)

    def backend_call(self, op: str, seconds: float) -> None:
        """Time one backend operation, and make its span when there is a tracer."""
        attrs = self._backend_attrs.get(op)
        if attrs is None:
            attrs = self._backend_attrs[op] = {"operation": operation_name(op)}
        self._backend.record(seconds, attrs)
        if self.tracer is not None:
            end = time.time_ns()
            span = self.tracer.start_span(
                f"sessionmw {attrs['operation']}",
                kind=self._client_kind,
                attributes=attrs,
                start_time=end - round(seconds * 1e9),
            )
            span.end(end_time=end)

    def lock_held(self, seconds: float) -> None:
        """Time one lock from taken to let go."""
        self._lock_hold.record(seconds)

    def waiting(self, delta: int) -> None:
        """Count a request joining (+1) or leaving (-1) the queue for a lock."""
        self._waiting.add(delta)

    def __repr__(self) -> str:
        return f"OpenTelemetryListener(meter={self.meter!r}, tracer={self.tracer!r})"
