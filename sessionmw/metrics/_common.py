"""What the Prometheus and OpenTelemetry exporters share: bucket bounds, known reasons, lazy imports."""

from __future__ import annotations

import importlib
import re
from types import ModuleType

#: Histogram bucket upper bounds in seconds, from a tenth of a millisecond (a backend round trip on
#: loopback) to two minutes (the default ``lock_timeout``); longer lock holds land in ``+Inf``.
DURATION_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05,
    0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
    10.0, 30.0, 60.0, 120.0,
)  # fmt: skip

#: The reasons shared/API.md gives an event kind; every other kind has none.
KNOWN_REASONS: dict[str, tuple[str, ...]] = {
    "expired": ("idle", "absolute"),
    "terminated": ("admin", "user_limit", "rotated"),
}


def require(module: str, *, package: str, extra: str, user: str) -> ModuleType:
    """Import ``module``, or raise an ImportError naming the extra that installs its ``package``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{user} needs {package}: pip install 'sessionmw[{extra}]'", name=exc.name) from exc


def operation_name(op: str) -> str:
    """A backend operation's label value in snake_case: ``LockAndLoad`` -> ``lock_and_load``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", op).lower()
