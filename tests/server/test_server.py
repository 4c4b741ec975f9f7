"""The ASGI app, driven by hand-built ASGI messages (no server, no network)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import buddyrules as br
from buddyrules.server import MAX_BODY_BYTES, create_app

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _engine(language_rulebook_path: Path) -> br.Engine:
    engine = br.Engine(br.MemoryStore(), clock=lambda: NOW)
    engine.publish(br.load_rulebook(language_rulebook_path))
    return engine


def call(
    app: Any, method: str, path: str, body: Any = None, query: str = "", raw: bytes | None = None
) -> tuple[int, Any]:
    """Run one request through the app and return (status, parsed JSON body)."""
    payload = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    sent: list[dict[str, Any]] = []
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if received:
            return {"type": "http.disconnect"}
        received = True
        return {"type": "http.request", "body": payload, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "query_string": query.encode()}
    asyncio.run(app(scope, receive, send))
    status = sent[0]["status"]
    return status, json.loads(sent[1]["body"])


def test_single_event_and_camel_casing(language_rulebook_path: Path) -> None:
    app = create_app(_engine(language_rulebook_path))
    event = {"event_id": "e1", "user_id": "u1", "type": "lesson_completed"}
    status, body = call(app, "POST", "/events", event)
    assert status == 200
    assert body["coins"] > 0 and "first_lesson" in body["badges_awarded"]
    status, body = call(app, "POST", "/events", event, query="casing=camel")
    assert status == 200 and body["replayed"] is True and "badgesAwarded" in body


def test_batch_and_explain(language_rulebook_path: Path) -> None:
    app = create_app(_engine(language_rulebook_path))
    batch = [{"event_id": f"b{i}", "userId": "u2", "type": "quiz_passed"} for i in range(3)]
    status, body = call(app, "POST", "/events", {"events": batch})
    assert status == 200 and len(body) == 3
    status, body = call(
        app, "POST", "/events", {"user_id": "u2", "type": "daily_login"}, query="explain=true"
    )
    assert status == 200 and isinstance(body["trace"], list)


def test_errors_use_the_envelope_and_status(language_rulebook_path: Path) -> None:
    app = create_app(_engine(language_rulebook_path))
    status, body = call(app, "POST", "/events", {"user_id": "u", "type": "unknown_type"})
    assert status == 400 and body["error"]["code"] == "event_type_not_registered"
    status, body = call(app, "POST", "/events", raw=b"{not json")
    assert status == 422 and body["error"]["code"] == "validation_failed"
    status, body = call(app, "POST", "/events", raw=b" " * (MAX_BODY_BYTES + 1))
    assert status == 422
    status, body = call(app, "POST", "/events", [{"user_id": "u"}] * 101)
    assert status == 400 and body["error"]["code"] == "batch_too_large"
    status, body = call(app, "GET", "/events")
    assert status == 405
    status, body = call(app, "GET", "/nowhere")
    assert status == 404 and body["error"]["code"] == "resource_not_found"


def test_buddy_and_health(language_rulebook_path: Path) -> None:
    engine = _engine(language_rulebook_path)
    app = create_app(engine)
    call(app, "POST", "/events", {"user_id": "user 7", "type": "lesson_completed"})
    status, body = call(app, "GET", "/buddies/user%207")
    assert status == 200 and body["user_id"] == "user 7" and body["coins"] > 0
    assert br.BuddyState.model_validate(body) == engine.buddy("user 7")
    status, body = call(app, "GET", "/buddies/nobody")
    assert status == 404
    status, body = call(app, "GET", "/healthz")
    assert status == 200 and body == {
        "ok": True,
        "rulebook_version": engine.current_rulebook().version,
    }


def test_serve_without_uvicorn_is_a_clear_error(
    monkeypatch: Any, language_rulebook_path: Path
) -> None:
    import sys

    from click.testing import CliRunner

    from buddyrules.cli import cli

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # makes `import uvicorn` fail
    result = CliRunner().invoke(cli, ["serve", str(language_rulebook_path)])
    assert result.exit_code == 2
    assert "uvicorn" in result.output


def test_serve_runs_the_app_under_uvicorn(monkeypatch: Any, language_rulebook_path: Path) -> None:
    import sys
    import types

    from click.testing import CliRunner

    from buddyrules.cli import cli

    served: dict[str, Any] = {}
    fake = types.ModuleType("uvicorn")
    fake.run = lambda app, **kw: served.update(app=app, **kw)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uvicorn", fake)
    result = CliRunner().invoke(cli, ["serve", str(language_rulebook_path), "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert served["port"] == 8123 and served["host"] == "127.0.0.1"
    status, body = call(served["app"], "GET", "/healthz")
    assert status == 200 and body["ok"] is True
