"""Colour-histogram retrieval baseline: how far colour alone gets from a query to its tile.

A joint RGB histogram (bins^3, L1-normalised) of each query is compared with the histogram of
every candidate satellite tile (chi-square distance). If this matches far above chance, the
data has a colour shortcut; the synthetic world is designed to keep it near chance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from .world import Location, World


def colour_histogram(image: np.ndarray, bins: int = 8) -> np.ndarray:
    """L1-normalised joint RGB histogram of a uint8 image, shape (bins ** 3,)."""
    quantised = (image.reshape(-1, 3).astype(np.int64) * bins) // 256
    index = (quantised[:, 0] * bins + quantised[:, 1]) * bins + quantised[:, 2]
    counts = np.bincount(index, minlength=bins ** 3).astype(np.float64)
    return counts / counts.sum()


def chi_square_distances(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """(n_queries, n_candidates) chi-square distances between histogram rows."""
    diff = queries[:, None, :] - candidates[None, :, :]
    total = queries[:, None, :] + candidates[None, :, :]
    return 0.5 * np.sum(diff * diff / np.maximum(total, 1e-12), axis=-1)


def histogram_retrieval(query_images: Sequence[np.ndarray], satellite_images: Sequence[np.ndarray],
                        bins: int = 8) -> dict:
    """Recall@1/5 of matching query i to satellite i by histogram distance."""
    if len(query_images) != len(satellite_images) or not query_images:
        raise ValueError("need the same, non-zero number of query and satellite images")
    queries = np.stack([colour_histogram(image, bins) for image in query_images])
    candidates = np.stack([colour_histogram(image, bins) for image in satellite_images])
    distances = chi_square_distances(queries, candidates)
    true = np.diag(distances)
    rank = (distances < true[:, None]).sum(axis=1)
    n = len(query_images)
    return {"n": n, "bins": bins, "metric": "chi-square",
            "recall_at_1": float(np.mean(rank < 1)), "recall_at_5": float(np.mean(rank < 5)),
            "chance_at_1": 1.0 / n, "chance_at_5": min(5, n) / n}


def colour_histogram_baseline(world: "World", locations: Sequence["Location"], modality: str,
                              bins: int = 8, view_index: int = 0, size: int | None = None) -> dict:
    """Render queries of one modality and their satellite tiles, then run the baseline."""
    satellites = [world.render_satellite(loc) for loc in locations]
    queries = [world.render_query(loc, modality, view_index, size=size)[0] for loc in locations]
    return {"modality": modality, **histogram_retrieval(queries, satellites, bins)}
