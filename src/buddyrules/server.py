"""An optional ASGI app speaking the events wire format, for apps that want a sidecar.

No web framework is needed: :func:`create_app` returns a plain ASGI 3 callable, so any ASGI
server runs it (``buddyrules serve`` uses uvicorn when it is installed: ``pip install
buddyrules[server]``).

Routes (JSON in, JSON out; errors use the SPEC §8 envelope and the error's ``status``):

* ``POST /events`` — one event object → its effects; a JSON array (or ``{"events": [...]}``)
  → the list of effects (a batch of 1-100). ``?explain=true`` adds the trace to a single
  event's effects; ``?casing=camel`` renders effects in camelCase.
* ``GET /buddies/{user_id}[?audience=...]`` — the buddy's state.
* ``GET /healthz`` — ``{"ok": true, "rulebook_version": ...}``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs, unquote

from buddyrules.effects import Effects
from buddyrules.errors import BuddyRulesError, ResourceNotFound, ValidationFailed
from buddyrules.service import Engine

__all__ = ["MAX_BODY_BYTES", "create_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# 100 events of reasonable size fit comfortably; anything larger is refused before parsing.
MAX_BODY_BYTES = 1_000_000


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


async def _respond(send: Send, status: int, body: Any) -> None:
    payload = _json_bytes(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ValidationFailed("client disconnected", {"fields": {"": "no body"}})
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ValidationFailed(
                f"request body larger than {MAX_BODY_BYTES} bytes",
                {"fields": {"": "body too large"}},
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _render(effects: Effects, camel: bool) -> dict[str, Any]:
    return effects.to_camel() if camel else effects.to_wire()


def create_app(engine: Engine) -> ASGIApp:
    """Build the ASGI app around an :class:`Engine` (its store, tenant and clock).

    The engine's calls are synchronous; they run inline, which suits SQLite and the memory
    store. Behind a multi-worker server, give each worker its own Engine on a shared store.
    """

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        method = scope["method"]
        path = scope["path"]
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        camel = query.get("casing", [""])[0] == "camel"
        try:
            if path == "/events":
                if method != "POST":
                    await _respond(send, 405, _method_not_allowed(method, path))
                    return
                body = await _read_body(receive)
                try:
                    data = json.loads(body or b"null")
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise ValidationFailed(
                        f"request body is not JSON: {exc}", {"fields": {"": "invalid JSON"}}
                    ) from None
                if isinstance(data, dict) and set(data) == {"events"}:
                    data = data["events"]
                if isinstance(data, list):
                    results = engine.send_batch(data)
                    await _respond(send, 200, [_render(e, camel) for e in results])
                    return
                explain = query.get("explain", [""])[0] in ("1", "true", "yes")
                if not isinstance(data, dict):
                    raise ValidationFailed(
                        "an event must be a JSON object", {"fields": {"": "expected an object"}}
                    )
                await _respond(send, 200, _render(engine.send(data, explain=explain), camel))
                return
            if path.startswith("/buddies/"):
                if method != "GET":
                    await _respond(send, 405, _method_not_allowed(method, path))
                    return
                user_id = unquote(path[len("/buddies/") :])
                audience = query.get("audience", [None])[0]
                state = engine.buddy(user_id, audience)
                await _respond(send, 200, json.loads(state.model_dump_json()))
                return
            if path == "/healthz":
                version = engine.current_rulebook().version
                await _respond(send, 200, {"ok": True, "rulebook_version": version})
                return
            raise ResourceNotFound(f"no route for {method} {path}", {"path": path})
        except BuddyRulesError as exc:
            await _respond(send, exc.status, exc.to_wire())

    return app


def _method_not_allowed(method: str, path: str) -> dict[str, Any]:
    return {
        "error": {
            "code": "method_not_allowed",
            "message": f"{method} is not allowed on {path}",
            "details": {"method": method, "path": path},
        }
    }
