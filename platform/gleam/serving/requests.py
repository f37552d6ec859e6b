"""Request parsing and validation for the serving endpoints (plain functions, no Ray).

Every problem becomes a ``RequestError`` with an HTTP status, the offending field and a
sentence a client can act on; the ingress turns it into a JSON 4xx response.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import numpy as np

from gleam.data.images import ImageError, ImageTooLarge, decode_rgb
from gleam.data.schema import SATELLITE_ONLY, query_modalities

MAX_PIXELS = 40_000_000  # refuse decompression bombs before decoding


class RequestError(Exception):
    """A client error: ``status`` (4xx), ``field`` and ``message``."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message = status, field, message

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
    try:
        array = decode_rgb(data, max_pixels=MAX_PIXELS)
    except ImageTooLarge as error:
        raise RequestError(413, field, f"is {error.detail}") from None
    except ImageError as error:
        raise RequestError(415, field, f"is not a readable image ({type(error).__name__}: {error.detail}); "
                                       "send JPEG or PNG bytes") from None
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
        raise RequestError(422, field, f"{value!r} is not supported; use one of {languages}")
    return value


def parse_modality(value: Any, field: str = "modality") -> str:
    value = "uav" if value in (None, "") else value
    allowed = accepted_modalities()
    if value not in allowed:
        raise RequestError(422, field, f"{value!r} is not a known view; use one of {allowed}")
    return value


def parse_int(value: Any, field: str, default: int, low: int, high: int) -> int:
    if value in (None, ""):
        return default
    try:
        number = int(value)
        if isinstance(value, float) and number != value:
            raise ValueError
    except (TypeError, ValueError):
        raise RequestError(422, field, f"{value!r} is not an integer") from None
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
    raise RequestError(422, field, f"{value!r} is not a boolean (true/false)")


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
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise RequestError(422, unknown[0], f"unknown field in {where}; allowed fields: {sorted(allowed)}")
