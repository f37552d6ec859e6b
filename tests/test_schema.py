"""The sample schema: validation messages and the WebDataset member encoding."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from gleam.data import schema
from gleam.data.schema import Sample, SampleError, decode_members, encode_members, validate
from samples import make_sample


def test_members_round_trip_every_field():
    for index, modality in enumerate(["uav", "streetmap", "panorama", "ground"]):
        sample = make_sample(index, modality)
        members = encode_members(sample)
        assert set(members) == {"query.jpg", "sat.jpg", "json"}
        assert decode_members(sample.key, members) == sample


def test_satellite_distractor_has_no_query_member():
    tile = make_sample(9, "satellite", split="gallery")
    members = encode_members(tile)
    assert set(members) == {"sat.jpg", "json"}
    assert decode_members(tile.key, members) == tile
    assert decode_members(tile.key, members).query_array() is None


def test_images_decode_to_arrays():
    sample = make_sample(2, "panorama", size=16)
    assert sample.query_array().shape == (16, 32, 3) and sample.query_array().dtype == np.uint8
    assert sample.satellite_array().shape == (16, 16, 3)


@pytest.mark.parametrize("change, field, reason", [
    ({"key": "a.b"}, "key", "without dots"),
    ({"modality": "sonar"}, "modality", "register_modality"),
    ({"split": "dev"}, "split", "not one of"),
    ({"latitude": 91.0}, "latitude", "[-90, 90]"),
    ({"longitude": float("nan")}, "longitude", "finite"),
    ({"heading": 360.0}, "heading", "[0, 360)"),
    ({"query_image": None}, "query_image", "missing for modality"),
    ({"satellite_image": b""}, "satellite_image", "missing"),
    ({"metadata": []}, "metadata", "JSON object"),
    ({"source": ""}, "source", "source dataset"),
])
def test_bad_fields_are_rejected_with_field_and_reason(change, field, reason):
    bad = dataclasses.replace(make_sample(1, "uav"), **change)
    with pytest.raises(SampleError) as error:
        validate(bad)
    assert error.value.field == field and reason in error.value.reason
    assert f"field '{field}'" in str(error.value)


def test_registered_modality_is_accepted(monkeypatch):
    monkeypatch.setattr(schema, "_MODALITIES", set(schema._MODALITIES))  # the registration stays in this test
    schema.register_modality("thermal")
    assert "thermal" in schema.query_modalities()
    validate(dataclasses.replace(make_sample(1), modality="thermal"))
    with pytest.raises(ValueError, match="lowercase"):
        schema.register_modality("Bad Name")


def test_decode_reports_broken_members():
    sample = make_sample(3, "uav")
    members = encode_members(sample)
    with pytest.raises(SampleError, match="field 'query_image'.*cannot be decoded"):
        decode_members(sample.key, {**members, "query.jpg": b"not a jpeg"})
    with pytest.raises(SampleError, match="field 'json'.*not valid JSON"):
        decode_members(sample.key, {**members, "json": b"{broken"})
    with pytest.raises(SampleError, match="field 'satellite_image'.*missing"):
        decode_members(sample.key, {k: v for k, v in members.items() if k != "sat.jpg"})
    record = json.loads(members["json"])
    del record["latitude"]
    with pytest.raises(SampleError, match="field 'latitude'.*missing"):
        decode_members(sample.key, {**members, "json": json.dumps(record).encode()})
