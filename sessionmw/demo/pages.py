"""The demo's pages and actions, independent of the web framework that serves them.

Each function takes the request's session (and the :class:`~sessionmw.SessionStore` when it lists or
ends sessions) and returns a :class:`Reply`: a page, or a redirect after a POST. Store calls block:
the ASGI app runs them in a worker thread. Full session ids never appear in a page (they are
secrets); sessions are named by a short prefix of their id, and a form that ends one carries only
that prefix, resolved on the server among the signed-in user's own sessions.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..admin.store import SessionStore
from ..backends import SessionInfo
from ..core.session import Session

__all__ = [
    "SID_PREFIX",
    "Reply",
    "admin",
    "browser_name",
    "admin_end_user",
    "end_others",
    "end_session",
    "home",
    "increment",
    "login",
    "logout",
    "sessions",
    "short_sid",
    "slow_done",
    "slow_seconds",
    "slow_start",
    "status",
]

#: How many characters of a session id the pages show.
SID_PREFIX = 8
#: Longest name accepted at sign-in.
MAX_NAME = 64
#: The slow page's default and longest hold of the lock, in seconds.
SLOW_DEFAULT = 5.0
SLOW_MAX = 30.0

_MESSAGES = {
    "signed-in": "Signed in. Your session got a new id (no session fixation); your data stayed.",
    "signed-out": "Signed out: the session was destroyed on the server and its cookie expired.",
    "need-name": "Type a name to sign in.",
    "need-login": "Sign in first: only a signed-in user's sessions can be listed.",
    "ended": "Session ended. Its next request starts afresh, signed out.",
    "ended-others": "Every other session of yours was ended.",
    "ended-user": "Every session of that user was ended.",
    "not-found": "No such session among yours (it may have ended already).",
}

STYLE = """
*{box-sizing:border-box}
body{font:16px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;max-width:60rem;margin:0 auto;padding:1rem 1.5rem;
color:#1f2328;background:#f6f8fa}
header{display:flex;flex-wrap:wrap;align-items:center;gap:.5rem 1.25rem;padding:.6rem 0 .8rem;
border-bottom:1px solid #d0d7de}
header .brand{font-weight:700;color:#0969da;text-decoration:none;font-size:1.1rem}
nav a{margin-right:.9rem;color:#0969da;text-decoration:none} nav a:hover{text-decoration:underline}
header .who{margin-left:auto;color:#57606a}
h1{font-size:1.5rem;margin:1.2rem 0 .6rem}
.box{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:1rem 1.25rem;margin:1rem 0}
.notice{background:#ddf4ff;border-color:#54aeff}
button{white-space:nowrap;font:inherit;padding:.3rem .9rem;border:1px solid #d0d7de;border-radius:6px;
background:#f6f8fa;cursor:pointer}
button.primary{background:#1f883d;border-color:#1a7f37;color:#fff}
button.danger{color:#cf222e} button:hover{filter:brightness(.96)}
input{font:inherit;padding:.3rem .5rem;border:1px solid #d0d7de;border-radius:6px}
form{display:inline}
code{font:.9em ui-monospace,SFMono-Regular,Menlo,monospace;background:#eff1f3;padding:.1rem .3rem;border-radius:4px}
.count{font-size:2.5rem;font-weight:700;margin-right:1rem;vertical-align:middle}
table{border-collapse:collapse;width:100%;background:#fff;font-size:.9rem}
th,td{text-align:left;padding:.45rem .6rem;border-bottom:1px solid #d8dee4;vertical-align:top}
th{background:#f6f8fa;font-weight:600;white-space:nowrap}
tr.current td{background:#dafbe1}
.tag{display:inline-block;font-size:.75rem;padding:0 .45rem;border-radius:1rem;background:#1f883d;color:#fff}
.muted{color:#57606a;font-size:.85rem} td .muted{display:block} .ua{max-width:16rem}
.actions{margin-top:.8rem}
"""


@dataclass
class Reply:
    """What a page or action answers: an HTML page (``html``) or a 303 redirect (``location``)."""

    html: str = ""
    location: str | None = None
    status: int = 200


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def short_sid(sid: str | None) -> str:
    """Return the short, displayable prefix of a session id."""
    return (sid or "")[:SID_PREFIX]


def _when(ts: float, now: float) -> str:
    same_day = time.localtime(ts)[:3] == time.localtime(now)[:3]
    stamp = time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M", time.localtime(ts))
    secs = max(0, int(now - ts))
    if secs < 60:
        ago = f"{secs} s ago"
    elif secs < 3600:
        ago = f"{secs // 60} min ago"
    else:
        ago = f"{secs // 3600} h ago"
    return f"{stamp} <span class=muted>{ago}</span>"


_BROWSERS = (("Edg/", "Edge"), ("OPR/", "Opera"), ("Firefox/", "Firefox"), ("HeadlessChrome/", "Headless Chrome"),
             ("Chrome/", "Chrome"), ("Safari/", "Safari"), ("curl/", "curl"), ("python-", "Python"))  # fmt: skip
_SYSTEMS = (("Android", "Android"), ("iPhone", "iPhone"), ("iPad", "iPad"), ("Windows", "Windows"),
            ("Mac OS X", "macOS"), ("CrOS", "ChromeOS"), ("Linux", "Linux"))  # fmt: skip


def browser_name(user_agent: str | None) -> str:
    """Return a short name for a User-Agent header ("Firefox 128 on Linux"), or the header itself."""
    ua = user_agent or ""
    for token, name in _BROWSERS:
        at = ua.find(token)
        if at >= 0:
            version = ua[at + len(token) :].split(" ", 1)[0].split(".", 1)[0]
            if token == "Safari/" and "Version/" in ua:
                version = ua.split("Version/", 1)[1].split(" ", 1)[0].split(".", 1)[0]
            system = next((label for key, label in _SYSTEMS if key in ua), "")
            label = f"{name} {version}" if version.isdigit() else name
            return f"{label} on {system}" if system else label
    return ua[:40] + ("…" if len(ua) > 40 else "") if ua else "-"


def _redirect(location: str) -> Reply:
    return Reply(location=location, status=303)


def _page(session: Session, title: str, body: str, msg: str | None = None) -> Reply:
    user = session.user_id
    who = f"Signed in as <b id=user>{_e(user)}</b>" if user is not None else "<span id=user-anon>Not signed in</span>"
    notice = f"<div class='box notice' id=notice>{_e(_MESSAGES[msg])}</div>" if msg in _MESSAGES else ""
    return Reply(
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{_e(title)} · sessionmw demo</title><style>{STYLE}</style></head><body>"
        "<header><a class=brand href='/'>sessionmw demo</a><nav>"
        "<a id=nav-home href='/'>Counter</a><a id=nav-sessions href='/sessions'>Your sessions</a>"
        "<a id=nav-admin href='/admin'>Admin</a><a id=nav-status href='/status'>Status (read-only)</a>"
        "<a id=nav-slow href='/slow'>Slow page</a></nav>"
        f"<span class=who>{who}</span></header>"
        f"<h1>{_e(title)}</h1>{notice}{body}</body></html>"
    )


def home(session: Session, msg: str | None = None) -> Reply:
    """The counter, and the sign-in or sign-out form."""
    count = int(session.get("count", 0))
    user = session.user_id
    if user is None:
        account = (
            "<form method=post action='/login'><label for=login-name>Sign in as </label>"
            "<input id=login-name name=name placeholder='any name' maxlength=64 required autocomplete=off> "
            "<button id=login class=primary>Sign in</button></form>"
            "<p class=muted>Any name will do. Sign in with the same name in another browser to get a second "
            "session of the same user, then see both on <a href='/sessions'>Your sessions</a>.</p>"
        )
    else:
        account = (
            f"<p>You are <b>{_e(user)}</b>, signed in at {_e(session.get('signed_in_at', '?'))}.</p>"
            "<form method=post action='/logout'><button id=logout>Sign out</button></form> "
            "<a href='/sessions'>See all your sessions</a>"
        )
    sid = f"<code id=sid>{_e(short_sid(session.id))}…</code>" if not session.is_new else "<i>none yet</i>"
    body = (
        "<div class=box><span class=count id=count>" + str(count) + "</span>"
        "<form method=post action='/increment'><button id=inc class=primary>Increment</button></form>"
        "<p class=muted>The count lives on the server; the cookie holds only a signed session id. Each "
        "increment runs under the session lock, so two tabs clicking at once never lose a count.</p></div>"
        f"<div class=box>{account}</div>"
        f"<p class=muted>Session: {sid} · the cookie is <code>demo_session</code> (HttpOnly, Path=/).</p>"
    )
    return _page(session, "Counter", body, msg)


def increment(session: Session) -> Reply:
    """Add one to the counter (under the session lock)."""
    session["count"] = int(session.get("count", 0)) + 1
    return _redirect("/")


def login(session: Session, form: Mapping[str, str]) -> Reply:
    """Sign in as any name: bind the session to that user (which regenerates its id)."""
    name = " ".join(str(form.get("name") or "").split())[:MAX_NAME]
    if not name:
        return _redirect("/?msg=need-name")
    session.bind_user(name)
    session["signed_in_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return _redirect("/?msg=signed-in")


def logout(session: Session) -> Reply:
    """Sign out: destroy the session on the server and expire its cookie."""
    session.invalidate()
    return _redirect("/?msg=signed-out")


def _own_sessions(session: Session, store: SessionStore) -> list[SessionInfo]:
    user = session.user_id
    return [] if user is None else store.list_sessions(user_id=user)


def _row(info: SessionInfo, current: str | None, now: float, action: str, user: str | None = None) -> str:
    """One table row for a session; ``user`` adds a first column and a ``data-user`` (admin page)."""
    prefix = short_sid(info.sid)
    is_current = info.sid == current
    mark = " <span class=tag>this session</span>" if is_current else ""
    ua = info.user_agent or ""
    lead = attrs = ""
    if user is not None:
        name = f"<b>{_e(user)}</b>" if user else "<i class=muted>anonymous</i>"
        lead = f"<td>{name}</td>"
        attrs = f" data-user='{_e(user)}'"
    return (
        f"<tr class='session-row{' current' if is_current else ''}' data-sid='{_e(prefix)}' "
        f"data-current='{'yes' if is_current else 'no'}'{attrs}>"
        f"{lead}<td><code>{_e(prefix)}…</code>{mark}</td>"
        f"<td>{_when(info.created, now)}</td><td>{_when(info.last_access, now)}</td>"
        f"<td>{_e(info.first_ip or '-')}</td><td>{_e(info.last_ip or '-')}</td>"
        f"<td class=ua title='{_e(ua)}'>{_e(browser_name(ua))}</td><td>{action}</td></tr>"
    )


def sessions(session: Session, store: SessionStore, msg: str | None = None) -> Reply:
    """Every session of the signed-in user, with an end button on each and one to end all others."""
    if session.user_id is None:
        body = "<div class=box><p>Sign in on the <a href='/'>counter page</a> to see your sessions.</p></div>"
        return _page(session, "Your sessions", body, msg or "need-login")
    current = session.id
    now = time.time()
    infos = _own_sessions(session, store)
    rows = []
    for info in infos:
        prefix = short_sid(info.sid)
        label = "Sign out" if info.sid == current else "End"
        action = (
            "<form method=post action='/sessions/end'>"
            f"<input type=hidden name=sid value='{_e(prefix)}'>"
            f"<button class=danger id='end-{_e(prefix)}'>{label}</button></form>"
        )
        rows.append(_row(info, current, now, action))
    others = sum(1 for i in infos if i.sid != current)
    body = (
        f"<p>User <b>{_e(session.user_id)}</b> has <b id=session-count>{len(infos)}</b> live session(s): one "
        "per browser where this name signed in. Listed with <code>SessionStore.list_sessions(user_id=...)</code>."
        "</p><table id=sessions><thead><tr><th>Session</th><th>Created</th><th>Last access</th><th>First IP</th>"
        "<th>Last IP</th><th>User agent</th><th></th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table><div class=actions><form method=post action='/sessions/end-others'>"
        f"<button class=danger id=end-others{'' if others else ' disabled'}>End all other sessions ({others})"
        "</button></form></div>"
        "<p class=muted>Ending a session deletes it on the server: that browser's next request finds no session "
        "and is signed out, even if it is waiting for the lock right now.</p>"
    )
    return _page(session, "Your sessions", body, msg)


def end_session(session: Session, store: SessionStore, form: Mapping[str, str]) -> Reply:
    """End one of the signed-in user's sessions, named by its id prefix; ending the current one signs out."""
    prefix = str(form.get("sid") or "")
    if session.user_id is None:
        return _redirect("/sessions?msg=need-login")
    matches = [i for i in _own_sessions(session, store) if len(prefix) >= 4 and i.sid.startswith(prefix)]
    if len(matches) != 1:
        return _redirect("/sessions?msg=not-found")
    if matches[0].sid == session.id:
        session.invalidate()
        return _redirect("/?msg=signed-out")
    store.terminate(matches[0].sid)
    return _redirect("/sessions?msg=ended")


def end_others(session: Session, store: SessionStore) -> Reply:
    """End every session of the signed-in user but this one."""
    if session.user_id is None:
        return _redirect("/sessions?msg=need-login")
    current = session.id
    for info in _own_sessions(session, store):
        if info.sid != current:
            store.terminate(info.sid)
    return _redirect("/sessions?msg=ended-others")


def admin(session: Session, store: SessionStore, msg: str | None = None) -> Reply:
    """Every session of the site, grouped by user, with a button to end all of a user's sessions."""
    now = time.time()
    infos = store.list_sessions()
    stats = store.stats()
    current = session.id if not session.is_new else None
    by_user: dict[str, list[SessionInfo]] = {}
    for info in infos:
        by_user.setdefault("" if info.user_id is None else str(info.user_id), []).append(info)
    rows = []
    for user in sorted(by_user, key=lambda u: (u == "", u.lower())):
        group = by_user[user]
        for n, info in enumerate(group):
            if n == 0 and user:
                action = (
                    f"<form method=post action='/admin/end-user' data-user='{_e(user)}'>"
                    f"<input type=hidden name=user value='{_e(user)}'>"
                    f"<button class='danger end-user'>End {_e(user)}'s {len(group)} session(s)</button></form>"
                )
            else:
                action = ""
            rows.append(_row(info, current, now, action, user=user))
    body = (
        f"<p><b id=stat-sessions>{int(stats.get('sessions', 0))}</b> live session(s) of "
        f"<b id=stat-users>{int(stats.get('users', 0))}</b> signed-in user(s), from "
        "<code>SessionStore.list_sessions()</code> and <code>stats()</code>. "
        "<span class=muted>A real site shows this page to administrators only.</span></p>"
        "<table id=admin><thead><tr><th>User</th><th>Session</th><th>Created</th><th>Last access</th>"
        "<th>First IP</th><th>Last IP</th><th>User agent</th><th></th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )
    return _page(session, "Admin: all sessions", body, msg)


def admin_end_user(session: Session, store: SessionStore, form: Mapping[str, str]) -> Reply:
    """End every session of one user (``SessionStore.terminate_user``)."""
    user = str(form.get("user") or "")
    if not user:
        return _redirect("/admin")
    if session.user_id is not None and str(session.user_id) == user:
        session.invalidate()  # this request holds the current session's lock: end it through the session
    store.terminate_user(user)
    return _redirect("/admin?msg=ended-user")


def status(session: Session) -> Reply:
    """The read-only status page: reads the session without its lock (the route is marked ``@read_only``)."""
    rows = "".join(
        f"<tr><td><code>{_e(k)}</code></td><td><code>{_e(repr(v))}</code></td></tr>" for k, v in sorted(session.items())
    )
    sid = "<i>none yet</i>" if session.is_new else f"<code>{_e(short_sid(session.id))}…</code>"
    body = (
        "<p>This route is marked <code>@read_only</code>: it reads the session without taking the lock and "
        "never writes it back, so it answers at once even while the <a href='/slow'>slow page</a> holds "
        "the lock in another tab.</p>"
        f"<div class=box><p>Read-only: <b id=read-only>{'yes' if session.read_only else 'no'}</b> · "
        f"user: <b>{_e(session.user_id if session.user_id is not None else '-')}</b> · session: {sid} · "
        f"count: <b id=status-count>{int(session.get('count', 0))}</b></p>"
        f"<table><thead><tr><th>Key</th><th>Value</th></tr></thead><tbody>"
        f"{rows or '<tr><td colspan=2><i>(empty session)</i></td></tr>'}</tbody></table></div>"
    )
    return _page(session, "Status (read-only)", body)


def slow_seconds(query: Mapping[str, str]) -> float:
    """Return how long the slow page holds the lock: ``?t=`` seconds, default 5, at most 30."""
    try:
        seconds = float(query.get("t") or SLOW_DEFAULT)
    except ValueError:
        seconds = SLOW_DEFAULT
    if seconds != seconds:  # NaN
        seconds = SLOW_DEFAULT
    return min(max(seconds, 0.0), SLOW_MAX)


def slow_start(session: Session) -> None:
    """Change the session before sleeping, so the request visibly holds its lock."""
    session["slow_visits"] = int(session.get("slow_visits", 0)) + 1


def slow_done(session: Session, seconds: float) -> Reply:
    """The slow page, once its sleep under the lock is over."""
    body = (
        f"<div class=box><p>This request held the session lock for <b id=slept>{seconds:g}</b> s "
        f"(visit {int(session.get('slow_visits', 0))}).</p></div>"
        "<p>Open it again and, while it loads, click <b>Increment</b> in another tab: that request waits for "
        "the lock and then counts, nothing is lost. The <a href='/status'>read-only status page</a> answers at "
        "once meanwhile. <code>?t=</code> sets the seconds (at most 30): "
        "<a href='/slow?t=2'>2 s</a> · <a href='/slow?t=10'>10 s</a>.</p>"
    )
    return _page(session, "Slow page", body)
