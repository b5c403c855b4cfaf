"""The stored record's metadata line: its compact form, the older full form still read, and the
Redis scripts that rewrite the line in place on either form.

A line in the older form is written here as text, exactly as versions before the compact form wrote
it (full float times, the last IP always spelled out, ``false``/``true``), since no code writes it now.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from sessionmw.backends import Record, Touch, open_backend
from sessionmw.backends.base import decode_record, encode_record
from sessionmw.backends.redis import RedisBackend, scripts
from sessionmw.backends.redis.records import encode
from sessionmw.core.cookies import new_session_id
from sessionmw.core.lifetime import to_ms
from sessionmw.core.outcome import RequestInfo
from sessionmw.core.state import RequestState

from ..core.script import make_core

redis_service = pytest.mark.service("redis")

T = 1764595200.1234567


def old_line(r: Record, nine: bool = False) -> bytes:
    """``r`` as the older full form wrote it (``json.dumps`` of every field, in Record order)."""
    fields: list[Any] = list(r[1:])
    if nine:
        fields = fields[:9]
    return json.dumps(fields, separators=(",", ":")).encode() + b"\n" + r.data


RECORDS = [
    Record(b'{"a":1}', T, T + 5, None, "192.0.2.1", "192.0.2.1", "Mozilla/5.0", False, None, T + 1805, 3),
    Record(b"\x00\n]", T, T, "bob", "192.0.2.1", "198.51.100.7", None, True, 9.5, T + 9.5, 1),
    Record(b"", T, T, 7, None, None, 'ua, "q" ]\\ \u00e9', False, None, None, 0),
    Record(b"x", T, T, 'a"l,i]ce', None, "::1", None, True, None, None, 12),
    Record(b"y", T, T, None, "::1", None, None, False, None, T, 2),
]


@pytest.mark.parametrize("record", RECORDS)
def test_a_record_in_the_older_full_form_decodes_to_the_same_record(record: Record) -> None:
    assert decode_record(old_line(record)) == record
    assert decode_record(encode_record(record)) == record
    assert decode_record(encode_record(record)).idle_override is record.idle_override, "a bool, not 0 or 1"
    assert decode_record(old_line(record, nine=True)) == record._replace(version=0), "nine fields: version 0"
    assert encode(record) == encode_record(record), "the Redis encoder writes the same bytes"


def test_the_compact_form_shortens_the_last_ip_and_the_override_flag() -> None:
    same, other, unknown_last, no_first = RECORDS[0], RECORDS[1], RECORDS[4], RECORDS[3]
    assert json.loads(encode_record(same).partition(b"\n")[0])[4:7] == [0, "Mozilla/5.0", 0]
    assert json.loads(encode_record(other).partition(b"\n")[0])[4:7] == ["198.51.100.7", None, 1]
    assert json.loads(encode_record(unknown_last).partition(b"\n")[0])[4] is None, "unknown stays unknown"
    assert json.loads(encode_record(no_first).partition(b"\n")[0])[3:5] == [None, "::1"]
    ms = same._replace(created=to_ms(T), last_access=to_ms(T + 5), expires=round(to_ms(T + 5) + 1800, 3))
    head = encode_record(ms).partition(b"\n")[0]
    assert head == b'[1764595200.123,1764595205.123,null,"192.0.2.1",0,"Mozilla/5.0",0,null,1764597005.123,3]'
    old = old_line(same).partition(b"\n")[0]
    assert len(old) - len(head) == 3 * 4 + 10 + 4, "4 bytes a time, the repeated IP but 1, false but 1"


def test_the_core_writes_times_rounded_to_the_millisecond() -> None:
    lifetime = make_core(idle_timeout=1800, absolute_timeout=86400).lifetime
    req = RequestInfo(client_ip="192.0.2.1", user_agent="ua")
    rec, _ = lifetime.record(RequestState(), b"{}", T, req)
    assert rec.created == rec.last_access == 1764595200.123 and rec.expires == 1764597000.123
    assert b"1764595200.123," in encode_record(rec) and b".1234" not in encode_record(rec)
    touch = lifetime.touch(rec, T + 61.98765, req)
    assert touch.last_access == 1764595262.111 and touch.expires == 1764597062.111
    assert abs(to_ms(time.time()) - time.time()) < 0.0011


# -- the Redis scripts, on lines of both forms -----------------------------------------------------


@pytest.fixture
def backend(redis_url: str, key_prefix: str) -> Iterator[RedisBackend]:
    b = open_backend(redis_url, key_prefix=key_prefix)
    assert isinstance(b, RedisBackend)
    yield b
    b.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url)
    yield r
    r.close()


@redis_service
@pytest.mark.parametrize("size", [10, scripts.HEAD_RANGE * 3], ids=["small", "big"])
@pytest.mark.parametrize("form", ["old", "compact"])
def test_touch_rewrites_a_line_of_either_form(backend: RedisBackend, raw: redis.Redis, form: str, size: int) -> None:
    sid = new_session_id()
    key = backend._base.keys.data(sid)
    first = RECORDS[0]._replace(data=b"d" * size, user_id=5)
    raw.set(key, old_line(first) if form == "old" else encode_record(first), px=60_000)
    assert backend.load(sid) == first
    later = 1764595300.5
    backend.touch(sid, Touch(later, "192.0.2.1", later + 1800, 30))
    touched = first._replace(last_access=later, expires=later + 1800)
    assert backend.load(sid) == touched, "the same IP as the first"
    line = raw.get(key).partition(b"\n")[0]  # type: ignore[union-attr]
    assert json.loads(line)[4] == 0, "written as SAME_IP"
    backend.touch(sid, Touch(later + 1, "203.0.113.9", later + 1801, 30))
    assert backend.load(sid) == touched._replace(last_access=later + 1, last_ip="203.0.113.9", expires=later + 1801)
    backend.touch(sid, Touch(later + 2, None, None, 30))
    assert backend.load(sid) == touched._replace(last_access=later + 2, last_ip="203.0.113.9", expires=None)
    assert raw.get(key).endswith(b"\n" + first.data), "the data is untouched"  # type: ignore[union-attr]


@redis_service
def test_save_release_delete_and_gc_read_an_old_line(backend: RedisBackend, raw: redis.Redis) -> None:
    sid, gone = new_session_id(), new_session_id()
    keys = backend._base.keys
    first = RECORDS[1]  # user "bob", a differing last IP, an idle override
    raw.set(keys.data(sid), old_line(first), px=60_000)
    raw.sadd(keys.user("bob"), sid)
    token = "t" * 22
    locked, got = backend.lock_and_load(sid, token, 5)
    assert locked and got == first
    assert backend.release(sid, token, Touch(T + 60, "192.0.2.1", T + 69.5, 30))
    assert backend.load(sid) == first._replace(last_access=T + 60, last_ip="192.0.2.1", expires=T + 69.5)
    locked, _ = backend.lock_and_load(sid, token, 5)
    second = first._replace(data=b"2", user_id="carol", version=2)
    assert locked and backend.save(sid, second, token, 60)
    assert raw.smembers(keys.user("bob")) == set() and raw.smembers(keys.user("carol")) == {sid.encode()}
    assert raw.get(keys.data(sid)) == encode_record(second), "a save writes the compact form"
    backend.delete(sid)
    assert raw.smembers(keys.user("carol")) == set(), "the old line's user is read on delete"
    raw.set(keys.data(gone), old_line(RECORDS[0]._replace(user_id=9, expires=time.time() - 10)), px=60_000)
    raw.sadd(keys.user(9), gone)
    raw.set(keys.data(sid), old_line(RECORDS[0]._replace(expires=time.time() + 600)), px=60_000)
    assert backend.gc(time.time()) == 1
    assert raw.exists(keys.data(gone)) == 0 and raw.exists(keys.data(sid)) == 1
    assert raw.smembers(keys.user(9)) == set()
