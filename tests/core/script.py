"""A scripted driver for the core's flows: every backend operation is answered from a table.

No server and no backend object: the test says what each primitive returns, and reads back the
operations the core asked for, in order.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from sessionmw.backends.base import Record
from sessionmw.core.config import build_settings
from sessionmw.core.ops import (
    BackendOp,
    Create,
    Delete,
    Extend,
    Load,
    LockAndLoad,
    Log,
    Queue,
    Refresh,
    Release,
    Save,
    Sleep,
    UserSessions,
)
from sessionmw.core.policy import Outcome, SessionCore
from sessionmw.core.route import READ_WRITE, Route
from sessionmw.core.session import Session

NOW = 1_800_000_000.0
SID = "s" * 43

Reply = Callable[[Any], Any]


class Script:
    """Answers a flow's operations: ``replies`` maps an op class to a value or a function of the op."""

    def __init__(self, record: Record | None = None, **replies: Any) -> None:
        self.record = record
        self.replies: dict[type, Any] = {
            LockAndLoad: lambda op: (True, self.record),
            Load: lambda op: self.record,
            Create: True,
            Save: True,
            Release: True,
            Extend: True,
            Delete: None,
            Refresh: None,
            UserSessions: [],
        }
        names = {cls.__name__: cls for cls in self.replies}
        for name, reply in replies.items():
            self.replies[names[name]] = reply
        self.ops: list[BackendOp[Any]] = []
        self.logs: list[Log] = []
        self.mono = 0.0
        self.queued = 0

    def run(self, flow: Generator[Any, Any, Any]) -> Any:
        """Drive ``flow`` to its end and return its value; a reply that raises is thrown into it."""
        result: Any = None
        error: Exception | None = None
        while True:
            try:
                op = flow.throw(error) if error is not None else flow.send(result)
            except StopIteration as stop:
                return stop.value
            error = None
            try:
                result = self._answer(op)
            except Exception as exc:
                error = exc

    def _answer(self, op: Any) -> Any:
        if isinstance(op, BackendOp):
            self.ops.append(op)
            reply = self.replies[type(op)]
            return reply(op) if callable(reply) else reply
        if isinstance(op, Sleep):
            self.mono += op.delay
            return self.mono
        if isinstance(op, Queue):
            self.queued += 1 if op.enter else -1
            return True if op.enter else None
        assert isinstance(op, Log)
        self.logs.append(op)
        return None

    @property
    def names(self) -> list[str]:
        """The backend operations asked for, by class name."""
        return [type(op).__name__ for op in self.ops]

    def messages(self) -> list[str]:
        """The log lines the flow asked for, formatted."""
        return [log.message % log.args for log in self.logs]


def make_core(**options: Any) -> SessionCore:
    """A core for the given options (``secret_key`` defaults to ``"k"``)."""
    options.setdefault("secret_key", "k")
    return SessionCore(build_settings(**options))


def record(core: SessionCore, data: dict[str, Any], *, created: float = NOW - 100, last_access: float = NOW) -> Record:
    """A stored record holding ``data``."""
    return Record(data=core.serializer.dumps(data), created=created, last_access=last_access)


def opened(
    core: SessionCore,
    script: Script,
    *,
    route: Route = READ_WRITE,
    signed_at: float = NOW,
    now: float = NOW,
) -> Session:
    """A session opened from a cookie naming ``SID``, with the script's record; the script is reset after."""
    s = core.new_session(route, (SID, signed_at), None)
    script.run(core.open(s, lock=None, now=now, mono=0.0))
    script.ops.clear()
    script.logs.clear()
    return s


def close(core: SessionCore, script: Script, s: Session, *, now: float = NOW + 1, **kwargs: Any) -> Outcome:
    """Run the close flow of ``s``; return its outcome."""
    outcome: Outcome = script.run(core.close(s, now=now, mono=1.0, **kwargs))
    return outcome
