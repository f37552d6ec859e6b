"""The one sample record of the platform and its WebDataset encoding.

A ``Sample`` is a query/satellite pair at one location: the query view (UAV, street map,
panorama, ground photo, or any registered modality) and the geo-referenced satellite tile it
must be matched with.  A gallery-only distractor tile uses modality ``"satellite"`` and has no
query image.

WebDataset encoding, one tar member per part, all sharing the key:
    {key}.query.jpg   the query image (absent for a ``satellite`` distractor)
    {key}.sat.jpg     the satellite image
    {key}.json        every other field (see ``Sample.to_json``)

``validate`` and ``decode_members`` reject a bad record with ``SampleError`` naming the key,
the field and the reason.
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
from PIL import Image

from gleam.data.images import ImageError, decode_rgb

SCHEMA_VERSION = 1

QUERY_MEMBER = "query.jpg"
SATELLITE_MEMBER = "sat.jpg"
JSON_MEMBER = "json"

SATELLITE_ONLY = "satellite"  # gallery distractor: a satellite tile without a query view
_MODALITIES: set[str] = {"uav", "streetmap", "panorama", "ground", SATELLITE_ONLY}
SPLITS = ("train", "val", "test", "gallery")

_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_\-/]+$")  # WebDataset cuts the key at the first dot


class SampleError(ValueError):
    """A record is invalid: ``key``, ``field`` and ``reason`` say which and why."""

    def __init__(self, key: str, field_name: str, reason: str):
        self.key, self.field, self.reason = key, field_name, reason
        super().__init__(f"sample '{key}': field '{field_name}': {reason}")


def register_modality(name: str) -> None:
    """Add a query modality (e.g. ``"thermal"``) to the schema."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"modality name {name!r} must be lowercase letters, digits and '_'")
    _MODALITIES.add(name)


def modalities() -> tuple[str, ...]:
    return tuple(sorted(_MODALITIES))


def query_modalities() -> tuple[str, ...]:
    return tuple(m for m in modalities() if m != SATELLITE_ONLY)


def check_query_modalities(names: Iterable[str], key: str) -> None:
    """Raise a ValueError naming config ``key`` when ``names`` holds an unknown query modality."""
    unknown = [m for m in names if m not in query_modalities()]
    if unknown:
        raise ValueError(f"{key}: {unknown} unknown; choose from {list(query_modalities())}")


@dataclass
class Sample:
    """One query/satellite pair (or one gallery tile when ``modality == "satellite"``).

    Images are kept encoded (JPEG/PNG bytes) so a record round-trips byte for byte; use
    ``query_array()``/``satellite_array()`` to decode.
    """

    key: str
    location_id: str
    modality: str
    satellite_image: bytes
    latitude: float
    longitude: float
    split: str
    source: str
    query_image: bytes | None = None
    heading: float | None = None  # degrees clockwise from north of the query view, when known
    metadata: dict[str, Any] = field(default_factory=dict)
    # the images validation decoded (``validate(check_images=True, keep_pixels=True)``), so a reader that needs the
    # pixels next takes these instead of decoding the same bytes again; other decodes keep nothing
    # (a list of samples must not grow by its pixels)
    _decoded: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """Every field but the images, as written to ``{key}.json``."""
        return {
            "schema_version": SCHEMA_VERSION,
            "key": self.key,
            "location_id": self.location_id,
            "modality": self.modality,
            "latitude": self.latitude,
            "longitude": self.longitude,
            "heading": self.heading,
            "split": self.split,
            "source": self.source,
            "metadata": self.metadata,
        }

    def _array(self, name: str, data: bytes) -> np.ndarray:
        kept = self._decoded.get(name)
        return kept if kept is not None else decode_image(data, self.key, name)

    def query_array(self) -> np.ndarray | None:
        """The query image as uint8 HxWx3 (the pixels validation decoded, when it did); None for
        a gallery tile.  ``SampleError`` when it cannot be decoded."""
        return None if self.query_image is None else self._array("query_image", self.query_image)

    def satellite_array(self) -> np.ndarray:
        """The satellite tile as uint8 HxWx3 (the pixels validation decoded, when it did);
        ``SampleError`` when it cannot be decoded."""
        return self._array("satellite_image", self.satellite_image)

    def decode_and_keep(self) -> None:
        """Decode both images once and keep the pixels on the sample (validation does this: the
        read task that validated a sample then hands its pixels on without a second decode).
        ``SampleError`` naming the image that cannot be decoded."""
        self._decoded["satellite_image"] = decode_image(self.satellite_image, self.key, "satellite_image")
        if self.query_image is not None:
            self._decoded["query_image"] = decode_image(self.query_image, self.key, "query_image")


# --------------------------------------------------------------------------- images


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """uint8 HxWx3 array -> JPEG bytes."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 image, got {image.dtype} {image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def decode_image(data: bytes, key: str = "?", field_name: str = "image") -> np.ndarray:
    """Encoded image bytes -> uint8 HxWx3 RGB array, by the platform's one decoder
    (``gleam.data.images.decode_rgb``: EXIF orientation, 16-bit/float scaling, alpha...).

    Raises ``SampleError`` naming the key and field when refused; the reason starts with the
    ``gleam.data.images.ImageError`` class (``NotAnImage``, ``TruncatedImage``...), which is also
    the error's ``__cause__``.
    """
    try:
        return decode_rgb(data)
    except ImageError as error:
        raise SampleError(key, field_name, f"image cannot be decoded ({type(error).__name__}: {error})") from error


# --------------------------------------------------------------------------- validation


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate(sample: Sample, check_images: bool = False, keep_pixels: bool = False) -> Sample:
    """Check every field; raise ``SampleError`` naming the first bad one. Returns the sample.
    ``check_images`` decodes both images; ``keep_pixels`` also keeps the decoded pixels on the
    sample (``Sample.decode_and_keep``) for the reader that uses them next."""
    key = sample.key if isinstance(sample.key, str) else repr(sample.key)

    def fail(name: str, reason: str) -> SampleError:
        return SampleError(key, name, reason)

    if not isinstance(sample.key, str) or not _KEY_PATTERN.match(sample.key):
        raise fail("key", "must be non-empty letters, digits, '_', '-' or '/', without dots")
    if not isinstance(sample.location_id, str) or not sample.location_id:
        raise fail("location_id", "must be a non-empty string")
    if sample.modality not in _MODALITIES:
        raise fail("modality", f"{sample.modality!r} is not one of {sorted(_MODALITIES)} "
                               "(add new ones with gleam.data.schema.register_modality)")
    if sample.split not in SPLITS:
        raise fail("split", f"{sample.split!r} is not one of {list(SPLITS)}")
    if not isinstance(sample.source, str) or not sample.source:
        raise fail("source", "must name the source dataset")
    if not _is_number(sample.latitude) or not -90.0 <= sample.latitude <= 90.0:
        raise fail("latitude", f"{sample.latitude!r} is not a finite number in [-90, 90]")
    if not _is_number(sample.longitude) or not -180.0 <= sample.longitude <= 180.0:
        raise fail("longitude", f"{sample.longitude!r} is not a finite number in [-180, 180]")
    if sample.heading is not None and (not _is_number(sample.heading) or not 0.0 <= sample.heading < 360.0):
        raise fail("heading", f"{sample.heading!r} must be null or degrees in [0, 360)")
    if not isinstance(sample.metadata, dict):
        raise fail("metadata", "must be a JSON object")
    if not isinstance(sample.satellite_image, (bytes, bytearray)) or not sample.satellite_image:
        raise fail("satellite_image", "missing")
    if sample.modality == SATELLITE_ONLY:
        if sample.query_image is not None:
            raise fail("query_image", "a 'satellite' gallery tile has no query image")
    elif not isinstance(sample.query_image, (bytes, bytearray)) or not sample.query_image:
        raise fail("query_image", f"missing for modality {sample.modality!r}")
    if check_images and keep_pixels:
        sample.decode_and_keep()
    elif check_images:
        sample.satellite_array()
        sample.query_array()
    return sample


# --------------------------------------------------------------------------- WebDataset


def encode_members(sample: Sample) -> dict[str, bytes]:
    """The tar members of one sample, keyed by extension (``query.jpg``, ``sat.jpg``, ``json``)."""
    validate(sample)
    members = {
        SATELLITE_MEMBER: bytes(sample.satellite_image),
        JSON_MEMBER: json.dumps(sample.to_json(), ensure_ascii=False, sort_keys=True).encode("utf-8"),
    }
    if sample.query_image is not None:
        members[QUERY_MEMBER] = bytes(sample.query_image)
    return members


def decode_members(key: str, members: dict[str, bytes], check_images: bool = True,
                   keep_pixels: bool = False) -> Sample:
    """Rebuild and validate a sample from its tar members (``validate``'s ``check_images`` and
    ``keep_pixels``); ``SampleError`` when anything is off."""
    if JSON_MEMBER not in members:
        raise SampleError(key, "json", f"member {key}.json is missing")
    try:
        record = json.loads(members[JSON_MEMBER].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SampleError(key, "json", f"not valid JSON ({error})") from None
    if not isinstance(record, dict):
        raise SampleError(key, "json", "must hold a JSON object")
    required = ("location_id", "modality", "latitude", "longitude", "split", "source")
    for name in required:
        if name not in record:
            raise SampleError(key, name, "missing from the json member")
    if SATELLITE_MEMBER not in members:
        raise SampleError(key, "satellite_image", f"member {key}.{SATELLITE_MEMBER} is missing")
    if record.get("key", key) != key:
        raise SampleError(key, "key", f"json says {record.get('key')!r}, the tar member says {key!r}")
    sample = Sample(
        key=key,
        location_id=record["location_id"],
        modality=record["modality"],
        satellite_image=members[SATELLITE_MEMBER],
        query_image=members.get(QUERY_MEMBER),
        latitude=record["latitude"],
        longitude=record["longitude"],
        heading=record.get("heading"),
        split=record["split"],
        source=record["source"],
        metadata=record.get("metadata", {}),
    )
    return validate(sample, check_images=check_images, keep_pixels=keep_pixels)
