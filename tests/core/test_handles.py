"""Hashed ids at rest, rotation and encryption in the core, with no server: what the flows ask of a backend."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from sessionmw import Session
from sessionmw.backends.base import Record
from sessionmw.core.cookies import new_session_id
from sessionmw.core.crypto import OVERHEAD, RecordCipher
from sessionmw.core.envelope import MAGIC, AtRest, is_forward
from sessionmw.core.handles import HANDLE_LENGTH, handle_of, is_handle
from sessionmw.core.ops import BackendOp, Emit, Save, UserSessions
from sessionmw.core.route import READ_WRITE, Route

from .script import NOW, SID, Script, close, make_core, record

HANDLE = handle_of(SID)


class EventScript(Script):
    """A :class:`Script` that also keeps the events the flows emit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[Any] = []

    def _answer(self, op: Any) -> Any:
        if isinstance(op, Emit):
            self.events.append(op.event)
            return None
        return super()._answer(op)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


def listener(event: Any) -> None:
    """A listener, so the core emits events."""


def stored_sids(script: Script) -> set[str]:
    """Every name the flows gave the backend."""
    return {op.sid for op in script.ops if isinstance(op, BackendOp) and not isinstance(op, UserSessions)}


# -- the handle ---------------------------------------------------------------------------------


def test_a_handle_is_a_fixed_prefix_and_sha256_in_urlsafe_base64() -> None:
    sid = new_session_id()
    h = handle_of(sid)
    assert h == handle_of(sid), "the same id always has the same handle"
    assert h.startswith("h1.") and len(h) == HANDLE_LENGTH == 46
    assert set(h[3:]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert is_handle(h) and not is_handle(sid), "a raw id (43 characters, no '.') is never a handle"
    assert sid not in h and handle_of(new_session_id()) != h


def test_the_handle_is_sha256_of_a_domain_label_and_the_id() -> None:
    import base64
    import hashlib

    digest = hashlib.sha256(b"sessionmw:" + SID.encode()).digest()
    assert HANDLE == "h1." + base64.urlsafe_b64encode(digest).decode().rstrip("=")
    assert HANDLE != "h1." + base64.urlsafe_b64encode(hashlib.sha256(SID.encode()).digest()).decode().rstrip("=")


def test_session_handle_is_the_hash_of_its_id() -> None:
    core = make_core()
    s = core.new_session(Route(), None, None)
    assert s.handle == handle_of(s.id or "")
    s.regenerate()
    assert s.handle == handle_of(s.id or "")
    assert Session({"a": 1}).handle is None, "a detached session has no id, hence no handle"


# -- every backend operation names the handle -----------------------------------------------------


@pytest.mark.parametrize(
    "act",
    [
        pytest.param(lambda s: s.get("a"), id="read"),
        pytest.param(lambda s: s.__setitem__("a", 2), id="write"),
        pytest.param(lambda s: s.regenerate(), id="regenerate"),
        pytest.param(lambda s: s.bind_user("u"), id="bind"),
        pytest.param(lambda s: s.invalidate(), id="invalidate"),
        pytest.param(lambda s: s.clear(), id="empty"),
    ],
)
def test_no_backend_operation_ever_names_a_raw_id(act: Any) -> None:
    core = make_core(max_sessions_per_user=1, rotate_every=3600)
    script = EventScript(record(core, {"a": 1}))
    s = core.new_session(READ_WRITE, (SID, NOW), None)
    script.run(core.open(s, lock=None, now=NOW, mono=0.0))
    act(s)
    close(core, script, s)
    names = stored_sids(script)
    assert names and all(is_handle(n) for n in names), names
    assert SID not in names and (s.id is None or s.id not in names)


def test_a_new_session_is_created_under_the_handle_of_its_new_id() -> None:
    core = make_core()
    script = Script(None)
    s = core.new_session(Route(), None, None)
    s["a"] = 1
    outcome = close(core, script, s)
    (op,) = script.ops
    assert outcome.cookie is not None and core.signer.unsign(outcome.cookie.value, None) == s.id
    assert op.sid == handle_of(s.id or "") == s.handle


def test_events_carry_the_handle() -> None:
    core = make_core(listeners=[listener])
    script = EventScript(record(core, {"a": 1}))
    s = core.new_session(READ_WRITE, (SID, NOW), None)
    script.run(core.open(s, lock=None, now=NOW, mono=0.0))
    s.bind_user("u")
    close(core, script, s)
    assert script.kinds() == ["loaded", "regenerated", "bound"]
    assert script.events[0].handle == HANDLE
    assert {e.handle for e in script.events[1:]} == {s.handle}


# -- the upgrade path: sessions stored under their raw id ---------------------------------------


def _legacy_store(core: Any) -> tuple[dict[str, Record], Script]:
    store: dict[str, Record] = {SID: record(core, {"a": 1})}
    script = Script(
        LockAndLoad=lambda op: (True, store.get(op.sid)),
        Load=lambda op: store.get(op.sid),
        Create=lambda op: store.setdefault(op.sid, op.record) is op.record,
        Save=lambda op: store.__setitem__(op.sid, op.record) is None,
        Delete=lambda op: store.pop(op.sid, None) and None,
    )
    return store, script


def test_a_session_stored_under_its_raw_id_moves_to_a_new_id_under_the_raw_ids_lock() -> None:
    core = make_core()
    store, script = _legacy_store(core)
    s = core.new_session(READ_WRITE, (SID, NOW), None)
    script.run(core.open(s, lock=None, now=NOW, mono=0.0))
    assert dict(s) == {"a": 1} and not s.is_new
    new = s.id
    assert new is not None and new != SID, "the raw id was in every copy of the store: it is replaced"
    assert [(type(op).__name__, op.sid) for op in script.ops] == [
        ("LockAndLoad", HANDLE),  # not there
        ("Load", SID),  # one look at the raw id, only on a miss
        ("Release", HANDLE),
        ("LockAndLoad", SID),  # the raw id's lock: no one else moves or writes it meanwhile
        ("Create", handle_of(new)),  # the session, under its new id's handle
        ("Create", HANDLE),  # the raw id's handle forwards there for rotate_grace
        ("Delete", SID),
        ("Release", SID),
        ("LockAndLoad", HANDLE),  # as any request with the raw id would: the forward...
        ("Release", HANDLE),
        ("LockAndLoad", handle_of(new)),  # ... to the new id, whose lock the request holds
    ]
    assert set(store) == {HANDLE, handle_of(new)} and is_forward(store[HANDLE])
    assert store[handle_of(new)].created == store[HANDLE].created == NOW - 100
    script.ops.clear()
    s["a"] = 2
    outcome = close(core, script, s)
    assert [(type(op).__name__, op.sid) for op in script.ops] == [("Save", handle_of(new))]
    assert outcome.cookie is not None and core.signer.unsign(outcome.cookie.value, None) == new

    # A parallel request with the raw id, within the grace, follows the forward.
    t = core.new_session(READ_WRITE, (SID, NOW), None)
    script.run(core.open(t, lock=None, now=NOW + 1, mono=0.0))
    assert t.id == new and dict(t) == {"a": 2}


def test_a_miss_costs_a_look_at_the_raw_id_and_one_more_at_the_handle() -> None:
    core = make_core()
    script = Script(None)
    s = core.new_session(READ_WRITE, (SID, NOW), None)
    script.run(core.open(s, lock=None, now=NOW, mono=0.0))
    assert [(type(op).__name__, op.sid) for op in script.ops] == [
        ("LockAndLoad", HANDLE),
        ("Load", SID),
        ("Load", HANDLE),
        ("Release", HANDLE),
    ]
    assert s.is_new


def test_a_session_moved_between_the_two_looks_is_found_under_its_handle() -> None:
    # Another request moved it after this one missed the handle and before it read the raw id.
    core = make_core()
    new = new_session_id()
    moved = record(core, {"a": 1})
    forward = AtRest.forward(moved, SID, new, NOW + 5)
    store: dict[str, Record] = {handle_of(new): moved}
    looks = iter([None])  # the first look under the handle: not there yet

    def lock_and_load(op: Any) -> Any:
        return (True, next(looks, store.get(op.sid)))

    script = Script(LockAndLoad=lock_and_load, Load=lambda op: store.get(op.sid))
    store[HANDLE] = forward
    s = core.new_session(READ_WRITE, (SID, NOW), None)
    script.run(core.open(s, lock=None, now=NOW, mono=0.0))
    assert s.id == new and dict(s) == {"a": 1}
    assert [(type(op).__name__, op.sid) for op in script.ops] == [
        ("LockAndLoad", HANDLE),
        ("Load", SID),
        ("Load", HANDLE),  # the forward is there now
        ("Release", HANDLE),
        ("LockAndLoad", HANDLE),
        ("Release", HANDLE),
        ("LockAndLoad", handle_of(new)),
    ]


def test_a_read_only_request_reads_a_raw_id_session_where_it_is() -> None:
    core = make_core(touch_interval=10)
    store = {SID: record(core, {"a": 1}, last_access=NOW - 20)}
    script = Script(Load=lambda op: store.get(op.sid))
    s = core.new_session(Route(read_only=True), (SID, NOW), None)
    script.run(core.open(s, lock=None, now=NOW, mono=0.0))
    assert dict(s) == {"a": 1}
    script.ops.clear()
    close(core, script, s, now=NOW)
    assert [(type(op).__name__, op.sid) for op in script.ops] == [("Refresh", SID)]


def test_a_raw_id_session_gone_before_its_lock_was_had_is_not_created() -> None:
    core = make_core()
    answers = {SID: record(core, {"a": 1})}
    # Another request moved it between the look and the lock: the raw id is empty under its lock.
    script = Script(LockAndLoad=lambda op: (True, None), Load=lambda op: answers.get(op.sid))
    s = core.new_session(READ_WRITE, (SID, NOW), None)
    script.run(core.open(s, lock=None, now=NOW, mono=0.0))
    assert [(type(op).__name__, op.sid) for op in script.ops] == [
        ("LockAndLoad", HANDLE),
        ("Load", SID),
        ("Release", HANDLE),
        ("LockAndLoad", SID),
        ("Release", SID),
        ("LockAndLoad", HANDLE),  # whoever moved it holds it now, or it is gone: look under the handle
        ("Release", HANDLE),
    ]
    assert s.is_new


def test_moving_a_raw_id_session_encrypts_it_when_a_key_is_set() -> None:
    core = make_core(encryption_key="k" * 32)
    store, script = _legacy_store(core)
    s = core.new_session(READ_WRITE, (SID, NOW), None)
    script.run(core.open(s, lock=None, now=NOW, mono=0.0))
    assert dict(s) == {"a": 1}
    moved = store[handle_of(s.id or "")]
    assert moved.data.startswith(MAGIC + b"E") and b'"a"' not in moved.data


# -- encryption ---------------------------------------------------------------------------------


def test_cipher_first_key_encrypts_every_key_decrypts() -> None:
    old, new = b"old-key-" + secrets.token_bytes(24), b"new-key-" + secrets.token_bytes(24)
    blob = RecordCipher((old,)).encrypt(b"secret", b"aad")
    assert len(blob) == len(b"secret") + OVERHEAD and b"secret" not in blob
    assert RecordCipher((new, old)).decrypt(blob, b"aad") == b"secret"
    assert RecordCipher((new,)).decrypt(blob, b"aad") is None
    assert RecordCipher((old,)).decrypt(blob, b"other aad") is None
    assert RecordCipher((old,)).decrypt(blob[:-1] + bytes([blob[-1] ^ 1]), b"aad") is None
    assert RecordCipher((old,)).encrypt(b"secret", b"aad") != blob, "a fresh nonce each time"


def _at_rest(**options: Any) -> AtRest:
    return make_core(**options).at_rest


def test_encrypted_data_is_bound_to_its_handle_and_its_metadata() -> None:
    at_rest = _at_rest(encryption_key="k" * 32)
    rec = Record(b'{"card":"4111"}', created=NOW, last_access=NOW, user_id="alice")
    sealed = at_rest.seal(rec, HANDLE, NOW)
    assert b"4111" not in sealed.data
    assert at_rest.open(sealed, HANDLE).payload == rec.data
    assert at_rest.open(sealed, HANDLE).since == NOW
    moved = at_rest.open(sealed, handle_of(new_session_id()))
    assert moved.payload is None and "decrypt" in (moved.problem or ""), "copied to another session"
    assert at_rest.open(sealed._replace(user_id="mallory"), HANDLE).payload is None, "user changed in the store"
    assert at_rest.open(sealed._replace(user_id=None), HANDLE).payload is None
    assert at_rest.open(sealed._replace(created=NOW + 3600), HANDLE).payload is None, "lifetime stretched"
    assert at_rest.open(sealed._replace(idle_override=True), HANDLE).payload is None
    # Times a backend refreshes without rewriting the data do not matter.
    assert at_rest.open(sealed._replace(last_access=NOW + 5, expires=NOW + 99, last_ip="1.2.3.4"), HANDLE).payload


def test_with_a_key_set_plain_data_under_a_handle_is_not_trusted() -> None:
    at_rest = _at_rest(encryption_key="k" * 32)
    planted = Record(b'{"is_admin":true}', created=NOW, last_access=NOW)
    assert at_rest.open(planted, HANDLE).payload is None
    assert at_rest.open(planted, SID, bare_ok=True).payload == planted.data, "stored under its raw id"
    dated = _at_rest(rotate_every=60).seal(planted, HANDLE, NOW)
    assert at_rest.open(dated, HANDLE).payload is None


def test_without_a_key_encrypted_data_is_unreadable() -> None:
    sealed = _at_rest(encryption_key="k" * 32).seal(Record(b"{}", created=NOW, last_access=NOW), HANDLE, NOW)
    opened = _at_rest().open(sealed, HANDLE)
    assert opened.payload is None and "no encryption_key" in (opened.problem or "")


def test_bare_data_is_stored_as_it_was_without_rotation_or_encryption() -> None:
    rec = Record(b'{"a":1}', created=NOW, last_access=NOW)
    assert _at_rest().seal(rec, HANDLE, NOW) is rec
    dated = _at_rest(rotate_every=60).seal(rec, HANDLE, NOW - 5)
    assert dated.data.endswith(rec.data) and dated.data.startswith(MAGIC + b"P")
    assert _at_rest().open(dated, HANDLE) == (rec.data, NOW - 5, None)


def test_an_undecryptable_session_starts_afresh_and_is_logged() -> None:
    core = make_core(encryption_key="k" * 32)
    other = handle_of(new_session_id())
    copied = core.at_rest.seal(record(core, {"a": 1}), other, NOW)
    script = Script(copied)
    s = core.new_session(READ_WRITE, (SID, NOW), None)
    script.run(core.open(s, lock=None, now=NOW, mono=0.0))
    assert s.is_new and dict(s) == {}
    assert script.names == ["LockAndLoad", "Release"]
    assert any("cannot be read" in m and "decrypt" in m for m in script.messages())


# -- rotation -----------------------------------------------------------------------------------


def test_forwards_mask_the_new_id_with_a_pad_of_the_old_one() -> None:
    old, new = new_session_id(), new_session_id()
    fwd = AtRest.forward(Record(b"{}", created=NOW, last_access=NOW, user_id=7), old, new, NOW + 5)
    assert is_forward(fwd) and fwd.expires == NOW + 5 and fwd.user_id == 7
    assert new.encode() not in fwd.data and handle_of(new).encode() not in fwd.data
    assert AtRest.follow(fwd, old) == (new, NOW + 5)
    wrong = AtRest.follow(fwd, new_session_id())
    assert wrong is not None and wrong.new_id != new, "only the old id unmasks it"
    assert AtRest.follow(Record(b"{}", created=NOW, last_access=NOW), old) is None


def _rotating(**options: Any) -> tuple[Any, EventScript, dict[str, Record]]:
    core = make_core(listeners=[listener], **options)
    store: dict[str, Record] = {HANDLE: record(core, {"a": 1}, created=NOW - 100)}
    script = EventScript(
        LockAndLoad=lambda op: (True, store.get(op.sid)),
        Load=lambda op: store.get(op.sid),
        Create=lambda op: store.setdefault(op.sid, op.record) is op.record,
        Save=lambda op: store.__setitem__(op.sid, op.record) is None,
        Delete=lambda op: store.pop(op.sid, None) and None,
    )
    return core, script, store


def test_an_old_session_gets_a_new_id_and_its_old_id_forwards_for_the_grace() -> None:
    core, script, store = _rotating(rotate_every=60, rotate_grace=5)
    s = core.new_session(READ_WRITE, (SID, NOW), None)
    script.run(core.open(s, lock=None, now=NOW, mono=0.0))
    assert s._state.rotate
    script.ops.clear()
    outcome = close(core, script, s, now=NOW)
    new = s.id
    assert new is not None and new != SID and outcome.cookie is not None
    assert core.signer.unsign(outcome.cookie.value, None) == new
    assert script.names == ["Extend", "Create", "Save"], "create the new record, then fence the forward"
    assert script.ops[1].sid == handle_of(new) and script.ops[2].sid == HANDLE
    assert is_forward(store[HANDLE]) and store[HANDLE].expires == NOW + 5
    assert store[handle_of(new)].created == NOW - 100, "the absolute lifetime does not restart"
    assert script.kinds()[-2:] == ["rotated", "terminated"]
    assert script.events[-2].handle == handle_of(new)
    assert (script.events[-1].handle, script.events[-1].reason) == (HANDLE, "rotated"), "the old id ends"

    # Within the grace, the old cookie leads to the new session and gets its cookie.
    t = core.new_session(READ_WRITE, (SID, NOW), None)
    script.ops.clear()
    script.run(core.open(t, lock=None, now=NOW + 4, mono=0.0))
    assert dict(t) == {"a": 1} and t.id == new and not t._state.rotate
    assert [(n, op.sid) for n, op in zip(script.names, script.ops, strict=True)] == [
        ("LockAndLoad", HANDLE),
        ("Release", HANDLE),
        ("LockAndLoad", handle_of(new)),
    ]
    out = close(core, script, t, now=NOW + 4)
    assert out.cookie is not None and core.signer.unsign(out.cookie.value, None) == new

    # After it, the old id is stale: a fresh session, and an event.
    script.events.clear()
    u = core.new_session(READ_WRITE, (SID, NOW), None)
    script.run(core.open(u, lock=None, now=NOW + 6, mono=0.0))
    assert u.is_new and dict(u) == {}
    assert script.kinds() == ["stale_id"] and script.events[0].handle == HANDLE
    assert any("after its grace" in m for m in script.messages())


def test_rotation_waits_for_rotate_every_and_for_a_read_write_request() -> None:
    core, script, _ = _rotating(rotate_every=200)
    s = core.new_session(READ_WRITE, (SID, NOW), None)
    script.run(core.open(s, lock=None, now=NOW, mono=0.0))
    assert not s._state.rotate, "created 100 s ago: not due"
    core, script, _ = _rotating(rotate_every=60)
    r = core.new_session(Route(read_only=True), (SID, NOW), None)
    script.run(core.open(r, lock=None, now=NOW, mono=0.0))
    assert not r._state.rotate
    close(core, script, r, now=NOW)
    assert "Create" not in script.names and r.id == SID


def test_a_rotation_whose_forward_is_refused_leaves_no_new_record() -> None:
    core, script, store = _rotating(rotate_every=60)
    s = core.new_session(READ_WRITE, (SID, NOW), None)
    script.run(core.open(s, lock=None, now=NOW, mono=0.0))
    script.replies[Save] = False  # the session was ended meanwhile, or the lock lost
    outcome = close(core, script, s, now=NOW)
    assert outcome.cookie is None and s.id == SID
    assert set(store) == {HANDLE} and not is_forward(store[HANDLE]), "the new copy was deleted again"
    assert "write_dropped" in script.kinds()


def test_regenerate_and_bind_user_kill_the_old_id_at_once_even_when_rotation_is_due() -> None:
    for act in (lambda s: s.regenerate(), lambda s: s.bind_user("u")):
        core, script, store = _rotating(rotate_every=60)
        s = core.new_session(READ_WRITE, (SID, NOW), None)
        script.run(core.open(s, lock=None, now=NOW, mono=0.0))
        act(s)
        close(core, script, s, now=NOW)
        assert HANDLE not in store, "no forward: the old id is dead at once"
        assert "rotated" not in script.kinds()


def test_forwards_do_not_count_against_max_sessions_per_user() -> None:
    core = make_core(max_sessions_per_user=2)
    fwd = AtRest.forward(record(core, {}, created=NOW - 500), new_session_id(), new_session_id(), NOW + 5)
    others = [("h1.fwd", fwd), ("h1.old", record(core, {}, created=NOW - 50))]
    script = Script(record(core, {"a": 1}), UserSessions=others)
    s = core.new_session(READ_WRITE, (SID, NOW), None)
    script.run(core.open(s, lock=None, now=NOW, mono=0.0))
    s.bind_user("u")
    close(core, script, s)
    deleted = [op.sid for op in script.ops if type(op).__name__ == "Delete"]
    assert deleted == [HANDLE], "one other session (h1.old) fits in the limit; the forward is not one"
