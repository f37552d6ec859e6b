"""Re-ranking by query expansion over the top-k, chunked like ranking (memory bounded).

- ``alpha_query_expansion`` (αQE, Radenović, Tolias & Chum, TPAMI 2018): each query is replaced by
  the normalised sum of itself and its top-k gallery items weighted by ``max(s, 0) ** alpha``
  (s: cosine similarity); cross-view, the expanded query moves towards the satellite tiles it
  already matches well.
- ``database_side_augmentation`` (DBA, Arandjelović & Zisserman 2012, same weighting): each
  gallery item is replaced by the normalised weighted sum of its top-k gallery neighbours
  (itself first, weight 1).

Both work ``chunk_size`` rows at a time: the largest intermediate is a ``chunk_size x G`` float32
similarity block.  Off by default (``RerankConfig.method = "none"``); the ranking that follows is
the ordinary one of ``gleam.core.evaluate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["RerankConfig", "alpha_query_expansion", "apply_rerank", "database_side_augmentation"]


@dataclass
class RerankConfig:
    """Query expansion of the top-k (``none``: plain ranking)."""

    method: Literal["none", "qe", "qe+dba", "dba"] = "none"
    k: int = 5  # neighbours used
    alpha: float = 3.0  # weight = max(similarity, 0) ** alpha
    chunk_size: int = 1024

    def check(self) -> None:
        if self.method not in ("none", "qe", "qe+dba", "dba"):
            raise ValueError(f"rerank.method={self.method!r}: choose none, qe, dba or qe+dba")
        if self.k < 1 or self.chunk_size < 1 or self.alpha < 0:
            raise ValueError(f"rerank: k={self.k} and chunk_size={self.chunk_size} must be >= 1, "
                             f"alpha={self.alpha} >= 0")


def _expand(rows: torch.Tensor, gallery: torch.Tensor, k: int, alpha: float, chunk_size: int,
            include_self: bool) -> torch.Tensor:
    k = min(k, gallery.shape[0])
    out = torch.empty_like(rows)
    gallery_t = gallery.T
    for start in range(0, rows.shape[0], chunk_size):
        block = rows[start:start + chunk_size]
        scores, indices = torch.topk(block @ gallery_t, k, dim=1)
        weights = scores.clamp_min(0).pow(alpha)
        expanded = torch.einsum("qk,qkd->qd", weights, gallery[indices])
        out[start:start + chunk_size] = expanded if include_self else block + expanded
    return torch.nn.functional.normalize(out, dim=-1)


def alpha_query_expansion(queries: torch.Tensor, gallery: torch.Tensor, k: int = 5, alpha: float = 3.0,
                          chunk_size: int = 1024) -> torch.Tensor:
    """[Q, D] expanded unit queries: normalise(q + sum_j max(s_j, 0)^alpha g_j) over q's top-k."""
    return _expand(queries.float(), gallery.float(), k, alpha, chunk_size, include_self=False)


def database_side_augmentation(gallery: torch.Tensor, k: int = 5, alpha: float = 3.0,
                               chunk_size: int = 1024) -> torch.Tensor:
    """[G, D] augmented unit gallery: each item's weighted top-k gallery neighbours (itself included)."""
    gallery = gallery.float()
    return _expand(gallery, gallery, k, alpha, chunk_size, include_self=True)


def apply_rerank(queries: torch.Tensor, gallery: torch.Tensor,
                 config: RerankConfig | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(queries, gallery) after the configured expansion (DBA first, then αQE on the new gallery)."""
    if config is None or config.method == "none":
        return queries, gallery
    config.check()
    if "dba" in config.method:
        gallery = database_side_augmentation(gallery, config.k, config.alpha, config.chunk_size)
    if "qe" in config.method:
        queries = alpha_query_expansion(queries, gallery, config.k, config.alpha, config.chunk_size)
    return queries, gallery
