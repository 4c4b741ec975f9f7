"""Signed webhooks for outbox messages (SPEC §6): signing, verifying, and a small deliverer.

A delivery is a JSON body signed with HMAC-SHA256 over ``f"{timestamp}.{raw_body}"``; the
receiver recomputes the signature with :func:`verify`, which also rejects stale timestamps
(replay protection). :class:`WebhookDeliverer` has no network code of its own: it calls a
``post(url, headers, body)`` function you supply (``httpx``, ``requests``, a queue, ...).

Headers sent: ``Content-Type: application/json``, ``X-Buddyrules-Timestamp`` (Unix seconds),
``X-Buddyrules-Signature`` (``sha256=<hex>``), ``X-Buddyrules-Event`` (the message type) and
``X-Buddyrules-Delivery`` (the message id).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from buddyrules.storage.protocols import OutboxMessage

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "DeliveryReport",
    "OutboxReader",
    "WebhookDeliverer",
    "message_body",
    "sign",
    "verify",
]

SIGNATURE_HEADER = "X-Buddyrules-Signature"
TIMESTAMP_HEADER = "X-Buddyrules-Timestamp"
_PREFIX = "sha256="


def _bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def sign(secret: str | bytes, timestamp: int | str, raw_body: str | bytes) -> str:
    """The hex HMAC-SHA256 of ``f"{timestamp}.{raw_body}"`` under ``secret``."""
    message = str(timestamp).encode("ascii") + b"." + _bytes(raw_body)
    return hmac.new(_bytes(secret), message, hashlib.sha256).hexdigest()


def verify(
    secret: str | bytes,
    timestamp: int | str,
    raw_body: str | bytes,
    signature: str,
    *,
    tolerance_seconds: int = 300,
    now: float | datetime | None = None,
) -> bool:
    """Whether ``signature`` signs this body at this timestamp, within the tolerance.

    ``signature`` may carry the ``sha256=`` prefix. The comparison is constant-time. A
    timestamp more than ``tolerance_seconds`` away from ``now`` (default: the system clock)
    is rejected, as is a malformed one.
    """
    try:
        ts = int(str(timestamp))
    except ValueError:
        return False
    if isinstance(now, datetime):
        current = now.timestamp()
    elif now is None:
        current = datetime.now(UTC).timestamp()
    else:
        current = float(now)
    if abs(current - ts) > tolerance_seconds:
        return False
    if not isinstance(signature, str):
        return False
    given = signature[len(_PREFIX) :] if signature.startswith(_PREFIX) else signature
    expected = sign(secret, ts, raw_body)
    return hmac.compare_digest(expected.encode("ascii"), given.encode("ascii", "replace"))


def message_body(message: OutboxMessage, tenant: str) -> str:
    """The JSON body delivered for one outbox message (compact, keys sorted)."""
    data = {
        "id": message.id,
        "type": message.type,
        "tenant": tenant,
        "user_id": message.user_id,
        "audience": message.audience,
        "payload": message.payload,
        "at": message.at.isoformat(),
    }
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


class OutboxReader(Protocol):
    """What the deliverer needs: ``engine.outbox`` has it."""

    tenant: str

    def pending(self, limit: int = 100) -> list[OutboxMessage]:
        """Committed, unacknowledged messages, oldest first."""
        ...

    def ack(self, ids: Sequence[int]) -> int:
        """Acknowledge delivered messages."""
        ...


PostFunction = Callable[[str, Mapping[str, str], bytes], Any]
"""``post(url, headers, body)``: returns a status code (int) or a response object with
``status_code`` (or ``status``); raising counts as a failed delivery."""


@dataclass(slots=True)
class DeliveryReport:
    """What one :meth:`WebhookDeliverer.deliver_pending` round did."""

    delivered: list[int] = field(default_factory=list)
    failed_id: int | None = None
    failure: str | None = None

    @property
    def ok(self) -> bool:
        """True when every message fetched was delivered."""
        return self.failed_id is None


def _status_of(response: Any) -> int | None:
    if isinstance(response, int) and not isinstance(response, bool):
        return response
    for name in ("status_code", "status"):
        value = getattr(response, name, None)
        if isinstance(value, int):
            return value
    return None


class WebhookDeliverer:
    """Posts pending outbox messages as signed webhooks and acknowledges the 2xx ones.

    Messages go out oldest first; the round stops at the first failure (a non-2xx status or
    an exception from ``post``), so a message is never skipped: delivery is at-least-once
    and in order, and the receiver should deduplicate by ``X-Buddyrules-Delivery``.
    ``clock`` returns the aware datetime used for the signature timestamp.
    """

    def __init__(
        self,
        outbox: OutboxReader,
        url: str,
        secret: str | bytes,
        post: PostFunction,
        *,
        clock: Callable[[], datetime] | None = None,
        batch_size: int = 100,
    ) -> None:
        self.outbox = outbox
        self.url = url
        self._secret = secret
        self._post = post
        self._clock = clock if clock is not None else (lambda: datetime.now(UTC))
        self.batch_size = batch_size

    def headers_for(self, message: OutboxMessage, body: str, timestamp: int) -> dict[str, str]:
        """The headers of one delivery."""
        return {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: _PREFIX + sign(self._secret, timestamp, body),
            "X-Buddyrules-Event": message.type,
            "X-Buddyrules-Delivery": str(message.id),
        }

    def deliver_pending(self) -> DeliveryReport:
        """Deliver up to ``batch_size`` pending messages; returns what happened."""
        report = DeliveryReport()
        tenant = self.outbox.tenant
        for message in self.outbox.pending(self.batch_size):
            body = message_body(message, tenant)
            timestamp = int(self._clock().timestamp())
            headers = self.headers_for(message, body, timestamp)
            try:
                response = self._post(self.url, headers, body.encode("utf-8"))
            except Exception as exc:  # the user's transport failed: report it, retry later
                report.failed_id = message.id
                report.failure = f"{type(exc).__name__}: {exc}"
                break
            status = _status_of(response)
            if status is None or not 200 <= status < 300:
                report.failed_id = message.id
                report.failure = f"HTTP status {status}"
                break
            self.outbox.ack([message.id])
            report.delivered.append(message.id)
        return report
