"""Retrieval metrics for cross-view geo-localization, computed in chunks with bounded memory.

Queries (UAV, street map, panorama, ground photo) are ranked against a gallery of satellite tiles
by cosine similarity of L2-normalised embeddings (cosine = dot product).  A query's positives are
the gallery items with the same location id (University-1652: possibly several; VIGOR / CVUSA:
exactly one).  Queries are processed ``chunk_size`` at a time against the whole gallery, so the
largest intermediates are a ``chunk_size x G`` float32 similarity block, a boolean mask of the
same shape and, when queries of a chunk have different numbers of positives, a copy of some of
its rows: peak extra memory is at most ~9 bytes x chunk_size x G, never O(Q x G).  Per query only
the ranks of its positives, its average precision and its top-k gallery items are kept.

Conventions (all explicit, all deterministic):

- Ranking order: descending similarity, ties broken by ascending gallery index (what a stable
  descending sort gives).  Ranks are 0-based; rank r means r gallery items come before it.
- Recall@k: share of queries whose best-ranked positive has rank < k.  ``R@top1%`` uses
  k = max(1, floor(G / 100 + 0.5)) by default (``top1_percent_rule="round"``, round half up);
  ``"floor"`` gives k = max(1, G // 100), the rule of Sample4Geo's CVUSA / CVACT evaluation (88
  rather than 89 for the 8,884-tile galleries).  Every result states its k (``top1%_k``) and rule
  (``top1%_rule``); the CVUSA and CVACT converters record ``floor`` in the dataset manifest.
- AP: the University-1652 / Market-1501 definition, a trapezoid over the positives.  With the
  positives' ranks sorted, r_0 < r_1 < ... < r_{n-1}:
  ``AP = (1/n) * sum_i (p_old_i + p_i) / 2`` with ``p_i = (i + 1) / (r_i + 1)`` and
  ``p_old_i = i / r_i`` (``1`` when ``r_i == 0``).  For a single positive at rank r > 0 this is
  ``1 / (2 (r + 1))``, which is why papers report AP above R@1.  "AP" in the results is the
  mean over queries.
- Hit rate (VIGOR): the top-1 is a positive or one of the query's semi-positives.
- Localisation error: haversine distance (metres, spherical Earth, mean radius) between the
  query's coordinates and those of its top-1 gallery item.  Items with NaN coordinates are
  skipped and the number of queries used is reported.  ``localisation_at_k`` gives, for k = 1,
  5, 10 (``distance_ks``), the error of the *best* of the top-k items (the one nearest the
  truth: Game4Loc's distance@K idea) with its median, mean and share within 25/50/100/500 m.
- Queries without any positive in the gallery are counted (``queries_without_positive``) and
  excluded from every metric, so every number in one result dict has the same denominator
  ``queries_evaluated``.  Percentages are 0-100; an empty denominator gives ``None``.
- Embeddings must be L2-normalised: a row norm off by more than ``NORM_TOLERANCE`` raises a
  ``ValueError`` (pass ``normalize=True`` to have them normalised instead).  Silently ranking
  unnormalised vectors would give plausible but wrong numbers.

Similarities are float32 (``device`` picks where the products run).  Rankings are exact for the
similarities as computed; BLAS may round a 1-row product differently from a 1024-row one in the
last bit, so near-ties closer than ~1e-7 can order differently across chunk sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence, Union

import numpy as np
import torch

from gleam.config import InputPath, ModelPath, OutputPath
from gleam.core.rerank import RerankConfig
from gleam.core.tta import TTAConfig
from gleam.data.benchmark import TOP1_PERCENT_RULES

__all__ = ["FORWARD", "REVERSE", "QueryRanking", "evaluate_retrieval", "haversine_m", "rank_queries",
           "retrieval_metrics", "summarise", "top1_percent_k", "top_k"]

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence]
SemiPositives = Union[Mapping[int, Sequence[int]], Sequence[Sequence[int]]]

EARTH_RADIUS_M = 6_371_008.8  # IUGG mean Earth radius
NORM_TOLERANCE = 1e-3
DEFAULT_KS = (1, 5, 10)
DEFAULT_DISTANCE_THRESHOLDS_M = (25.0, 50.0, 100.0, 500.0)
FORWARD = "query->satellite"
REVERSE = "satellite->query"
ALL_MODALITIES = "all"


# --------------------------------------------------------------------------------------------
# Input checks and conversions
# --------------------------------------------------------------------------------------------

def as_embeddings(values: ArrayLike, name: str, normalize: bool = False) -> torch.Tensor:
    """A ``[N, D]`` float32 CPU tensor of unit-norm rows, or a ``ValueError`` saying what is wrong."""
    if isinstance(values, torch.Tensor):
        embeddings = values.detach().to(device="cpu", dtype=torch.float32)
    else:
        array = np.asarray(values)
        if array.dtype.kind not in "fiu":
            raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
        embeddings = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if embeddings.ndim != 2 or embeddings.shape[0] == 0 or embeddings.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array [N, D], got shape {tuple(embeddings.shape)}")
    if not bool(torch.isfinite(embeddings).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    norms = torch.linalg.vector_norm(embeddings.double(), dim=1)
    if normalize:
        if bool((norms == 0).any()):
            raise ValueError(f"{name} has an all-zero row, which cannot be normalised")
        return (embeddings.double() / norms[:, None]).float()
    worst = int(torch.argmax((norms - 1).abs()))
    if abs(float(norms[worst]) - 1) > NORM_TOLERANCE:
        raise ValueError(f"{name} must be L2-normalised (row {worst} has norm {float(norms[worst]):.6g}); "
                         "normalise them or pass normalize=True")
    return embeddings


def as_location_ids(ids: ArrayLike, length: int, name: str) -> np.ndarray:
    """Location ids as a 1-D integer or string array of the given length."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    array = np.asarray(ids)
    if array.dtype.kind == "O" and all(isinstance(item, str) for item in array.ravel()):
        array = array.astype(str)
    if array.dtype.kind not in "iuU":
        raise ValueError(f"{name} must be integers or strings, got dtype {array.dtype}")
    if array.ndim != 1 or len(array) != length:
        raise ValueError(f"{name} must be 1-D with {length} entries (one per embedding row), "
                         f"got shape {array.shape}")
    return array.astype(np.int64) if array.dtype.kind in "iu" else array


def as_latlon(latlon: ArrayLike | None, length: int, name: str) -> np.ndarray | None:
    """Coordinates as a float64 ``[N, 2]`` array of (lat, lon) degrees; NaN marks unknown."""
    if latlon is None:
        return None
    array = np.asarray(latlon.cpu().numpy() if isinstance(latlon, torch.Tensor) else latlon, dtype=np.float64)
    if array.shape != (length, 2):
        raise ValueError(f"{name} must have shape ({length}, 2) as (lat, lon) degrees, got {array.shape}")
    latitudes, longitudes = array[:, 0], array[:, 1]
    if np.any(np.abs(latitudes[np.isfinite(latitudes)]) > 90) or \
            np.any(np.abs(longitudes[np.isfinite(longitudes)]) > 180):
        raise ValueError(f"{name} holds values outside lat [-90, 90] / lon [-180, 180] degrees")
    return array


def as_semi_positives(semi_positives: SemiPositives | None, num_queries: int,
                      gallery_size: int) -> dict[int, np.ndarray] | None:
    """Semi-positives as ``{query index: gallery indices}``, every index checked."""
    if semi_positives is None:
        return None
    items = semi_positives.items() if isinstance(semi_positives, Mapping) else enumerate(semi_positives)
    checked: dict[int, np.ndarray] = {}
    for query_index, gallery_indices in items:
        indices = np.asarray(gallery_indices, dtype=np.int64).reshape(-1)
        if not 0 <= int(query_index) < num_queries:
            raise ValueError(f"semi_positives names query {query_index}, outside [0, {num_queries})")
        if indices.size and (indices.min() < 0 or indices.max() >= gallery_size):
            raise ValueError(f"semi_positives of query {query_index} name gallery items outside "
                             f"[0, {gallery_size})")
        checked[int(query_index)] = indices
    return checked


def check_coordinates_paired(query_latlon: object, gallery_latlon: object) -> None:
    if (query_latlon is None) != (gallery_latlon is None):
        raise ValueError("localisation needs both query_latlon and gallery_latlon (or neither)")


def check_positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_same_id_kind(query_ids: np.ndarray, gallery_ids: np.ndarray) -> None:
    if (query_ids.dtype.kind == "U") != (gallery_ids.dtype.kind == "U"):
        raise ValueError("query and gallery location ids must both be strings or both be integers, "
                         f"got {query_ids.dtype} and {gallery_ids.dtype}")


# --------------------------------------------------------------------------------------------
# Positives: which gallery items share each query's location id
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Positives:
    """Each query's positives as slices of ``gallery_order`` (ascending gallery index)."""

    start: np.ndarray  # [Q] offset into gallery_order
    count: np.ndarray  # [Q] number of positives (0: the location is not in the gallery)
    gallery_order: np.ndarray  # [G] gallery indices grouped by location id


def find_positives(query_ids: np.ndarray, gallery_ids: np.ndarray) -> Positives:
    unique_ids, gallery_codes = np.unique(gallery_ids, return_inverse=True)
    gallery_order = np.argsort(gallery_codes, kind="stable")
    counts_per_id = np.bincount(gallery_codes, minlength=len(unique_ids))
    starts_per_id = np.concatenate([[0], np.cumsum(counts_per_id)[:-1]])
    slot = np.minimum(np.searchsorted(unique_ids, query_ids), len(unique_ids) - 1)
    found = unique_ids[slot] == query_ids
    return Positives(start=np.where(found, starts_per_id[slot], 0),
                     count=np.where(found, counts_per_id[slot], 0).astype(np.int64),
                     gallery_order=gallery_order)


# --------------------------------------------------------------------------------------------
# Ranking one chunk of queries
# --------------------------------------------------------------------------------------------

def count_true_per_row(mask: torch.Tensor) -> np.ndarray:
    """Number of True entries in each row (numpy's count is much faster than torch's on CPU)."""
    if mask.device.type == "cpu":
        return np.count_nonzero(mask.numpy(), axis=1).astype(np.int64)
    return mask.sum(dim=1).cpu().numpy().astype(np.int64)


def ranks_of_items(similarities: torch.Tensor, item_columns: torch.Tensor) -> np.ndarray:
    """0-based rank of ``item_columns[i]`` in row i: items scoring higher + equal items before it."""
    item_scores = similarities.gather(1, item_columns[:, None])
    higher = count_true_per_row(similarities > item_scores)
    at_least = count_true_per_row(similarities >= item_scores)
    ranks = higher
    tied_rows = np.flatnonzero(at_least - higher > 1)
    if tied_rows.size:
        tied = torch.from_numpy(tied_rows).to(similarities.device)
        columns = torch.arange(similarities.shape[1], device=similarities.device)
        equal_before = (similarities[tied] == item_scores[tied]) & (columns[None, :] < item_columns[tied, None])
        ranks[tied_rows] += count_true_per_row(equal_before)
    return ranks


def positive_ranks_of_chunk(similarities: torch.Tensor, positives: Positives,
                            query_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row in chunk, rank) of every positive of the chunk's queries.

    The t-th positives of all queries are ranked together ("slot" t), so queries with the same
    number of positives need no copy of their similarity rows.
    """
    counts = positives.count[query_rows]
    chunk_rows, ranks = [], []
    for slot in range(int(counts.max(initial=0))):
        rows = np.flatnonzero(counts > slot)
        columns = positives.gallery_order[positives.start[query_rows[rows]] + slot]
        column_tensor = torch.from_numpy(columns).to(similarities.device)
        if len(rows) == len(query_rows):
            block = similarities
        else:
            block = similarities.index_select(0, torch.from_numpy(rows).to(similarities.device))
        chunk_rows.append(rows)
        ranks.append(ranks_of_items(block, column_tensor))
    if not chunk_rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(chunk_rows), np.concatenate(ranks)


def average_precision_from_ranks(rows: np.ndarray, ranks: np.ndarray,
                                 num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row: (rank of the first positive or -1, University-1652 AP or NaN) from positive ranks."""
    order = np.lexsort((ranks, rows))
    rows, ranks = rows[order], ranks[order]
    positives_per_row = np.bincount(rows, minlength=num_rows)
    row_start = np.concatenate([[0], np.cumsum(positives_per_row)[:-1]])
    position = np.arange(len(rows)) - row_start[rows]  # i: how many positives come before
    precision = (position + 1) / (ranks + 1)
    precision_before = np.where(ranks > 0, position / np.maximum(ranks, 1), 1.0)
    term_sum = np.bincount(rows, weights=(precision + precision_before) / 2, minlength=num_rows)
    has_positive = positives_per_row > 0
    first_rank = np.full(num_rows, -1, dtype=np.int64)
    first_rank[has_positive] = ranks[row_start[has_positive]]
    with np.errstate(invalid="ignore", divide="ignore"):
        average_precision = np.where(has_positive, term_sum / positives_per_row, np.nan)
    return first_rank, average_precision


def order_by_score_then_index(scores: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by descending score, ties by ascending gallery index."""
    indices, by_index = indices.sort(dim=1, stable=True)
    scores = scores.gather(1, by_index)
    scores, by_score = scores.sort(dim=1, descending=True, stable=True)
    return scores, indices.gather(1, by_score)


def top_k_of_chunk(similarities: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic top-k of each row (ties by ascending index) without sorting whole rows.

    ``torch.topk`` picks among tied items arbitrarily, so it is asked for k + 1: when the k-th and
    (k+1)-th scores differ, the top-k set is unambiguous and only needs reordering; rows tied
    across that boundary (rare with real embeddings) are resolved by a stable sort of the row.
    """
    gallery_size = similarities.shape[1]
    probe = min(k + 1, gallery_size)
    scores, indices = order_by_score_then_index(*torch.topk(similarities, probe, dim=1, sorted=False))
    if probe > k:
        boundary_tied = torch.nonzero(scores[:, k] == scores[:, k - 1]).flatten()
        if boundary_tied.numel():
            tied_scores, tied_indices = similarities[boundary_tied].sort(dim=1, descending=True, stable=True)
            scores[boundary_tied] = tied_scores[:, :probe]
            indices[boundary_tied] = tied_indices[:, :probe]
    return scores[:, :k], indices[:, :k]


# --------------------------------------------------------------------------------------------
# Ranking all queries
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class QueryRanking:
    """What the metrics need from each query's ranking of the gallery (no Q x G array)."""

    first_positive_rank: np.ndarray  # [Q] int64, -1 when the query has no positive
    average_precision: np.ndarray  # [Q] float64 (0-1, University-1652), NaN without positive
    num_positives: np.ndarray  # [Q] int64
    top_indices: np.ndarray  # [Q, k] int64 gallery indices, best first
    top_scores: np.ndarray  # [Q, k] float32 similarities
    gallery_size: int


def group_max_similarities(member_embeddings: torch.Tensor, offsets: np.ndarray, start: int, stop: int,
                           gallery_t: torch.Tensor) -> torch.Tensor:
    """[stop - start, G]: for each query group g in [start, stop), the max over its member rows
    (``member_embeddings[offsets[g]:offsets[g + 1]]``) of their similarity to every gallery item."""
    first, last = int(offsets[start]), int(offsets[stop])
    similarities = member_embeddings[first:last].to(gallery_t.device) @ gallery_t
    group = torch.from_numpy(np.repeat(np.arange(stop - start), np.diff(offsets[start:stop + 1]))).to(gallery_t.device)
    out = torch.full((stop - start, gallery_t.shape[1]), -torch.inf, device=gallery_t.device)
    return out.scatter_reduce_(0, group[:, None].expand_as(similarities), similarities, "amax")


def rank_embeddings(query_embeddings: torch.Tensor, gallery_embeddings: torch.Tensor,
                    positives: Positives | None, keep_top: int, chunk_size: int,
                    device: str | torch.device | None, query_groups: np.ndarray | None = None) -> QueryRanking:
    """Rank checked embeddings chunk by chunk; ``positives=None`` computes top-k only.

    ``query_groups`` (score-level multi-query fusion): CSR offsets [Q + 1] over the rows of
    ``query_embeddings``; query q is the group of rows ``offsets[q]:offsets[q + 1]`` and its
    similarity to a gallery item is the max over its rows (a chunk then holds its groups' rows).
    """
    device = torch.device(device or "cpu")
    num_queries = query_embeddings.shape[0] if query_groups is None else len(query_groups) - 1
    gallery_size = gallery_embeddings.shape[0]
    gallery_t = gallery_embeddings.to(device).T
    first_rank = np.full(num_queries, -1, dtype=np.int64)
    average_precision = np.full(num_queries, np.nan)
    top_scores = np.zeros((num_queries, keep_top), dtype=np.float32)
    top_indices = np.zeros((num_queries, keep_top), dtype=np.int64)
    for start in range(0, num_queries, chunk_size):
        stop = min(start + chunk_size, num_queries)
        if query_groups is None:
            similarities = query_embeddings[start:stop].to(device) @ gallery_t
        else:
            similarities = group_max_similarities(query_embeddings, query_groups, start, stop, gallery_t)
        scores, indices = top_k_of_chunk(similarities, keep_top)
        top_scores[start:stop], top_indices[start:stop] = scores.cpu().numpy(), indices.cpu().numpy()
        if positives is not None:
            rows, ranks = positive_ranks_of_chunk(similarities, positives, np.arange(start, stop))
            first_rank[start:stop], average_precision[start:stop] = \
                average_precision_from_ranks(rows, ranks, stop - start)
        del similarities
    num_positives = positives.count.copy() if positives is not None else np.zeros(num_queries, np.int64)
    return QueryRanking(first_rank, average_precision, num_positives, top_indices, top_scores, gallery_size)


def rank_queries(query_embeddings: ArrayLike, query_ids: ArrayLike, gallery_embeddings: ArrayLike,
                 gallery_ids: ArrayLike, *, keep_top: int = 1, chunk_size: int = 1024,
                 device: str | torch.device | None = None, normalize: bool = False) -> QueryRanking:
    """Per-query ranking results (positive ranks, AP, top-k) for later summaries or mining."""
    queries = as_embeddings(query_embeddings, "query_embeddings", normalize)
    gallery = as_embeddings(gallery_embeddings, "gallery_embeddings", normalize)
    check_same_dim(queries, gallery)
    query_id_array = as_location_ids(query_ids, len(queries), "query_ids")
    gallery_id_array = as_location_ids(gallery_ids, len(gallery), "gallery_ids")
    check_same_id_kind(query_id_array, gallery_id_array)
    keep_top = min(check_positive_int(keep_top, "keep_top"), len(gallery))
    return rank_embeddings(queries, gallery, find_positives(query_id_array, gallery_id_array), keep_top,
                           check_positive_int(chunk_size, "chunk_size"), device)


def check_same_dim(queries: torch.Tensor, gallery: torch.Tensor) -> None:
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"query and gallery embeddings differ in dimension: "
                         f"{queries.shape[1]} vs {gallery.shape[1]}")


def top_k(query_embeddings: ArrayLike, gallery_embeddings: ArrayLike, k: int, chunk_size: int = 1024,
          *, device: str | torch.device | None = None,
          normalize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar gallery items of each query: ``(scores [Q, k] float32, indices [Q, k] int64)``.

    Best first; ties by ascending gallery index.  ``k`` must be in [1, G].
    """
    queries = as_embeddings(query_embeddings, "query_embeddings", normalize)
    gallery = as_embeddings(gallery_embeddings, "gallery_embeddings", normalize)
    check_same_dim(queries, gallery)
    if check_positive_int(k, "k") > len(gallery):
        raise ValueError(f"k={k} exceeds the gallery size {len(gallery)}")
    ranking = rank_embeddings(queries, gallery, None, k, check_positive_int(chunk_size, "chunk_size"), device)
    return ranking.top_scores, ranking.top_indices


# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------

def haversine_m(lat1: ArrayLike, lon1: ArrayLike, lat2: ArrayLike, lon2: ArrayLike) -> np.ndarray:
    """Great-circle distance in metres between points given in degrees (broadcasts like numpy)."""
    lat1, lon1, lat2, lon2 = (np.radians(np.asarray(value, dtype=np.float64)) for value in (lat1, lon1, lat2, lon2))
    half_chord = (np.sin((lat2 - lat1) / 2) ** 2
                  + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2)
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(half_chord, 0.0, 1.0)))


DEFAULT_DISTANCE_KS = (1, 5, 10)


def top1_percent_k(gallery_size: int, rule: str = "round") -> int:
    """k of R@top1%: 1% of the gallery, rounded half up (``"round"``) or down (``"floor"``,
    Sample4Geo's CVUSA/CVACT rule), at least 1."""
    if rule == "round":
        return max(1, math.floor(gallery_size / 100 + 0.5))
    if rule == "floor":
        return max(1, gallery_size // 100)
    raise ValueError(f"top1_percent_rule={rule!r}: choose one of {sorted(TOP1_PERCENT_RULES)}")


def percent(values: np.ndarray) -> float | None:
    """Mean of booleans or 0-1 values as a percentage; ``None`` when there is nothing to average."""
    return float(100.0 * np.mean(values)) if values.size else None


def localisation_summary(errors_m: np.ndarray, thresholds_m: Sequence[float]) -> dict:
    known = errors_m[np.isfinite(errors_m)]
    summary: dict = {"queries": int(known.size),
                     "median": float(np.median(known)) if known.size else None,
                     "mean": float(np.mean(known)) if known.size else None}
    for threshold in thresholds_m:
        summary[f"within_{threshold:g}m"] = percent(known <= threshold)
    return summary


def semi_positive_hits(top1: np.ndarray, query_indices: np.ndarray,
                       semi_positives: dict[int, np.ndarray]) -> np.ndarray:
    empty = np.zeros(0, np.int64)
    return np.array([bool(np.isin(top1[q], semi_positives.get(int(q), empty))) for q in query_indices], dtype=bool)


def summarise(ranking: QueryRanking, query_mask: np.ndarray | None = None, *,
              ks: Sequence[int] = DEFAULT_KS, direction: str = FORWARD,
              semi_positives: dict[int, np.ndarray] | None = None,
              query_latlon: np.ndarray | None = None, gallery_latlon: np.ndarray | None = None,
              distance_thresholds_m: Sequence[float] = DEFAULT_DISTANCE_THRESHOLDS_M,
              top1_percent_rule: str = "round",
              distance_ks: Sequence[int] = DEFAULT_DISTANCE_KS) -> dict:
    """Paper-style metrics (percentages) over the queries selected by ``query_mask``.

    ``localisation_at_k`` needs ``ranking.top_indices`` with at least max(distance_ks) columns
    (fewer: the k's beyond are left out).
    """
    selected = np.ones(len(ranking.first_positive_rank), bool) if query_mask is None else query_mask
    evaluated = np.flatnonzero(selected & (ranking.first_positive_rank >= 0))
    ranks = ranking.first_positive_rank[evaluated]
    top1_k = top1_percent_k(ranking.gallery_size, top1_percent_rule)
    metrics: dict = {"direction": direction, "queries": int(selected.sum()),
                     "gallery_size": ranking.gallery_size, "queries_evaluated": int(evaluated.size),
                     "queries_without_positive": int(selected.sum() - evaluated.size)}
    for k in ks:
        metrics[f"R@{k}"] = percent(ranks < k)
    metrics["R@top1%"] = percent(ranks < top1_k)
    metrics["top1%_k"] = top1_k
    metrics["top1%_rule"] = TOP1_PERCENT_RULES[top1_percent_rule]
    metrics["AP"] = percent(ranking.average_precision[evaluated])
    top1 = ranking.top_indices[:, 0]
    if semi_positives is not None:
        semi_hits = semi_positive_hits(top1, evaluated, semi_positives)
        metrics["hit_rate"] = percent((ranks == 0) | semi_hits)
    if query_latlon is not None and gallery_latlon is not None:
        predicted = gallery_latlon[top1[evaluated]]
        truth = query_latlon[evaluated]
        errors = haversine_m(truth[:, 0], truth[:, 1], predicted[:, 0], predicted[:, 1])
        metrics["localisation_error_m"] = localisation_summary(errors, distance_thresholds_m)
        metrics["localisation_at_k"] = localisation_at_k(ranking.top_indices[evaluated], truth, gallery_latlon,
                                                         distance_ks, distance_thresholds_m)
    return metrics


def localisation_at_k(top_indices: np.ndarray, truth: np.ndarray, gallery_latlon: np.ndarray,
                      distance_ks: Sequence[int], thresholds_m: Sequence[float]) -> dict:
    """{"k": summary} of the distance (m) from each query to the nearest of its top-k items.

    ``top_indices`` [Q, K] best first, ``truth`` [Q, 2] and ``gallery_latlon`` [G, 2] degrees.
    A query counts when its own coordinates are known; unknown item coordinates are ignored.
    """
    out: dict = {}
    if top_indices.shape[0] == 0:
        return {str(k): localisation_summary(np.zeros(0), thresholds_m) for k in distance_ks
                if k <= max(1, top_indices.shape[1])}
    columns = top_indices.shape[1]
    for k in distance_ks:
        if k > columns:
            continue
        predicted = gallery_latlon[top_indices[:, :k]]  # [Q, k, 2]
        distances = haversine_m(truth[:, None, 0], truth[:, None, 1], predicted[..., 0], predicted[..., 1])
        distances = np.where(np.isfinite(distances), distances, np.inf).min(axis=1)
        distances[~np.isfinite(distances)] = np.nan
        out[str(k)] = localisation_summary(distances, thresholds_m)
    return out


def check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    return tuple(check_positive_int(k, "every k in ks") for k in ks)


def retrieval_metrics(query_embeddings: ArrayLike, query_ids: ArrayLike, gallery_embeddings: ArrayLike,
                      gallery_ids: ArrayLike, *, ks: Sequence[int] = DEFAULT_KS,
                      query_latlon: ArrayLike | None = None, gallery_latlon: ArrayLike | None = None,
                      semi_positives: SemiPositives | None = None, chunk_size: int = 1024,
                      device: str | torch.device | None = None, direction: str = FORWARD,
                      normalize: bool = False,
                      distance_thresholds_m: Sequence[float] = DEFAULT_DISTANCE_THRESHOLDS_M,
                      top1_percent_rule: str = "round",
                      distance_ks: Sequence[int] = DEFAULT_DISTANCE_KS) -> dict:
    """R@k, R@top1%, AP, hit rate and localisation error of one direction, as a JSON-ready dict.

    Hit rate appears only with ``semi_positives`` ({query index: gallery indices} or a list with
    one entry per query); ``localisation_error_m`` and ``localisation_at_k`` only with both
    coordinate arrays ([N, 2] degrees).
    """
    ks = check_ks(ks)
    top1_percent_k(1, top1_percent_rule)  # checks the rule
    check_coordinates_paired(query_latlon, gallery_latlon)
    keep_top = max(check_ks(distance_ks)) if query_latlon is not None else 1
    ranking = rank_queries(query_embeddings, query_ids, gallery_embeddings, gallery_ids, keep_top=keep_top,
                           chunk_size=chunk_size, device=device, normalize=normalize)
    num_queries = len(ranking.first_positive_rank)
    return summarise(ranking, ks=ks, direction=direction,
                     semi_positives=as_semi_positives(semi_positives, num_queries, ranking.gallery_size),
                     query_latlon=as_latlon(query_latlon, num_queries, "query_latlon"),
                     gallery_latlon=as_latlon(gallery_latlon, ranking.gallery_size, "gallery_latlon"),
                     distance_thresholds_m=distance_thresholds_m, top1_percent_rule=top1_percent_rule,
                     distance_ks=distance_ks)


# --------------------------------------------------------------------------------------------
# Both directions, per modality
# --------------------------------------------------------------------------------------------

def as_modalities(query_modalities: Sequence[str] | None, num_queries: int,
                  name: str = "query_modalities") -> np.ndarray | None:
    if query_modalities is None:
        return None
    modalities = np.asarray(query_modalities)
    if modalities.shape != (num_queries,) or modalities.dtype.kind != "U":
        raise ValueError(f"{name} must be {num_queries} strings (one per query)")
    if ALL_MODALITIES in set(modalities.tolist()):
        raise ValueError(f"{ALL_MODALITIES!r} is reserved for the overall result; rename that modality")
    return modalities


def invert_semi_positives(semi_positives: dict[int, np.ndarray] | None, query_subset: np.ndarray,
                          num_queries: int) -> dict[int, np.ndarray] | None:
    """Semi-positives seen from the satellites: tile -> positions in ``query_subset`` listing it.

    ``query_subset`` indexes the reverse gallery (queries first, then any extra images);
    ``num_queries`` is the reverse gallery's size.
    """
    if semi_positives is None:
        return None
    position_in_subset = np.full(num_queries, -1, dtype=np.int64)
    position_in_subset[query_subset] = np.arange(len(query_subset))
    inverted: dict[int, list[int]] = {}
    for query_index, gallery_indices in semi_positives.items():
        if position_in_subset[query_index] >= 0:
            for gallery_index in gallery_indices.tolist():
                inverted.setdefault(gallery_index, []).append(int(position_in_subset[query_index]))
    return {tile: np.asarray(sorted(queries), dtype=np.int64) for tile, queries in inverted.items()}


@dataclass(frozen=True)
class EvaluationInputs:
    """Checked inputs of ``evaluate_retrieval``.

    The reverse gallery (images ranked by the tiles in satellite->query) is the queries followed
    by ``extra`` images; ``reverse_query_mask`` picks the tiles that are reverse queries.
    """

    queries: torch.Tensor
    query_ids: np.ndarray
    gallery: torch.Tensor
    gallery_ids: np.ndarray
    modalities: np.ndarray | None
    query_latlon: np.ndarray | None
    gallery_latlon: np.ndarray | None
    semi_positives: dict[int, np.ndarray] | None
    extra: torch.Tensor | None = None
    extra_ids: np.ndarray | None = None
    extra_modalities: np.ndarray | None = None
    extra_latlon: np.ndarray | None = None
    reverse_query_mask: np.ndarray | None = None
    query_groups: np.ndarray | None = None  # CSR offsets: score-level fusion (see rank_embeddings)


@dataclass(frozen=True)
class SummaryOptions:
    ks: tuple[int, ...]
    chunk_size: int
    device: str | torch.device | None
    thresholds: Sequence[float]
    top1_percent_rule: str
    distance_ks: tuple[int, ...]


def keep_top_for(options: SummaryOptions, located: bool, gallery_size: int) -> int:
    return min(max(options.distance_ks), gallery_size) if located else 1


def forward_results(inputs: EvaluationInputs, options: SummaryOptions) -> dict:
    """query->satellite: one ranking, summarised overall and per query modality."""
    located = inputs.query_latlon is not None
    ranking = rank_embeddings(inputs.queries, inputs.gallery, find_positives(inputs.query_ids, inputs.gallery_ids),
                              keep_top_for(options, located, len(inputs.gallery)), options.chunk_size,
                              options.device, inputs.query_groups)
    common = dict(ks=options.ks, semi_positives=inputs.semi_positives, query_latlon=inputs.query_latlon,
                  gallery_latlon=inputs.gallery_latlon, distance_thresholds_m=options.thresholds,
                  top1_percent_rule=options.top1_percent_rule, distance_ks=options.distance_ks)
    results = {ALL_MODALITIES: summarise(ranking, direction=FORWARD, **common)}
    for modality in sorted(set(inputs.modalities.tolist())) if inputs.modalities is not None else []:
        results[modality] = summarise(ranking, inputs.modalities == modality,
                                      direction=f"{modality}->satellite", **common)
    return results


def reverse_gallery(inputs: EvaluationInputs) -> tuple[torch.Tensor, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Embeddings, ids, modalities and coordinates of the reverse gallery (queries + extra)."""
    if inputs.extra is None:
        return inputs.queries, inputs.query_ids, inputs.modalities, inputs.query_latlon
    latlon = None
    if inputs.query_latlon is not None and inputs.extra_latlon is not None:
        latlon = np.concatenate([inputs.query_latlon, inputs.extra_latlon])
    modalities = None
    if inputs.modalities is not None and inputs.extra_modalities is not None:
        modalities = np.concatenate([inputs.modalities, inputs.extra_modalities])
    return (torch.cat([inputs.queries, inputs.extra]), np.concatenate([inputs.query_ids, inputs.extra_ids]),
            modalities, latlon)


def reverse_results(inputs: EvaluationInputs, options: SummaryOptions) -> dict:
    """satellite->query: satellite tiles rank the query images, all of them and each modality."""
    images, image_ids, image_modalities, image_latlon = reverse_gallery(inputs)
    num_images = len(image_ids)
    tiles = np.arange(len(inputs.gallery_ids)) if inputs.reverse_query_mask is None else \
        np.flatnonzero(inputs.reverse_query_mask)
    tile_embeddings = inputs.gallery if inputs.reverse_query_mask is None else inputs.gallery[torch.from_numpy(tiles)]
    tile_latlon = None if inputs.gallery_latlon is None else inputs.gallery_latlon[tiles]
    subsets = {ALL_MODALITIES: (REVERSE, np.arange(num_images))}
    for modality in sorted(set(image_modalities.tolist())) if image_modalities is not None else []:
        subsets[modality] = (f"satellite->{modality}", np.flatnonzero(image_modalities == modality))
    results = {}
    for name, (direction, subset) in subsets.items():
        positives = find_positives(inputs.gallery_ids[tiles], image_ids[subset])
        located = tile_latlon is not None and image_latlon is not None
        ranking = rank_embeddings(tile_embeddings, images[subset], positives,
                                  keep_top_for(options, located, len(subset)), options.chunk_size, options.device)
        semi = invert_semi_positives(inputs.semi_positives, subset, num_images)
        if semi is not None and inputs.reverse_query_mask is not None:
            position = {int(tile): i for i, tile in enumerate(tiles)}
            semi = {position[tile]: queries for tile, queries in semi.items() if tile in position}
        results[name] = summarise(
            ranking, ks=options.ks, direction=direction, semi_positives=semi,
            query_latlon=tile_latlon if located else None,
            gallery_latlon=image_latlon[subset] if located else None,
            distance_thresholds_m=options.thresholds, top1_percent_rule=options.top1_percent_rule,
            distance_ks=options.distance_ks)
    return results


def evaluate_retrieval(query_embeddings: ArrayLike, query_ids: ArrayLike, gallery_embeddings: ArrayLike,
                       gallery_ids: ArrayLike, *, query_modalities: Sequence[str] | None = None,
                       both_directions: bool = True, ks: Sequence[int] = DEFAULT_KS,
                       query_latlon: ArrayLike | None = None, gallery_latlon: ArrayLike | None = None,
                       semi_positives: SemiPositives | None = None, chunk_size: int = 1024,
                       device: str | torch.device | None = None, normalize: bool = False,
                       distance_thresholds_m: Sequence[float] = DEFAULT_DISTANCE_THRESHOLDS_M,
                       top1_percent_rule: str = "round", distance_ks: Sequence[int] = DEFAULT_DISTANCE_KS,
                       reverse_extra_embeddings: ArrayLike | None = None,
                       reverse_extra_ids: ArrayLike | None = None,
                       reverse_extra_modalities: Sequence[str] | None = None,
                       reverse_extra_latlon: ArrayLike | None = None,
                       reverse_query_mask: ArrayLike | None = None,
                       query_groups: ArrayLike | None = None) -> dict:
    """Metrics of query->satellite and (optionally) satellite->query, overall and per modality.

    Returns ``{"query->satellite": {"all": {...}, "uav": {...}, ...}, "satellite->query": {...}}``.
    Forward: every query ranks the whole satellite gallery; a modality's entry summarises its
    queries.  Reverse: satellite tiles (all, or those where ``reverse_query_mask`` [G] is true)
    are queries and rank the query images plus ``reverse_extra_*`` images (University-1652's
    satellite->drone gallery holds the distractor classes' drone images too), all of them
    ("all") or those of one modality (as satellite->drone); tiles whose location has no image in
    that gallery count as ``queries_without_positive``.  Semi-positives are inverted for the
    reverse direction (tile -> query images that list it); coordinates swap roles.

    ``query_groups`` (score-level multi-query fusion, forward only): CSR offsets [Q + 1] over the
    rows of ``query_embeddings``; ids, modalities and coordinates are then given per group.
    """
    check_coordinates_paired(query_latlon, gallery_latlon)
    top1_percent_k(1, top1_percent_rule)  # checks the rule
    queries = as_embeddings(query_embeddings, "query_embeddings", normalize)
    gallery = as_embeddings(gallery_embeddings, "gallery_embeddings", normalize)
    check_same_dim(queries, gallery)
    groups = None
    if query_groups is not None:
        groups = np.asarray(query_groups, dtype=np.int64)
        if groups.ndim != 1 or len(groups) < 2 or groups[0] != 0 or groups[-1] != len(queries) \
                or np.any(np.diff(groups) < 1):
            raise ValueError(f"query_groups must be increasing CSR offsets from 0 to {len(queries)} "
                             "(every group non-empty)")
        if both_directions:
            raise ValueError("query_groups (score-level fusion) scores query->satellite only: "
                             "pass both_directions=False")
    num_queries = len(queries) if groups is None else len(groups) - 1
    extra = extra_ids = extra_modalities = extra_latlon = None
    if reverse_extra_embeddings is not None:
        extra = as_embeddings(reverse_extra_embeddings, "reverse_extra_embeddings", normalize)
        check_same_dim(extra, gallery)
        extra_ids = as_location_ids(reverse_extra_ids, len(extra), "reverse_extra_ids")
        extra_modalities = as_modalities(reverse_extra_modalities, len(extra), "reverse_extra_modalities")
        extra_latlon = as_latlon(reverse_extra_latlon, len(extra), "reverse_extra_latlon")
    mask = None
    if reverse_query_mask is not None:
        mask = np.asarray(reverse_query_mask, dtype=bool)
        if mask.shape != (len(gallery),):
            raise ValueError(f"reverse_query_mask must have one entry per gallery item ({len(gallery)}), "
                             f"got shape {mask.shape}")
    inputs = EvaluationInputs(
        queries=queries, query_ids=as_location_ids(query_ids, num_queries, "query_ids"),
        gallery=gallery, gallery_ids=as_location_ids(gallery_ids, len(gallery), "gallery_ids"),
        modalities=as_modalities(query_modalities, num_queries),
        query_latlon=as_latlon(query_latlon, num_queries, "query_latlon"),
        gallery_latlon=as_latlon(gallery_latlon, len(gallery), "gallery_latlon"),
        semi_positives=as_semi_positives(semi_positives, num_queries, len(gallery)),
        extra=extra, extra_ids=extra_ids, extra_modalities=extra_modalities, extra_latlon=extra_latlon,
        reverse_query_mask=mask, query_groups=groups)
    check_same_id_kind(inputs.query_ids, inputs.gallery_ids)
    options = SummaryOptions(ks=check_ks(ks), chunk_size=check_positive_int(chunk_size, "chunk_size"),
                             device=device, thresholds=distance_thresholds_m,
                             top1_percent_rule=top1_percent_rule, distance_ks=check_ks(distance_ks))
    results = {FORWARD: forward_results(inputs, options)}
    if both_directions:
        results[REVERSE] = reverse_results(inputs, options)
    return results

# --------------------------------------------------------------------------- checkpoints on shards


@dataclass
class FusionConfig:
    """Multi-query fusion: several images of one place scored as one query.

    ``mean``: the normalised mean of the images' embeddings (for dot products this ranks exactly
    like the mean of their similarity rows); ``max``: score level, a gallery item's score is the
    best of the images' similarities to it.  ``group_by``: ``location_modality`` (e.g. the UAV
    headings of a place, University-1652's 54 drone views of a building) or ``location`` (every
    view of a place together, whatever its modality: reported under modality "fused").
    """

    method: str = "none"  # none | mean | max
    group_by: str = "location_modality"  # location_modality | location

    def check(self) -> None:
        if self.method not in ("none", "mean", "max") or self.group_by not in ("location_modality", "location"):
            raise ValueError(f"fusion.method={self.method!r} (none, mean, max) / fusion.group_by={self.group_by!r} "
                             "(location_modality, location)")


@dataclass
class CalibrationConfig:
    """Calibrated top-1 confidence (``gleam.core.calibration``), fitted on ``fit_split``'s queries."""

    method: str = "none"  # none | platt | isotonic
    fit_split: str = "val"
    bins: int = 15


@dataclass
class EvaluationEmbeddings:
    """Embedded query set and galleries of one evaluation split (rows as ``TrainingSet`` orders them)."""

    queries: torch.Tensor  # [Q, D]
    query_ids: list[str]
    query_modalities: list[str]
    query_latlon: np.ndarray | None  # [Q, 2] degrees, None when any coordinate is unknown
    gallery: torch.Tensor  # [G, D] satellite tiles
    gallery_ids: list[str]
    gallery_latlon: np.ndarray | None
    extra: torch.Tensor | None  # reverse-gallery images that are no query (University-1652 gallery_drone)
    extra_ids: list[str]
    extra_modalities: list[str]
    extra_latlon: np.ndarray | None
    reverse_query_mask: np.ndarray | None  # [G] tiles that are satellite->query queries
    semi_positives: dict[int, list[int]] | None
    protocol: dict
    embed_seconds: float = 0.0


def embed_evaluation_set(model: torch.nn.Module, dataset, batch_size: int, device, mean, std,
                         tta=None, rank: int = 0, world: int = 1) -> EvaluationEmbeddings:
    """Embed a ``TrainingSet``'s queries, gallery tiles and extra reverse-gallery images (each rank
    embeds a share, every rank gets all), with test-time augmentation ``tta`` (``TTAConfig``)."""
    import time

    from gleam.core.train import distributed_embed

    started = time.perf_counter()

    def embed(rows: np.ndarray, view: str) -> np.ndarray:
        return distributed_embed(model, dataset, rows, view, batch_size, device, mean, std, rank, world, tta)

    query_rows, gallery_rows = dataset.query_rows(), dataset.gallery_rows()
    if len(query_rows) == 0:
        raise ValueError("the evaluation split has no query samples")
    if len(gallery_rows) == 0:
        raise ValueError("the evaluation split has no gallery tiles")
    query_set = set(query_rows.tolist())
    extra_rows = np.array([r for r in dataset.reverse_gallery_rows() if r not in query_set], dtype=np.int64)

    def latlon(rows: np.ndarray) -> np.ndarray:
        return np.stack([dataset.latitudes[rows], dataset.longitudes[rows]], axis=1).reshape(len(rows), 2)

    query_latlon, gallery_latlon, extra_latlon = latlon(query_rows), latlon(gallery_rows), latlon(extra_rows)
    located = bool(np.isfinite(query_latlon).all() and np.isfinite(gallery_latlon).all()
                   and np.isfinite(extra_latlon).all())
    protocol = getattr(dataset, "protocol", None)
    return EvaluationEmbeddings(
        queries=torch.from_numpy(embed(query_rows, "query")),
        query_ids=[dataset.location_ids[r] for r in query_rows],
        query_modalities=[dataset.modalities[r] for r in query_rows],
        query_latlon=query_latlon if located else None,
        gallery=torch.from_numpy(embed(gallery_rows, "satellite")),
        gallery_ids=[dataset.location_ids[r] for r in gallery_rows],
        gallery_latlon=gallery_latlon if located else None,
        extra=torch.from_numpy(embed(extra_rows, "query")) if len(extra_rows) else None,
        extra_ids=[dataset.location_ids[r] for r in extra_rows],
        extra_modalities=[dataset.modalities[r] for r in extra_rows],
        extra_latlon=extra_latlon if located and len(extra_rows) else None,
        reverse_query_mask=dataset.reverse_query_mask(gallery_rows) if hasattr(dataset, "reverse_query_mask") else None,
        semi_positives=dataset.semi_positives(query_rows, gallery_rows) if hasattr(dataset, "semi_positives") else None,
        protocol=protocol.to_json() if protocol is not None else {},
        embed_seconds=time.perf_counter() - started)


@dataclass
class FusedQueries:
    """Queries after fusion: per group ids, modalities, coordinates, semi-positives, member rows."""

    embeddings: torch.Tensor  # [Q', D] (mean) or the member rows in group order (max)
    offsets: np.ndarray | None  # CSR offsets over the member rows (max); None for mean
    ids: list[str]
    modalities: list[str]
    latlon: np.ndarray | None
    semi_positives: dict[int, list[int]] | None
    members: list[np.ndarray]  # original query indices of each group


def fuse_queries(embeddings: EvaluationEmbeddings, fusion: FusionConfig) -> FusedQueries:
    """Group the queries by location id (and modality) and fuse each group (see ``FusionConfig``)."""
    fusion.check()
    groups: dict[tuple[str, str], list[int]] = {}
    for index, (location, modality) in enumerate(zip(embeddings.query_ids, embeddings.query_modalities)):
        key = (location, modality if fusion.group_by == "location_modality" else "fused")
        groups.setdefault(key, []).append(index)
    keys = list(groups)
    members = [np.asarray(groups[key], dtype=np.int64) for key in keys]
    if fusion.method == "mean":
        fused = torch.stack([embeddings.queries[torch.from_numpy(m)].sum(dim=0) for m in members])
        vectors, offsets = torch.nn.functional.normalize(fused, dim=-1), None
    else:
        order = np.concatenate(members)
        vectors = embeddings.queries[torch.from_numpy(order)]
        offsets = np.concatenate([[0], np.cumsum([len(m) for m in members])]).astype(np.int64)
    latlon = None
    if embeddings.query_latlon is not None:
        latlon = np.stack([embeddings.query_latlon[m].mean(axis=0) for m in members])
    semi = None
    if embeddings.semi_positives is not None:
        semi = {g: sorted({t for q in m.tolist() for t in embeddings.semi_positives.get(q, [])})
                for g, m in enumerate(members)}
    return FusedQueries(vectors, offsets, [key[0] for key in keys], [key[1] for key in keys], latlon, semi, members)


def score_embeddings(embeddings: EvaluationEmbeddings, *, fusion: FusionConfig | None = None, rerank=None,
                     top1_percent_rule: str | None = None, both_directions: bool = True,
                     chunk_size: int = 1024, device: str | torch.device | None = None) -> dict:
    """Every metric of ``evaluate_retrieval`` on embedded sets, with optional fusion and
    re-ranking (``gleam.core.rerank.RerankConfig``; forward direction: expanded queries and
    gallery).  With fusion on, only query->satellite is scored (groups are queries there)."""
    from gleam.core.rerank import apply_rerank

    rule = top1_percent_rule or embeddings.protocol.get("top1_percent_rule") or "round"
    queries, gallery = apply_rerank(embeddings.queries, embeddings.gallery, rerank)
    common = dict(gallery_embeddings=gallery, gallery_ids=embeddings.gallery_ids,
                  gallery_latlon=embeddings.gallery_latlon, top1_percent_rule=rule, chunk_size=chunk_size,
                  device=device, normalize=True)
    if fusion is not None and fusion.method != "none":
        fused = fuse_queries(EvaluationEmbeddings(**{**embeddings.__dict__, "queries": queries}), fusion)
        return evaluate_retrieval(fused.embeddings, fused.ids, query_modalities=fused.modalities,
                                  query_latlon=fused.latlon, semi_positives=fused.semi_positives,
                                  query_groups=fused.offsets, both_directions=False, **common)
    return evaluate_retrieval(
        queries, embeddings.query_ids, query_modalities=embeddings.query_modalities,
        query_latlon=embeddings.query_latlon, semi_positives=embeddings.semi_positives,
        both_directions=both_directions, reverse_extra_embeddings=embeddings.extra,
        reverse_extra_ids=embeddings.extra_ids if embeddings.extra is not None else None,
        reverse_extra_modalities=embeddings.extra_modalities if embeddings.extra is not None else None,
        reverse_extra_latlon=embeddings.extra_latlon, reverse_query_mask=embeddings.reverse_query_mask,
        **common)


def top1_outcomes(embeddings: EvaluationEmbeddings, *, fusion: FusionConfig | None = None, rerank=None,
                  chunk_size: int = 1024) -> dict[str, np.ndarray]:
    """Per query (or fused group) of query->satellite: ``correct`` (top-1 is a positive, bool),
    ``top1``/``top2`` similarities, ``has_positive`` and ``modality`` — for paired comparisons
    and calibration.  Same ranking as ``score_embeddings``."""
    from gleam.core.rerank import apply_rerank

    queries, gallery = apply_rerank(embeddings.queries, embeddings.gallery, rerank)
    queries = as_embeddings(queries, "queries", normalize=True)
    gallery = as_embeddings(gallery, "gallery", normalize=True)
    ids, modalities, groups = np.asarray(embeddings.query_ids), np.asarray(embeddings.query_modalities), None
    if fusion is not None and fusion.method != "none":
        fused = fuse_queries(EvaluationEmbeddings(**{**embeddings.__dict__, "queries": queries}), fusion)
        queries, ids, modalities, groups = fused.embeddings, np.asarray(fused.ids), np.asarray(fused.modalities), fused.offsets
    positives = find_positives(ids, np.asarray(embeddings.gallery_ids))
    ranking = rank_embeddings(queries, gallery, positives, min(2, len(gallery)), chunk_size, None, groups)
    second = ranking.top_scores[:, 1] if ranking.top_scores.shape[1] > 1 else np.full(len(ids), -1.0)
    return {"correct": ranking.first_positive_rank == 0, "has_positive": ranking.first_positive_rank >= 0,
            "top1": ranking.top_scores[:, 0].astype(np.float64), "top2": second.astype(np.float64),
            "modality": modalities}


def evaluation_counts(embeddings: EvaluationEmbeddings) -> dict:
    """Query and gallery counts of both directions, overall and per query modality."""
    modalities = sorted(set(embeddings.query_modalities) | set(embeddings.extra_modalities))
    reverse_queries = int(embeddings.reverse_query_mask.sum()) if embeddings.reverse_query_mask is not None \
        else len(embeddings.gallery_ids)
    forward = {"queries": len(embeddings.query_ids), "gallery": len(embeddings.gallery_ids),
               "queries_by_modality": {m: embeddings.query_modalities.count(m) for m in modalities
                                       if m in embeddings.query_modalities}}
    reverse = {"queries": reverse_queries, "gallery": len(embeddings.query_ids) + len(embeddings.extra_ids),
               "gallery_by_modality": {m: embeddings.query_modalities.count(m) + embeddings.extra_modalities.count(m)
                                       for m in modalities}}
    return {FORWARD: forward, REVERSE: reverse}


def evaluate_dataset(model: torch.nn.Module, dataset, batch_size: int, device, mean, std, rank: int = 0,
                     world: int = 1, *, tta=None, fusion: FusionConfig | None = None, rerank=None,
                     top1_percent_rule: str | None = None) -> dict:
    """Embed a ``TrainingSet`` (its evaluation protocol deciding queries and galleries) and
    compute every metric; ``counts`` holds the query and gallery sizes of each direction."""
    embeddings = embed_evaluation_set(model, dataset, batch_size, device, mean, std, tta, rank, world)
    metrics = score_embeddings(embeddings, fusion=fusion, rerank=rerank, top1_percent_rule=top1_percent_rule)
    metrics["counts"] = evaluation_counts(embeddings)
    return metrics


@dataclass
class EvaluateCoreConfig:
    """Root config of ``jobs/evaluate_core.py``: a GLEAM-C checkpoint against one split.

    The split's queries and gallery follow the protocol its dataset manifest records
    (``gleam.data.benchmark``: University-1652 test = test queries against the tiles of test +
    gallery; VIGOR with hit rate; CVUSA/CVACT with R@top1% k = floor(G/100)); a dataset without
    one uses the split alone.
    """

    kind: str = "evaluate_core"
    checkpoint: ModelPath = "runs/gleam-c-local/final"  # folder with model.safetensors + config.json
    dataset: InputPath = "data/synth"
    split: str = "test"
    distractors: bool = True  # satellite-only tiles (the split's, or the protocol's gallery split) join the gallery
    batch_size: int = 64
    output: OutputPath | None = None  # metrics JSON; default: <checkpoint>/eval-<split>.json
    top1_percent_rule: str | None = None  # round | floor; None: the protocol's (floor for CVUSA/CVACT), else round
    tta: TTAConfig = field(default_factory=TTAConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)


def load_evaluation_set(config: EvaluateCoreConfig, encoder, split: str):
    from gleam.data.pipeline import build_training_set
    from gleam.data.schema import query_modalities

    model_config = encoder.config
    sizes = {m: model_config.input_size(m) for m in query_modalities()}
    return build_training_set(config.dataset, split=split, modalities=None, sizes=sizes,
                              satellite_size=model_config.input_size("satellite"),
                              include_distractors=config.distractors, evaluation=True)


def evaluate_checkpoint(config: EvaluateCoreConfig) -> dict:
    """Embed a split's queries and gallery with the checkpoint and compute every metric.

    With ``calibration.method`` set, a calibrator is fitted on ``calibration.fit_split`` and
    written next to the metrics (``calibration.json``), with the ECE of the raw and calibrated
    confidence on the evaluated split and a reliability plot (``reliability-<split>.png``).
    """
    from gleam import storage
    from gleam.core.model import GleamEncoder

    encoder = GleamEncoder.from_pretrained(config.checkpoint)
    data_config = encoder.data_config()
    mean, std = tuple(data_config["mean"]), tuple(data_config["std"])
    dataset = load_evaluation_set(config, encoder, config.split)
    try:
        embeddings = embed_evaluation_set(encoder, dataset, config.batch_size, torch.device("cpu"), mean, std,
                                          config.tta)
        metrics = score_embeddings(embeddings, fusion=config.fusion, rerank=config.rerank,
                                   top1_percent_rule=config.top1_percent_rule)
    except ValueError as error:
        raise ValueError(f"{config.dataset}, split {config.split!r}: {error}") from None
    counts = evaluation_counts(embeddings)
    report = {"checkpoint": config.checkpoint, "dataset": config.dataset, "split": config.split,
              "protocol": embeddings.protocol, "counts": counts,
              "queries": counts[FORWARD]["queries"], "gallery": counts[FORWARD]["gallery"],
              "options": {"tta": {"flip": config.tta.flip, "scales": list(config.tta.scales)},
                          "fusion": config.fusion.__dict__, "rerank": config.rerank.__dict__},
              "read_report": dataset.read_summary(), "metrics": metrics}
    output = config.output or storage.join(config.checkpoint, f"eval-{config.split}.json")
    if config.calibration.method != "none":
        report["calibration"] = calibrate(config, encoder, embeddings, output, mean, std)
    storage.write_json(output, report)
    report["output"] = output
    return report


def calibrate(config: EvaluateCoreConfig, encoder, embeddings: EvaluationEmbeddings, output: str,
              mean: tuple, std: tuple) -> dict:
    """Fit the calibrator on ``calibration.fit_split``, measure ECE on the evaluated split."""
    from gleam import storage
    from gleam.core.calibration import (FILE, expected_calibration_error, fit_calibrator, raw_confidence,
                                        reliability_bins, save_reliability_plot)

    if config.calibration.fit_split == config.split:
        fit = embeddings
    else:
        fit_set = load_evaluation_set(config, encoder, config.calibration.fit_split)
        fit = embed_evaluation_set(encoder, fit_set, config.batch_size, torch.device("cpu"), mean, std, config.tta)
    fit_outcomes = top1_outcomes(fit, rerank=config.rerank)
    keep = fit_outcomes["has_positive"]
    calibrator = fit_calibrator(fit_outcomes["top1"][keep], fit_outcomes["top2"][keep],
                                fit_outcomes["correct"][keep], config.calibration.method)
    outcomes = top1_outcomes(embeddings, rerank=config.rerank)
    keep = outcomes["has_positive"]
    raw = raw_confidence(outcomes["top1"][keep])
    calibrated = calibrator.predict(outcomes["top1"][keep], outcomes["top2"][keep])
    correct = outcomes["correct"][keep]
    folder = output.rsplit("/", 1)[0] if "/" in output else "."
    calibration_url = storage.join(folder, FILE)
    storage.write_json(calibration_url, calibrator.to_json())
    plot = save_reliability_plot(storage.join(folder, f"reliability-{config.split}.png"),
                                 {"raw top-1 similarity": (raw, correct), f"{calibrator.method}": (calibrated, correct)},
                                 config.calibration.bins)
    return {"method": calibrator.method, "fit_split": config.calibration.fit_split, "file": calibration_url,
            "plot": plot, "queries": int(keep.sum()),
            "ece_raw": expected_calibration_error(raw, correct, config.calibration.bins),
            "ece_calibrated": expected_calibration_error(calibrated, correct, config.calibration.bins),
            "reliability": reliability_bins(calibrated, correct, config.calibration.bins),
            "fitted_on": calibrator.fitted_on}
