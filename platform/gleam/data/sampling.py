"""Batch planning for contrastive training: modality balancing, DSS and GPS hard negatives.

The planner works on a small index of the training set (one row per sample: location id,
modality, coordinates) and decides, for every epoch, which samples form each *global* batch
and which part of it each rank gets.  Deciding batches centrally is what makes hard-negative
batches exact under data parallelism: rank r takes the r-th contiguous slice of every global
batch, and hard-negative clusters are kept contiguous so they stay on one rank.

Rules every plan keeps:
- no location appears twice in one global batch (its satellite would be a false negative);
- every global batch has exactly ``global_batch`` samples (the all-gather needs equal sizes);
- the same (seed, epoch, index, neighbours) give the same plan on every rank and every run.

Modes (``SamplingConfig``):
- ``batch_mode="mixed"``: modalities mixed inside a batch; ``"per_modality"``: one modality per
  batch (batches of different modalities interleaved).
- ``modality_weights``: share of each modality in an epoch (empty: as in the data).  A modality
  with fewer samples than its share is repeated, one with more is subsampled.
- ``hard_negatives="dss"``: Dynamic Similarity Sampling: batches are built from clusters of a
  seed location and the locations whose satellites the model currently confuses with it
  (``neighbours`` from the last evaluation pass, see ``similarity_neighbours``);
  ``"gps"``: the same with geographic neighbours (``gps_neighbours``), where coordinates exist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np

@dataclass
class SamplingConfig:
    """How an epoch's batches are formed."""

    batch_mode: Literal["mixed", "per_modality"] = "mixed"
    modality_weights: dict[str, float] = field(default_factory=dict)
    epoch_size: int | None = None  # samples per epoch; None: the number of (selected) samples
    hard_negatives: Literal["none", "dss", "gps"] = "none"
    neighbours: int = 8  # candidate neighbours per location (DSS: most similar wrong satellites)
    cluster_size: int = 4  # samples taken around one seed location
    hard_fraction: float = 0.5  # share of each batch built from clusters; the rest random


@dataclass
class SampleIndex:
    """What the planner needs to know of each training sample (row i = sample i)."""

    location_ids: list[str]
    modalities: list[str]
    latitudes: np.ndarray | None = None
    longitudes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.location_ids)


def _rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, 0x61EA])


def epoch_selection(index: SampleIndex, config: SamplingConfig, rng: np.random.Generator) -> np.ndarray:
    """Sample rows for one epoch with the configured modality shares (shuffled)."""
    modalities = np.asarray(index.modalities)
    present = sorted(set(index.modalities))
    if not present:
        raise ValueError("the training index is empty")
    weights = config.modality_weights
    unknown = [m for m in weights if m not in present]
    if unknown:
        raise ValueError(f"sampling.modality_weights names {unknown}, absent from the data {present}")
    total = config.epoch_size or len(index)
    if not weights:
        shares = {m: float(np.sum(modalities == m)) / len(index) for m in present}
    else:
        weight_sum = sum(weights.get(m, 0.0) for m in present)
        if weight_sum <= 0:
            raise ValueError("sampling.modality_weights must give some modality a positive weight")
        shares = {m: weights.get(m, 0.0) / weight_sum for m in present}
    chosen = []
    for modality in present:
        rows = np.flatnonzero(modalities == modality)
        target = int(round(total * shares[modality]))
        if target == 0:
            continue
        repeats = math.ceil(target / len(rows))
        pool = np.concatenate([rng.permutation(rows) for _ in range(repeats)])
        chosen.append(pool[:target])
    selection = np.concatenate(chosen)
    return selection[rng.permutation(len(selection))]


def _fill_batches(rows: Sequence[int], locations: list[str], batch_size: int) -> list[list[int]]:
    """Greedy: put each row into the first open batch lacking its location; full batches close."""
    open_batches: list[tuple[list[int], set[str]]] = []
    full: list[list[int]] = []
    for row in rows:
        location = locations[row]
        for batch, seen in open_batches:
            if location not in seen:
                batch.append(row)
                seen.add(location)
                if len(batch) == batch_size:
                    full.append(batch)
                    open_batches.remove((batch, seen))
                break
        else:
            open_batches.append(([row], {location}))
            if batch_size == 1:
                full.append(open_batches.pop()[0])
    return full  # incomplete batches are dropped: every global batch has the same size


def _cluster_batches(rows: np.ndarray, index: SampleIndex, neighbours: dict[str, list[str]],
                     config: SamplingConfig, batch_size: int) -> list[list[int]]:
    """Hard-negative batches: contiguous clusters (a seed location and its neighbours), then a
    random fill up to ``batch_size``; ``rows`` is already shuffled."""
    locations = index.location_ids
    unused_by_location: dict[str, list[int]] = {}
    for row in rows:
        unused_by_location.setdefault(locations[row], []).append(int(row))
    order = [int(r) for r in rows]
    used: set[int] = set()
    hard_target = max(1, int(round(batch_size * config.hard_fraction)))
    cursor = 0

    def claim(row: int) -> int:
        used.add(row)
        unused_by_location[locations[row]].remove(row)
        return row

    def next_free(seen: set[str]) -> int | None:
        nonlocal cursor
        while cursor < len(order) and order[cursor] in used:
            cursor += 1
        for position in range(cursor, len(order)):  # no order[cursor:] copy: O(rows) per call on big worlds
            row = order[position]
            if row not in used and locations[row] not in seen:
                return row
        return None

    batches: list[list[int]] = []
    while True:
        batch: list[int] = []
        seen: set[str] = set()
        while len(batch) < hard_target and (seed := next_free(seen)) is not None:
            batch.append(claim(seed))
            seen.add(locations[seed])
            taken = 1
            for other in neighbours.get(locations[seed], []):
                if taken >= config.cluster_size or len(batch) >= batch_size:
                    break
                if other not in seen and unused_by_location.get(other):
                    batch.append(claim(unused_by_location[other][-1]))
                    seen.add(other)
                    taken += 1
        while len(batch) < batch_size and (row := next_free(seen)) is not None:
            batch.append(claim(row))
            seen.add(locations[row])
        if len(batch) < batch_size:
            return batches
        batches.append(batch)


def plan_epoch(index: SampleIndex, config: SamplingConfig, *, epoch: int, seed: int,
               global_batch: int, world_size: int = 1,
               neighbours: dict[str, list[str]] | None = None) -> list[list[list[int]]]:
    """The epoch's steps: ``plan[step][rank]`` is the list of sample rows that rank trains on."""
    if global_batch % world_size:
        raise ValueError(f"global batch {global_batch} is not divisible by {world_size} workers")
    rng = _rng(seed, epoch)
    selection = epoch_selection(index, config, rng)
    use_clusters = config.hard_negatives != "none" and neighbours
    groups: list[np.ndarray]
    if config.batch_mode == "per_modality":
        modalities = np.asarray(index.modalities)
        groups = [selection[modalities[selection] == m] for m in sorted(set(modalities[selection]))]
    else:
        groups = [selection]
    batches: list[list[int]] = []
    for rows in groups:
        if use_clusters:
            batches.extend(_cluster_batches(rows, index, neighbours or {}, config, global_batch))
        else:
            batches.extend(_fill_batches([int(r) for r in rows], index.location_ids, global_batch))
    batches = [batches[i] for i in rng.permutation(len(batches))]
    local = global_batch // world_size
    return [[batch[r * local:(r + 1) * local] for r in range(world_size)] for batch in batches]


# --------------------------------------------------------------------------- neighbours


def unit_vectors(latitudes: np.ndarray, longitudes: np.ndarray) -> np.ndarray:
    """Points on the unit sphere (radians inside) so that dot products order great-circle distance."""
    lat, lon = np.radians(latitudes), np.radians(longitudes)
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1)


def _nearest(vectors: np.ndarray, ids: list[str], k: int, chunk: int = 1024) -> dict[str, list[str]]:
    """Each id's k most similar other ids by dot product, in float64 chunks (never N x N).

    float64 matters: unit vectors of points a few metres apart differ in the 1e-12 range,
    beyond float32 (which is why gleam.core.evaluate.top_k is not used here).
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    result: dict[str, list[str]] = {}
    k_eff = min(k + 1, len(ids))
    for start in range(0, len(ids), chunk):
        scores = vectors[start:start + chunk] @ vectors.T
        top = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
        for row, candidates in enumerate(top):
            ordered = candidates[np.argsort(-scores[row, candidates], kind="stable")]
            result[ids[start + row]] = [ids[c] for c in ordered if c != start + row][:k]
    return result


def gps_neighbours(location_ids: list[str], latitudes: np.ndarray, longitudes: np.ndarray,
                   k: int) -> dict[str, list[str]]:
    """The k geographically nearest other locations of each location (one entry per location)."""
    unique: dict[str, tuple[float, float]] = {}
    for location, lat, lon in zip(location_ids, latitudes, longitudes):
        unique.setdefault(location, (float(lat), float(lon)))
    ids = list(unique)
    coords = np.array([unique[i] for i in ids])
    if not np.all(np.isfinite(coords)):
        raise ValueError("gps hard negatives need finite coordinates for every location")
    return _nearest(unit_vectors(coords[:, 0], coords[:, 1]), ids, k)


def similarity_neighbours(location_ids: list[str], satellite_embeddings: np.ndarray,
                          k: int) -> dict[str, list[str]]:
    """DSS: for each location, the k locations whose satellite embeddings are most similar."""
    if len(location_ids) != len(satellite_embeddings):
        raise ValueError("one satellite embedding per location id is needed")
    return _nearest(np.asarray(satellite_embeddings, dtype=np.float32), list(location_ids), k)
