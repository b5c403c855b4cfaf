"""The demo's pages and actions, independent of the web framework that serves them.

Each function takes the request's session (and the :class:`~sessionmw.SessionStore` when it lists or
ends sessions) and returns a :class:`Reply`: a page, or a redirect after a POST. Store calls block:
the ASGI app runs them in a worker thread. Session ids never appear in a page (they are secrets);
sessions are named by a short prefix of their handle, the one-way hash the store keeps them under
(as ``sessionmw list`` shows them), and a form that ends one carries only that prefix, resolved on
the server among the signed-in user's own sessions.

What the session events told the demo (:mod:`sessionmw.demo.activity`) shows on every page: a lock
wait of this session, and a session that ended elsewhere or timed out (said once: the stale cookie
is then dropped, see :func:`finish`).
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from ..admin.store import SessionStore
from ..backends import SessionInfo
from ..core.handles import handle_of
from ..core.session import Session
from . import COOKIE_PREFIX, IDLE_TIMEOUT, MAX_SESSIONS_PER_USER
from .activity import Wait, current_notes

__all__ = [
    "COOKIE_NAME",
    "SID_PREFIX",
    "Reply",
    "admin",
    "admin_end_user",
    "browser_name",
    "end_others",
    "end_session",
    "finish",
    "home",
    "http_error",
    "increment",
    "login",
    "logout",
    "metrics",
    "plural",
    "sessions",
    "short_sid",
    "slow_done",
    "slow_seconds",
    "slow_start",
    "status",
]

#: The demo's session cookie.
COOKIE_NAME = f"{COOKIE_PREFIX}session"

#: How many characters of a session's handle the pages show (as many as ``sessionmw list``).
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
    "ended-elsewhere": "Your session was ended elsewhere, so this request started a new one.",
    "timed-out": "Your session had timed out, so this request started a new one.",
}
#: The message of the page an action that found its session gone redirects to.
_AFTER_ENDED = {"elsewhere": "ended-elsewhere", "expired": "timed-out"}
#: What a page says when its request found its session gone (``RequestNotes.ended``).
_ENDED = {
    "elsewhere": (
        "Your session was ended elsewhere: signed out from another browser, ended on the admin page or "
        f"with <code>sessionmw kill</code>, or by a sign-in over the limit of {MAX_SESSIONS_PER_USER} "
        "sessions per user. This browser starts afresh, signed out."
    ),
    "expired": (
        f"Your session timed out: no request for {IDLE_TIMEOUT // 60} minutes "
        "(<code>idle_timeout</code>). This browser starts afresh, signed out."
    ),
}

STYLE = """
*{box-sizing:border-box}
body{font:16px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;max-width:60rem;margin:0 auto;padding:1rem 1.5rem;
color:#1f2328;background:#f6f8fa}
header{display:flex;flex-wrap:wrap;align-items:center;gap:.5rem 1.25rem;padding:.6rem 0 .8rem;
border-bottom:1px solid #d0d7de}
header .brand{font-weight:700;color:#0969da;text-decoration:none;font-size:1.1rem}
nav a{margin-right:.7rem;color:#0969da;text-decoration:none} nav a:hover{text-decoration:underline}
header .who{margin-left:auto;color:#57606a}
h1{font-size:1.5rem;margin:1.2rem 0 .6rem}
.box{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:1rem 1.25rem;margin:1rem 0}
.notice{background:#ddf4ff;border-color:#54aeff} .warn{background:#fff8c5;border-color:#d4a72c}
h2{font-size:1.1rem;margin:0 0 .5rem}
button{white-space:nowrap;font:inherit;padding:.3rem .9rem;border:1px solid #d0d7de;border-radius:6px;
background:#f6f8fa;cursor:pointer}
button.primary{background:#1f883d;border-color:#1a7f37;color:#fff}
button.danger{color:#cf222e} button:hover:enabled{filter:brightness(.96)}
button:disabled{opacity:.45;cursor:not-allowed;background:#eaeef2;color:#57606a}
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
.actions{margin-top:.8rem} .box table{width:auto;min-width:50%}
"""


@dataclass
class Reply:
    """What a page or action answers: a page (``html``, of ``media_type``) or a 303 redirect (``location``).

    ``forget_cookie`` asks the framework to delete the session cookie (a stale one, see :func:`finish`).
    """

    html: str = ""
    location: str | None = None
    status: int = 200
    media_type: str = "text/html; charset=utf-8"
    forget_cookie: bool = False


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def short_sid(sid: str | None) -> str:
    """Return the short, displayable prefix of a session's name (its handle)."""
    return (sid or "")[:SID_PREFIX]


def plural(n: int, noun: str) -> str:
    """Return ``"1 session"``, ``"2 sessions"``: a count and its noun, plural when the count is not 1."""
    return f"{n} {_noun(n, noun)}"


def _noun(n: int, noun: str) -> str:
    return noun if n == 1 else noun + "s"


def _handle(session: Session) -> str | None:
    """The handle of the request's stored session, or ``None`` for a new one."""
    return None if session.is_new or session.id is None else handle_of(session.id)


def _seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds >= 0.95 else f"{seconds * 1000:.0f} ms"


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


def _wait_notice(wait: Wait) -> str:
    held = "your slow page held the session." if wait.holder == "slow" else "another request of this session held it."
    return (
        f"<div class='box warn' id=waited data-seconds='{wait.seconds:.3f}'>Waited "
        f"<b>{_seconds(wait.seconds)}</b> for the session lock on <code>{_e(wait.path)}</code>: {held} "
        "Nothing was lost: the request ran once the lock was free.</div>"
    )


def _page(session: Session | None, title: str, body: str, msg: str | None = None, status: int = 200) -> Reply:
    """A page of the demo; ``session`` ``None`` for one that never loads the session (an error page)."""
    notes = current_notes()
    notices = []
    if session is None:
        who = ""
    else:
        user = session.user_id  # loads the session first: its events have been heard by now
        if user is not None:
            who = f"Signed in as <b id=user>{_e(user)}</b>"
        else:
            who = "<span id=user-anon>Not signed in</span>"
        if notes.ended in _ENDED:
            notices.append(f"<div class='box warn' id=ended data-why='{notes.ended}'>{_ENDED[notes.ended]}</div>")
        handle = _handle(session)
        wait = notes.activity.pop_wait(handle) if handle is not None else None
        if wait is not None:
            notices.append(_wait_notice(wait))
    if msg in _MESSAGES and not (msg in _AFTER_ENDED.values() and notes.ended):
        notices.append(f"<div class='box notice' id=notice>{_e(_MESSAGES[msg])}</div>")
    return Reply(
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        # An empty icon: no /favicon.ico request, which would wait for the session lock like any other.
        "<link rel=icon href='data:,'>"
        f"<title>{_e(title)} · sessionmw demo</title><style>{STYLE}</style></head><body>"
        "<header><a class=brand href='/'>sessionmw demo</a><nav>"
        "<a id=nav-home href='/'>Counter</a><a id=nav-sessions href='/sessions'>Your sessions</a>"
        "<a id=nav-admin href='/admin'>Admin</a><a id=nav-status href='/status'>Status (read-only)</a>"
        "<a id=nav-slow href='/slow'>Slow page</a><a id=nav-metrics href='/metrics'>Metrics</a></nav>"
        f"<span class=who>{who}</span></header>"
        f"<h1>{_e(title)}</h1>{''.join(notices)}{body}</body></html>",
        status=status,
    )


def finish(session: Session, reply: Reply) -> Reply:
    """Settle what the request's own events ask of its reply, after the page or action ran.

    A request whose cookie named a session that ended (elsewhere, or by timing out) says so on its
    page, once: unless the request stored a new session (whose cookie replaces the stale one), the
    stale cookie is deleted, so the next request is a plain signed-out one. An action that stored a
    new session passes the news on to the page it redirects to.
    """
    ended = current_notes().ended
    if ended is None:
        return reply
    replaced = session.is_new and session.modified
    if reply.location is None:
        reply.forget_cookie = not replaced
    elif replaced and not urlsplit(reply.location).query:
        reply.location += f"?msg={_AFTER_ENDED[ended]}"
    return reply


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
            "session of the same user, then see both on <a href='/sessions'>Your sessions</a>. A name has at "
            f"most {MAX_SESSIONS_PER_USER} sessions (<code>max_sessions_per_user</code>): one more sign-in ends "
            "its oldest.</p>"
        )
    else:
        account = (
            f"<p>You are <b>{_e(user)}</b>, signed in at {_e(session.get('signed_in_at', '?'))}.</p>"
            "<form method=post action='/logout'><button id=logout>Sign out</button></form> "
            "<a href='/sessions'>See all your sessions</a>"
        )
    handle = _handle(session)
    sid = f"<code id=sid>{_e(short_sid(handle))}…</code>" if handle is not None else "<i>none yet</i>"
    body = (
        "<div class=box><span class=count id=count>" + str(count) + "</span>"
        "<form method=post action='/increment'><button id=inc class=primary>Increment</button></form>"
        "<p class=muted>The count lives on the server; the cookie holds only a signed session id. Each "
        "increment runs under the session lock, so two tabs clicking at once never lose a count. Open the "
        "<a href='/slow'>slow page</a> in another tab and click meanwhile: this page then says how long "
        "the click waited for the lock.</p></div>"
        f"<div class=box>{account}</div>"
        f"<p class=muted>Session: {sid} (its name in the store, a hash of the id) · the cookie is "
        f"<code>{COOKIE_NAME}</code> (HttpOnly, Path=/): a signed id, no data.</p>"
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
    is_current = current is not None and info.sid == current
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
    current = _handle(session)
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
        f"<p>User <b>{_e(session.user_id)}</b> has <b id=session-count>{len(infos)}</b> live "
        f"{_noun(len(infos), 'session')}: one per browser where this name signed in. "
        "Listed with <code>SessionStore.list_sessions(user_id=...)</code>."
        "</p><table id=sessions><thead><tr><th>Session</th><th>Created</th><th>Last access</th><th>First IP</th>"
        "<th>Last IP</th><th>User agent</th><th></th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table><div class=actions><form method=post action='/sessions/end-others'>"
        f"<button class=danger id=end-others{'' if others else ' disabled'}>"
        f"{'End the other session' if others == 1 else 'End all other sessions'} ({others})</button></form></div>"
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
    if matches[0].sid == _handle(session):
        session.invalidate()
        return _redirect("/?msg=signed-out")
    store.terminate(matches[0].sid)
    return _redirect("/sessions?msg=ended")


def end_others(session: Session, store: SessionStore) -> Reply:
    """End every session of the signed-in user but this one."""
    if session.user_id is None:
        return _redirect("/sessions?msg=need-login")
    current = _handle(session)
    for info in _own_sessions(session, store):
        if info.sid != current:
            store.terminate(info.sid)
    return _redirect("/sessions?msg=ended-others")


def admin(session: Session, store: SessionStore, msg: str | None = None) -> Reply:
    """Every session of the site, grouped by user, with a button to end all of a user's sessions."""
    now = time.time()
    infos = store.list_sessions()
    stats = store.stats()
    current = _handle(session)
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
                    f"<button class='danger end-user'>End {_e(user)}'s {plural(len(group), 'session')}</button>"
                    "</form>"
                )
            else:
                action = ""
            rows.append(_row(info, current, now, action, user=user))
    live, users = int(stats.get("sessions", 0)), int(stats.get("users", 0))
    body = (
        f"<p><b id=stat-sessions>{live}</b> live {_noun(live, 'session')} of "
        f"<b id=stat-users>{users}</b> signed-in {_noun(users, 'user')}, from "
        "<code>SessionStore.list_sessions()</code> and <code>stats()</code>. "
        "<span class=muted>A real site shows this page to administrators only.</span></p>"
        "<table id=admin><thead><tr><th>User</th><th>Session</th><th>Created</th><th>Last access</th>"
        "<th>First IP</th><th>Last IP</th><th>User agent</th><th></th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
        + _stats_box(stats, now)
        + _lock_waits_box(now)
    )
    return _page(session, "Admin: all sessions", body, msg)


def _figure(name: str, value: float, now: float) -> str:
    if name == "oldest":
        return _when(value, now) if value else "-"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _stats_box(stats: Mapping[str, float], now: float) -> str:
    """``SessionStore.stats()``, every figure of it."""
    rows = "".join(
        f"<tr data-figure='{_e(k)}'><td><code>{_e(k)}</code></td><td>{_figure(k, v, now)}</td></tr>"
        for k, v in stats.items()
    )
    return (
        "<div class=box id=stats><h2>The store: <code>SessionStore.stats()</code></h2>"
        "<table><thead><tr><th>Figure</th><th>Value</th></tr></thead><tbody>"
        f"{rows}</tbody></table><p class=muted>The same figures as <code>sessionmw stats</code>; memcached adds "
        "its evictions, Redis its evicted keys.</p></div>"
    )


def _lock_waits_box(now: float) -> str:
    """The lock waits and event counts heard since the demo started (the demo's session listener)."""
    activity = current_notes().activity
    counts = activity.event_counts()
    waits = activity.recent_waits()
    waited = counts.get("lock_waited", 0)
    rows = "".join(
        f"<tr class=wait-row data-path='{_e(w.path)}'><td>{_when(w.at, now)}</td>"
        f"<td class=wait-seconds>{_seconds(w.seconds)}</td><td><code>{_e(w.path)}</code></td>"
        f"<td><code>{_e(short_sid(w.handle))}…</code></td>"
        f"<td>{'the slow page' if w.holder == 'slow' else '-'}</td></tr>"
        for w in waits
    )
    table = (
        "<table id=waits><thead><tr><th>When</th><th>Waited</th><th>Path</th><th>Session</th><th>Lock held by</th>"
        f"</tr></thead><tbody>{rows}</tbody></table>"
        if waits
        else "<p class=muted>None yet: open the <a href='/slow'>slow page</a> and, while it loads, click "
        "<b>Increment</b> in another tab.</p>"
    )
    kinds = " · ".join(
        f"<span data-kind='{_e(k)}'>{_e(k)} <b>{n}</b></span>" for k, n in sorted(counts.items(), key=lambda kv: kv[0])
    )
    return (
        "<div class=box id=lock-waits><h2>Lock waits</h2>"
        f"<p><b id=lock-wait-count>{waited}</b> {_noun(waited, 'request')} waited for a session lock since the "
        f"demo started{'; the latest:' if waits else '.'}</p>{table}"
        f"<p class=muted id=event-counts>Session events heard: {kinds or 'none yet'}. They come from "
        "<code>listeners=[...]</code>; the same events feed the Prometheus metrics on "
        "<a href='/metrics'>/metrics</a>.</p></div>"
    )


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
    handle = _handle(session)
    sid = "<i>none yet</i>" if handle is None else f"<code>{_e(short_sid(handle))}…</code>"
    held = handle is not None and current_notes().activity.slow_holding(handle)
    holding = (
        "<div class='box warn' id=slow-holding>The slow page of this session holds its lock right now: a "
        "read-write page waits for it, this one does not.</div>"
        if held
        else ""
    )
    body = (
        "<p>This route is marked <code>@read_only</code>: it reads the session without taking the lock and "
        "never writes it back, so it answers at once even while the <a href='/slow'>slow page</a> holds "
        "the lock in another tab.</p>"
        f"{holding}<div class=box><p>Read-only: <b id=read-only>{'yes' if session.read_only else 'no'}</b> · "
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


def slow_start(session: Session, seconds: float) -> None:
    """Change the session before sleeping, so the request visibly holds its lock for ``seconds``."""
    session["slow_visits"] = int(session.get("slow_visits", 0)) + 1
    handle = _handle(session)
    if handle is not None:  # a new session has no request to keep waiting
        current_notes().activity.slow_started(handle, seconds)


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


def http_error(status: int, path: str) -> Reply:
    """The HTML page of an HTTP error the demo's router answers (404 for an unknown URL, 405...)."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    if status == 404:
        text = f"There is no page at <code>{_e(path)}</code>."
    elif status == 405:
        text = f"<code>{_e(path)}</code> does not answer this method: its buttons send forms from the demo's pages."
    else:
        text = f"The request for <code>{_e(path)}</code> could not be answered."
    body = (
        f"<div class=box id=http-error data-status='{status}'><p>{text}</p>"
        "<p><a href='/'>Back to the counter</a></p></div>"
    )
    return _page(None, f"{status} {phrase}", body, status=status)


def metrics(listener: Any) -> Reply:
    """The Prometheus metrics of the demo's ``PrometheusListener``, or how to install the extra."""
    if listener is None:
        body = (
            "<div class=box id=metrics-missing><p>The metrics need <code>prometheus_client</code>:</p>"
            "<p><code>pip install 'sessionmw[prometheus]'</code></p><p>then start the demo again. This page then "
            "answers in Prometheus' text format: counters of session events, histograms of lock waits, lock "
            "holds and backend operations, and a gauge of the requests waiting for a lock.</p></div>"
        )
        return _page(None, "Metrics", body, status=501)
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Reply(generate_latest(listener.registry).decode("utf-8"), media_type=CONTENT_TYPE_LATEST)
