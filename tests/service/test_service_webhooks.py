"""Webhook signing, verification and the deliverer."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from buddyrules.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookDeliverer,
    sign,
    verify,
)

from .helpers import T0, Clock, engine_with, lesson

NOW = 1_714_564_800  # 2024-05-01T12:00:00Z


def test_sign_is_hmac_sha256_over_timestamp_dot_body() -> None:
    expected = hmac.new(b"s3cret", b'1714564800.{"a":1}', hashlib.sha256).hexdigest()
    assert sign("s3cret", NOW, '{"a":1}') == expected
    assert sign(b"s3cret", str(NOW), b'{"a":1}') == expected


def test_verify_accepts_a_fresh_valid_signature() -> None:
    signature = sign("s3cret", NOW, "body")
    assert verify("s3cret", NOW, "body", signature, now=NOW + 10)
    assert verify("s3cret", str(NOW), b"body", "sha256=" + signature, now=float(NOW))
    assert verify("s3cret", NOW, "body", signature, now=datetime.fromtimestamp(NOW, UTC))


@pytest.mark.parametrize(
    ("secret", "timestamp", "body", "now"),
    [
        ("wrong", NOW, "body", NOW),  # another secret
        ("s3cret", NOW, "bodY", NOW),  # tampered body
        ("s3cret", NOW + 1, "body", NOW),  # tampered timestamp
        ("s3cret", NOW, "body", NOW + 301),  # stale
        ("s3cret", NOW, "body", NOW - 301),  # from the future
        ("s3cret", "not-a-number", "body", NOW),
    ],
)
def test_verify_rejects(secret: str, timestamp: int | str, body: str, now: int) -> None:
    signature = sign("s3cret", NOW, "body")
    assert not verify(secret, timestamp, body, signature, now=now)


def test_verify_tolerance_is_configurable() -> None:
    signature = sign("k", NOW, "b")
    assert not verify("k", NOW, "b", signature, now=NOW + 61, tolerance_seconds=60)
    assert verify("k", NOW, "b", signature, now=NOW + 59, tolerance_seconds=60)
    assert not verify("k", NOW, "b", "zz" + signature[2:], now=NOW)


@dataclass
class _Response:
    status_code: int


class _Receiver:
    def __init__(self, statuses: list[int | Exception]) -> None:
        self.statuses = statuses
        self.calls: list[tuple[str, dict[str, str], bytes]] = []

    def __call__(self, url: str, headers: Mapping[str, str], body: bytes) -> _Response:
        self.calls.append((url, dict(headers), body))
        outcome = self.statuses.pop(0) if self.statuses else 200
        if isinstance(outcome, Exception):
            raise outcome
        return _Response(outcome)


def test_deliverer_posts_signed_bodies_and_acks_2xx() -> None:
    engine = engine_with(clock=Clock())
    engine.hatch("alice")
    engine.send(lesson("e1"))
    pending = engine.outbox.pending()
    receiver = _Receiver([200, 204])
    deliverer = WebhookDeliverer(
        engine.outbox, "https://hooks.example/b", "k", receiver, clock=Clock()
    )
    report = deliverer.deliver_pending()
    assert report.ok and report.delivered == [m.id for m in pending]
    assert engine.outbox.pending() == []
    url, headers, body = receiver.calls[0]
    assert url == "https://hooks.example/b"
    assert headers[TIMESTAMP_HEADER] == str(int(T0.timestamp()))
    assert verify("k", headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER], now=T0)
    data = json.loads(body)
    assert data == {
        "id": pending[0].id,
        "type": "buddy.hatched",
        "tenant": "default",
        "user_id": "alice",
        "audience": "student",
        "payload": pending[0].payload,
        "at": T0.isoformat(),
    }
    assert headers["X-Buddyrules-Event"] == "buddy.hatched"
    assert headers["X-Buddyrules-Delivery"] == str(pending[0].id)


@pytest.mark.parametrize("failure", [500, ConnectionError("refused")])
def test_deliverer_stops_at_the_first_failure(failure: int | Exception) -> None:
    engine = engine_with(clock=Clock())
    for user in ("a", "b", "c"):
        engine.hatch(user)
    ids = [m.id for m in engine.outbox.pending()]
    receiver = _Receiver([200, failure])
    report = WebhookDeliverer(engine.outbox, "u", "k", receiver, clock=Clock()).deliver_pending()
    assert not report.ok and report.delivered == ids[:1] and report.failed_id == ids[1]
    assert report.failure
    assert [m.id for m in engine.outbox.pending()] == ids[1:]
    # The next round starts again with the failed message.
    report = WebhookDeliverer(
        engine.outbox, "u", "k", _Receiver([]), clock=Clock()
    ).deliver_pending()
    assert report.delivered == ids[1:] and engine.outbox.pending() == []


def test_deliverer_accepts_a_plain_status_code() -> None:
    engine = engine_with(clock=Clock())
    engine.hatch("alice")
    report = WebhookDeliverer(
        engine.outbox, "u", "k", lambda url, headers, body: 202, clock=Clock()
    ).deliver_pending()
    assert report.ok and len(report.delivered) == 1
