"""What a client must show, and how much it may send, before a route runs (plain ASGI, no Ray).

``RequestGuard`` wraps the ingress's FastAPI app (``api.add_middleware(RequestGuard)``) and
reads its settings from ``app.state.guard`` (a ``GuardSettings``, set by the Ingress replica):

1. **API keys** (only when keys are configured): every ``/v1/*`` request needs one of them as
   ``Authorization: Bearer <key>``, ``X-API-Key: <key>`` or the query parameter ``key=<key>``
   (for ``<img src>`` and links). Otherwise 401 with ``WWW-Authenticate: Bearer`` and a JSON
   error. Keys are compared with ``hmac.compare_digest`` against every configured key, so the
   time taken does not reveal how much of a guess was right. ``GET /`` and ``/healthz`` stay
   open (the page asks for the key; load balancers probe health).
2. **Body size**: a ``Content-Length`` over the cap is refused with 413 before one byte of the
   body is read; a body without one (chunked) is counted as it streams in through ``receive``
   and refused with 413 as soon as it passes the cap, so the ingress never holds more than the
   cap plus one chunk. ``POST /v1/localize/batch`` has its own, larger cap.

Errors have the API's JSON form ``{"error": {"status", "field", "message"}}`` (RFC 9110 §15.5.2
for 401 + WWW-Authenticate, §15.5.14 for 413).
"""

from __future__ import annotations

import hmac
import json
import os
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs

API_KEYS_ENV = "GLEAM_API_KEYS"  # comma-separated keys, added to the config's api_keys
PROTECTED_PREFIX = "/v1/"
BATCH_PATH = "/v1/localize/batch"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def keys_from_env(environ: dict[str, str] | None = None) -> list[str]:
    """The keys in ``$GLEAM_API_KEYS`` (comma-separated, blanks dropped)."""
    value = (os.environ if environ is None else environ).get(API_KEYS_ENV, "")
    return [key.strip() for key in value.split(",") if key.strip()]


@dataclass
class GuardSettings:
    """``api_keys``: accepted keys (none = open); body caps in bytes."""

    api_keys: list[str] = field(default_factory=list)
    max_body_bytes: int = 12 * 2**20
    max_batch_body_bytes: int = 64 * 2**20

    def __post_init__(self) -> None:
        self._keys = [key.encode("utf-8") for key in dict.fromkeys(self.api_keys) if key]
        for name in ("max_body_bytes", "max_batch_body_bytes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: must be at least 1 byte, got {getattr(self, name)}")

    @property
    def keys_required(self) -> bool:
        return bool(self._keys)

    def key_accepted(self, given: str) -> bool:
        """Constant-time match of ``given`` against every key (no early exit)."""
        candidate = given.encode("utf-8")
        accepted = False
        for key in self._keys:
            accepted |= hmac.compare_digest(candidate, key)
        return accepted

    def body_cap(self, path: str) -> int:
        return int(self.max_batch_body_bytes if path == BATCH_PATH else self.max_body_bytes)


class BodyTooLarge(Exception):
    """Raised from ``receive`` when the streamed body passes the cap (not a ValueError: JSON
    parsing in the routes must not swallow it)."""

    def __init__(self, cap: int, seen: int):
        super().__init__(f"request body passed {cap} bytes ({seen} read)")
        self.cap, self.seen = cap, seen


def _error(status: int, field_name: str, message: str) -> bytes:
    return json.dumps({"error": {"status": status, "field": field_name, "message": message}}).encode()


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def _too_large(cap: int, path: str, seen: int | None = None) -> bytes:
    hint = ("split the batch into smaller requests" if path == BATCH_PATH else
            "downscale or recompress the image")
    size = f"{cap} bytes" + (f" ({cap / 2**20:.1f} MiB)" if cap >= 2**20 else "")
    read = "" if seen is None else f" (refused after reading {seen} bytes of it)"
    return _error(413, "body", f"is larger than the limit of {size} for {path}{read}: {hint}")


def _presented_key(scope: Scope) -> str:
    headers = {name.lower(): value for name, value in scope.get("headers", [])}
    authorization = headers.get(b"authorization", b"").decode("latin-1").strip()
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    if b"x-api-key" in headers:
        return headers[b"x-api-key"].decode("latin-1").strip()
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return (query.get("key") or [""])[0]


def _route_path(scope: Scope) -> str:
    """The path below the application's route prefix (Serve mounts apps under ``root_path``)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


class RequestGuard:
    """ASGI middleware: API keys for ``/v1/*``, then the body cap (see the module docstring)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings: GuardSettings | None = None
        if scope["type"] == "http" and "app" in scope:
            settings = getattr(scope["app"].state, "guard", None)
        if settings is None:
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        if settings.keys_required and path.startswith(PROTECTED_PREFIX):
            given = _presented_key(scope)
            if not given or not settings.key_accepted(given):
                message = ("needs a valid API key: send `Authorization: Bearer <key>`, `X-API-Key: <key>` "
                           "or ?key=<key>" if not given else "is not a valid API key for this service")
                await _respond(send, 401, _error(401, "api_key", message),
                               [(b"www-authenticate", b'Bearer realm="gleam"')])
                return
        cap = settings.body_cap(path)
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
                if length < 0:
                    raise ValueError
            except ValueError:
                await _respond(send, 400, _error(400, "content-length", f"{declared!r} is not a byte count"))
                return
            if length > cap:
                await _respond(send, 413, _too_large(cap, path))
                return
        seen = 0
        started = False

        async def counted_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    raise BodyTooLarge(cap, seen)
            return message

        async def tracked_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as error:
            if started:
                raise
            await _respond(send, 413, _too_large(cap, path, error.seen), [(b"connection", b"close")])
