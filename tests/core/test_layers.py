"""The layers keep to their imports: the core loads no framework, event loop, driver or backend."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = (
    "asyncio",
    "anyio",
    "starlette",
    "flask",
    "werkzeug",
    "redis",
    "pymemcache",
    "sqlalchemy",
    "sessionmw.drivers",
    "sessionmw.adapters",
    "sessionmw.admin",
)
ALLOWED_BACKEND_MODULES = {"sessionmw.backends", "sessionmw.backends.base", "sessionmw.backends._url"}


def test_the_core_imports_no_framework_event_loop_driver_or_backend() -> None:
    # The package's __init__ imports the WSGI adapter and the store for users' convenience; load the
    # core without it, so that only what the core itself imports is seen.
    code = f"""
import importlib.util, sys, types
package = types.ModuleType("sessionmw")
package.__path__ = importlib.util.find_spec("sessionmw").submodule_search_locations
sys.modules["sessionmw"] = package
import sessionmw.core.policy, sessionmw.core.ops, sessionmw.core.route, sessionmw.core.state
bad = sorted(
    m for m in sys.modules
    if any(m == f or m.startswith(f + ".") for f in {FORBIDDEN!r})
    or (m.startswith("sessionmw.backends.") and m not in {sorted(ALLOWED_BACKEND_MODULES)!r})
)
print(bad)
assert not bad, bad
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
