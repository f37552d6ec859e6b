"""Serving limits and keys as plain functions (no Ray): config mistakes are refused with the key
named, keys come from the config and $GLEAM_API_KEYS, and the guard answers in the API's form.
The same behaviour over real HTTP: tests/test_serving.py (the `strict` app)."""

from __future__ import annotations

import asyncio
import json

import pytest


@pytest.mark.parametrize("override, message", [
    ({"max_body_bytes": 0}, "max_body_bytes: must be at least 1 byte"),
    ({"max_body_bytes": 1000, "max_image_bytes": 2000}, "max_body_bytes (1000) is below max_image_bytes (2000)"),
    ({"ingress_max_queued_requests": 0}, "ingress_max_queued_requests: must be at least 1, or -1"),
    ({"retry_after_s": -1.0}, "retry_after_s: must be >= 0"),
    ({"api_keys": ["good", " "]}, "api_keys: every key must be a non-empty string"),
])
def test_bad_limits_are_refused_with_the_key(override, message):
    from gleam.serving.app import check_limits
    from gleam.serving.config import ServeAppConfig

    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_limits(ServeAppConfig(**override))
    check_limits(ServeAppConfig())  # the defaults are usable


def test_keys_from_config_and_environment():
    from gleam.serving.guard import GuardSettings, keys_from_env

    assert keys_from_env({"GLEAM_API_KEYS": " a1, ,b2,"}) == ["a1", "b2"] and keys_from_env({}) == []
    settings = GuardSettings(api_keys=["a1", "b2", "a1", ""])
    assert settings.keys_required and settings.key_accepted("b2") and settings.key_accepted("a1")
    assert not settings.key_accepted("a") and not settings.key_accepted("a1 ") and not settings.key_accepted("")
    assert not GuardSettings().keys_required
    with pytest.raises(ValueError, match="max_batch_body_bytes: must be at least 1 byte"):
        GuardSettings(max_batch_body_bytes=0)


def run_guard(settings, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]):
    """Drive RequestGuard around a tiny ASGI app that reads the whole body; -> (status, body, read)."""
    from types import SimpleNamespace

    from gleam.serving.guard import RequestGuard

    read = []

    async def app(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        read.append(len(body))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": path, "root_path": "", "headers": headers, "query_string": b"",
             "app": SimpleNamespace(state=SimpleNamespace(guard=settings))}
    asyncio.run(RequestGuard(app)(scope, receive, send))
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return status, (json.loads(body) if status != 200 else body), read


def test_guard_refuses_before_the_route_reads_the_body():
    from gleam.serving.guard import GuardSettings

    settings = GuardSettings(api_keys=["k"], max_body_bytes=100, max_batch_body_bytes=1000)
    key = [(b"x-api-key", b"k")]
    assert run_guard(settings, "/v1/localize", [], [b"x"])[:2] == (401, {"error": {
        "status": 401, "field": "api_key", "message": "needs a valid API key: send `Authorization: Bearer <key>`, "
                                                     "`X-API-Key: <key>` or ?key=<key>"}})
    assert run_guard(settings, "/healthz", [], [b""])[0] == 200  # open without a key
    status, body, read = run_guard(settings, "/v1/localize", key + [(b"content-length", b"5000000")], [b"x" * 10])
    assert status == 413 and read == [] and body["error"]["field"] == "body"  # the route never ran
    status, body, read = run_guard(settings, "/v1/localize", key, [b"x" * 60] * 50)  # chunked, 3000 bytes
    assert status == 413 and "refused after reading 120 bytes" in body["error"]["message"]
    assert run_guard(settings, "/v1/localize/batch", key, [b"x" * 60] * 10)[0] == 200  # 600 <= the batch cap
    assert run_guard(settings, "/v1/localize", [(b"authorization", b"Bearer k"), (b"content-length", b"-1")],
                     [b""])[0] == 400
