"""What both drivers do when a backend's wake-up fails: say so once, then wait without it.

Rules of this module: no I/O. A wait for a release that raises (the store's listener is down, a
failover is under way) is not an error of the request: the driver waits the core's delay on a ticket
of its own instead, and the next try of the lock reports whatever is really wrong.
"""

from __future__ import annotations

import logging
import threading

__all__ = ["log_failed_wait"]

logger = logging.getLogger("sessionmw")

_warned = threading.Event()


def log_failed_wait(exc: BaseException) -> None:
    """Log a failed wait for a release: a warning the first time in this process, then at debug level."""
    if _warned.is_set():
        logger.debug("waiting for a lock's release failed, polling instead: %s", exc)
        return
    _warned.set()
    logger.warning("waiting for a lock's release failed, polling instead (logged once, then at debug level): %s", exc)
