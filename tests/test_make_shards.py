"""jobs/make_shards: the synthetic world as shards with Ray, deterministic, resumable, local and S3."""

from __future__ import annotations

import json

import pytest

from gleam import storage
from gleam.config import load_config
from gleam.data import shards
from gleam.data.make_shards import MakeShardsConfig, make_shards, plan_parts

SMALL = ["synth.locations={train: 6, val: 3, test: 3}", "synth.distractors=2", "synth.image_size=64",
         "synth.panorama_width=128", "synth.locations_per_task=3", "shards.max_samples=10",
         "synth.regions_per_split=1", "synth.biomes=[arid]"]


def small_config(output: str, *extra: str) -> MakeShardsConfig:
    return load_config(MakeShardsConfig, "configs/make-shards-local.yaml", [f"output={output}", *SMALL, *extra])


def test_dataset_counts_facts_and_determinism(ray_session, tmp_path):
    first = make_shards(small_config(str(tmp_path / "a")))
    assert first["num_samples"] == (6 + 3 + 3) * 4 + 2 * 2
    assert first["modalities"] == {"uav": 12, "streetmap": 12, "panorama": 12, "ground": 12, "satellite": 4}
    assert first["splits"] == {"train": 24, "val": 14, "test": 14}
    assert all(s["samples"] <= 10 for s in first["shards"])
    samples = list(shards.iter_samples(shards.shard_urls(str(tmp_path / "a"), split="train")))
    panorama = next(s for s in samples if s.modality == "panorama")
    assert panorama.query_array().shape == (64, 128, 3) and panorama.satellite_array().shape == (64, 64, 3)
    assert panorama.heading == 0.0  # north-aligned
    assert panorama.metadata["facts"] and panorama.metadata["biome"]
    streetmap = next(s for s in samples if s.modality == "streetmap" and s.location_id == panorama.location_id)
    assert streetmap.satellite_image == panorama.satellite_image  # one tile per location
    second = make_shards(small_config(str(tmp_path / "b")))
    assert [s["sha256"] for s in second["shards"]] == [s["sha256"] for s in first["shards"]]
    report = json.loads((tmp_path / "a" / "make_shards_report.json").read_text())
    assert report["parts_written"] == len(plan_parts(small_config("x").synth)) and report["parts_skipped"] == 0


def test_rerun_skips_complete_parts_and_rewrites_damaged_ones(ray_session, tmp_path):
    output = str(tmp_path / "ds")
    manifest = make_shards(small_config(output))
    first_spread = json.loads((tmp_path / "ds" / "make_shards_report.json").read_text())["spread"]
    assert first_spread["train"]["locations"]["total"] == 6
    victim = tmp_path / "ds" / manifest["shards"][0]["name"]
    victim.write_bytes(b"garbage")
    again = make_shards(small_config(output))
    report = json.loads((tmp_path / "ds" / "make_shards_report.json").read_text())
    assert report["parts_written"] == 1 and report["parts_skipped"] == len(plan_parts(small_config(output).synth)) - 1
    assert report["spread"] == first_spread  # skipped parts report the spread their records hold
    assert again == manifest
    victim.unlink()
    victim.mkdir()  # the part's shard cannot be published: its task raises, the others finish
    part = victim.name[len("shard-"):-len("-0000.tar")]
    with pytest.raises(shards.PartsFailed) as failed:
        make_shards(small_config(output))
    assert list(failed.value.failures) == [part] and failed.value.failures[part].startswith("IsADirectoryError: ")
    assert "\n" not in str(failed.value) and f"1 of {len(plan_parts(small_config(output).synth))} parts" in str(failed.value)


def test_writes_to_s3(ray_session, s3_bucket):
    url = s3_bucket + "/synth"
    manifest = make_shards(small_config(url, "synth.locations={train: 3}", "synth.modalities=[panorama, uav]"))
    assert manifest["num_samples"] == 6
    assert storage.exists(url + "/manifest.json") and storage.exists(url + "/config.yaml")
    assert len(list(shards.iter_samples(shards.shard_urls(url)))) == 6


def test_unknown_modality_is_refused(ray_session, tmp_path):
    with pytest.raises(ValueError, match="unknown; choose from"):
        make_shards(small_config(str(tmp_path), "synth.modalities=[sonar]"))


def test_splits_spread_over_regions_and_biomes():
    from gleam.data.make_shards import world_for

    config = load_config(MakeShardsConfig, "configs/make-shards-local.yaml").synth
    parts = plan_parts(config)
    for split, count in config.locations.items():
        mine = [p for p in parts if p.split == split and not p.distractors]
        assert sum(p.stop - p.start for p in mine) == count
        assert sorted({p.region for p in mine}) == [0, 1, 2, 3]
        assert all(p.stop - p.start <= config.locations_per_task for p in mine)
    distractors = [p for p in parts if p.distractors]
    assert {p.split for p in distractors} == {"val", "test"}
    assert sum(p.stop - p.start for p in distractors) == 2 * config.distractors
    assert [world_for(config, "val", r).biome.name for r in range(4)] == config.biomes


def test_full_region_spills_into_its_spill_region_and_the_report_says_where():
    """A region that cannot hold its share never ends the run: the rest comes from the part's
    spill region, deterministically, with unique ids; past both, a clear error."""
    from gleam.config import SynthConfig
    from gleam.data.make_shards import part_locations, plan_parts, spread_report, world_for

    small = dict(size_m=900.0, modalities=["streetmap"], regions_per_split=1, locations_per_task=1000,
                 biomes=["temperate"])
    probe = SynthConfig(locations={"train": 1}, **small)
    capacity = world_for(probe, "train", 0).capacity(1000)
    spill_capacity = world_for(probe, "train", 1).capacity(1000)
    assert 0 < capacity < 1000
    synth = SynthConfig(locations={"train": capacity + 5}, locations_per_region=capacity + 5, **small)
    (part,) = plan_parts(synth)
    assert part.region == 0 and part.spill_region == 1
    located = part_locations(synth, part)
    ids = [loc.location_id for _, loc in located]
    assert len(ids) == capacity + 5 == len(set(ids))
    worlds = [w.world_id for w, _ in located]
    assert worlds[:capacity] == [worlds[0]] * capacity and set(worlds[capacity:]) == {worlds[-1]} != {worlds[0]}
    assert [loc.location_id for _, loc in part_locations(synth, part)] == ids  # deterministic
    report = spread_report([{"split": "train", "spread": {w: worlds.count(w) for w in set(worlds)}}])
    assert report["train"]["locations"]["regions"] == 2 and report["train"]["locations"]["total"] == capacity + 5
    too_many = SynthConfig(locations={"train": capacity + spill_capacity + 3},
                           locations_per_region=capacity + spill_capacity + 3, **small)
    with pytest.raises(ValueError, match="lower synth.locations_per_region"):
        part_locations(too_many, plan_parts(too_many)[0])
