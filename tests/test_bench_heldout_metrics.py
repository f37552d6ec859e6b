"""benchmarks/bench_heldout.py's scoring: chance and R@1 within the query's biome, median metres,
the validation metric, cache names that carry the world seed (no training, stub embeddings)."""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest

from conftest import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/bench_heldout.py", "bench_heldout")


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


def test_leave_one_biome_out_splits_and_names(bench):
    """--holdout-biome: train regions cycle through the other three biomes, val and test regions
    hold only the held-out one; caches and saved encoders are named apart from the full world."""
    from gleam.data.make_shards import plan_parts

    assert bench.split_biomes("train") == bench.split_biomes("test") == bench.BIOMES
    for split in ("train", "val", "test"):
        biomes = bench.split_biomes(split, "arid")
        synth = bench._synth(split, 512, 0 if split == "train" else 128, 32, 0, biomes)
        regions = {synth.biomes[part.region % len(synth.biomes)] for part in plan_parts(synth)}
        assert (regions == {"arid"}) == (split != "train") and ("arid" in regions) == (split != "train")
    with pytest.raises(ValueError, match="choose one of"):
        bench.split_biomes("val", "lunar")
    lobo = bench.cache_path("c", "val", 256, 256, 96, 0, ["arid"])
    assert lobo != bench.cache_path("c", "val", 256, 256, 96, 0) and "-barid-" in lobo
    assert bench.cache_path("c", "val", 256, 256, 96, 0, list(reversed(bench.BIOMES))) == \
        bench.cache_path("c", "val", 256, 256, 96, 0)
    spec = {"save_dir": "d", "locations": 1536, "variant": "v", "world_seed": 1, "seed": 1, "holdout_biome": "arid"}
    assert bench._saved_path(spec) == os.path.join("d", "1536-v-w1-s1-without-arid")


def test_seed_summary_is_mean_and_standard_error_over_pairs():
    """benchmarks/bench_heldout_seeds.py: per row and view, mean, sd (n - 1) and se = sd / sqrt(n)
    of each pair's test numbers; rows that failed are left out of the mean, not counted as 0."""
    seeds = load_script("benchmarks/bench_heldout_seeds.py", "bench_heldout_seeds")

    def result(r1, step):
        views = {"uav": {"R@1": r1, "R@5": r1 + 10, "AP": r1, "R@1_biome": r1, "median_error_m": 0.0}}
        return {"rows": [{"train_locations": 1536, "variant": "v", "held_out": {"views": views},
                          "selection": {"chosen_step": step, "chosen_score": 1.0}},
                         {"train_locations": 1536, "variant": "broken", "error": "RuntimeError: x"}]}

    rows = seeds.summarise({(0, 0): result(60.0, 800), (1, 1): result(70.0, 600), (2, 2): result(80.0, 800)})
    assert [(r["train_locations"], r["variant"]) for r in rows] == [(1536, "v")]
    r1 = rows[0]["test"]["uav"]["R@1"]
    assert r1["n"] == 3 and r1["mean"] == pytest.approx(70.0) and r1["sd"] == pytest.approx(10.0)
    assert r1["se"] == pytest.approx(10.0 / np.sqrt(3))
    assert [p["chosen_step"] for p in rows[0]["pairs"]] == [800, 600, 800]
    assert seeds.mean_se([5.0])["se"] is None
    assert seeds.parse_pair("3:4") == (3, 4)
    with pytest.raises(Exception, match="WORLD:TRAIN"):
        seeds.parse_pair("3")


def test_the_city_test_split_renders_real_places_and_its_control_matches_it(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))  # the render processes import the benchmark
    bench = importlib.import_module("bench_heldout")
    data = bench.render_city("helsinki", 3, 2, 32, 1, str(tmp_path))
    assert data["satellite"].shape == (3, 32, 32, 3) and data["panorama"].shape == (3, 32, 64, 3)
    assert data["distractor_satellite"].shape == (2, 32, 32, 3)
    assert len(set(data["ids"].tolist()) | set(data["distractor_ids"].tolist())) == 5
    assert (np.abs(data["lat"] - 60.17) < 0.01).all() and (np.abs(data["lon"] - 24.944) < 0.01).all()
    assert str(data["city"]) == "osm-helsinki-s0" and data["city_capacity"][0] >= 40
    assert os.path.exists(tmp_path / "test-osm-helsinki-3-2-32.npz")
    again = bench.render_city("helsinki", 3, 2, 32, 1, str(tmp_path))  # from the cache
    assert np.array_equal(again["uav"], data["uav"])
    city, control = bench._city_config("helsinki"), bench._city_config("generated:1")
    assert control.osm is None and control.seed == 1
    for key in ("size_m", "biome", "tile_size_m", "location_spacing_m", "location_margin_m"):
        assert getattr(control, key) == getattr(city, key), key
