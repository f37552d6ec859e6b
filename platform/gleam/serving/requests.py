"""Request parsing and validation for the serving endpoints (plain functions, no Ray).

Every problem becomes a ``RequestError`` with an HTTP status, the offending field and a
sentence a client can act on; the ingress turns it into a JSON 4xx response.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from gleam.data.images import ImageError, ImageTooLarge, decode_rgb, image_size
from gleam.data.schema import SATELLITE_ONLY, query_modalities

MAX_PIXELS = 40_000_000  # refuse decompression bombs before decoding


QUOTE_CHARS = 40  # the most of a client's value an error message repeats


def shown(value: Any, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters (with the full length):
    errors never echo a request body back."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, (str, bytes, list, dict)) else len(text)
    return f"{text[:limit]}... ({size} chars)"


class RequestError(Exception):
    """A client error: ``status`` (4xx, or 503 for a busy ingress), ``field``, ``message`` and
    response ``headers`` (``Retry-After`` on 503)."""

    def __init__(self, status: int, field: str, message: str, headers: dict[str, str] | None = None):
        field = field if len(field) <= QUOTE_CHARS + 20 else field[:QUOTE_CHARS] + "..."
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message, self.headers = status, field, message, headers or {}

    def to_json(self) -> dict[str, Any]:
        return {"error": {"status": self.status, "field": self.field, "message": self.message}}


def item_error(status: int, field: str, message: str) -> dict[str, Any]:
    """One failed item of a batched call, in the API's error form (``{"error": {...}}``): batched
    methods return these in place of results, so one bad item never fails its batch."""
    return RequestError(status, field, message).to_json()


def raise_item_error(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` unchanged, or the RequestError its ``error`` entry describes."""
    if "error" in result:
        error = result["error"]
        raise RequestError(int(error["status"]), str(error["field"]), str(error["message"]))
    return result


# --------------------------------------------------------------------------- pixel budgets


class PixelGate:
    """Decoded pixels held across one ingress replica's requests in flight (``limit`` pixels)."""

    def __init__(self, limit: int):
        self.limit, self.held = int(limit), 0


class RequestPixels:
    """One request's decoded-pixel budget: at most ``per_request`` pixels for the request and
    whatever ``gate`` has left across the replica.  ``reserve`` raises 413 past the request's
    budget, 503 with Retry-After when the replica holds too much; ``release`` gives it all back."""

    def __init__(self, per_request: int, gate: PixelGate, retry_after_s: float = 1.0):
        self.per_request, self.gate, self.retry_after_s, self.used = int(per_request), gate, retry_after_s, 0

    def reserve(self, pixels: int, field: str) -> None:
        if self.used + pixels > self.per_request:
            raise RequestError(413, field, (
                f"decodes to {pixels / 1e6:.1f} megapixels; with this request's earlier images that passes the "
                f"limit of {self.per_request / 1e6:.1f} megapixels per request: send fewer or smaller images "
                "(downscale to the model's input size; it never sees more)"))
        if self.gate.held + pixels > self.gate.limit:
            raise RequestError(503, field, (
                f"the server is decoding {self.gate.held / 1e6:.1f} of its {self.gate.limit / 1e6:.1f} megapixels "
                "in flight; retry after the Retry-After seconds"),
                headers={"Retry-After": str(max(1, math.ceil(self.retry_after_s)))})
        self.used += pixels
        self.gate.held += pixels

    def release(self) -> None:
        self.gate.held -= self.used
        self.used = 0


# the budget of the request this task is serving (set by the ingress per request; asyncio tasks
# each see their own): every image decoded for the request is counted against it
CURRENT_PIXELS: contextvars.ContextVar[RequestPixels | None] = contextvars.ContextVar("gleam_request_pixels",
                                                                                      default=None)


def begin_pixels(budget: RequestPixels) -> contextvars.Token:
    """Make ``budget`` the current request's (a function, so closures that call it pickle by
    reference: a ContextVar itself cannot be pickled into a Serve app)."""
    return CURRENT_PIXELS.set(budget)


def end_pixels(token: contextvars.Token) -> None:
    budget = CURRENT_PIXELS.get()
    if budget is not None:
        budget.release()
    CURRENT_PIXELS.reset(token)


def accepted_modalities() -> list[str]:
    """Query views a client may send: every registered query modality, plus a satellite tile."""
    return [*query_modalities(), SATELLITE_ONLY]


def decode_image_bytes(data: bytes, field: str, max_bytes: int) -> np.ndarray:
    """Uploaded bytes -> uint8 HxWx3 RGB by the platform's one decoder (``gleam.data.images``);
    413 when too many bytes or pixels (decompression bombs included), 415 when not a readable
    image (not an image, truncated, corrupt), 422 when empty or smaller than 8x8."""
    if not data:
        raise RequestError(422, field, "is empty: send a JPEG or PNG image")
    if len(data) > max_bytes:
        raise RequestError(413, field, f"is {len(data)} bytes; the limit is {max_bytes} bytes "
                                       f"({max_bytes / 2**20:.1f} MiB): downscale or recompress the image")
    budget = CURRENT_PIXELS.get()
    size = image_size(data)
    if size is not None and size[0] * size[1] > MAX_PIXELS:  # from the header: nothing decoded yet
        raise RequestError(413, field, f"is {size[0]}x{size[1]} = {size[0] * size[1] / 1e6:.1f} megapixels; the limit "
                                       f"per image is {MAX_PIXELS / 1e6:.0f} megapixels: downscale it")
    if budget is not None and size is not None:
        budget.reserve(size[0] * size[1], field)
    try:
        array = decode_rgb(data, max_pixels=MAX_PIXELS)
    except ImageTooLarge as error:
        raise RequestError(413, field, f"is {error.detail}") from None
    except ImageError as error:
        raise RequestError(415, field, f"is not a readable image ({type(error).__name__}: {shown(error.detail, 120)}); "
                                       "send JPEG or PNG bytes") from None
    if budget is not None and size is None:  # the header did not say: count what was decoded
        budget.reserve(int(array.shape[0]) * int(array.shape[1]), field)
    if min(array.shape[:2]) < 8:
        raise RequestError(422, field, f"is {array.shape[1]}x{array.shape[0]} pixels; at least 8x8 is needed")
    return array


def decode_base64_image(value: Any, field: str, max_bytes: int) -> tuple[bytes, np.ndarray]:
    """A base64 string (optionally a ``data:image/...;base64,`` URL) -> (bytes, RGB array)."""
    if not isinstance(value, str) or not value:
        raise RequestError(422, field, "must be a base64-encoded JPEG or PNG string")
    if value.startswith("data:"):
        value = value.split(",", 1)[-1]
    if len(value) * 3 // 4 > max_bytes + 3:
        raise RequestError(413, field, f"decodes to more than the limit of {max_bytes} bytes")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(422, field, "is not valid base64") from None
    return data, decode_image_bytes(data, field, max_bytes)


def parse_language(value: Any, languages: list[str], field: str = "language") -> str:
    value = "en" if value in (None, "") else value
    if value not in languages:
        raise RequestError(422, field, f"{shown(value)} is not supported; use one of {languages}")
    return value


def parse_modality(value: Any, field: str = "modality") -> str:
    value = "uav" if value in (None, "") else value
    allowed = accepted_modalities()
    if value not in allowed:
        raise RequestError(422, field, f"{shown(value)} is not a known view; use one of {allowed}")
    return value


def parse_int(value: Any, field: str, default: int, low: int, high: int) -> int:
    if value in (None, ""):
        return default
    try:
        number = int(value)
        if isinstance(value, float) and number != value:
            raise ValueError
    except (TypeError, ValueError):
        raise RequestError(422, field, f"{shown(value)} is not an integer") from None
    if not low <= number <= high:
        raise RequestError(422, field, f"{number} is out of range [{low}, {high}]")
    return number


def parse_bool(value: Any, field: str, default: bool = False) -> bool:
    if value in (None, ""):
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise RequestError(422, field, f"{shown(value)} is not a boolean (true/false)")


@dataclass
class LocalizeRequest:
    """One parsed query: the image (bytes and decoded), its view and what to return."""

    image_bytes: bytes
    image: np.ndarray
    modality: str
    top_k: int
    explain: bool
    language: str
    id: str = ""


def check_fields(given: dict[str, Any], allowed: set[str], where: str) -> None:
    """422 for a field ``where`` does not take; the field's name is quoted cut short (a whole JSON
    body sent as a form's only key is not repeated back)."""
    unknown = sorted(set(given) - allowed, key=str)
    if unknown:
        name = str(unknown[0])
        field = name if len(name) <= QUOTE_CHARS else "body"
        raise RequestError(422, field, f"unknown field {shown(name)} in {where}; allowed fields: {sorted(allowed)}")


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header, lower-cased, without parameters (RFC 9110 8.3.1:
    type and subtype are case-insensitive): "Application/JSON; charset=UTF-8" -> "application/json"."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json_media(media: str) -> bool:
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def looks_like_json(body: bytes) -> bool:
    return body.lstrip()[:1] in (b"{", b"[")


SEND = ("send multipart/form-data (file uploads: curl -F image=@photo.jpg) or application/json with base64 "
        "images (curl --json '{\"image\": \"...\"}', or -H 'Content-Type: application/json')")


def refuse_media(media: str, body_head: bytes) -> RequestError:
    """The 415 for a body the API does not take, saying what to send instead (never the body)."""
    if looks_like_json(body_head):
        said = f"says {shown(media)}" if media else "is missing"
        return RequestError(415, "content-type", f"the body is JSON but its Content-Type {said} (curl -d sends "
                                                 "application/x-www-form-urlencoded); " + SEND)
    if media == "application/x-www-form-urlencoded":
        return RequestError(415, "content-type", "a URL-encoded form cannot carry an image file; " + SEND)
    return RequestError(415, "content-type", f"{shown(media) if media else 'none'} is not accepted; " + SEND)
