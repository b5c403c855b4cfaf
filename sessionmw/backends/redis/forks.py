"""A forked child must not use its parent's connections: their sockets are shared with the parent.

Both backends' own connection lists (:class:`._async.Connections` and its generated sync twin)
register here; in a forked child each forgets its connections without closing them (closing would
shut the parent's sockets too).
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

__all__ = ["FORKS", "ForkAware"]


class ForkAware(Protocol):
    """Holds connections that a forked child must drop (their sockets belong to the parent)."""

    def after_fork(self) -> None:
        """Forget the connections without closing them."""


#: Every live holder of connections of the backends' own; a forked child tells each to forget them.
FORKS: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def _after_fork() -> None:
    for holder in list(FORKS):
        holder.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
