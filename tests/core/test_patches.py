"""Tails: the frame format and its merge (no I/O), and when the close flow writes a tail or the whole record."""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pytest

from sessionmw.core.handles import handle_of
from sessionmw.core.ops import Save, SaveTail
from sessionmw.core.patches import (
    MAX_FRAMES,
    MIN_BASE,
    TAIL_MAGIC,
    Tail,
    compacts,
    frame,
    measure,
    merge,
    split,
)
from sessionmw.core.policy import SessionCore
from sessionmw.core.route import READ_WRITE
from sessionmw.core.serializers import JSONSerializer, TaggedJSONSerializer
from sessionmw.core.session import Session

from .script import SID, Script, close, make_core, opened, record

TAGGED = TaggedJSONSerializer()

# -- the format ----------------------------------------------------------------------------------


def test_a_payload_without_frames_is_its_own_base() -> None:
    base = TAGGED.dumps({"a": 1})
    assert split(base) == (base, [])
    assert measure(base) == Tail(len(base), 0, 0)
    assert merge(base, TAGGED.loads) == {"a": 1}


def test_frames_apply_oldest_first_and_remove_keys() -> None:
    base = TAGGED.dumps({"a": 1, "b": 2, "c": 3})
    one = frame(["b"], TAGGED.dumps({"a": 10}))
    two = frame([], TAGGED.dumps({"b": "back", "a": 11}))
    three = frame(["c"], TAGGED.dumps({}))
    payload = base + one + two + three
    assert merge(payload, TAGGED.loads) == {"a": 11, "b": "back"}
    assert measure(payload) == Tail(len(base), len(one + two + three), 3)
    got_base, bodies = split(payload)
    assert got_base == base and len(bodies) == 3


def test_tagged_values_survive_a_frame() -> None:
    when = datetime(2026, 12, 1, 13, 0, tzinfo=timezone.utc)
    value = {"when": when, "pair": (1, 2), "raw": b"\x00\xff", "id": uuid.UUID(int=7), "nested": {" t": [1]}}
    payload = TAGGED.dumps({"x": 1}) + frame([], TAGGED.dumps(value))
    assert merge(payload, TAGGED.loads) == {"x": 1, **value}


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("\x00smwT", id="the magic inside a string"),
        pytest.param("ends\x00", id="a NUL at the end of a string"),
        pytest.param("line\nbreak", id="a newline"),
        pytest.param("é" * 10, id="non-ASCII"),
    ],
)
def test_no_json_base_is_taken_for_a_frame(value: str) -> None:
    # JSON escapes control characters: neither a base nor a frame body holds a raw NUL byte.
    for serializer in (TAGGED, JSONSerializer()):
        base = serializer.dumps({"k": value})
        assert b"\x00" not in base
        assert merge(base, serializer.loads) == {"k": value}
        assert merge(base + frame([], serializer.dumps({"k2": value})), serializer.loads) == {"k": value, "k2": value}


def test_a_frame_cut_short_is_an_error_not_a_guess() -> None:
    bogus = b"{}" + struct.pack(">I", 999) + TAIL_MAGIC
    with pytest.raises(ValueError, match="cut short"):
        split(bogus)
    with pytest.raises(ValueError, match="cut short"):
        measure(bogus)
    with pytest.raises(ValueError):
        merge(bogus, TAGGED.loads)


@pytest.mark.parametrize(
    ("stored", "new", "whole"),
    [
        pytest.param(Tail(1000, 0, 0), 100, False, id="first small frame"),
        pytest.param(Tail(1000, 200, 5), 50, False, id="at a quarter of the base"),
        pytest.param(Tail(1000, 200, 5), 51, True, id="past a quarter of the base"),
        pytest.param(Tail(10**6, 10, MAX_FRAMES - 1), 1, False, id="the last frame allowed"),
        pytest.param(Tail(10**6, 10, MAX_FRAMES), 1, True, id="too many frames"),
    ],
)
def test_compaction_rule(stored: Tail, new: int, whole: bool) -> None:
    assert compacts(stored, new) is whole


# -- the close flow ------------------------------------------------------------------------------

BIG = {f"k{i}": "x" * 1000 for i in range(64)}


def _opened(core: SessionCore, data: dict[str, Any], tail_reply: Any = True) -> tuple[Script, Session]:
    script = Script(record(core, data))
    script.replies[SaveTail] = tail_reply
    return script, opened(core, script)


def _written(core: SessionCore, script: Script) -> dict[str, Any]:
    """The session as stored after the flow's write: the base and the frame merged, or the whole record."""
    op = script.ops[-1]
    if isinstance(op, SaveTail):
        assert op.head.data == b""
        assert script.record is not None
        return merge(script.record.data + op.tail, core.serializer.loads)
    assert isinstance(op, Save)
    return merge(op.record.data, core.serializer.loads)


CLOSE_CASES: list[Any] = [
    pytest.param({}, lambda s: s.__setitem__("k1", "new"), "SaveTail", {"k1"}, id="one key set"),
    pytest.param({}, lambda s: s.__delitem__("k2"), "SaveTail", set(), id="one key removed"),
    pytest.param({}, lambda s: s.update({f"k{i}": "y" * 1000 for i in range(20)}), "Save", None, id="a third changed"),
    pytest.param({"encryption_key": "e" * 32}, lambda s: s.__setitem__("k1", "new"), "Save", None, id="encrypted"),
    pytest.param({"serializer": "plain-json"}, lambda s: s.__setitem__("k1", "new"), "SaveTail", {"k1"}, id="plain"),
    pytest.param({"max_session_bytes": 80_000}, lambda s: s.__setitem__("k1", "n"), "Save", None, id="near limit"),
    pytest.param({}, lambda s: s.regenerate(), "Delete", None, id="new id: created whole"),
    pytest.param({}, lambda s: s.bind_user(3), "Delete", None, id="bound: created whole"),
]


@pytest.mark.parametrize(("options", "act", "op", "frame_keys"), CLOSE_CASES)
def test_close_writes_a_tail_or_the_whole_record(
    options: dict[str, Any], act: Callable[[Session], Any], op: str, frame_keys: set[str] | None
) -> None:
    core = make_core(**options)
    stored = record(core, BIG)
    if "encryption_key" in options:
        stored = core.at_rest.seal(stored, handle_of(SID), stored.created)
    script = Script(stored)
    script.replies[SaveTail] = True
    s = opened(core, script)
    assert dict(s) == BIG
    act(s)
    close(core, script, s)
    assert op in script.names
    assert not ("Save" in script.names and "SaveTail" in script.names)
    if op == "SaveTail":
        tail_op = script.ops[-1]
        assert isinstance(tail_op, SaveTail)
        assert len(tail_op.tail) < 2000
        changed = TAGGED.loads(split(record(core, BIG).data + tail_op.tail)[1][-1].partition(b"\n")[2])
        assert set(changed) == frame_keys
        expected = dict(BIG)
        act(expected)  # type: ignore[arg-type]
        assert _written(core, script) == expected


def test_an_in_place_change_of_a_nested_value_is_in_the_frame() -> None:
    core = make_core()
    data = {**BIG, "cart": {"items": [1]}, "prefs": ["a"], "pair": (1, [2])}
    script, s = _opened(core, data)
    s["cart"]["items"].append(2)  # not seen by the session: only compared
    s["pair"][1].append(3)
    s.mark_modified()
    close(core, script, s)
    tail_op = script.ops[-1]
    assert isinstance(tail_op, SaveTail)
    body = split(record(core, data).data + tail_op.tail)[1][-1]
    assert set(TAGGED.loads(body.partition(b"\n")[2])) == {"cart", "pair"}, "prefs did not change"
    assert _written(core, script) == {**BIG, "cart": {"items": [1, 2]}, "prefs": ["a"], "pair": (1, [2, 3])}


def test_the_head_carries_the_new_metadata() -> None:
    core = make_core()
    script, s = _opened(core, BIG)
    s["k1"] = "new"
    close(core, script, s, now=script.record.last_access + 5 if script.record else 0.0)
    tail_op = script.ops[-1]
    assert isinstance(tail_op, SaveTail)
    assert script.record is not None
    assert tail_op.head.version == script.record.version + 1
    assert tail_op.head.last_access == script.record.last_access + 5
    assert tail_op.head.created == script.record.created
    assert tail_op.token is not None and tail_op.ttl is not None


def test_a_backend_without_the_primitive_gets_the_whole_record_and_is_not_asked_again() -> None:
    core = make_core()
    script, s = _opened(core, BIG, tail_reply=None)
    s["k1"] = "new"
    close(core, script, s)
    assert script.names == ["SaveTail", "Save"]
    assert _written(core, script) == {**BIG, "k1": "new"}
    assert core.tails is False
    script2, s2 = _opened(core, BIG, tail_reply=None)
    s2["k1"] = "again"
    close(core, script2, s2)
    assert script2.names == ["Save"]


def test_a_small_session_is_written_whole_without_working_out_a_tail() -> None:
    # Under MIN_BASE stored bytes a tail saves little; the core does not even serialize the changed keys.
    core = make_core()
    small = {"n": 1, "cart": {"items": [1]}, "name": "x" * 3000}
    script, s = _opened(core, small)
    assert script.record is not None and len(script.record.data) < MIN_BASE
    s["n"] = 2
    s["cart"]["items"].append(2)
    close(core, script, s)
    assert script.names[-1] == "Save" and "SaveTail" not in script.names
    assert _written(core, script) == {"n": 2, "cart": {"items": [1, 2]}, "name": "x" * 3000}
    assert core.tails is True, "a small session says nothing about the backend"


def test_a_tail_refused_by_the_fence_is_dropped_and_logged() -> None:
    core = make_core()
    script, s = _opened(core, BIG, tail_reply=False)
    s["k1"] = "new"
    close(core, script, s)
    assert script.names == ["SaveTail"]
    assert any("were dropped" in m for m in script.messages())


def test_stored_frames_are_merged_when_opened_and_counted_for_compaction() -> None:
    core = make_core()
    base = record(core, BIG)
    frames = b"".join(frame([], TAGGED.dumps({"k1": "y" * 1000})) for _ in range(15))
    script = Script(base._replace(data=base.data + frames + frame(["k2"], TAGGED.dumps({"k3": "z"}))))
    script.replies[SaveTail] = True
    s = opened(core, script)
    expected = {**BIG, "k1": "y" * 1000, "k3": "z"}
    del expected["k2"]
    assert dict(s) == expected
    s["k4"] = "w" * 1000  # the tail passes a quarter of the base: written whole, frames gone
    close(core, script, s)
    assert script.names == ["Save"]
    save = script.ops[-1]
    assert isinstance(save, Save)
    assert measure(save.record.data).frames == 0
    assert TAGGED.loads(save.record.data) == {**expected, "k4": "w" * 1000}


def test_a_lazily_decoded_session_is_merged_too() -> None:
    core = make_core()
    base = record(core, {"a": 1})
    script = Script(base._replace(data=base.data + frame(["a"], TAGGED.dumps({"b": 2}))))
    s = core.new_session(READ_WRITE, (SID, 0.0), None)
    script.run(core.open(s, lock=None, now=record(core, {}).last_access, mono=0.0, decode_later=True))
    core.decode(s)
    assert dict(s) == {"b": 2}


class _Custom:
    """A serializer of its own: frames are never written nor looked for."""

    def dumps(self, data: Any) -> bytes:
        return TAGGED.dumps(data)

    def loads(self, raw: bytes) -> dict[str, Any]:
        data, _ = json.JSONDecoder().raw_decode(raw.decode("utf-8", "replace"))  # ignores what follows the base
        return dict(data)


def test_another_serializer_gets_whole_records_and_no_merge() -> None:
    core = make_core(serializer=_Custom())
    base = record(core, BIG)
    script = Script(base._replace(data=base.data + frame([], TAGGED.dumps({"k1": "tail"}))))
    script.replies[SaveTail] = True
    s = opened(core, script)
    assert s["k1"] == "x" * 1000, "the custom serializer's bytes are its own: no frame is applied"
    s["k2"] = "new"
    close(core, script, s)
    assert script.names == ["Save"]
