"""Metrics exporters for session events: Prometheus and OpenTelemetry listeners.

Both are listeners like any other (``listeners=[...]``, Flask ``SESSION_LISTENERS``). Importing this
package imports neither prometheus_client nor opentelemetry: each is imported when its listener is
built, and a missing one raises an ImportError naming the extra to install
(``pip install 'sessionmw[prometheus]'``, ``pip install 'sessionmw[otel]'``).
"""

from __future__ import annotations

from ._common import DURATION_BUCKETS as DURATION_BUCKETS
from .otel import OpenTelemetryListener as OpenTelemetryListener
from .prometheus import PrometheusListener as PrometheusListener

__all__ = ["DURATION_BUCKETS", "OpenTelemetryListener", "PrometheusListener"]
