"""Small, real samples for tests (random-texture JPEGs, every field set)."""

from __future__ import annotations

import numpy as np

from gleam.data.schema import Sample, encode_jpeg

MODALITY_CYCLE = ("uav", "streetmap", "panorama", "ground")


def make_sample(index: int, modality: str | None = None, split: str = "train", size: int = 32) -> Sample:
    rng = np.random.default_rng(index)
    modality = modality or MODALITY_CYCLE[index % len(MODALITY_CYCLE)]
    width = size * 2 if modality == "panorama" else size
    query = rng.integers(0, 256, size=(size, width, 3), dtype=np.uint8)
    satellite = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    return Sample(
        key=f"loc{index:05d}_{modality}",
        location_id=f"loc{index:05d}",
        modality=modality,
        query_image=None if modality == "satellite" else encode_jpeg(query),
        satellite_image=encode_jpeg(satellite),
        latitude=47.0 + index * 1e-3,
        longitude=8.5 - index * 1e-3,
        heading=None if modality == "streetmap" else float((index * 37) % 360),
        split=split,
        source="unit-test",
        metadata={"index": index, "tags": ["a", "b"], "名字": "测试"},
    )
