"""The one image decoder of the platform: encoded bytes -> RGB uint8 HxWx3, and how it got there.

Every path that turns stored or uploaded image bytes into pixels calls ``decode_image`` (or
``decode_rgb``): ingest's converters, the shard reader and the Ray Data pipelines (training,
evaluation, index building), serving, batch localization and GLEAM-X.  So the same file means
the same pixels everywhere.

Rules, applied in this order:

1. **Refusals** (all ``ImageError``, a ``ValueError``; ``code`` names the kind):
   empty or unidentifiable bytes -> ``NotAnImage`` (``not_an_image``); more than ``max_pixels``
   (default ``DEFAULT_MAX_PIXELS``, Pillow's own 89,478,485) -> ``ImageTooLarge``
   (``too_many_pixels``, carries width, height, pixels and the limit; raised from the header,
   before any pixel is decoded, and also for Pillow's ``DecompressionBombError``);
   bytes ending before the pixel data does -> ``TruncatedImage`` (``truncated_image``: Pillow's
   ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set and the frame is loaded in full); any other
   decoder failure -> ``CorruptImage`` (``corrupt_image``).
2. **Animated files** (GIF, APNG, animated WebP, multi-page TIFF): the first frame.
3. **EXIF orientation** (tag 0x0112) is applied with ``PIL.ImageOps.exif_transpose``: pixels come
   out the way a viewer shows the photo (a phone photo with Orientation 6 comes out upright).
4. **Bit depth as the data is** (scaled, never clipped): one-channel 16-bit (``I;16*``) and
   32-bit integer (``I``) images take the range of their data from, in this order:
   - the file's own metadata: PNG ``sBIT`` (significant bits) -> ``declared_bits``, TIFF
     ``SMaxSampleValue`` / ``MaxSampleValue`` (below the container's maximum) ->
     ``declared_max``: ``v * 255 / (2**bits - 1)`` or ``v * 255 / max``;
   - else the used range: data whose maximum fits in 12 or 14 bits (12-bit sensors, satellite
     DN values in 16-bit containers) is scaled from that depth (``inferred_bits``); data using
     the 16th bit from the full 16-bit range (``uint16_range``, ``round(v * 255 / 65535)``);
   - 32-bit integers outside [0, 65535], and float (``F``) data outside [0, 1], min-max over the
     finite values (``min_max``); float data inside [0, 1] -> ``round(v * 255)`` (``unit_range``);
     NaN and infinities become 0.
   When the result would still hold fewer than ``MIN_LEVELS`` grey levels while the source has
   more distinct values (a low-dynamic-range image), the used range is stretched to 0..255
   instead (``used_range``) and ``DecodeInfo.warning`` says so. Several-channel 16-bit files
   (16-bit RGB PNG/TIFF) are read by Pillow as their top 8 bits: ``source_bits`` = 16 and a
   warning record it, and the same low-range stretch applies. ``DecodeInfo`` records
   ``source_bits``, ``significant_bits`` (declared or inferred), ``used_range`` (source
   minimum and maximum) and ``scaling``.
5. **Colour**: one-channel images are replicated to R = G = B; palette images (``P``) go through
   their palette, honouring transparency; CMYK, YCbCr, LAB and HSV use Pillow's converters;
   alpha (``RGBA``, ``LA``, ``PA``, ``P`` with transparency, premultiplied ``RGBa``/``La``) is
   composited over ``BACKGROUND`` = black (0, 0, 0), the no-data fill of geo imagery:
   ``out = round(colour * a / 255 + background * (1 - a / 255))``.

``DecodeInfo`` records what was done (format, stored mode and size, orientation, scaling,
alpha, animation); ``DecodeInfo.notes()`` is the short, JSON-able form that ingest stores in
sample metadata when anything beyond a plain decode happened.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)
BACKGROUND = (0, 0, 0)  # alpha is composited over black

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_OBJECT_REPR = re.compile(r"<[^<>]* object at 0x[0-9a-fA-F]+>")
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


class ImageError(ValueError):
    """Bytes that are refused as an image: ``code`` names the kind, ``detail`` says why."""

    code = "image_error"

    def __init__(self, detail: str):
        self.detail = detail
        super().__init__(detail)


class NotAnImage(ImageError):
    """Empty bytes, or bytes no installed decoder recognises as an image."""

    code = "not_an_image"


class TruncatedImage(ImageError):
    """The file ends before its pixel data does (an interrupted download or copy)."""

    code = "truncated_image"


class CorruptImage(ImageError):
    """A recognised image format whose data the decoder cannot read."""

    code = "corrupt_image"


class ImageTooLarge(ImageError):
    """More pixels than the limit (a decompression bomb, or simply too large to hold).

    ``width``/``height`` are None when only Pillow's own bomb check saw the header.
    """

    code = "too_many_pixels"

    def __init__(self, width: int | None, height: int | None, pixels: int | None, limit: int):
        self.width, self.height, self.pixels, self.limit = width, height, pixels, limit
        size = f"{width}x{height} = {pixels} pixels" if width is not None else \
            (f"{pixels} pixels" if pixels is not None else "too many pixels")
        super().__init__(f"{size}; the limit is {limit} pixels (decompression-bomb guard): "
                         "downscale the image")


@dataclass(frozen=True)
class DecodeInfo:
    """How bytes became RGB uint8 pixels.

    format: Pillow's format name (JPEG, PNG, GIF, TIFF, ...); mode: the stored mode (``I;16``,
    ``P``, ``CMYK``...); width/height: stored size before orientation; orientation: the EXIF
    value (1 = none, 6 = rotate 90 degrees clockwise to view...); scaling: ``none``,
    ``uint16_range``, ``declared_bits``, ``declared_max``, ``inferred_bits``, ``unit_range``,
    ``min_max`` or ``used_range`` (rule 4); alpha: ``none`` or ``composited_on_black``; animated:
    more than one frame (the first was used); source_bits, significant_bits, used_range and
    warning: rule 4.
    """

    format: str
    mode: str
    width: int
    height: int
    orientation: int = 1
    scaling: str = "none"
    alpha: str = "none"
    animated: bool = False
    source_bits: int = 8  # bits per sample of the stored data (16 for I;16, 32 for I / F)
    significant_bits: int | None = None  # declared by the file (sBIT) or inferred from the used range
    used_range: tuple[float, float] | None = None  # source minimum and maximum (deep images only)
    warning: str = ""  # what a user should know (low dynamic range, lost low bits)

    @property
    def plain(self) -> bool:
        """True when the decode was a plain 8-bit RGB/gray decode with nothing else applied."""
        return (self.orientation == 1 and self.scaling == "none" and self.alpha == "none"
                and not self.animated and self.mode in ("RGB", "L") and self.source_bits == 8
                and not self.warning)

    def notes(self) -> dict[str, Any]:
        """The fields that say something beyond a plain decode (empty when ``plain``)."""
        if self.plain:
            return {}
        out: dict[str, Any] = {"mode": self.mode}
        if self.orientation != 1:
            out["orientation"] = self.orientation
        if self.scaling != "none":
            out["scaling"] = self.scaling
        if self.source_bits != 8:
            out["source_bits"] = self.source_bits
        if self.significant_bits is not None:
            out["significant_bits"] = self.significant_bits
        if self.used_range is not None:
            out["used_range"] = [_json_number(v) for v in self.used_range]
        if self.warning:
            out["warning"] = self.warning
        if self.alpha != "none":
            out["alpha"] = self.alpha
        if self.animated:
            out["frames"] = "first"
        return out

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if self.used_range is not None:
            out["used_range"] = [_json_number(v) for v in self.used_range]
        return out


def _json_number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(float(value), 6)


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # uint8 [H, W, 3], after orientation
    info: DecodeInfo


def _message(error: BaseException) -> str:
    text = _OBJECT_REPR.sub("<bytes>", str(error)).strip()  # no memory addresses: reports reproduce
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _failure(error: BaseException) -> ImageError:
    """Pillow's exception while reading pixels -> our typed error."""
    text = str(error)
    if "truncated" in text.lower():
        return TruncatedImage(f"the file ends before its image data does ({_message(error)})")
    return CorruptImage(f"the image data cannot be decoded ({_message(error)})")


@dataclass(frozen=True)
class _Depth:
    """What the file says about its sample range (rule 4): bits per sample as stored, significant
    bits (PNG sBIT) and a declared maximum (TIFF SMaxSampleValue / MaxSampleValue)."""

    stored_bits: int | None = None
    significant_bits: int | None = None
    declared_max: float | None = None
    channels: int = 1


def _png_depth(data: bytes) -> _Depth:
    """IHDR bit depth and colour type, and sBIT, read from the chunks before the pixel data."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        return _Depth()
    bits, colour = data[24], data[25]
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 1)
    significant = None
    position = 8
    while position + 8 <= len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        kind = data[position + 4:position + 8]
        if kind in (b"IDAT", b"IEND"):
            break
        if kind == b"sBIT" and length >= 1:
            values = [v for v in data[position + 8:position + 8 + length][:max(1, channels - (colour in (4, 6)))]]
            if values and 0 < max(values) <= bits:
                significant = max(values)
        position += 12 + length
    return _Depth(stored_bits=bits, significant_bits=significant, channels=channels)


def _tiff_depth(image: Image.Image) -> _Depth:
    tags = getattr(image, "tag_v2", None)
    if tags is None:
        return _Depth()

    def first(tag: int) -> float | None:
        value = tags.get(tag)
        if isinstance(value, tuple):
            value = value[0] if value else None
        try:
            return None if value is None else float(value)
        except (TypeError, ValueError):
            return None

    bits = first(258)
    declared = first(341)  # SMaxSampleValue
    if declared is None:
        declared = first(281)  # MaxSampleValue
    return _Depth(stored_bits=None if bits is None else int(bits), declared_max=declared,
                  channels=int(first(277) or 1))


def _depth(image: Image.Image, data: bytes) -> _Depth:
    if image.format == "PNG":
        return _png_depth(data)
    if image.format == "TIFF":
        return _tiff_depth(image)
    return _Depth()


MIN_LEVELS = 32  # fewer grey levels than this from deeper data: the used range is stretched instead
INFERRED_DEPTHS = (12, 14)  # container depths recognised from the used range (16 otherwise)


@dataclass
class _Scaled:
    pixels: np.ndarray  # uint8, the input's shape
    scaling: str
    significant_bits: int | None = None
    used_range: tuple[float, float] | None = None
    warning: str = ""
    source_bits: int | None = None  # set when not implied by the mode (several-channel 16-bit)


def _stretch_if_flat(out: _Scaled, values: np.ndarray, valid: np.ndarray | None, source: str,
                     lost_bits: bool = False) -> _Scaled:
    """Rule 4's last step: a result with fewer than MIN_LEVELS levels from data with more distinct
    values (or, ``lost_bits``, from data whose low bits the decoder dropped) is replaced by the
    min-max stretch of the used range (and says so)."""
    used = out.pixels if valid is None else out.pixels[valid]
    if used.size == 0:
        return out
    levels = int(used.max()) - int(used.min()) + 1
    source_values = values if valid is None else values[valid]
    if levels >= MIN_LEVELS or (lost_bits and levels < 2) or (
            not lost_bits and np.unique(source_values.ravel()[: 1 << 16]).size <= levels):
        return out
    low, high = float(source_values.min()), float(source_values.max())
    scaled = (values.astype(np.float64) - low) * (255.0 / (high - low))
    if valid is not None:
        scaled = np.where(valid, scaled, 0.0)
    pixels = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    warning = (f"low dynamic range: {source} uses only {_json_number(low)}..{_json_number(high)}, which "
               f"{out.scaling} scaling would map to {levels} grey levels; stretched to 0..255 (used_range)")
    log.debug("image decode: %s", warning)
    return _Scaled(pixels, "used_range", out.significant_bits, (low, high), warning, out.source_bits)


def _to_uint8(values: np.ndarray, mode: str, depth: _Depth = _Depth()) -> _Scaled:
    """One-channel 16-bit / 32-bit / float pixels -> uint8 and the scaling used (rule 4)."""
    if mode == "F":
        values = values.astype(np.float64)
        finite = np.isfinite(values)
        if not finite.any():
            return _Scaled(np.zeros(values.shape, np.uint8), "min_max")
        low, high = float(values[finite].min()), float(values[finite].max())
        if low >= 0.0 and high <= 1.0:
            scaled, scaling = values * 255.0, "unit_range"
        else:
            scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
            scaling = "min_max"
        scaled = np.where(finite, scaled, 0.0)
        out = _Scaled(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), scaling, used_range=(low, high))
        return _stretch_if_flat(out, values, None if finite.all() else finite, "float data")
    values = values.astype(np.int64)
    low, high = int(values.min()), int(values.max())
    if not (mode in _SIXTEEN_BIT or (low >= 0 and high <= 65535)):
        if high == low:
            return _Scaled(np.zeros(values.shape, np.uint8), "min_max", used_range=(low, high))
        return _Scaled(np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8), "min_max",
                       used_range=(low, high))
    top, scaling, bits = 65535, "uint16_range", 16
    if depth.significant_bits and depth.significant_bits < 16 and high < 2 ** depth.significant_bits:
        bits = depth.significant_bits
        top, scaling = 2 ** bits - 1, "declared_bits"
    elif depth.declared_max and 0 < depth.declared_max < 65535 and high <= depth.declared_max:
        top, scaling, bits = int(depth.declared_max), "declared_max", int(depth.declared_max).bit_length()
    else:
        inferred = next((b for b in INFERRED_DEPTHS if high < 2 ** b), None)
        if inferred is not None:
            top, scaling, bits = 2 ** inferred - 1, "inferred_bits", inferred
    pixels = ((values * 255 + top // 2) // top).astype(np.uint8)
    out = _Scaled(pixels, scaling, None if scaling == "uint16_range" else bits, (low, high))
    return _stretch_if_flat(out, values, None, f"{mode} data")


def _rgb(image: Image.Image, depth: _Depth = _Depth()) -> tuple[np.ndarray, _Scaled]:
    """A loaded frame -> (uint8 HxWx3, scaling record, alpha) following rules 4 and 5."""
    mode = image.mode
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        scaled = _to_uint8(np.asarray(image), mode, depth)
        return np.repeat(scaled.pixels[:, :, None], 3, axis=2), scaled, "none"
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        alpha = rgba[:, :, 3:4]
        background = np.asarray(BACKGROUND, dtype=np.uint16).reshape(1, 1, 3)
        mixed = ((rgba[:, :, :3] * alpha + background * (255 - alpha) + 127) // 255).astype(np.uint8)
        scaled = _deep_colour(mixed, depth)
        return scaled.pixels, scaled, "composited_on_black"
    if mode != "RGB":
        image = image.convert("RGB")
    scaled = _deep_colour(np.asarray(image), depth)
    return scaled.pixels, scaled, "none"


def _deep_colour(pixels: np.ndarray, depth: _Depth) -> _Scaled:
    """Several-channel 16-bit data reaches us as its top 8 bits (Pillow): say so, and stretch a
    range that leaves a handful of levels."""
    if not depth.stored_bits or depth.stored_bits <= 8 or depth.channels < 3:
        return _Scaled(pixels, "none")
    note = (f"{depth.stored_bits}-bit colour: the decoder keeps the top 8 bits of each channel "
            "(convert to 8-bit, or to one-channel 16-bit, to keep the rest)")
    out = _stretch_if_flat(_Scaled(pixels, "high_byte", depth.significant_bits,
                                   (float(pixels.min()), float(pixels.max()))), pixels, None, "the top byte",
                           lost_bits=True)
    return _Scaled(out.pixels, out.scaling, out.significant_bits, out.used_range,
                   note + ("; " + out.warning if out.warning else ""), depth.stored_bits)


def decode_image(data: bytes | bytearray | memoryview, *, max_pixels: int | None = None) -> DecodedImage:
    """Encoded image bytes -> ``DecodedImage`` (uint8 [H, W, 3] RGB pixels + ``DecodeInfo``).

    ``max_pixels``: refuse images with more pixels (default ``DEFAULT_MAX_PIXELS``; Pillow's own
    hard limit, twice its ``MAX_IMAGE_PIXELS``, still applies above that and raises the same error).
    Raises ``NotAnImage``, ``ImageTooLarge``, ``TruncatedImage`` or ``CorruptImage`` (all
    ``ImageError``); see the module docstring for every rule.
    """
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # set by some library: truncated files would pass silently
        log.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES was set by other code; gleam.data.images resets it to "
                    "False so truncated files are refused, not padded with grey")
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise NotAnImage(f"expected encoded image bytes, got {type(data).__name__}")
    if not len(data):
        raise NotAnImage("no bytes (an empty file)")
    try:
        image = Image.open(io.BytesIO(bytes(data)))
    except Image.DecompressionBombError as error:
        found = _BOMB_PIXELS.search(str(error))
        raise ImageTooLarge(None, None, int(found.group(1)) if found else None, limit) from None
    except UnidentifiedImageError:
        raise NotAnImage("not an image file any decoder recognises (send JPEG or PNG bytes)") from None
    except Exception as error:  # Pillow raises many types for a broken header
        raise _failure(error) from None
    with image:
        width, height = image.size
        if width * height > limit:
            raise ImageTooLarge(width, height, width * height, limit)
        try:
            image.load()  # the first frame, in full: a truncated file raises here
        except Image.DecompressionBombError as error:
            raise ImageTooLarge(width, height, width * height, limit) from None
        except Exception as error:
            raise _failure(error) from None
        try:
            orientation = int(image.getexif().get(0x0112, 1) or 1)
        except Exception:  # unreadable EXIF: the pixels are still good, taken as stored
            orientation = 1
        frame = image
        if 2 <= orientation <= 8:
            try:
                frame = ImageOps.exif_transpose(image)
            except Exception as error:
                raise CorruptImage(f"cannot apply EXIF orientation {orientation} ({_message(error)})") from None
        else:
            orientation = 1
        try:
            pixels, scaled, alpha = _rgb(frame, _depth(image, bytes(data)))
        except Exception as error:
            raise _failure(error) from None
        try:
            animated = bool(getattr(image, "is_animated", False))
        except Exception:  # a broken later frame: the first one is complete and used
            animated = True
        info = DecodeInfo(format=str(image.format or "unknown"), mode=image.mode, width=width, height=height,
                          orientation=orientation, scaling=scaled.scaling, alpha=alpha, animated=animated,
                          source_bits=_source_bits(image.mode, scaled), significant_bits=scaled.significant_bits,
                          used_range=scaled.used_range, warning=scaled.warning)
    return DecodedImage(np.ascontiguousarray(pixels, dtype=np.uint8), info)


def _source_bits(mode: str, scaled: _Scaled) -> int:
    if scaled.source_bits:
        return scaled.source_bits
    if mode in _SIXTEEN_BIT:
        return 16
    return 32 if mode in ("I", "F") else 8


def image_size(data: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """(width, height) from the header alone (Pillow opens lazily: no pixel is decoded), or None
    when the bytes are not an image Pillow can identify (the full decode then says why)."""
    try:
        with Image.open(io.BytesIO(bytes(data))) as image:
            return tuple(int(v) for v in image.size)  # type: ignore[return-value]
    except Image.DecompressionBombError:
        return None
    except Exception:
        return None


def decode_rgb(data: bytes | bytearray | memoryview, *, max_pixels: int | None = None) -> np.ndarray:
    """``decode_image(data).pixels``: uint8 [H, W, 3] RGB (same rules, same errors)."""
    return decode_image(data, max_pixels=max_pixels).pixels
