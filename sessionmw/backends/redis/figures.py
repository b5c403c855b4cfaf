"""What the Redis backend reads from the server about itself: figures for ``stats`` and the eviction policy.

Rules of this module: no I/O. A Cluster answers INFO and CONFIG GET with a dict per node; one server
with one dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["eviction_warning", "figures", "find_policy"]

_POLICY_KEY = "maxmemory_policy"


def _nodes(reply: Any) -> list[Mapping[str, Any]]:
    """The INFO sections of each node: a Cluster answers with a dict per node."""
    if not isinstance(reply, Mapping):
        return []
    if any(isinstance(v, Mapping) for v in reply.values()):
        return [v for v in reply.values() if isinstance(v, Mapping)]
    return [reply]


def figures(stats: Any, memory: Any) -> dict[str, float]:
    """``evicted_keys``, ``expired_keys``, ``used_memory`` (summed over nodes) and ``maxmemory_policy_evicts``."""
    out: dict[str, float] = {"evicted_keys": 0.0, "expired_keys": 0.0, "used_memory": 0.0}
    for node in _nodes(stats):
        for name in ("evicted_keys", "expired_keys"):
            out[name] += float(node.get(name, 0) or 0)
    evicts = 0.0
    for node in _nodes(memory):
        out["used_memory"] += float(node.get("used_memory", 0) or 0)
        policy = node.get(_POLICY_KEY)
        if isinstance(policy, bytes):
            policy = policy.decode()
        if policy is not None and str(policy) != "noeviction":
            evicts = 1.0  # allkeys-*: any key; volatile-*: keys with a TTL, as sessions usually have
    out["maxmemory_policy_evicts"] = evicts
    return out


def find_policy(reply: Any) -> str | None:
    """The policy in a ``CONFIG GET maxmemory-policy`` reply (a dict, or a dict per node from a Cluster)."""
    if isinstance(reply, Mapping):
        for k, v in reply.items():
            if k in (b"maxmemory-policy", "maxmemory-policy"):
                return v.decode() if isinstance(v, bytes) else str(v)
            found = find_policy(v)
            if found is not None:
                return found
    return None


def eviction_warning(policy: str | None) -> str | None:
    """The warning to log, once, for a server whose policy may evict session keys; ``None`` if it may not."""
    if policy is None or policy == "noeviction":
        return None
    return (
        f"maxmemory-policy is {policy!r}, so Redis may evict session keys (users are logged out, locks "
        "vanish) when memory runs short; set maxmemory-policy noeviction on this server"
    )
