"""Ray Data reading of shards: decoded validated rows, local and S3, corrupt samples counted."""

from __future__ import annotations

import json
import os

import numpy as np

from gleam.data.pipeline import read_samples
from samples import make_sample
from test_shards import PARTS, PER_PART, build_corrupt_shard, build_truncated_shard, write_demo


def check_rows_match_samples(rows):
    by_key = {row["key"]: row for row in rows}
    assert len(by_key) == len(rows) == PARTS * PER_PART
    for index in range(PARTS * PER_PART):
        sample = make_sample(index)
        row = by_key[sample.key]
        assert row["location_id"] == sample.location_id and row["modality"] == sample.modality
        assert row["split"] == sample.split and row["source"] == sample.source
        assert row["latitude"] == sample.latitude and row["longitude"] == sample.longitude
        assert row["heading"] == sample.heading
        assert json.loads(row["metadata"]) == sample.metadata
        np.testing.assert_array_equal(row["query"], sample.query_array())
        np.testing.assert_array_equal(row["satellite"], sample.satellite_array())


def test_read_local_dataset(ray_session, tmp_path):
    write_demo(str(tmp_path))
    reader = read_samples(str(tmp_path))
    check_rows_match_samples(reader.dataset.take_all())
    report = reader.report()
    assert report["samples"] == 30 and report["corrupt"] == 0 and report["shards_read"] == 12


def test_read_s3_dataset_with_selection(ray_session, s3_bucket):
    url = s3_bucket + "/ds"
    write_demo(url)
    check_rows_match_samples(read_samples(url).dataset.take_all())
    panoramas = read_samples(url, modalities=["panorama"]).dataset.take_all()
    assert sorted(r["key"] for r in panoramas) == sorted(
        make_sample(i).key for i in range(30) if make_sample(i).modality == "panorama")
    assert all(r["query"].shape == (32, 64, 3) for r in panoramas)


def test_corrupt_and_truncated_shards_are_counted_not_fatal(ray_session, tmp_path):
    expected = build_corrupt_shard(str(tmp_path / "bad.tar"))
    readable = build_truncated_shard(str(tmp_path / "cut.tar"), str(tmp_path / "src"))
    reader = read_samples([str(tmp_path / "bad.tar"), str(tmp_path / "cut.tar")])
    rows = reader.dataset.take_all()
    assert len(rows) == 7 + readable
    report = reader.report()
    assert report["samples"] == 7 + readable and report["shards_read"] == 2
    assert report["corrupt_by_field"] == {**expected, "tar": 1}
    assert {c["shard"].rsplit("/", 1)[-1] for c in report["corrupt_samples"]} == {"bad.tar", "cut.tar"}


def test_encoded_rows_when_decode_is_off(ray_session, tmp_path):
    write_demo(str(tmp_path))
    row = read_samples(str(tmp_path), decode=False).dataset.take(1)[0]
    assert isinstance(row["query"], bytes) and row["query"][:2] == b"\xff\xd8"


def test_training_set_fetches_resized_pixels_by_row(ray_session, tmp_path):
    from gleam.data.pipeline import build_training_set

    write_demo(str(tmp_path))
    sizes = {"uav": (16, 16), "streetmap": (16, 16), "ground": (16, 16), "panorama": (16, 40)}
    training = build_training_set(str(tmp_path), split="train", modalities=None, sizes=sizes,
                                  satellite_size=(24, 24))
    assert len(training) == PARTS * PER_PART and training.read_report["corrupt"] == 0
    rows = [len(training) - 1, 0, 7]
    for item, row in zip(training.fetch(rows), rows):
        sample = make_sample(int(training.keys[row][3:8]))
        assert item["key"] == sample.key and item["modality"] == sample.modality
        assert item["query"].shape == sizes[sample.modality] + (3,)
        assert item["satellite"].shape == (24, 24, 3)
        from gleam.data.transforms import resize
        np.testing.assert_array_equal(item["satellite"], resize(sample.satellite_array(), (24, 24)))
    assert list(training.gallery_rows()) == sorted(training.gallery_rows())
    assert len(training.gallery_rows()) == len(set(training.location_ids))


def test_samples_without_coordinates_get_nan_not_a_fake_place():
    """Sources without coordinates write 0/0 with metadata.coordinates_known=false (the schema
    needs numbers); rows turn that into NaN so no metric or map takes 0/0 for a place."""
    import math

    from gleam.data.pipeline import sample_to_row

    sample = make_sample(1)
    assert sample_to_row(sample, decode=False)["latitude"] == sample.latitude
    sample.metadata = {"coordinates_known": False}
    row = sample_to_row(sample, decode=False)
    assert math.isnan(row["latitude"]) and math.isnan(row["longitude"])
