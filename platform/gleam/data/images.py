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
4. **Bit depth** (scaled, never clipped):
   - 16-bit integers (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``; 16-bit grayscale PNG/TIFF): the
     type's full range maps to 8 bits, ``round(v * 255 / 65535)`` (= ``v / 257``);
   - 32-bit integers (``I``): values inside [0, 65535] (how 16-bit data often opens) as 16-bit;
     otherwise min-max over the image;
   - 32-bit float (``F``, e.g. float TIFF): finite values inside [0, 1] -> ``round(v * 255)``;
     otherwise min-max over the finite values; NaN and infinities become 0.
   Min-max maps the image's minimum to 0 and maximum to 255 (a constant image gives 0).
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
    ``uint16_range``, ``unit_range`` or ``min_max`` (rule 4); alpha: ``none`` or
    ``composited_on_black``; animated: more than one frame (the first was used).
    """

    format: str
    mode: str
    width: int
    height: int
    orientation: int = 1
    scaling: str = "none"
    alpha: str = "none"
    animated: bool = False

    @property
    def plain(self) -> bool:
        """True when the decode was a plain 8-bit RGB/gray decode with nothing else applied."""
        return (self.orientation == 1 and self.scaling == "none" and self.alpha == "none"
                and not self.animated and self.mode in ("RGB", "L"))

    def notes(self) -> dict[str, Any]:
        """The fields that say something beyond a plain decode (empty when ``plain``)."""
        if self.plain:
            return {}
        out: dict[str, Any] = {"mode": self.mode}
        if self.orientation != 1:
            out["orientation"] = self.orientation
        if self.scaling != "none":
            out["scaling"] = self.scaling
        if self.alpha != "none":
            out["alpha"] = self.alpha
        if self.animated:
            out["frames"] = "first"
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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


def _to_uint8(values: np.ndarray, mode: str) -> tuple[np.ndarray, str]:
    """One-channel 16-bit / 32-bit / float pixels -> uint8 and the scaling used (rule 4)."""
    if mode == "F":
        values = values.astype(np.float64)
        finite = np.isfinite(values)
        if not finite.any():
            return np.zeros(values.shape, np.uint8), "min_max"
        low, high = float(values[finite].min()), float(values[finite].max())
        if low >= 0.0 and high <= 1.0:
            scaled, scaling = values * 255.0, "unit_range"
        else:
            scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
            scaling = "min_max"
        scaled = np.where(finite, scaled, 0.0)
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8), scaling
    values = values.astype(np.int64)
    low, high = int(values.min()), int(values.max())
    if mode in _SIXTEEN_BIT or (low >= 0 and high <= 65535):
        return ((values * 255 + 32767) // 65535).astype(np.uint8), "uint16_range"
    if high == low:
        return np.zeros(values.shape, np.uint8), "min_max"
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8), "min_max"


def _rgb(image: Image.Image) -> tuple[np.ndarray, str, str]:
    """A loaded frame -> (uint8 HxWx3, scaling, alpha) following rules 4 and 5."""
    mode = image.mode
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        gray, scaling = _to_uint8(np.asarray(image), mode)
        return np.repeat(gray[:, :, None], 3, axis=2), scaling, "none"
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        alpha = rgba[:, :, 3:4]
        background = np.asarray(BACKGROUND, dtype=np.uint16).reshape(1, 1, 3)
        mixed = (rgba[:, :, :3] * alpha + background * (255 - alpha) + 127) // 255
        return mixed.astype(np.uint8), "none", "composited_on_black"
    if mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image), "none", "none"


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
            pixels, scaling, alpha = _rgb(frame)
        except Exception as error:
            raise _failure(error) from None
        try:
            animated = bool(getattr(image, "is_animated", False))
        except Exception:  # a broken later frame: the first one is complete and used
            animated = True
        info = DecodeInfo(format=str(image.format or "unknown"), mode=image.mode, width=width, height=height,
                          orientation=orientation, scaling=scaling, alpha=alpha, animated=animated)
    return DecodedImage(np.ascontiguousarray(pixels, dtype=np.uint8), info)


def decode_rgb(data: bytes | bytearray | memoryview, *, max_pixels: int | None = None) -> np.ndarray:
    """``decode_image(data).pixels``: uint8 [H, W, 3] RGB (same rules, same errors)."""
    return decode_image(data, max_pixels=max_pixels).pixels
