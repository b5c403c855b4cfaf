"""What a copy of the store gives an attacker: read the raw store of every backend, as a dump would.

Each backend's store is read with its own client, around sessionmw: Redis keys and values (the per-user
index sets too), memcached keys by ``lru_crawler metadump`` and their values, SQL rows, file names and
contents, the memory backend's dicts; both tiers of a tiered store. The tests then look for what must
not be there: a live session id, anywhere (handles only), and, with ``encryption_key``, plaintext.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

import httpx2
import pytest

from sessionmw import SessionStore
from sessionmw.backends import open_backend
from sessionmw.backends.base import Record, encode_record
from sessionmw.backends.tiered import TieredSpec
from sessionmw.core.cookies import IdSigner, new_session_id
from sessionmw.core.handles import handle_of, is_handle
from sessionmw.core.serializers import TaggedJSONSerializer

from ..apps import make_wsgi_app
from ..conftest import BACKENDS, TIERED, backend_url_for
from .test_middleware_conformance import SECRET, client_for, put_cookie, sid_of

KINDS = [*BACKENDS, *TIERED]
KEY_A = "first-key-" + "a" * 32
KEY_B = "second-key-" + "b" * 32


@pytest.fixture(params=KINDS)
def store_url(request: pytest.FixtureRequest, shared_tmp: Path) -> Any:
    """A backend URL (a TieredSpec for a tiered kind), once per backend kind."""
    return backend_url_for(request.param, request, shared_tmp)


# -- reading the raw store ----------------------------------------------------------------------


Dump = list[tuple[bytes, bytes]]

#: What the memcached backend leaves in place of a deleted session (its key names a dead session).
TOMBSTONE = b"\x00ended"


def raw_store(url: Any, prefix: str) -> Dump:
    """Every ``(key, value)`` under ``prefix`` in the store at ``url``, as bytes, read around sessionmw.

    A set's members, a row's columns and a file's content are values of their key.
    """
    if isinstance(url, TieredSpec):
        return raw_store(url.fast, prefix) + raw_store(url.durable, prefix)
    scheme = url.split(":", 1)[0]
    if scheme == "memory":
        return _memory(url, prefix)
    if scheme == "file":
        return _files(Path(url[len("file://") :]), prefix)
    if scheme == "redis":
        return _redis(url, prefix)
    if scheme == "memcached":
        return _memcached(url, prefix)
    return _sql(url, prefix)


def _memory(url: str, prefix: str) -> Dump:
    from sessionmw.backends.memory import _STORES

    store = _STORES[url[len("memory://") :]]
    out: Dump = [(key.encode(), encode_record(rec)) for key, (rec, _) in store.data.items()]
    out += [(key.encode(), token.encode()) for key, (token, _) in store.locks.items()]
    out += [(key.encode(), m.encode()) for key, members in store.users.items() for m in members]
    return out


def _files(folder: Path, prefix: str) -> Dump:
    out: Dump = []
    for root, dirs, files in os.walk(folder):
        out += [(name.encode(), b"") for name in dirs]
        for name in files:
            path = Path(root) / name
            out.append((str(path.relative_to(folder)).encode(), path.read_bytes() if prefix in str(path) else b""))
    return out


def _redis(url: str, prefix: str) -> Dump:
    import redis

    out: Dump = []
    with redis.Redis.from_url(url) as r:
        for key in r.scan_iter(match=prefix + "*", count=500):
            kind = r.type(key)
            if kind == b"string":
                out.append((key, r.get(key) or b""))
            elif kind == b"set":
                out += [(key, m) for m in r.smembers(key)]
            elif kind == b"hash":
                out += [(key, k + b"=" + v) for k, v in r.hgetall(key).items()]
            elif kind == b"list":
                out += [(key, v) for v in r.lrange(key, 0, -1)]
            else:  # pragma: no cover - sessionmw writes no other type
                raise AssertionError(f"unexpected Redis type {kind!r} at {key!r}")
    return out


def _memcached(url: str, prefix: str) -> Dump:
    from pymemcache.client.base import Client

    host, port = urlsplit(url).netloc.split(",")[0].rsplit(":", 1)
    keys: list[bytes] = []
    for mode in (b"hash", b"all"):  # "hash" sees every item (memcached >= 1.6.9); older servers: "all"
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"lru_crawler metadump " + mode + b"\r\n")
            data = b""
            while not data.endswith(b"END\r\n") and b"ERROR" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        if data.endswith(b"END\r\n"):
            for line in data.split(b"\n"):
                if line.startswith(b"key="):
                    key = unquote_to_bytes(line[4:].split(b" ", 1)[0])
                    if key.startswith(prefix.encode()):
                        keys.append(key)
            break
    else:  # pragma: no cover - the fixture's memcached allows metadump
        raise AssertionError("memcached refused lru_crawler metadump")
    out: Dump = []
    client = Client((host, int(port)))
    try:
        for key in keys:
            value = client.get(key)
            out.append((key, b"" if value is None else bytes(value)))
    finally:
        client.close()
    return out


def _sql(url: str, prefix: str) -> Dump:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sa.text("SELECT * FROM sessmw_sessions WHERE sid LIKE :p")
            rows = conn.execute(query, {"p": prefix + "%"}).mappings().fetchall()
    finally:
        engine.dispose()
    out: Dump = []
    for row in rows:
        key = str(row["sid"]).encode()
        for value in row.values():
            if value is not None:
                out.append((key, bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()))
    return out


def found(dump: Dump, text: str) -> bool:
    """Tell whether ``text`` is anywhere in the dump, in any key or value."""
    needle = text.encode()
    return any(needle in key or needle in value for key, value in dump)


def found_alive(dump: Dump, text: str) -> bool:
    """:func:`found`, leaving out what names a session that is gone, or going, under that name.

    Memcached's tombstones (the key of a deleted session, so a server coming back cannot revive it)
    and Redis's counter and list of the requests waiting for a lock (expiring keys, left by requests
    that waited for the raw id's lock while another moved the session).
    """
    waiting = (b":waiters", b":wakeups")
    return found([(k, v) for k, v in dump if v != TOMBSTONE and not k.endswith(waiting)], text)


def cookie_for(sid: str) -> str:
    return IdSigner([SECRET]).sign(sid)


@pytest.fixture
def wsgi_client() -> Iterator[Any]:
    """A factory of WSGI test clients (closed at the end of the test)."""
    clients: list[httpx2.Client] = []

    def make(**options: Any) -> httpx2.Client:
        options.setdefault("secret_key", SECRET)
        app = make_wsgi_app(**options)
        client = httpx2.Client(transport=httpx2.WSGITransport(app=app), base_url="http://testserver")
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


# -- no live id at rest -------------------------------------------------------------------------


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_the_raw_store_holds_no_session_id_only_handles(adapter: str, store_url: Any, key_prefix: str) -> None:
    ids: list[str] = []
    options = {"backend": store_url, "key_prefix": key_prefix, "rotate_every": 0.3, "rotate_grace": 60}
    with client_for(adapter, **options) as anon, client_for(adapter, **options) as alice1:
        with client_for(adapter, **options) as alice2:
            anon.get("/inc")
            ids.append(sid_of(anon.cookies["session"]))
            for c in (alice1, alice2):
                c.get("/inc")
                ids.append(sid_of(c.cookies["session"]))
                assert c.get("/login/alice").json()["user"] == "alice"
                ids.append(sid_of(c.cookies["session"]))
            # Rotation: the old id's record becomes a forward to the new id; neither may show.
            time.sleep(0.4)
            assert anon.get("/inc").json() == {"n": 2}
            rotated = sid_of(anon.cookies["session"])
            assert rotated != ids[0]
            ids.append(rotated)
            live = [rotated, sid_of(alice1.cookies["session"]), sid_of(alice2.cookies["session"])]

            dump = raw_store(store_url, key_prefix)
            for sid in ids:
                assert not found(dump, sid), f"a session id is in the store: {sid[:6]}..."
            for sid in live:
                assert found(dump, handle_of(sid)), "the dump reads the store (the handle is there)"

            with SessionStore(store_url, key_prefix=key_prefix) as store:
                listed = {i.sid for i in store.list_sessions(user_id="alice")}
                assert listed == {handle_of(live[1]), handle_of(live[2])}
                assert all(is_handle(i.sid) for i in store.list_sessions())
                assert store.terminate(handle_of(live[2])) is True
            assert alice2.get("/inc").json() == {"n": 1}, "terminate() takes the handle"
            assert alice1.get("/inc").json() == {"n": 2}


# -- encryption at rest -------------------------------------------------------------------------


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "clear"])
def test_encrypted_store_holds_no_plaintext(store_url: Any, key_prefix: str, encrypted: bool, wsgi_client: Any) -> None:
    marker = f"MARKER-{uuid.uuid4().hex}"
    options: dict[str, Any] = {"backend": store_url, "key_prefix": key_prefix}
    if encrypted:
        options["encryption_key"] = KEY_A
    c = wsgi_client(**options)
    assert c.get("/set", params={"k": "card", "v": marker}).json()["session"] == {"card": marker}
    c.get("/login/alice")
    assert c.get("/view").json()["session"] == {"card": marker}
    dump = raw_store(store_url, key_prefix)
    assert found(dump, handle_of(sid_of(c.cookies["session"])))
    assert found(dump, marker) is not encrypted, "the control (no encryption_key) sees the marker"
    assert not found(dump, '"card"') or not encrypted, "keys are encrypted too"


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "clear"])
def test_a_record_copied_to_another_sessions_handle_does_not_decrypt(
    store_url: Any, key_prefix: str, encrypted: bool, wsgi_client: Any, caplog: Any
) -> None:
    options: dict[str, Any] = {"backend": store_url, "key_prefix": key_prefix}
    if encrypted:
        options["encryption_key"] = KEY_A
    victim = wsgi_client(**options)
    victim.get("/set", params={"k": "role", "v": "admin"})
    backend = open_backend(store_url, key_prefix=key_prefix)
    try:
        rec = backend.load(handle_of(sid_of(victim.cookies["session"])))
        assert rec is not None
        mine = new_session_id()  # an id the attacker holds a cookie for
        assert backend.create(handle_of(mine), rec, 300)
    finally:
        backend.close()
    assert victim.get("/view").json()["session"] == {"role": "admin"}, "the record reads under its own handle"
    attacker = wsgi_client(**options)
    put_cookie(attacker, cookie_for(mine))
    state = attacker.get("/view").json()
    if encrypted:
        assert state["is_new"] and state["session"] == {}, "a moved record is unreadable"
        assert any("decrypt" in r.getMessage() for r in caplog.records)
    else:
        assert state["session"] == {"role": "admin"}, "the control: without encryption the copy works"


def test_key_rotation_keeps_sessions_readable(store_url: Any, key_prefix: str, wsgi_client: Any) -> None:
    base = {"backend": store_url, "key_prefix": key_prefix}
    old = wsgi_client(**base, encryption_key=KEY_A)
    assert old.get("/inc").json() == {"n": 1}
    cookie = old.cookies["session"]
    # New key first, old key kept: the session reads, and its next write is under the new key.
    rotated = wsgi_client(**base, encryption_key=[KEY_B, KEY_A])
    put_cookie(rotated, cookie)
    assert rotated.get("/inc").json() == {"n": 2}
    only_new = wsgi_client(**base, encryption_key=KEY_B)
    put_cookie(only_new, cookie)
    assert only_new.get("/view").json()["session"] == {"n": 2}
    only_old = wsgi_client(**base, encryption_key=KEY_A)
    put_cookie(only_old, cookie)
    assert only_old.get("/view").json()["is_new"], "written under the new key: the old one alone cannot read it"
    plain = wsgi_client(**base)
    put_cookie(plain, cookie)
    assert plain.get("/view").json()["is_new"], "encrypted data needs its key"


# -- the upgrade path ---------------------------------------------------------------------------


def _store_raw(url: Any, prefix: str, sid: str, data: dict[str, Any], user: str | None) -> None:
    """Store a session under its raw id, as versions before handles did."""
    now = time.time()
    rec = Record(
        data=TaggedJSONSerializer().dumps(data),
        created=now - 10,
        last_access=now - 5,
        user_id=user,
        first_ip="10.0.0.1",
        last_ip="10.0.0.1",
        expires=None,
        version=3,
    )
    backend = open_backend(url, key_prefix=prefix)
    try:
        assert backend.create(sid, rec, 600)
    finally:
        backend.close()


@pytest.mark.parametrize("encrypted", [False, True], ids=["clear", "encrypted"])
def test_sessions_stored_under_raw_ids_survive_the_upgrade(
    store_url: Any, key_prefix: str, encrypted: bool, wsgi_client: Any
) -> None:
    sid = new_session_id()
    _store_raw(store_url, key_prefix, sid, {"n": 41}, "legacy-user")
    assert found(raw_store(store_url, key_prefix), sid), "the old layout: the raw id is a key"
    options: dict[str, Any] = {"backend": store_url, "key_prefix": key_prefix, "rotate_grace": 0.3}
    if encrypted:
        options["encryption_key"] = KEY_A
    c = wsgi_client(**options)
    put_cookie(c, cookie_for(sid))
    view = c.get("/view").json()  # read-only: read where it is
    assert view["session"] == {"n": 41} and view["user"] == "legacy-user"
    assert c.get("/inc").json() == {"n": 42}, "the first read-write request moves it"
    new = sid_of(c.cookies["session"])
    assert new != sid, "the raw id was in every copy of the store made before: it is replaced"
    assert c.get("/inc").json() == {"n": 43}
    dump = raw_store(store_url, key_prefix)
    assert not found(dump, new) and found(dump, handle_of(new))
    assert not found_alive(dump, sid), "the raw id is gone (memcached keeps a tombstone under it)"
    time.sleep(0.4)  # past rotate_grace: the raw id's forward no longer counts as a session
    with SessionStore(store_url, key_prefix=key_prefix) as store:
        assert [i.sid for i in store.list_sessions(user_id="legacy-user")] == [handle_of(new)]
    late = wsgi_client(**options)
    put_cookie(late, cookie_for(sid))
    assert late.get("/view").json()["is_new"], "after the grace the raw id is dead"


def test_parallel_requests_of_a_raw_id_session_move_it_once_and_lose_nothing(store_url: Any, key_prefix: str) -> None:
    sid = new_session_id()
    _store_raw(store_url, key_prefix, sid, {"n": 100}, None)
    app = make_wsgi_app(secret_key=SECRET, backend=store_url, key_prefix=key_prefix, lock_timeout=30)
    results: list[tuple[int, str]] = []
    errors: list[BaseException] = []

    def hit() -> None:
        try:
            with httpx2.Client(transport=httpx2.WSGITransport(app=app), base_url="http://testserver") as c:
                put_cookie(c, cookie_for(sid))
                results.append((c.get("/inc").json()["n"], sid_of(c.cookies["session"])))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=hit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(n for n, _ in results) == list(range(101, 107)), "every request landed in the one moved session"
    (new,) = {cookie for _, cookie in results}
    dump = raw_store(store_url, key_prefix)
    assert not found_alive(dump, sid), [kv for kv in dump if sid.encode() in kv[0] + kv[1]]
    assert not found(dump, new) and found(dump, handle_of(new))
