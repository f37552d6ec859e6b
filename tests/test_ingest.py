"""Real-dataset converters (gleam.data.ingest) on tiny fake trees with each release's exact layout.

Every tree is generated here (PIL images of a few pixels), converted through the real Ray path
and read back with gleam.data.shards.  Broken variants must fail up front with a LayoutError
naming the missing path, or skip and report the bad file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import load_script

from gleam import storage
from gleam.config import load_config
from gleam.data import shards
from gleam.data.ingest import IngestConfig, LayoutError, ingest, plan_dataset
from gleam.data.ingest.common import make_key
from gleam.data.ingest.cvact import latlon_to_utm, utm_to_latlon


# --------------------------------------------------------------------------- fake trees


def write_image(path, size=(16, 16), fmt=None) -> bytes:
    """A small image whose pixels depend on the path (distinct files, distinct bytes)."""
    seed = int(hashlib.sha1(str(path).encode()).hexdigest()[:8], 16)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt or ("PNG" if str(path).endswith(".png") else "JPEG"))
    with open(path, "rb") as handle:
        return handle.read()


def make_university(root) -> None:
    """train: 0001, 0002 (+ 0003 with drone images but no satellite); test: 0101, 0102 + distractor 0901."""
    for c in ("0001", "0002"):
        write_image(root / f"train/satellite/{c}/{c}.jpg")
        for i in (1, 2):
            write_image(root / f"train/drone/{c}/image-{i:02d}.jpeg")
        write_image(root / f"train/street/{c}/street_{c}.jpg")
    write_image(root / "train/google/0001/1.jpg")
    write_image(root / "train/drone/0003/image-01.jpeg")  # mismatched: no satellite class 0003
    (root / "train/drone/0002/image-03.jpeg").write_bytes(b"\xff\xd8 not really a jpeg")  # unreadable
    for c in ("0101", "0102"):
        for i in (1, 2):
            write_image(root / f"test/query_drone/{c}/image-{i:02d}.jpeg")
        write_image(root / f"test/query_satellite/{c}/{c}.jpg")
        write_image(root / f"test/gallery_drone/{c}/image-01.jpeg")
    write_image(root / "test/query_street/0101/s1.jpg")
    for c in ("0101", "0102", "0901"):
        write_image(root / f"test/gallery_satellite/{c}/{c}.jpg")


def make_vigor(root) -> dict:
    """Two cities; NewYork: 2 train panos + 1 test pano, Chicago: 1 train + 1 test; 4 tiles each."""
    cities = {"NewYork": (40.75, -73.99), "Chicago": (41.88, -87.63)}
    layout = {}
    for city, (lat0, lon0) in cities.items():
        tiles = [f"satellite_{lat0 + i * 0.001:.7f}_{lon0 - i * 0.001:.7f}.png" for i in range(4)]
        for tile in tiles:
            write_image(root / city / "satellite" / tile, size=(16, 16))
        panos = [f"pano-{city}_{i},{lat0 + i * 0.001 + 0.0001:.6f},{lon0 - i * 0.001:.6f},.jpg" for i in range(3)]
        for pano in panos:
            write_image(root / city / "panorama" / pano, size=(32, 16))
        lines = []
        for i, pano in enumerate(panos):
            semis = [tiles[(i + k) % 4] for k in (1, 2, 3)]
            lines.append(" ".join([pano, tiles[i], "1.5", "-2.0"] + [f"{t} {k}.0 {-k}.0" for k, t in enumerate(semis, 3)]))
        split_dir = root / "splits" / city
        split_dir.mkdir(parents=True)
        (split_dir / "same_area_balanced_train.txt").write_text("\n".join(lines[:2]) + "\n")
        (split_dir / "same_area_balanced_test.txt").write_text(lines[2] + "\n")
        (split_dir / "pano_label_balanced.txt").write_text("\n".join(lines) + "\n")
        layout[city] = {"tiles": tiles, "panos": panos}
    return layout


def make_cvusa(root) -> None:
    """5 train pairs (0000005 duplicates 0000001's bytes; one line with mismatched ids), 2 val pairs."""
    for i in range(1, 8):
        write_image(root / f"bingmap/19/{i:07d}.jpg")
        write_image(root / f"streetview/panos/{i:07d}.jpg", size=(32, 16) if i == 6 else (44, 8))  # 6: not 5.5:1
    shutil.copy(root / "bingmap/19/0000001.jpg", root / "bingmap/19/0000005.jpg")
    shutil.copy(root / "streetview/panos/0000001.jpg", root / "streetview/panos/0000005.jpg")
    line = "bingmap/19/{0}.jpg,streetview/panos/{1}.jpg,streetview/annotations/{0}.png"
    train = [line.format(f"{i:07d}", f"{i:07d}") for i in (1, 2, 3, 5)] + [line.format("0000004", "0000003")]
    (root / "splits").mkdir()
    (root / "splits/train-19zl.csv").write_text("\n".join(train) + "\n")
    (root / "splits/val-19zl.csv").write_text("\n".join(line.format(f"{i:07d}", f"{i:07d}") for i in (6, 7)) + "\n")
    (root / "all.csv").write_text("lat,lon,sat,pano\n"
                                  + "".join(f"{30 + i},{-90 - i},bingmap/19/{i:07d}.jpg,streetview/panos/{i:07d}.jpg\n"
                                            for i in range(1, 7)))


CVACT_POINTS = {"__-DFIFxvZBCn1873qkqXA": (-35.2809, 149.1300), "_0yQ4xtpTxC3-u2QR_9Rfg": (-35.30, 149.10),
                "zz9kLrWbyMSpCjMdRHC_2A": (-35.25, 149.15)}


def make_cvact(root, eval_key="valSet", utm_order="easting,northing") -> None:
    import scipy.io

    ids = list(CVACT_POINTS)
    eastings, northings = latlon_to_utm([p[0] for p in CVACT_POINTS.values()], [p[1] for p in CVACT_POINTS.values()], 55)
    utm = np.stack([eastings, northings] if utm_order == "easting,northing" else [northings, eastings], axis=1)
    root.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / "ACT_data.mat", {"panoIds": np.array(ids), "utm": utm,
                                             "trainSet": {"trainInd": np.array([[1], [2]])},
                                             eval_key: {"valInd": np.array([[3]])}})
    for pano_id in ids:
        write_image(root / f"ANU_data_small/streetview/{pano_id}_grdView.jpg", size=(32, 16))
        if pano_id != ids[1]:  # the second training panorama has no satellite image
            write_image(root / f"ANU_data_small/satview_polish/{pano_id}_satView_polish.jpg")


def config(dataset: str, root, output, *overrides: str) -> IngestConfig:
    return load_config(IngestConfig, None, [f"dataset={dataset}", f"root={root}", f"output={output}",
                                            "records_per_part=3", "shards.max_samples=4", *overrides])


def read_back(output) -> dict:
    samples = list(shards.iter_samples(shards.shard_urls(str(output))))
    keys = [s.key for s in samples]
    assert len(keys) == len(set(keys)), "duplicate keys"
    return {s.key: s for s in samples}


def report_of(output) -> dict:
    return storage.read_json(storage.join(str(output), "ingest_report.json"))


# --------------------------------------------------------------------------- University-1652


def test_university1652_pairs_gallery_skips_and_resume(ray_session, tmp_path):
    root, output = tmp_path / "University-Release", tmp_path / "out"
    make_university(root)
    report = ingest(config("university1652", root, output))
    assert report["counts"] == {"train": {"ground": 3, "uav": 4}, "test": {"ground": 1, "uav": 4},
                                "gallery": {"satellite": 3}}
    samples = read_back(output)
    assert len(samples) == report["num_samples"] == 15
    drone = samples["test-drone-0101-image-01"]
    assert drone.modality == "uav" and drone.split == "test" and drone.location_id == "university1652-0101"
    assert drone.satellite_image == (root / "test/gallery_satellite/0101/0101.jpg").read_bytes()
    assert drone.query_image == (root / "test/query_drone/0101/image-01.jpeg").read_bytes()
    train = samples["train-drone-0002-image-02"]
    assert train.satellite_image == (root / "train/satellite/0002/0002.jpg").read_bytes()
    google = samples["train-google-0001-1"]
    assert google.modality == "ground" and google.metadata["noisy"] is True
    distractor = samples["gallery-satellite-0901"]
    assert distractor.modality == "satellite" and distractor.query_image is None
    assert distractor.metadata["distractor"] is True and samples["gallery-satellite-0101"].metadata["distractor"] is False
    assert report["skipped_by_reason"] == {"mismatched_ids": 1, "unreadable_image": 1}
    unreadable = next(s for s in report["skipped"] if s["reason"] == "unreadable_image")
    assert unreadable["file"] == "train/drone/0002/image-03.jpeg" and "cannot decode" in unreadable["detail"]
    assert report["flags"]["distractors"]["value"] == "kept" and report["flags"]["distractors"]["distractor_classes"] == 1
    manifest = storage.read_json(str(output / "manifest.json"))
    assert manifest["dataset"] == "university1652"

    # resume: one shard lost -> only its part is rewritten, same manifest, skips still reported
    os.remove(output / manifest["shards"][0]["name"])
    again = ingest(config("university1652", root, output))
    assert again["parts_written"] == 1 and again["parts_skipped"] == again["parts"] - 1
    assert storage.read_json(str(output / "manifest.json")) == manifest
    assert again["skipped_by_reason"] == report["skipped_by_reason"]
    assert len(read_back(output)) == 15


def test_university1652_distractors_can_be_dropped_and_google_excluded(tmp_path):
    root = tmp_path / "u"
    make_university(root)
    plan = plan_dataset(config("university1652", root, tmp_path / "o", "university1652.keep_distractors=false",
                               "university1652.include_google=false"))
    gallery = [r for r in plan.records if r.split == "gallery"]
    assert sorted(r.metadata["class"] for r in gallery) == ["0101", "0102"]
    assert plan.flags["distractors"]["value"] == "dropped" and "not comparable" in plan.flags["distractors"]["note"]
    assert not any(r.metadata.get("view") == "google" for r in plan.records)


def test_university1652_missing_folder_names_it(tmp_path):
    root = tmp_path / "u"
    make_university(root)
    shutil.rmtree(root / "test/gallery_satellite")
    with pytest.raises(LayoutError, match=r"test/gallery_satellite/.*\n.*Expected layout") as caught:
        plan_dataset(config("university1652", root, tmp_path / "o"))
    assert "query_drone" in str(caught.value)  # the expected tree is drawn


def test_long_drone_names_ingest_and_a_failing_part_spares_the_others(ray_session, tmp_path, capsys):
    """A 90-character drone file name (a 115-character key) is written (PAX headers); a part
    whose Ray task raises is reported in one line by the job, after the other parts finished."""
    from gleam.runtime import run_job

    root, output = tmp_path / "University-Release", tmp_path / "out"
    make_university(root)
    long_name = "DJI_20230611_" + "0123456789" * 7 + "_W.jpeg"
    assert len(long_name) == 90
    write_image(root / "train/drone/0001" / long_name)
    blocked = output / "shard-test-uav-0000-0000.tar"
    blocked.mkdir(parents=True)  # a folder where that part's first shard must be published
    argv = ["dataset=university1652", f"root={root}", f"output={output}", "records_per_part=3"]
    assert run_job(IngestConfig, ingest, lambda c, r: r, argv, "ingest", errors=(ValueError, OSError)) == 1
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0 and "Traceback" not in message, message
    assert "1 of " in message and "test-uav-0000: IsADirectoryError" in message and "re-run" in message
    parts = [r["part"] for r in map(storage.read_json, map(str, output.glob("*.part.json")))]
    assert len(parts) >= 5 and "test-uav-0000" not in parts  # every other part finished
    blocked.rmdir()
    report = ingest(config("university1652", root, output))  # the re-run redoes only the failed part
    assert report["parts_written"] == 1 and report["counts"]["train"]["uav"] == 5
    key = make_key("train", "drone", "0001", long_name.rsplit(".", 1)[0])
    assert len(f"{key}.query.jpg") == 112 and read_back(output)[key].query_image == (root / "train/drone/0001" / long_name).read_bytes()


# --------------------------------------------------------------------------- VIGOR


def test_vigor_same_area_coordinates_semi_positives_gallery(ray_session, tmp_path):
    root, output = tmp_path / "VIGOR", tmp_path / "out"
    layout = make_vigor(root)
    (root / "NewYork/panorama" / layout["NewYork"]["panos"][0]).unlink()  # a label line names a missing pano
    write_image(root / "Chicago/panorama" / layout["Chicago"]["panos"][0], size=(30, 20))  # not 2:1
    report = ingest(config("vigor", root, output, "vigor.cities=[NewYork, Chicago]"))
    assert report["counts"] == {"train": {"panorama": 3}, "test": {"panorama": 2}, "gallery": {"satellite": 6}}
    assert report["skipped_by_reason"] == {"missing_file": 1}
    assert report["warnings_by_reason"] == {"aspect_ratio": 1}
    samples = read_back(output)
    test = [s for s in samples.values() if s.split == "test" and s.metadata["city"] == "Chicago"][0]
    pano, tile = layout["Chicago"]["panos"][2], layout["Chicago"]["tiles"][2]
    assert test.latitude == pytest.approx(float(pano.split(",")[1])) and test.longitude == pytest.approx(float(pano.split(",")[2]))
    assert test.satellite_image == (root / "Chicago/satellite" / tile).read_bytes()
    assert test.metadata["positive"]["dy"] == 1.5 and test.metadata["positive"]["dx"] == -2.0
    assert test.metadata["positive"]["latitude"] == pytest.approx(float(tile.split("_")[1]))
    semis = test.metadata["semi_positives"]
    assert [s["tile"] for s in semis] == [layout["Chicago"]["tiles"][k] for k in (3, 0, 1)]
    assert [(s["dy"], s["dx"]) for s in semis] == [(3.0, -3.0), (4.0, -4.0), (5.0, -5.0)]
    gallery_ids = {s.location_id for s in samples.values() if s.split == "gallery"}
    assert test.location_id not in gallery_ids  # positives of test panoramas are not repeated
    assert set(test.metadata["semi_positive_location_ids"]) <= gallery_ids | {test.location_id}
    assert all(s.query_image is None for s in samples.values() if s.split == "gallery")


def test_vigor_cross_area_and_broken_layouts(tmp_path):
    root = tmp_path / "VIGOR"
    make_vigor(root)
    plan = plan_dataset(config("vigor", root, tmp_path / "o", "vigor.protocol=cross_area",
                               "vigor.train_cities=[NewYork]", "vigor.test_cities=[Chicago]"))
    panos = [r for r in plan.records if r.modality == "panorama"]
    assert {(r.split, r.metadata["city"]) for r in panos} == {("train", "NewYork"), ("test", "Chicago")}
    assert len(panos) == 6
    assert {r.metadata["city"] for r in plan.records if r.split == "gallery"} == {"Chicago"}
    with open(root / "splits/Chicago/same_area_balanced_train.txt", "a") as handle:
        handle.write("only three fields\n")
    plan = plan_dataset(config("vigor", root, tmp_path / "o", "vigor.cities=[NewYork, Chicago]"))
    assert [s.reason for s in plan.skipped] == ["bad_line"] and ":3" in plan.skipped[0].file
    os.remove(root / "splits/NewYork/same_area_balanced_test.txt")
    with pytest.raises(LayoutError, match="splits/NewYork/same_area_balanced_test.txt"):
        plan_dataset(config("vigor", root, tmp_path / "o", "vigor.cities=[NewYork, Chicago]"))
    with pytest.raises(ValueError, match="unknown cities"):
        plan_dataset(config("vigor", root, tmp_path / "o", "vigor.cities=[Paris]"))


# --------------------------------------------------------------------------- CVUSA (root and output on S3)


def test_cvusa_on_s3_duplicates_mismatches_locations(ray_session, s3_bucket, tmp_path):
    local = tmp_path / "CVUSA"
    make_cvusa(local)
    fs, _ = storage.filesystem(s3_bucket)
    fs.put(str(local) + "/", s3_bucket[len("s3://"):] + "/CVUSA", recursive=True)
    root, output = s3_bucket + "/CVUSA", s3_bucket + "/cvusa-shards"
    report = ingest(config("cvusa", root, output, "cvusa.locations=all.csv"))
    assert report["counts"] == {"train": {"panorama": 3}, "test": {"panorama": 2}}
    assert report["duplicates_removed"] == 1
    assert report["duplicates"][0]["key"] == "train-0000005" and report["duplicates"][0]["duplicate_of"] == "train-0000001"
    assert report["skipped_by_reason"] == {"mismatched_ids": 1}
    assert report["warnings_by_reason"] == {"aspect_ratio": 1, "no_coordinates": 1}  # 0000007 is not in all.csv
    assert report["panorama_aspects"] == {"2": 1, "5.5": 4}
    assert next(w for w in report["warnings"] if w["reason"] == "aspect_ratio")["key"] == "test-0000006"
    samples = read_back(output)
    assert samples["train-0000002"].latitude == 32 and samples["train-0000002"].longitude == -92
    assert samples["train-0000002"].heading == 0.0 and samples["train-0000002"].metadata["coordinates_known"]
    assert samples["test-0000007"].metadata["coordinates_known"] is False
    assert samples["test-0000007"].metadata["panorama_aspect"] == 5.5 and samples["test-0000006"].metadata["panorama_aspect"] == 2
    assert samples["test-0000006"].query_image == (local / "streetview/panos/0000006.jpg").read_bytes()
    assert storage.exists(output + "/manifest.json") and storage.exists(output + "/config.yaml")


def test_cvusa_missing_split_file(tmp_path):
    root = tmp_path / "CVUSA"
    make_cvusa(root)
    os.remove(root / "splits/val-19zl.csv")
    with pytest.raises(LayoutError, match="splits/val-19zl.csv"):
        plan_dataset(config("cvusa", root, tmp_path / "o"))


# --------------------------------------------------------------------------- CVACT


def test_cvact_utm_splits_and_missing_images(ray_session, tmp_path):
    root, output = tmp_path / "CVACT", tmp_path / "out"
    make_cvact(root)
    report = ingest(config("cvact", root, output))
    assert report["counts"] == {"train": {"panorama": 1}, "test": {"panorama": 1}}
    assert report["skipped_by_reason"] == {"missing_file": 1}
    assert report["skipped"][0]["file"].endswith("_0yQ4xtpTxC3-u2QR_9Rfg_satView_polish.jpg")
    samples = read_back(output)
    for pano_id, split in (("__-DFIFxvZBCn1873qkqXA", "train"), ("zz9kLrWbyMSpCjMdRHC_2A", "test")):
        sample = samples[f"{split}-{pano_id}"]
        assert (sample.latitude, sample.longitude) == pytest.approx(CVACT_POINTS[pano_id], abs=1e-7)
        assert sample.satellite_image == (root / f"ANU_data_small/satview_polish/{pano_id}_satView_polish.jpg").read_bytes()
    assert report["flags"]["utm"]["columns"] == "easting,northing"


def test_cvact_variants_and_broken_files(tmp_path):
    root = tmp_path / "CVACT"
    make_cvact(root, eval_key="valSetAll", utm_order="northing,easting")
    plan = plan_dataset(config("cvact", root, tmp_path / "o"))
    assert plan.flags["eval_set"]["value"] == "valSetAll" and plan.flags["utm"]["columns"] == "northing,easting"
    test = [r for r in plan.records if r.split == "test"][0]
    assert (test.latitude, test.longitude) == pytest.approx(CVACT_POINTS["zz9kLrWbyMSpCjMdRHC_2A"], abs=1e-7)
    os.remove(root / "ACT_data.mat")
    with pytest.raises(LayoutError, match="ACT_data.mat") as caught:
        plan_dataset(config("cvact", root, tmp_path / "o"))
    assert "Liu & Li" in str(caught.value)
    (root / "ACT_data.mat").write_bytes(b"MATLAB 5.0 but broken")
    with pytest.raises(ValueError, match="not a readable MATLAB"):
        plan_dataset(config("cvact", root, tmp_path / "o"))


def test_utm_conversion_matches_the_meridian_arc_and_round_trips():
    # On the central meridian the UTM northing is k0 times the meridian arc length: integrate it.
    a, f = 6378137.0, 1 / 298.257223563
    e2 = f * (2 - f)
    phi = np.linspace(0.0, np.radians(45.0), 100_001)
    arc = np.trapezoid(a * (1 - e2) / (1 - e2 * np.sin(phi) ** 2) ** 1.5, phi)
    easting, northing = latlon_to_utm(45.0, 3.0, 31)
    assert easting == pytest.approx(500_000.0, abs=1e-6) and northing == pytest.approx(0.9996 * arc, abs=1e-3)
    lat, lon = utm_to_latlon(*latlon_to_utm(-35.2809, 149.13, 55), 55, True)
    assert (lat, lon) == pytest.approx((-35.2809, 149.13), abs=1e-8)
    lat, lon = utm_to_latlon(*latlon_to_utm(-33.0, 144.5, 55), 55, True)  # near the zone edge
    assert (lat, lon) == pytest.approx((-33.0, 144.5), abs=1e-8)


# --------------------------------------------------------------------------- generic manifest + job


def test_manifest_csv_through_the_job_entry_point(ray_session, tmp_path, capsys):
    root, output = tmp_path / "pairs", tmp_path / "out"
    write_image(root / "photos/a.jpg")
    write_image(root / "maps/a.png")
    write_image(root / "tiles/a.png")
    absolute_tile = tmp_path / "elsewhere/b.jpg"
    write_image(absolute_tile)
    write_image(root / "photos/c.bmp", fmt="BMP")  # not JPEG/PNG: re-encoded
    (root / "manifest.csv").write_text(
        "query,satellite,modality,lat,lon,heading,split\n"
        "photos/a.jpg,tiles/a.png,ground,47.37,8.54,90,train\n"
        "maps/a.png,tiles/a.png,streetmap,47.37,8.54,,train\n"
        f",{absolute_tile},satellite,47.38,8.55,,gallery\n"
        "photos/c.bmp,tiles/a.png,ground,47.37,8.54,,test\n"
        "photos/a.jpg,tiles/a.png,sonar,47.37,8.54,,train\n"
        "photos/missing.jpg,tiles/a.png,ground,47.37,8.54,,train\n"
        "photos/a.jpg,tiles/a.png,ground,147.37,8.54,,val\n")
    job = load_script("jobs/ingest.py", "ingest_job")
    from gleam.runtime import run_job

    rc = run_job(IngestConfig, ingest, job.summarize, ["dataset=manifest", f"root={root}", f"output={output}"], job.__doc__)
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"] == {"train": {"ground": 1, "streetmap": 1}, "test": {"ground": 1},
                                 "gallery": {"satellite": 1}}
    assert summary["skipped_by_reason"] == {"bad_coordinates": 1, "bad_value": 1, "missing_file": 1}
    samples = read_back(output)
    ground = samples["train-ground-000001"]
    assert ground.heading == 90.0 and ground.query_image == (root / "photos/a.jpg").read_bytes()
    assert ground.location_id == samples["train-streetmap-000002"].location_id
    reencoded = samples["test-ground-000004"]
    # re-encoded losslessly: the stored pixels are the decoded BMP's
    assert reencoded.metadata["reencoded"] and Image.open(io.BytesIO(reencoded.query_image)).format == "PNG"
    assert np.array_equal(reencoded.query_array(), np.asarray(Image.open(root / "photos/c.bmp").convert("RGB")))
    assert samples["gallery-satellite-000003"].satellite_image == absolute_tile.read_bytes()
    assert run_job(IngestConfig, ingest, job.summarize, ["dataset=manifest", f"root={tmp_path / 'nothing'}",
                                                         f"output={output}"], job.__doc__) == 1
    assert "manifest.csv or manifest.parquet" in capsys.readouterr().err


def test_manifest_parquet_and_missing_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_image(tmp_path / "q.jpg")
    write_image(tmp_path / "s.jpg")
    pq.write_table(pa.table({"query_path": ["q.jpg"], "sat": ["s.jpg"], "modality": ["uav"], "latitude": [1.0],
                             "longitude": [2.0], "split": ["val"], "key": ["my.key"]}), tmp_path / "m.parquet")
    plan = plan_dataset(config("manifest", tmp_path / "m.parquet", tmp_path / "o"))
    assert [(r.split, r.modality, r.heading) for r in plan.records] == [("val", "uav", None)]
    assert plan.records[0].key.startswith("my_key-")  # sanitised: no dots in keys
    (tmp_path / "bad.csv").write_text("query,satellite,split\nq.jpg,s.jpg,train\n")
    with pytest.raises(LayoutError, match=r"column\(s\) \['modality', 'latitude', 'longitude'\]"):
        plan_dataset(config("manifest", tmp_path / "bad.csv", tmp_path / "o"))


def test_a_run_that_keeps_nothing_fails_publishes_nothing_and_says_what_the_rows_share(tmp_path):
    from gleam.rejections import RejectedRunError

    root, output = tmp_path / "pairs", tmp_path / "out"
    write_image(root / "q.jpg")
    write_image(root / "s.jpg")
    rows = [("39.90", "116.40"), ("40.00", "116.30"), ("31.20", "121.50")]  # Beijing, Shanghai: (lat, lon)
    (root / "manifest.csv").write_text("query,satellite,modality,latitude,longitude,split\n" + "".join(
        f"q.jpg,s.jpg,uav,{lon},{lat},train\n" for lat, lon in rows))  # the columns swapped
    output.mkdir()
    (output / "manifest.json").write_text("{}")  # an earlier run's dataset
    with pytest.raises(RejectedRunError) as caught:
        ingest(config("manifest", root, output))
    message = str(caught.value)
    assert "kept none of 3 rows, so nothing was published" in message
    assert "3 x bad_coordinates" in message and "latitude and longitude swapped" in message
    assert caught.value.report["rejected_by_reason"]["bad_coordinates"]["count"] == 3
    assert not (output / "manifest.json").exists()  # the folder no longer claims to be a dataset
    # all files missing: the hint names root
    (root / "manifest.csv").write_text("query,satellite,modality,latitude,longitude,split\n"
                                       "nope/q.jpg,nope/s.jpg,uav,39.9,116.4,train\n")
    with pytest.raises(RejectedRunError, match="is root the folder the file names are relative to"):
        ingest(config("manifest", root, output))
    with pytest.raises(ValueError, match="max_rejected_fraction=2"):
        plan_dataset(config("manifest", root, output, "max_rejected_fraction=2"))


def test_coordinates_in_radians_are_flagged_and_an_empty_dataset_is_never_published(tmp_path):
    from gleam.data.ingest.common import PairRecord, coordinate_problem, coordinate_warnings

    def record(lat, lon):
        return PairRecord(key=f"k{lat}", location_id="l", split="train", modality="uav", satellite="s",
                          query="q", latitude=lat, longitude=lon)

    warning = coordinate_warnings([record(0.6964, 2.0316), record(0.5445, 2.1206)])  # Beijing, Shanghai in radians
    assert len(warning) == 1 and warning[0].reason == "coordinates_in_radians" and "180/pi" in warning[0].detail
    assert coordinate_warnings([record(39.9, 116.4), record(0.5, 1.0)]) == []
    assert "valid when swapped" in coordinate_problem(116.4, 39.9)
    assert "swapped" not in coordinate_problem(200.0, 39.9)
    with pytest.raises(shards.EmptyDatasetError, match="no samples were written"):
        shards.write_manifest(str(tmp_path), [], dataset="empty")
    assert not (tmp_path / "manifest.json").exists()


def test_cvact_utm_stored_transposed_is_read_column_wise_and_other_shapes_refused(tmp_path):
    import scipy.io

    root = tmp_path / "CVACT"
    make_cvact(root)
    mat = scipy.io.loadmat(root / "ACT_data.mat")
    scipy.io.savemat(root / "ACT_data.mat", {**{k: v for k, v in mat.items() if not k.startswith("__")},
                                             "utm": mat["utm"].T})  # [2, N], as MATLAB may store it
    plan = plan_dataset(config("cvact", root, tmp_path / "o"))
    test = [r for r in plan.records if r.split == "test"][0]
    assert (test.latitude, test.longitude) == pytest.approx(CVACT_POINTS["zz9kLrWbyMSpCjMdRHC_2A"], abs=1e-7)
    assert plan.flags["utm"]["transposed"] is True
    scipy.io.savemat(root / "ACT_data.mat", {**{k: v for k, v in mat.items() if not k.startswith("__")},
                                             "utm": mat["utm"].reshape(-1)[:4].reshape(2, 2)})
    with pytest.raises(ValueError, match=r"utm has shape \[2, 2\], but panoIds has 3 entries"):
        plan_dataset(config("cvact", root, tmp_path / "o"))


def test_make_key_is_schema_safe_and_injective():
    assert make_key("train", "drone", "0001", "image-01") == "train-drone-0001-image-01"
    a, b = make_key("satellite_40.1_-73.2"), make_key("satellite_40_1_-73_2")
    assert a != b and "." not in a
    with pytest.raises(ValueError, match="choose one of"):
        plan_dataset(config("kitti", "/x", "/y"))


def test_prepare_image_keeps_jpeg_png_bytes_and_resizes_on_request(tmp_path):
    from gleam.data.ingest.common import ImageProblem, prepare_image

    png = write_image(tmp_path / "a.png", size=(64, 32))
    kept = prepare_image(png)
    assert kept.data == png and (kept.width, kept.height) == (64, 32) and not kept.reencoded
    small = prepare_image(png, max_side=16)
    assert small.reencoded and (small.width, small.height) == (16, 8)
    assert Image.open(io.BytesIO(small.data)).format == "JPEG"
    truncated = write_image(tmp_path / "b.jpg", size=(64, 64))[:200]
    with pytest.raises(ImageProblem, match="cannot decode"):
        prepare_image(truncated)
