"""When a session ends, when it is touched, and what its stored record holds.

Rules of this module: no I/O and no clock reads (``now`` is passed in). The core, not the store,
decides whether a session timed out, as Moodle's manager does; a backend TTL is only a safety net.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..backends.base import Record, Touch
from .config import Settings

if TYPE_CHECKING:
    from .outcome import RequestFacts
    from .state import RequestState

__all__ = ["TTL_MARGIN", "Lifetime", "to_ms"]

#: Seconds added to a session's timeout for the backend's TTL, beyond the touch interval.
TTL_MARGIN = 60.0


def to_ms(t: float) -> float:
    """``t`` rounded down to the millisecond: a time a stored record keeps, which prints in 14 characters, not 18.

    A finer time tells nothing a session needs, and costs 4 bytes per time in every stored record.
    """
    return math.floor(t * 1000.0) / 1000.0


class Lifetime:
    """Timeout, touch and TTL rules for one configuration.

    :param settings: the validated options.
    """

    def __init__(self, settings: Settings) -> None:
        self.idle_timeout = settings.idle_timeout
        self.absolute_timeout = settings.absolute_timeout
        self.max_age = settings.max_age
        self.touch_every = settings.effective_touch_interval

    def expired(self, rec: Record, now: float) -> bool:
        """Tell whether a stored session has passed its idle timeout or absolute lifetime."""
        return self.expiry_reason(rec, now) is not None

    def expiry_reason(self, rec: Record, now: float) -> str | None:
        """Return ``"idle"`` or ``"absolute"`` when a stored session has timed out, else ``None``."""
        idle = rec.idle_timeout if rec.idle_override else self.idle_timeout
        if idle is not None and now - rec.last_access > idle:
            return "idle"
        absolute = self.absolute_timeout
        if absolute is not None and now - rec.created > absolute:
            return "absolute"
        return None

    def expiry(self, created: float, last_access: float, override: bool, idle: float | None) -> float | None:
        """Return when a session with these times ends, or ``None`` if it never times out."""
        if not override:
            idle = self.idle_timeout
        ends = [last_access + idle] if idle is not None else []
        if self.absolute_timeout is not None:
            ends.append(created + self.absolute_timeout)
        return round(min(ends), 3) if ends else None

    def ttl(self, expires: float | None, now: float) -> float | None:
        """Return the backend TTL for a session ending at ``expires``: a safety net, never the rule."""
        if expires is None:
            if self.max_age is not None and self.max_age > 0:
                return self.max_age + self.touch_every + TTL_MARGIN
            return None
        return max(1.0, expires - now) + self.touch_every + TTL_MARGIN

    def touch_due(self, rec: Record, now: float) -> bool:
        """Tell whether an unchanged session's last access should be written now."""
        return now - rec.last_access >= self.touch_every

    def touch(self, rec: Record, now: float, req: RequestFacts) -> Touch:
        """Return the refresh of ``rec``'s last access at ``now``."""
        now = to_ms(now)
        expires = self.expiry(rec.created, now, rec.idle_override, rec.idle_timeout)
        return Touch(last_access=now, last_ip=req.client_ip, expires=expires, ttl=self.ttl(expires, now))

    def record(self, st: RequestState, data: bytes, now: float, req: RequestFacts) -> tuple[Record, float | None]:
        """Return the record to store for a session whose serialized data is ``data``, and its TTL."""
        now = to_ms(now)
        old = None if st.invalidated else st.record
        created = old.created if old is not None else now
        expires = self.expiry(created, now, st.idle_override, st.idle_timeout)
        rec = Record(
            data=data,
            created=created,
            last_access=now,
            user_id=st.user_id,
            first_ip=old.first_ip if old is not None else req.client_ip,
            last_ip=req.client_ip,
            user_agent=req.user_agent or (old.user_agent if old is not None else None),
            idle_override=st.idle_override,
            idle_timeout=st.idle_timeout if st.idle_override else None,
            expires=expires,
            version=old.version + 1 if old is not None else 1,
        )
        return rec, self.ttl(expires, now)
