"""Per-modality resizing and normalisation, and paired geometric augmentation.

Paired augmentation changes a query and its satellite tile *consistently*, so the pair still
shows the same place in the same geometry:

- horizontal flip (mirror the world): both images are flipped; a panorama is flipped and rolled
  by one column so that azimuth a maps to 360 - a exactly;
- rotation of the satellite tile by k quarter turns: a street map (same top-down geometry) is
  rotated the same way; a north-aligned panorama is rolled by k quarter widths so its azimuths
  follow the rotated world; UAV and ground views (whose heading is not tied to the tile's
  north) keep their pixels;
- photometric jitter (brightness/contrast) is drawn independently per view: colour is not
  a cue the model should rely on.

Panorama convention: column c looks at azimuth ``heading + 360 * c / width`` degrees clockwise
from north (``gleam.data.synth`` renders north at column 0 by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class AugmentConfig:
    """Training-time augmentation; all off at evaluation."""

    flip_probability: float = 0.5
    rotate_satellite: bool = True
    brightness: float = 0.2  # +- fraction
    contrast: float = 0.2


ASPECT_TOLERANCE = 0.02  # relative: within it a panorama is simply resized
PAD_VALUE = tuple(round(255 * m) for m in IMAGENET_MEAN)  # (124, 116, 104): ~0 after normalisation


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 HxWx3 -> uint8 at (height, width), antialiased bilinear."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def fit_panorama(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A 360-degree panorama at (height, width) without distorting its shape.

    The full width (all azimuths) is kept: the image is scaled by ``width / image width`` in
    both directions, then centred vertically and padded with ``PAD_VALUE`` (the ImageNet mean,
    ~0 after normalisation) when shorter, or centre-cropped (sky and ground rows) when taller.
    An image whose aspect is within ``ASPECT_TOLERANCE`` of the target's is simply resized.

    So a CVUSA panorama (1232x224, 5.5:1, about 65 degrees of elevation around the horizon)
    fills the horizon band of a 2:1 input exactly where that band lies in a full 2:1
    equirectangular panorama (VIGOR), instead of being stretched x2.75 vertically; rolling
    columns (heading augmentation) is unaffected.  Measured in
    ``benchmarks/bench_panorama_fit.py``.
    """
    height, width = size
    source_height, source_width = image.shape[:2]
    if abs((source_width / source_height) / (width / height) - 1.0) <= ASPECT_TOLERANCE:
        return resize(image, size)
    scaled_height = max(1, round(source_height * width / source_width))
    scaled = resize(image, (scaled_height, width))
    if scaled_height >= height:
        top = (scaled_height - height) // 2
        return np.ascontiguousarray(scaled[top:top + height])
    out = np.empty((height, width, 3), np.uint8)
    out[:] = np.asarray(PAD_VALUE, np.uint8)
    top = (height - scaled_height) // 2
    out[top:top + scaled_height] = scaled
    return out


def fit_view(image: np.ndarray, size: tuple[int, int], modality: str) -> np.ndarray:
    """The encoder's input for a view of ``modality``: ``fit_panorama`` for panoramas (shape
    kept), ``resize`` for the rest.  Training, evaluation, index building, serving and batch
    localization all call this, so a view is prepared the same way everywhere."""
    return fit_panorama(image, size) if modality == "panorama" else resize(image, size)


def flip_view(image: np.ndarray, modality: str) -> np.ndarray:
    """The horizontal mirror of one view, as ``flip_pair`` makes it (a panorama is also rolled by
    one column so azimuth a maps to 360 - a); used by test-time flip augmentation too."""
    flipped = image[:, ::-1]
    if modality == "panorama":
        flipped = np.roll(flipped, 1, axis=1)
    return np.ascontiguousarray(flipped)


def flip_pair(query: np.ndarray, satellite: np.ndarray, modality: str) -> tuple[np.ndarray, np.ndarray]:
    return flip_view(query, modality), flip_view(satellite, "satellite")


def rotate_pair(query: np.ndarray, satellite: np.ndarray, modality: str,
                quarter_turns_clockwise: int) -> tuple[np.ndarray, np.ndarray]:
    """Rotate the tile clockwise by k quarter turns, and the query where geometry ties it to the tile."""
    k = quarter_turns_clockwise % 4
    rotated_satellite = np.ascontiguousarray(np.rot90(satellite, -k))
    if modality == "streetmap":
        query = np.ascontiguousarray(np.rot90(query, -k))
    elif modality == "panorama":  # features at azimuth a move to a + 90k: columns shift right
        query = np.roll(query, k * query.shape[1] // 4, axis=1)
    return query, rotated_satellite


def photometric_jitter(image: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    brightness = 1.0 + rng.uniform(-config.brightness, config.brightness)
    contrast = 1.0 + rng.uniform(-config.contrast, config.contrast)
    pixels = image.astype(np.float32)
    mean = pixels.mean()
    pixels = (pixels - mean) * contrast + mean * brightness
    return np.clip(pixels, 0, 255).astype(np.uint8)


def augment_pair(query: np.ndarray, satellite: np.ndarray, modality: str, rng: np.random.Generator,
                 config: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """One random, geometry-consistent augmentation of a (query, satellite) pair."""
    if rng.random() < config.flip_probability:
        query, satellite = flip_pair(query, satellite, modality)
    if config.rotate_satellite:
        query, satellite = rotate_pair(query, satellite, modality, int(rng.integers(0, 4)))
    return photometric_jitter(query, rng, config), photometric_jitter(satellite, rng, config)


def to_tensor(images: list[np.ndarray], mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Equal-sized uint8 HxWx3 images -> normalised float tensor [B, 3, H, W] (channels-last in
    memory: the permuted view of the stacked HxWx3 arrays, which CPU convolutions take as is).

    torch is imported here, not with the module: the decode tasks of batch localization and
    ingest fit images with this module and need no torch (2 s of import per worker process)."""
    import torch

    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=batch.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=batch.dtype).view(1, 3, 1, 1)
    return batch.sub_(mean_t).div_(std_t)
