"""Test-time augmentation of embeddings: horizontal flip and optional multi-scale.

An image's embedding is the L2-normalised mean of the encoder's embeddings of its variants:
itself, its horizontal mirror (``flip``; a panorama is mirrored and rolled by one column so
azimuth a maps to 360 - a, exactly as the training augmentation ``gleam.data.transforms.flip_pair``
flips it) and copies resized by each factor of ``scales`` (other than 1).  Queries *and*
gallery tiles are treated alike: training flips a query and its tile together, so the mirror of
a query matches the mirror of its tile, and the two averages match each other.
(Flip averaging as in the re-identification and cross-view literature, e.g. Sample4Geo's
evaluation of flipped inputs; multi-scale averaging as in image retrieval, Radenović et al. 2018.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["TTAConfig", "encode_with_tta"]


@dataclass
class TTAConfig:
    """Test-time augmentation (off by default: one forward pass per image)."""

    flip: bool = False  # also embed the horizontal mirror and average
    scales: list[float] = field(default_factory=lambda: [1.0])  # resize factors; 1.0 is the input size

    def check(self) -> None:
        if not self.scales or any(not (0.25 <= float(s) <= 4.0) for s in self.scales):
            raise ValueError(f"tta.scales={self.scales} must be a non-empty list of factors in [0.25, 4]")

    @property
    def passes(self) -> int:
        """Forward passes per image."""
        return len(self.variants())

    def variants(self) -> list[tuple[float, bool]]:
        scales = list(dict.fromkeys(float(s) for s in self.scales))
        return [(scale, flipped) for scale in scales for flipped in ((False, True) if self.flip else (False,))]


def scaled(image: np.ndarray, factor: float) -> np.ndarray:
    from gleam.data.transforms import resize

    if factor == 1.0:
        return image
    height, width = image.shape[:2]
    return resize(image, (max(8, round(height * factor)), max(8, round(width * factor))))


def encode_with_tta(model: torch.nn.Module, images: list[np.ndarray], modalities: str | Sequence[str],
                    device: Any, mean: tuple, std: tuple, tta: TTAConfig | None) -> torch.Tensor:
    """[N, D] unit embeddings of uint8 HxWx3 ``images`` (already at the encoder's input size),
    averaged over the variants of ``tta`` (``None`` or all off: a plain forward pass)."""
    from gleam.core.train import encode_images
    from gleam.data.transforms import flip_view

    if tta is None or tta.passes == 1 and tta.variants()[0] == (1.0, False):
        return encode_images(model, images, device, mean, std)
    tta.check()
    kinds = [modalities] * len(images) if isinstance(modalities, str) else list(modalities)
    total = None
    for factor, flipped in tta.variants():
        variant = [scaled(flip_view(image, kind) if flipped else image, factor) for image, kind in zip(images, kinds)]
        embeddings = encode_images(model, variant, device, mean, std).float()
        total = embeddings if total is None else total + embeddings
    return torch.nn.functional.normalize(total, dim=-1)
