"""Shard writer/reader: size bounds, manifest, corruption handling, resumability, S3."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile

import pytest

from gleam import storage
from gleam.config import ShardConfig
from gleam.data import shards
from gleam.data.shards import ReadReport, iter_samples, write_manifest, write_part
from samples import make_sample

PARTS = 6
PER_PART = 5


def part_samples(part: int, kill_after: int | None = None):
    for i in range(PER_PART):
        if kill_after is not None and i == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # die mid-shard, like a preempted node
        yield make_sample(part * PER_PART + i)


def write_demo(output: str, kill_part: int | None = None, max_samples: int = 3):
    """Write PARTS parts; with ``kill_part`` the process is SIGKILLed inside that part."""
    config = ShardConfig(max_samples=max_samples)
    records = []
    for part in range(PARTS):
        kill_after = 2 if part == kill_part else None
        records.append(write_part(output, f"p{part:02d}", lambda p=part, k=kill_after: part_samples(p, k), config))
    return records, write_manifest(output, records, dataset="demo")


def test_round_trip_manifest_and_size_bound(tmp_path):
    records, manifest = write_demo(str(tmp_path))
    assert manifest["num_samples"] == PARTS * PER_PART
    assert manifest["num_shards"] == PARTS * 2  # 5 samples per part, at most 3 per shard
    assert max(s["samples"] for s in manifest["shards"]) == 3
    assert sum(manifest["modalities"].values()) == PARTS * PER_PART
    assert manifest["modalities"]["uav"] == len([i for i in range(30) if i % 4 == 0])
    for shard in manifest["shards"]:
        assert storage.sha256_of(str(tmp_path / shard["name"])) == shard["sha256"]
    report = ReadReport()
    read = list(iter_samples(shards.shard_urls(str(tmp_path)), report))
    assert read == [make_sample(i) for i in range(PARTS * PER_PART)]
    assert report.samples == 30 and report.corrupt == []


def test_byte_bound_closes_shards(tmp_path):
    samples = [make_sample(i) for i in range(6)]
    sizes = [shards.archived_size(shards.encode_members(s)) for s in samples]
    limit = sizes[0] + sizes[1]  # room for two samples of this size, not three
    infos = shards.write_shards(samples, str(tmp_path), "p0", ShardConfig(max_samples=1000, max_bytes=limit))
    assert sum(i.samples for i in infos) == 6 and len(infos) >= 3
    first = 0
    for info in infos:
        with tarfile.open(tmp_path / info.name) as tar:
            content = sum(tarfile.BLOCKSIZE + -(-m.size // 512) * 512 for m in tar.getmembers())
        assert content == sum(sizes[first:first + info.samples]) <= limit
        first += info.samples
        if first < 6:  # the shard closed only because the next sample would not fit
            assert content + sizes[first] > limit


def test_split_and_modality_selection_uses_the_manifest(tmp_path):
    config = ShardConfig(max_samples=2)
    records = [write_part(str(tmp_path), "a", lambda: [make_sample(0, "uav", "train"), make_sample(1, "uav", "train")], config),
               write_part(str(tmp_path), "b", lambda: [make_sample(2, "panorama", "test")], config)]
    write_manifest(str(tmp_path), records, dataset="sel")
    assert [u.rsplit("/", 1)[-1] for u in shards.shard_urls(str(tmp_path), split="test")] == ["shard-b-0000.tar"]
    assert len(shards.shard_urls(str(tmp_path), modalities=["uav"])) == 1
    assert shards.shard_urls(str(tmp_path), split="val") == []


def test_resume_after_kill_gives_the_same_manifest(tmp_path):
    interrupted, clean = str(tmp_path / "interrupted"), str(tmp_path / "clean")
    here = os.path.dirname(__file__)
    code = f"import sys; sys.path.insert(0, {here!r}); from test_shards import write_demo; write_demo({interrupted!r}, kill_part=3)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert result.returncode == -signal.SIGKILL
    leftovers = os.listdir(interrupted)
    assert any(".tmp-" in name for name in leftovers)  # the shard being written was not published
    assert "shard-p03.part.json" not in leftovers and "manifest.json" not in leftovers

    records, manifest = write_demo(interrupted)
    assert [r.skipped for r in records] == [True, True, True, False, False, False]
    _, reference = write_demo(clean)
    assert manifest == reference
    assert not any(".tmp-" in name for name in os.listdir(interrupted))


def test_resume_rewrites_a_part_whose_shard_was_damaged(tmp_path):
    records, manifest = write_demo(str(tmp_path))
    victim = tmp_path / records[1].shards[0].name
    victim.write_bytes(victim.read_bytes()[:100])
    again, manifest_again = write_demo(str(tmp_path))
    assert [r.skipped for r in again] == [True, False, True, True, True, True]
    assert manifest_again == manifest


def test_a_skipped_part_returns_its_recorded_details_without_regenerating(tmp_path):
    calls = []

    def samples():
        calls.append("samples")
        return [make_sample(0, "uav", "train")]

    config = ShardConfig(max_samples=2)
    first = write_part(str(tmp_path), "a", samples, config, details=lambda: {"spread": {"w1": len(calls)}})
    again = write_part(str(tmp_path), "a", samples, config, details=lambda: {"spread": {"never": 0}})
    assert not first.skipped and again.skipped and calls == ["samples"]
    assert first.details == again.details == {"spread": {"w1": 1}}


# --------------------------------------------------------------------------- corruption


def build_corrupt_shard(path: str) -> dict[str, int]:
    """10 samples: #2 bad query jpg, #5 bad json, #7 no satellite member -> 7 good."""
    with tarfile.open(path, "w") as tar:
        for index in range(10):
            members = shards.encode_members(make_sample(index))
            if index == 2:
                members["query.jpg"] = b"\xff\xd8 definitely not a jpeg"
            if index == 5:
                members["json"] = b'{"location_id": "x", '
            if index == 7:
                del members["sat.jpg"]
            for extension, data in sorted(members.items()):
                info = tarfile.TarInfo(f"{make_sample(index).key}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return {"query_image": 1, "json": 1, "satellite_image": 1}


def build_truncated_shard(path: str, source_dir: str) -> int:
    """A valid 10-sample shard cut inside the header of sample #6: 6 samples stay readable."""
    infos = shards.write_shards((make_sample(i) for i in range(10)), source_dir, "t",
                                ShardConfig(max_samples=100))
    full = os.path.join(source_dir, infos[0].name)
    with tarfile.open(full) as tar:
        cut = next(m.offset for m in tar.getmembers() if m.name.startswith(make_sample(6).key)) + 100
    with open(full, "rb") as handle:
        data = handle.read()[:cut]
    with open(path, "wb") as handle:
        handle.write(data)
    return 6


def test_corrupt_members_are_skipped_and_counted(tmp_path):
    expected = build_corrupt_shard(str(tmp_path / "bad.tar"))
    report = ReadReport()
    good = list(iter_samples([str(tmp_path / "bad.tar")], report))
    assert [s.location_id for s in good] == [f"loc{i:05d}" for i in (0, 1, 3, 4, 6, 8, 9)]
    assert report.counts_by_field() == expected
    assert {c.key for c in report.corrupt} == {make_sample(i).key for i in (2, 5, 7)}


def test_truncated_tar_keeps_what_precedes_the_damage(tmp_path):
    readable = build_truncated_shard(str(tmp_path / "cut.tar"), str(tmp_path / "src"))
    report = ReadReport()
    good = list(iter_samples([str(tmp_path / "cut.tar")], report))
    assert len(good) == readable and report.counts_by_field() == {"tar": 1}
    assert "truncated" in report.corrupt[0].reason


def test_repeated_members_and_keys_are_counted_corrupt(tmp_path):
    """k1.sat.jpg twice: which copy is the sample's is unknown; a key whose members come back
    after another key's is a second sample with the same key. Both are skipped and reported."""
    path = str(tmp_path / "repeated.tar")
    one, two, three, four = (make_sample(i) for i in range(4))
    order = [(one, "json"), (one, "query.jpg"), (one, "sat.jpg"), (one, "sat.jpg"),  # repeated member
             (two, "json"), (two, "query.jpg"), (two, "sat.jpg"),
             (three, "json"), (three, "query.jpg"), (three, "sat.jpg"),
             (four, "json"), (four, "query.jpg"), (four, "sat.jpg"),
             (three, "json"), (three, "query.jpg"), (three, "sat.jpg")]  # key three again
    with tarfile.open(path, "w") as tar:
        for sample, extension in order:
            data = shards.encode_members(sample)[extension]
            tar.addfile(shards.member_info(sample.key, extension, len(data)), io.BytesIO(data))
    report = ReadReport()
    good = list(iter_samples([path], report))
    assert good == [two, three, four]
    assert [(c.key, c.field) for c in report.corrupt] == [(one.key, "tar_member"), (three.key, "tar_member")]
    assert f"{one.key}.sat.jpg" in report.corrupt[0].reason and "again" in report.corrupt[1].reason


def test_any_schema_key_is_written_with_pax_headers(tmp_path):
    """USTAR holds 100 bytes of name without a '/'; PAX holds any key the schema accepts, and a
    short name keeps the plain 512-byte header (shards written before stay byte-identical)."""
    long_sample, short_sample = make_sample(0), make_sample(1)
    long_sample.key = "train-drone-0001-" + "x" * 90 + "/and-a-folder-" + "y" * 120  # 241 characters
    infos = shards.write_shards([long_sample, short_sample], str(tmp_path), "p0", ShardConfig())
    report = ReadReport()
    assert list(iter_samples([str(tmp_path / infos[0].name)], report)) == [long_sample, short_sample]
    assert report.corrupt == []
    members = [shards.encode_members(s) for s in (long_sample, short_sample)]
    content = sum(shards.archived_size(m, s.key) for m, s in zip(members, (long_sample, short_sample)))
    assert shards.archived_size(members[0], long_sample.key) > shards.archived_size(members[0])  # extended headers
    assert infos[0].bytes == -(-(content + 2 * tarfile.BLOCKSIZE) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE
    short_info = shards.member_info(short_sample.key, "json", 10)
    assert short_info.tobuf(tarfile.PAX_FORMAT) == short_info.tobuf(tarfile.USTAR_FORMAT)


# --------------------------------------------------------------------------- S3


def test_write_and_resume_on_s3(s3_bucket):
    url = s3_bucket + "/datasets/demo"
    records, manifest = write_demo(url)
    assert all(not r.skipped for r in records)
    assert len(storage.list_files(url, ".tar")) == manifest["num_shards"]
    records_again, manifest_again = write_demo(url)
    assert all(r.skipped for r in records_again) and manifest_again == manifest
    read = list(iter_samples(shards.shard_urls(url)))
    assert read == [make_sample(i) for i in range(PARTS * PER_PART)]
