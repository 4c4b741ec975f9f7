"""The Event model: casing, shape validation and the idempotency fingerprint (SPEC §1).

Validation is hand-written rather than a pydantic model because it runs once per event on the
hot path; it reports every failing field path in ``details["fields"]``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from buddyrules.errors import ValidationFailed

__all__ = ["Event", "parse_timestamp"]

_TYPE_RE = re.compile(r"[a-z][a-z0-9_]*")
_AUDIENCE_RE = re.compile(r"[a-z][a-z0-9_]*")
_CAMEL_RE = re.compile(r"(?<!^)(?=[A-Z])")
_FIELDS = ("event_id", "user_id", "type", "audience", "properties", "occurred_at")
_CAMEL = {"eventId": "event_id", "userId": "user_id", "occurredAt": "occurred_at"}


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
        return cls(
            user_id=norm["user_id"],
            type=norm["type"],
            event_id=event_id,
            audience=audience,
            properties=dict(props),
            occurred_at=occurred_at,
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
        """
        payload = {
            "u": self.user_id,
            "t": self.type,
            "a": audience if audience is not None else self.audience,
            "p": self.properties,
        }
        if with_time and self.occurred_at is not None:
            payload["o"] = self.occurred_at.astimezone(UTC).isoformat()
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()
