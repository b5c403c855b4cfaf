"""Turning session data into bytes and back.

Rules of this module: no I/O, and never pickle. The default serializer is JSON with tags, so that
``datetime``, ``date``, ``UUID``, ``bytes`` and ``tuple`` come back as they went in.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

from .errors import ConfigError, SerializationError

__all__ = ["JSONSerializer", "Serializer", "TaggedJSONSerializer", "get_serializer"]


@runtime_checkable
class Serializer(Protocol):
    """Turns a session's dict into bytes and back."""

    def dumps(self, data: Mapping[str, Any]) -> bytes:
        """Serialize ``data``; raise :class:`SerializationError` naming the key that cannot be stored."""
        ...

    def loads(self, raw: bytes) -> dict[str, Any]:
        """Deserialize bytes made by :meth:`dumps`."""
        ...


_PLAIN = (str, int, float, bool, type(None))

# Tags are one-key dicts whose key starts with a space, as in Flask's TaggedJSONSerializer, so they
# cannot clash with ordinary keys except on purpose; a dict that looks like a tag is wrapped in " di".
_TAGS = (" t", " dt", " d", " u", " b", " di")


_SCALARS = frozenset({str, int, float, bool, type(None)})
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_DECODER = json.JSONDecoder()


def _tag_top(data: dict[str, Any]) -> Any:
    """Tag a session dict; most sessions hold only scalars and pass through untouched."""
    for k, v in data.items():
        if type(v) not in _SCALARS or type(k) is not str:
            return _tag(data, "")
    if len(data) == 1 and next(iter(data)) in _TAGS:
        return {" di": data}
    return data


def _tag(value: Any, path: str) -> Any:
    """Return ``value`` with every non-JSON type replaced by its tagged form."""
    if type(value) in _SCALARS or isinstance(value, _PLAIN):
        return value
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise SerializationError(
                    f"session key {path}{k!r} is a {type(k).__name__}; session keys must be str",
                    key=f"{path}{k!r}",
                )
            out[k] = _tag(v, f"{path}{k}." if path else f"{k}.")
        if len(out) == 1 and next(iter(out)) in _TAGS:
            return {" di": out}
        return out
    if isinstance(value, list):
        return [_tag(v, f"{path.rstrip('.')}[{i}].") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {" t": [_tag(v, f"{path.rstrip('.')}[{i}].") for i, v in enumerate(value)]}
    if isinstance(value, datetime):
        return {" dt": value.isoformat()}
    if isinstance(value, date):
        return {" d": value.isoformat()}
    if isinstance(value, UUID):
        return {" u": value.hex}
    if isinstance(value, bytes | bytearray | memoryview):
        return {" b": base64.b64encode(bytes(value)).decode("ascii")}
    key = path.rstrip(".") or "?"
    raise SerializationError(
        f"session key {key!r} holds a {type(value).__name__}, which the tagged JSON serializer cannot "
        "store; store str, int, float, bool, None, list, dict, tuple, datetime, date, UUID or bytes",
        key=key,
    )


def _untag(value: Any) -> Any:
    """Return ``value`` (parsed JSON) with every tagged form turned back into its type."""
    if isinstance(value, list):
        return [_untag(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        k, v = next(iter(value.items()))
        if k == " t":
            return tuple(_untag(x) for x in v)
        if k == " dt":
            return datetime.fromisoformat(v)
        if k == " d":
            return date.fromisoformat(v)
        if k == " u":
            return UUID(hex=v)
        if k == " b":
            return base64.b64decode(v)
        if k == " di":  # a dict that looked like a tag: its own key is data, its value may hold tags
            return {ik: _untag(iv) for ik, iv in v.items()}
    return {k: _untag(v) for k, v in value.items()}


class TaggedJSONSerializer:
    """JSON with tags for ``datetime``, ``date``, ``UUID``, ``bytes`` and ``tuple``; the default."""

    def dumps(self, data: Mapping[str, Any]) -> bytes:
        """Serialize ``data`` to compact UTF-8 JSON."""
        tagged = _tag_top(dict(data))
        return _ENCODER.encode(tagged).encode("utf-8")

    def loads(self, raw: bytes) -> dict[str, Any]:
        """Deserialize bytes made by :meth:`dumps`."""
        data = _DECODER.decode(raw.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("session data is not a JSON object")
        for v in data.values():
            if type(v) is dict or type(v) is list:
                result: dict[str, Any] = _untag(data)
                return result
        if len(data) == 1 and next(iter(data)) == " di":
            inner: dict[str, Any] = _untag(data)
            return inner
        return data


class JSONSerializer:
    """Plain JSON, as Starlette's cookie sessions store it: tuples become lists, no dates."""

    def dumps(self, data: Mapping[str, Any]) -> bytes:
        """Serialize ``data`` to compact UTF-8 JSON."""
        try:
            return _ENCODER.encode(data).encode("utf-8")
        except TypeError:
            _tag(dict(data), "")  # names the key at fault
            raise

    def loads(self, raw: bytes) -> dict[str, Any]:
        """Deserialize bytes made by :meth:`dumps`."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("session data is not a JSON object")
        return data


_BY_NAME: dict[str, Callable[[], Serializer]] = {
    "json": TaggedJSONSerializer,
    "tagged-json": TaggedJSONSerializer,
    "plain-json": JSONSerializer,
}


def get_serializer(spec: str | Serializer) -> Serializer:
    """Return the serializer named by ``spec`` (``"json"``, ``"plain-json"``) or ``spec`` itself."""
    if isinstance(spec, str):
        try:
            return _BY_NAME[spec]()
        except KeyError:
            names = ", ".join(sorted(_BY_NAME))
            raise ConfigError(
                f"serializer={spec!r} is not known; use one of {names} or an object with dumps/loads",
                option="serializer",
            ) from None
    if isinstance(spec, Serializer):
        return spec
    raise ConfigError("serializer must be a name or an object with dumps() and loads()", option="serializer")
