"""How the ``sessionmw`` command line shows sessions and figures on a terminal.

The table of ``list`` (as wide as the terminal: a session's shortest telling prefix, its user and
dates always, its addresses and user agent as far as they fit), the table of ``stats`` (sizes in
bytes as ``1.2 MiB``, times as dates), and the progress display of ``gc`` and ``migrate``, on stderr
and erased when done. :mod:`.cli` holds the commands; ``--json`` output does not come through here.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
from collections.abc import Mapping
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

__all__ = [
    "SHORT",
    "abbreviated",
    "console",
    "err_console",
    "figure",
    "figures_table",
    "human_bytes",
    "progress_display",
    "sessions_table",
    "short_length",
    "when",
]

#: Fewest characters of a session's name that ``list`` shows and ``kill`` takes (the web demo shows as many).
SHORT = 8

# The table of `list`: columns two spaces apart, a user id folded past this width, a user agent
# shown only when this many of its characters fit.
_GAP = 2
_USER_WIDTH = 24
_MIN_AGENT_WIDTH = 12

#: Figures that are sizes in bytes (also under a tiered store's ``fast_`` and ``durable_`` prefixes).
_BYTE_FIGURES = frozenset({"bytes", "limit_maxbytes", "used_memory"})

console = Console()
err_console = Console(stderr=True)


def when(ts: float) -> str:
    """A timestamp as a local date and time to the minute; ``-`` for none."""
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "-"


def short_length(names: list[str]) -> int:
    """The fewest characters, at least :data:`SHORT`, that tell every one of ``names`` apart (git's short ids)."""
    length = SHORT
    ordered = sorted(names)
    for a, b in itertools.pairwise(ordered):  # only neighbours in sorted order can share the longest prefix
        common = len(os.path.commonprefix([a, b]))
        length = max(length, common + 1)
    return length


def abbreviated(name: str) -> str:
    """A session's name cut to :data:`SHORT` characters and an ellipsis, for a message."""
    return name if len(name) <= SHORT else name[:SHORT] + "…"


def sessions_table(title: str, infos: list[Any], width: int) -> Table:
    """The table of ``list`` for a terminal ``width`` columns wide.

    The name's prefix (what ``kill`` takes), the user and both dates are always shown whole; the last
    IP, the first IP and the user agent (cut with an ellipsis) follow as far as the width allows.
    ``--json`` has everything.
    """
    short = short_length([i.sid for i in infos])
    cells: dict[str, list[str]] = {
        "session": [i.sid[:short] for i in infos],
        "user": ["" if i.user_id is None else str(i.user_id) for i in infos],
        "created": [when(i.created) for i in infos],
        "last access": [when(i.last_access) for i in infos],
        "first IP": [i.first_ip or "" for i in infos],
        "last IP": [i.last_ip or "" for i in infos],
        "user agent": [i.user_agent or "" for i in infos],
    }

    def natural(name: str, most: int = 1000) -> int:
        return min(most, max(cell_len(value) for value in [name, *cells[name]]))

    # Columns are two spaces apart. A long user id folds onto more lines rather than push the dates out.
    budget = width - sum(natural(n, _USER_WIDTH) + _GAP for n in ("session", "user", "created", "last access")) + _GAP
    shown = {"session", "user", "created", "last access"}
    for name in ("last IP", "first IP"):
        if natural(name) + _GAP <= budget:
            shown.add(name)
            budget -= natural(name) + _GAP
    agent_width = min(natural("user agent"), budget - _GAP)
    if agent_width >= _MIN_AGENT_WIDTH:
        shown.add("user agent")

    table = Table(title=Text(title), box=None, pad_edge=False, header_style="bold")
    for name in cells:
        if name not in shown:
            continue
        if name == "user":
            table.add_column(name, overflow="fold", max_width=_USER_WIDTH)
        elif name == "user agent":
            table.add_column(name, no_wrap=True, overflow="ellipsis", max_width=agent_width)
        else:
            table.add_column(name, no_wrap=True)
    for row in zip(*(cells[name] for name in cells if name in shown), strict=True):
        table.add_row(*map(Text, row))  # as they are: a user agent's "[b]" is no markup
    return table


def human_bytes(n: float) -> str:
    """``n`` bytes as ``512 B``, ``1.2 MiB``..."""
    value, unit = float(n), "B"
    for larger in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{int(n)} B" if unit == "B" else f"{value:.1f} {unit}"


def figure(name: str, value: float) -> str:
    """One figure of ``stats`` for the table: a time, a size, a count."""
    if name == "oldest":
        return when(value)
    if name.removeprefix("fast_").removeprefix("durable_") in _BYTE_FIGURES:
        return human_bytes(value)
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{value:.3f}".rstrip("0").rstrip(".")


def figures_table(title: str, figures: Mapping[str, float]) -> Table:
    """The table of ``stats``: each figure's name and its value, shown as :func:`figure` does."""
    table = Table(title=Text(title))
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in figures.items():
        table.add_row(name, figure(name, value))
    return table


def progress_display(*columns: Any) -> Progress:
    """A progress display on stderr, shown only on a terminal and erased when done, so an error is the only line."""
    return Progress(*columns, console=err_console, transient=True, disable=not err_console.is_terminal)
