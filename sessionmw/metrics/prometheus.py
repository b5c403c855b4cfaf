"""Session events and timings as Prometheus metrics (prometheus_client, extra ``sessionmw[prometheus]``).

Rules of this module: prometheus_client is imported when a :class:`PrometheusListener` is built, never
when this module is, so ``import sessionmw.metrics`` costs nothing without the extra. Collectors are
registered once per registry and shared by every listener on it: two apps of one process (or two
middlewares, or a test building its app twice) add to the same series instead of failing on
prometheus_client's duplicate check.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

from ..core.events import EVENT_KINDS, SessionEvent
from ._common import DURATION_BUCKETS, KNOWN_REASONS, operation_name, require

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["PrometheusListener"]

#: Metric names (the Prometheus names; prometheus_client adds ``_total`` to the counter's samples).
EVENTS = "sessionmw_events"
LOCK_WAIT = "sessionmw_lock_wait_seconds"
LOCK_HOLD = "sessionmw_lock_hold_seconds"
BACKEND_OPERATION = "sessionmw_backend_operation_seconds"
LOCK_WAITING = "sessionmw_lock_waiting_requests"


class _Collectors:
    """The collectors of one registry, with their labelled children cached (``labels()`` takes a lock)."""

    def __init__(self, prometheus_client: Any, registry: CollectorRegistry) -> None:
        pc = prometheus_client
        # Built unregistered, then registered together: a clash leaves nothing half-registered.
        self.events = pc.Counter(
            EVENTS,
            "Session lifecycle events, by kind and reason (reason is empty for kinds that have none).",
            ["kind", "reason"],
            registry=None,
        )
        self.lock_wait = pc.Histogram(
            LOCK_WAIT,
            "Seconds a request waited for a session lock it then got (lock_waited events).",
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        self.lock_hold = pc.Histogram(
            LOCK_HOLD, "Seconds a request held a session lock.", buckets=DURATION_BUCKETS, registry=None
        )
        self.backend = pc.Histogram(
            BACKEND_OPERATION,
            "Seconds one backend operation took, by operation.",
            ["operation"],
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        # livesum: under prometheus_client's multiprocess mode the workers' queues add up.
        self.waiting = pc.Gauge(
            LOCK_WAITING,
            "Requests now queued for a session lock in this process.",
            registry=None,
            multiprocess_mode="livesum",
        )
        collectors = (self.events, self.lock_wait, self.lock_hold, self.backend, self.waiting)
        done = []
        try:
            for c in collectors:
                registry.register(c)
                done.append(c)
        except ValueError as exc:
            for c in done:
                registry.unregister(c)
            raise ValueError(
                f"this Prometheus registry already has a metric named like sessionmw's ({exc}); "
                "pass PrometheusListener(registry=...) another registry"
            ) from exc
        self.event_children: dict[tuple[str, str | None], Any] = {}
        self.backend_children: dict[str, Any] = {}
        # Every kind starts at 0, so rate() and absent() work before the first event of a kind.
        for kind in EVENT_KINDS:
            for reason in KNOWN_REASONS.get(kind, (None,)):
                self.event_child(kind, reason)

    def event_child(self, kind: str, reason: str | None) -> Any:
        """The counter child of one kind and reason."""
        child = self.event_children.get((kind, reason))
        if child is None:
            child = self.events.labels(kind=kind, reason=reason or "")
            self.event_children[(kind, reason)] = child
        return child

    def backend_child(self, op: str) -> Any:
        """The histogram child of one backend operation."""
        child = self.backend_children.get(op)
        if child is None:
            child = self.backend.labels(operation=operation_name(op))
            self.backend_children[op] = child
        return child


_shared: weakref.WeakKeyDictionary[CollectorRegistry, _Collectors] = weakref.WeakKeyDictionary()
_shared_lock = threading.Lock()


class PrometheusListener:
    """A session listener that counts events and times locks and backend calls in Prometheus metrics.

    Pass it in ``listeners=[PrometheusListener()]`` (Flask: ``SESSION_LISTENERS``) and serve the
    registry as usual (``prometheus_client.make_asgi_app()``, ``make_wsgi_app()``,
    ``start_http_server()``). Metrics: ``sessionmw_events_total{kind, reason}``,
    ``sessionmw_lock_wait_seconds``, ``sessionmw_lock_hold_seconds``,
    ``sessionmw_backend_operation_seconds{operation}`` (histograms) and
    ``sessionmw_lock_waiting_requests`` (gauge). Listeners built on one registry share its collectors,
    so every listener of a process adds to the same series.

    :param registry: the ``prometheus_client.CollectorRegistry`` to register on; ``None`` for
        prometheus_client's default ``REGISTRY``.
    :raises ImportError: prometheus_client is not installed (``pip install 'sessionmw[prometheus]'``).
    :raises ValueError: the registry already has a metric of these names that sessionmw did not make.
    """

    __slots__ = ("_c", "registry")

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        pc = require("prometheus_client", package="prometheus_client", extra="prometheus", user="PrometheusListener")
        if registry is None:
            registry = pc.REGISTRY
        #: The registry the metrics are on.
        self.registry: CollectorRegistry = registry
        with _shared_lock:
            collectors = _shared.get(registry)
            if collectors is None:
                collectors = _shared[registry] = _Collectors(pc, registry)
        self._c = collectors

    def __call__(self, event: SessionEvent) -> None:
        """Count ``event``; a ``lock_waited`` event's wait also goes to the lock-wait histogram."""
        c = self._c
        c.event_child(event.kind, event.reason).inc()
        if event.kind == "lock_waited" and event.seconds is not None:
            c.lock_wait.observe(event.seconds)

    def backend_call(self, op: str, seconds: float) -> None:
        """Time one backend operation."""
        self._c.backend_child(op).observe(seconds)

    def lock_held(self, seconds: float) -> None:
        """Time one lock from taken to let go."""
        self._c.lock_hold.observe(seconds)

    def waiting(self, delta: int) -> None:
        """Count a request joining (+1) or leaving (-1) the queue for a lock."""
        self._c.waiting.inc(delta)

    def __repr__(self) -> str:
        return f"PrometheusListener(registry={self.registry!r})"
