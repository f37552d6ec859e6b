"""benchmarks/bench_heldout.py's scoring: chance and R@1 within the query's biome, median metres,
the validation metric, cache names that carry the world seed (no training, stub embeddings)."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_heldout", os.path.join(ROOT, "benchmarks", "bench_heldout.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _data():
    # four query locations (two per biome) and two satellite-only distractor tiles of biome A
    return {"ids": np.array(["l0", "l1", "l2", "l3"]), "lat": np.array([47.0, 47.01, 48.0, 48.01]),
            "lon": np.array([8.0, 8.0, 9.0, 9.0]), "biome": np.array(["A", "A", "B", "B"]),
            "satellite": np.zeros((4, 2, 2, 3), np.uint8), "uav": np.zeros((4, 2, 2, 3), np.uint8),
            "distractor_ids": np.array(["d0", "d1"]), "distractor_lat": np.array([47.02, 47.03]),
            "distractor_lon": np.array([8.0, 8.0]), "distractor_biome": np.array(["A", "A"])}


def test_within_biome_chance_and_recall(bench, monkeypatch):
    import gleam.core.train

    dataset = bench.ArraySet(_data(), ["uav"], distractors=True)
    assert dataset.biomes == ["A", "A", "B", "B", "A", "A"]
    tiles = np.eye(6, dtype=np.float32)  # gallery rows 0..5: l0..l3, d0, d1
    queries = np.stack([0.8 * tiles[2] + 0.6 * tiles[0],  # l0: best overall l2 (biome B), best in A: l0
                        tiles[1], tiles[2],
                        0.8 * tiles[4] + 0.6 * tiles[3]])  # l3: best overall d0 (biome A), best in B: l3

    def stub(encoder, data, rows, kind, *args):
        return (tiles if kind == "satellite" else queries)[np.asarray(rows)]

    monkeypatch.setattr(gleam.core.train, "embed_rows", stub)
    out = bench._retrieval(None, dataset, "cpu", None, None)
    uav = out["views"]["uav"]
    assert out["gallery"] == 6 and out["gallery_tiles_per_biome"] == {"A": 4, "B": 2}
    assert uav["R@1"] == pytest.approx(50.0) and uav["R@1_biome"] == pytest.approx(100.0)
    assert uav["chance_R@1"] == pytest.approx(100 / 6)
    assert uav["chance_R@1_biome"] == pytest.approx((25 + 25 + 50 + 50) / 4)
    for key in ("R@5", "AP", "median_error_m"):
        assert uav[key] is not None
    # two of four top-1 tiles are the query's own (0 m): the median lies between 0 and the misses
    assert 0.0 < uav["median_error_m"] < 200_000
    curve = bench._retrieval(None, dataset, "cpu", None, None, located=False, biomes=False)["views"]["uav"]
    assert "median_error_m" not in curve and "R@1_biome" not in curve


def test_mean_r1_over_the_four_views_not_all(bench):
    views = {"all": {"R@1": 0.0}, "uav": {"R@1": 10.0}, "streetmap": {"R@1": 90.0},
             "panorama": {"R@1": 40.0}, "ground": {"R@1": 20.0}}
    assert bench._mean_r1(views) == pytest.approx(40.0)


def test_cache_and_checkpoint_names_carry_the_world_seed(bench):
    assert bench.cache_path("c", "val", 256, 256, 96, 3) != bench.cache_path("c", "val", 256, 256, 96, 0)
    assert "-w3-" in bench.cache_path("c", "val", 256, 256, 96, 3)
    spec = {"save_dir": "d", "locations": 6144, "variant": "pretrained_lr3e-4", "world_seed": 0, "seed": 0}
    assert bench._saved_path(spec) == os.path.join("d", "6144-pretrained_lr3e-4-w0-s0")
