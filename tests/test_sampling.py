"""Batch planning: unique locations per batch, modality shares, per-modality batches, DSS/GPS clusters."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from gleam.core.evaluate import haversine_m
from gleam.data.sampling import SampleIndex, SamplingConfig, gps_neighbours, plan_epoch, similarity_neighbours

MODALITIES = ["uav", "streetmap", "panorama", "ground"]


def make_index(locations=40, panorama_only_extra=0):
    ids, mods = [], []
    for loc in range(locations):
        for modality in MODALITIES:
            ids.append(f"L{loc:03d}")
            mods.append(modality)
    for extra in range(panorama_only_extra):
        ids.append(f"P{extra:03d}")
        mods.append("panorama")
    lat = np.array([47.0 + int(i[1:]) * 1e-3 + (0.5 if i[0] == "P" else 0) for i in ids])
    lon = np.full(len(ids), 8.5)
    return SampleIndex(ids, mods, lat, lon)


def flatten(plan):
    return [[row for part in step for row in part] for step in plan]


@pytest.mark.parametrize("mode", ["mixed", "per_modality"])
def test_batches_have_unique_locations_and_equal_rank_parts(mode):
    index = make_index()
    plan = plan_epoch(index, SamplingConfig(batch_mode=mode), epoch=0, seed=1, global_batch=16, world_size=2)
    # 160 samples: 10 mixed batches of 16 at most; per modality 40 -> 2 full batches each
    assert len(plan) >= (9 if mode == "mixed" else 8)
    for step in plan:
        assert [len(part) for part in step] == [8, 8]
        rows = [r for part in step for r in part]
        assert len({index.location_ids[r] for r in rows}) == 16
        if mode == "per_modality":
            assert len({index.modalities[r] for r in rows}) == 1


def test_plans_are_deterministic_and_change_with_the_epoch():
    index = make_index()
    config = SamplingConfig()
    first = plan_epoch(index, config, epoch=3, seed=7, global_batch=8, world_size=2)
    assert first == plan_epoch(index, config, epoch=3, seed=7, global_batch=8, world_size=2)
    assert first != plan_epoch(index, config, epoch=4, seed=7, global_batch=8, world_size=2)


def test_modality_weights_balance_an_unbalanced_set():
    index = make_index(locations=20, panorama_only_extra=120)  # panoramas are 140 of 200
    natural = Counter(index.modalities[r] for b in flatten(plan_epoch(index, SamplingConfig(), epoch=0, seed=0, global_batch=10)) for r in b)
    balanced_config = SamplingConfig(modality_weights={m: 1.0 for m in MODALITIES}, epoch_size=200)
    balanced = Counter(index.modalities[r] for b in flatten(plan_epoch(index, balanced_config, epoch=0, seed=0, global_batch=10)) for r in b)
    assert natural["panorama"] / sum(natural.values()) > 0.6
    shares = [balanced[m] / sum(balanced.values()) for m in MODALITIES]
    assert max(shares) - min(shares) < 0.1, balanced


def test_unknown_modality_weight_is_rejected():
    with pytest.raises(ValueError, match="absent from the data"):
        plan_epoch(make_index(), SamplingConfig(modality_weights={"thermal": 1.0}), epoch=0, seed=0, global_batch=8)


def test_dss_clusters_put_confusable_locations_together():
    index = make_index(locations=64)
    # pretend satellites of locations 2j and 2j+1 look alike: embeddings of each pair nearly equal
    rng = np.random.default_rng(0)
    base = rng.normal(size=(32, 16))
    embeddings = np.repeat(base, 2, axis=0) + 0.01 * rng.normal(size=(64, 16))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    locations = [f"L{i:03d}" for i in range(64)]
    neighbours = similarity_neighbours(locations, embeddings, k=3)
    assert all(neighbours[f"L{2*j:03d}"][0] == f"L{2*j+1:03d}" for j in range(32))
    config = SamplingConfig(hard_negatives="dss", cluster_size=2, hard_fraction=1.0)
    plan = plan_epoch(index, config, epoch=0, seed=0, global_batch=8, world_size=2, neighbours=neighbours)

    def pairs_together(plan_):
        together = 0
        for step in plan_:
            for part in step:  # clusters must stay on one rank
                locs = {int(index.location_ids[r][1:]) for r in part}
                together += sum(1 for l in locs if l % 2 == 0 and l + 1 in locs)
        return together
    random_plan = plan_epoch(index, SamplingConfig(), epoch=0, seed=0, global_batch=8, world_size=2)
    assert pairs_together(plan) >= 3 * len(plan)  # nearly every cluster of 2 is a confusable pair
    assert pairs_together(plan) > 5 * max(1, pairs_together(random_plan))
    for step in plan:
        rows = [r for part in step for r in part]
        assert len({index.location_ids[r] for r in rows}) == len(rows) == 8


def test_gps_neighbours_are_nearest_by_haversine():
    rng = np.random.default_rng(1)
    lat = 47 + rng.uniform(0, 0.05, 50)
    lon = 8 + rng.uniform(0, 0.05, 50)
    ids = [f"G{i}" for i in range(50)]
    neighbours = gps_neighbours(ids, lat, lon, k=3)
    for i in range(50):
        distances = haversine_m(lat[i], lon[i], lat, lon)
        distances[i] = np.inf
        assert neighbours[ids[i]] == [ids[j] for j in np.argsort(distances)[:3]]

