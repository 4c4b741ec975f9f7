"""The Event model: casing, shape validation and the idempotency fingerprint (SPEC §1).

Validation is hand-written rather than a pydantic model because it runs once per event on the
hot path; it reports every failing field path in ``details["fields"]``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from json.encoder import (  # type: ignore[attr-defined]
    c_make_encoder,
    encode_basestring,
)
from typing import Any

from buddyrules.effects import frozen_builder
from buddyrules.errors import ValidationFailed

__all__ = ["Event", "parse_timestamp"]

_TYPE_RE = re.compile(r"[a-z][a-z0-9_]*")
_AUDIENCE_RE = re.compile(r"[a-z][a-z0-9_]*")
_CAMEL_RE = re.compile(r"(?<!^)(?=[A-Z])")
_FIELDS = ("event_id", "user_id", "type", "audience", "properties", "occurred_at")
_FIELD_SET = frozenset(_FIELDS)
_CAMEL = {"eventId": "event_id", "userId": "user_id", "occurredAt": "occurred_at"}

# Strings known to match ``[a-z][a-z0-9_]*`` (event types and audiences repeat endlessly, so
# the fast path of ``from_dict`` checks a set instead of running the regex). Bounded, so
# that a stream of distinct names cannot grow it without limit; lengths are checked apart.
_SNAKE_NAMES: set[str] = set()
_SNAKE_NAMES_MAX = 4096

# The fingerprint's canonical JSON (sorted keys at every level, no whitespace, raw UTF-8).
# ``json.dumps`` with options builds a new encoder on every call; the C encoder is built
# once instead. It checks no cycles (markers=None): validated properties have none (and
# ``_is_json`` bounds their depth).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_canonical_chunks: Callable[[Any, int], Sequence[str]] | None = (
    None
    if c_make_encoder is None
    else c_make_encoder(
        None, _CANONICAL.default, encode_basestring, None, ":", ",", True, False, True
    )
)


def _canonical_json(value: Any) -> str:
    if _canonical_chunks is None:  # no C accelerator (e.g. PyPy): the same text, slower
        return _CANONICAL.encode(value)
    return "".join(_canonical_chunks(value, 0))


_blake2b = hashlib.blake2b  # in CPython itself: cheaper to set up than OpenSSL's SHA-256
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_fromisoformat = datetime.fromisoformat
_isfinite = math.isfinite


def parse_timestamp(value: Any) -> datetime:
    """Parse an ISO-8601 timestamp with an offset (``Z`` allowed) or accept an aware datetime.

    Raises ``ValueError`` for a naive or malformed time.
    """
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        text = value.strip()
        if not text or not text[0].isdigit():
            raise ValueError(f"not an ISO-8601 timestamp: {value!r}")
        dt = datetime.fromisoformat(text)
    else:
        raise ValueError(f"expected an ISO-8601 string, got {type(value).__name__}")
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("timestamp has no UTC offset (a naive time is ambiguous)")
    return dt


def _is_json(value: Any, depth: int = 0) -> bool:
    if depth > 32:
        return False
    if value is None or isinstance(value, bool | int | str):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(_is_json(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v, depth + 1) for k, v in value.items())
    return False


def _check_str(
    errors: dict[str, str], name: str, value: Any, max_len: int, pattern: re.Pattern[str] | None
) -> None:
    if not isinstance(value, str):
        errors[name] = f"must be a string, got {type(value).__name__}"
    elif not 1 <= len(value) <= max_len:
        errors[name] = f"must be 1-{max_len} characters"
    elif pattern is not None and not pattern.fullmatch(value):
        errors[name] = f"must match {pattern.pattern}"


@dataclass(frozen=True, slots=True)
class Event:
    """A fact about a user. Build from a dict with :meth:`from_dict` (snake or camel case)."""

    user_id: str
    type: str
    event_id: str | None = None
    audience: str | None = None
    properties: Mapping[str, Any] = field(default_factory=dict)
    occurred_at: datetime | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        """Validate a wire-shaped mapping; camelCase keys are turned into snake_case.

        Raises :class:`ValidationFailed` with ``details["fields"]`` mapping each failing field
        path to its problem.
        """
        if type(data) is dict and data.keys() <= _FIELD_SET and cls is Event:
            # Already snake_case (the wire shape): no renaming, no duplicates possible.
            event = _fast_event(data)
            if event is not None:
                return event
            return cls._validated(data, {})
        if not isinstance(data, Mapping):
            raise ValidationFailed(
                "an event must be a JSON object",
                {"fields": {"": f"expected an object, got {type(data).__name__}"}},
            )
        norm: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for key, value in data.items():
            name = _CAMEL.get(key, key) if isinstance(key, str) else key
            if isinstance(name, str) and name not in _FIELDS and name[:1].islower():
                name = _CAMEL_RE.sub("_", name).lower()
            if name not in _FIELDS:
                errors[str(key)] = "unknown field"
                continue
            if name in norm:
                errors[str(key)] = f"duplicate field ({name} given twice)"
                continue
            norm[name] = value
        return cls._validated(norm, errors)

    @classmethod
    def _validated(cls, norm: dict[str, Any], errors: dict[str, str]) -> Event:
        event_id = norm.get("event_id")
        if event_id is not None:
            _check_str(errors, "event_id", event_id, 128, None)
        if "user_id" not in norm:
            errors["user_id"] = "required"
        else:
            _check_str(errors, "user_id", norm["user_id"], 128, None)
        if "type" not in norm:
            errors["type"] = "required"
        else:
            _check_str(errors, "type", norm["type"], 64, _TYPE_RE)
        audience = norm.get("audience")
        if audience is not None:
            _check_str(errors, "audience", audience, 32, _AUDIENCE_RE)
        props = norm.get("properties")
        if props is None:
            props = {}
        elif not isinstance(props, Mapping):
            errors["properties"] = f"must be an object, got {type(props).__name__}"
        else:
            for k, v in props.items():
                if not isinstance(k, str):
                    errors["properties"] = "keys must be strings"
                    break
                if not _is_json(v):
                    errors[f"properties.{k}"] = "must be a JSON value"
        occurred = norm.get("occurred_at")
        occurred_at: datetime | None = None
        if occurred is not None:
            try:
                occurred_at = parse_timestamp(occurred)
            except ValueError as exc:
                errors["occurred_at"] = str(exc)
        if errors:
            raise ValidationFailed(
                "invalid event: " + "; ".join(f"{k}: {v}" for k, v in sorted(errors.items())),
                {"fields": dict(sorted(errors.items()))},
            )
        if cls is not Event:
            return cls(norm["user_id"], norm["type"], event_id, audience, dict(props), occurred_at)
        return _build_event(
            norm["user_id"], norm["type"], event_id, audience, dict(props), occurred_at
        )

    @classmethod
    def coerce(cls, value: Event | Mapping[str, Any]) -> Event:
        """Return ``value`` if it is an Event, else validate it as a mapping."""
        if isinstance(value, Event):
            return value
        return cls.from_dict(value)

    def replace(self, **changes: Any) -> Event:
        """A copy with some fields changed (no re-validation of unchanged fields)."""
        data = {name: getattr(self, name) for name in _FIELDS}
        data.update(changes)
        return Event(**data)

    def to_wire(self) -> dict[str, Any]:
        """The snake_case wire mapping (``occurred_at`` as ISO-8601, omitted when unset)."""
        out: dict[str, Any] = {"user_id": self.user_id, "type": self.type}
        if self.event_id is not None:
            out["event_id"] = self.event_id
        if self.audience is not None:
            out["audience"] = self.audience
        out["properties"] = dict(self.properties)
        if self.occurred_at is not None:
            out["occurred_at"] = self.occurred_at.isoformat()
        return out

    def fingerprint(self, audience: str | None = None, *, with_time: bool = True) -> str:
        """The idempotency fingerprint: user, type, audience, properties, and occurred_at.

        ``audience`` overrides the event's own (the service passes the resolved audience).
        It is the BLAKE2b-256 digest (64 hex digits) of the canonical JSON array
        ``[user_id, type, audience, properties, occurred_at]`` (sorted keys, no whitespace,
        UTF-8; ``occurred_at`` as integer microseconds since the Unix epoch, so every spelling
        of one instant is the same, or ``null`` when not given). It depends on nothing but
        those values: the same in every process and release, as receipts keep it.
        """
        at = self.occurred_at
        stamp = (at - _EPOCH) // _MICROSECOND if with_time and at is not None else None
        text = _canonical_json(
            [
                self.user_id,
                self.type,
                audience if audience is not None else self.audience,
                self.properties,
                stamp,
            ]
        )
        return _blake2b(text.encode("utf-8"), digest_size=32).hexdigest()


_build_event: Callable[..., Event] = frozen_builder(Event)
"""``Event`` from its six fields, positionally (no defaults, no validation)."""


def _is_snake_name(value: str, max_len: int) -> bool:
    if value in _SNAKE_NAMES:
        return 0 < len(value) <= max_len
    if not 0 < len(value) <= max_len or _TYPE_RE.fullmatch(value) is None:
        return False
    if len(_SNAKE_NAMES) < _SNAKE_NAMES_MAX:
        _SNAKE_NAMES.add(value)
    return True


def _fast_event(data: dict[str, Any]) -> Event | None:
    """The Event of a snake_case dict that is valid, else None (then validate in full).

    Accepts only what :meth:`Event._validated` accepts, building the same Event; anything
    unusual (a str subclass, a non-dict ``properties``, a bad value) is left to the full
    validation, which also words the errors.
    """
    user_id = data.get("user_id")
    if type(user_id) is not str or not 0 < len(user_id) <= 128:
        return None
    event_type = data.get("type")
    if type(event_type) is not str or not _is_snake_name(event_type, 64):
        return None
    event_id = data.get("event_id")
    if event_id is not None and (type(event_id) is not str or not 0 < len(event_id) <= 128):
        return None
    audience = data.get("audience")
    if audience is not None and (type(audience) is not str or not _is_snake_name(audience, 32)):
        return None
    props = data.get("properties")
    if props is None:
        props = {}
    elif type(props) is not dict:
        return None
    else:
        for key, value in props.items():
            if type(key) is not str:
                return None
            kind = type(value)
            if kind is str or kind is int or kind is bool or value is None:
                continue
            if kind is float:
                if not _isfinite(value):
                    return None
            elif not _is_json(value):
                return None
        props = dict(props)
    occurred = data.get("occurred_at")
    occurred_at: datetime | None = None
    if occurred is not None:
        if type(occurred) is str:
            text = occurred.strip()
            if not text[:1].isdigit():
                return None
            try:
                occurred_at = _fromisoformat(text)
            except ValueError:
                return None
        elif type(occurred) is datetime:
            occurred_at = occurred
        else:
            return None
        if occurred_at.tzinfo is None or occurred_at.utcoffset() is None:
            return None
    return _build_event(user_id, event_type, event_id, audience, props, occurred_at)
