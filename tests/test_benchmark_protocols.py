"""Benchmark-defined galleries and queries (gleam.data.benchmark) on fake trees of each public layout.

Each converter records its protocol in the plan (then the manifest); the evaluation's row
selection (``TrainingSet.query_rows`` / ``gallery_rows`` / ``reverse_gallery_rows`` /
``reverse_query_mask`` / ``semi_positives``) is applied to the planned records, and the counts
must be what the layout implies.  One end-to-end run (Ray) ingests a VIGOR tree and evaluates a
tiny checkpoint through ``jobs/evaluate_core.py``: the benchmark's gallery, hit rate, counts.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from gleam.data.benchmark import EvaluationProtocol, default_protocol
from gleam.data.ingest import plan_dataset
from gleam.data.ingest.vigor import tile_location_id
from gleam.data.pipeline import TrainingSet
from gleam.config import load_config
from conftest import load_script
from test_ingest import config, make_cvact, make_cvusa, make_university, make_vigor, write_image


def selection(plan, split: str = "test", distractors: bool = True) -> TrainingSet:
    """The evaluation's view of a plan: a TrainingSet holding the records' index columns only."""
    records = plan.records
    columns = {"key": [r.key for r in records], "location_id": [r.location_id for r in records],
               "modality": [r.modality for r in records], "latitude": [r.latitude for r in records],
               "longitude": [r.longitude for r in records], "split": [r.split for r in records],
               "semi_positive_ids": [json.dumps(r.metadata.get("semi_positive_location_ids", [])) for r in records]}
    protocol = EvaluationProtocol.from_json(plan.evaluation[split]) if split in plan.evaluation else default_protocol(split)
    return TrainingSet([], columns, np.zeros(len(records), np.int64), np.arange(len(records)), (8, 8), {},
                       protocol=protocol, distractors=distractors)


def counts(dataset: TrainingSet) -> dict:
    queries, gallery = dataset.query_rows(), dataset.gallery_rows()
    mask = dataset.reverse_query_mask(gallery)
    reverse_gallery = dataset.reverse_gallery_rows()
    by = lambda rows: {m: sum(dataset.modalities[r] == m for r in rows) for m in sorted({dataset.modalities[r] for r in rows})}
    return {"queries": by(queries), "gallery": len(gallery),
            "reverse_queries": len(gallery) if mask is None else int(mask.sum()),
            "reverse_gallery": by(reverse_gallery)}


def test_university1652_gallery_includes_distractors_and_satellite_to_drone_gallery(tmp_path):
    root = tmp_path / "University-Release"
    make_university(root)  # test: 0101, 0102 (2 drone each, 1 street) + distractor 0901; gallery_drone = query images
    write_image(root / "test/gallery_drone/0901/image-01.jpeg")  # a distractor class's drone views
    write_image(root / "test/gallery_drone/0901/image-02.jpeg")
    plan = plan_dataset(config("university1652", root, tmp_path / "o"))
    dataset = selection(plan)
    assert counts(dataset) == {"queries": {"ground": 1, "uav": 4}, "gallery": 3, "reverse_queries": 2,
                               "reverse_gallery": {"ground": 1, "uav": 6}}
    gallery_ids = {dataset.location_ids[r] for r in dataset.gallery_rows()}
    assert "university1652-0901" in gallery_ids  # the distractor class, present only in the gallery split
    protocol = plan.evaluation["test"]
    assert protocol["official"]["uav->satellite"] == {"queries": 37855, "gallery": 951}
    assert protocol["official"]["satellite->uav"] == {"queries": 701, "gallery": 51355}
    assert plan.flags["reverse_gallery"]["images"] == {"uav": 2}  # query images are not written twice
    # without distractors: the 0901 tile and its drone images are gone
    dropped = selection(plan_dataset(config("university1652", root, tmp_path / "o",
                                            "university1652.keep_distractors=false")))
    assert counts(dropped)["gallery"] == 2 and counts(dropped)["reverse_gallery"] == {"ground": 1, "uav": 4}
    # evaluate_core distractors=false on the official ingest keeps only tiles of queried classes
    assert counts(selection(plan, distractors=False))["gallery"] == 2


def test_vigor_gallery_is_every_tile_of_the_evaluation_cities_with_semi_positives(tmp_path):
    root = tmp_path / "VIGOR"
    layout = make_vigor(root)  # 2 cities x (4 tiles, 2 train + 1 test panorama)
    plan = plan_dataset(config("vigor", root, tmp_path / "o", "vigor.cities=[NewYork, Chicago]"))
    dataset = selection(plan)
    assert counts(dataset) == {"queries": {"panorama": 2}, "gallery": 8, "reverse_queries": 2,
                               "reverse_gallery": {"panorama": 2}}
    semi = dataset.semi_positives(dataset.query_rows(), dataset.gallery_rows())
    gallery_ids = [dataset.location_ids[r] for r in dataset.gallery_rows()]
    for position, row in enumerate(dataset.query_rows()):
        city = plan.records[row].metadata["city"]
        expected = {tile_location_id(city, layout[city]["tiles"][k]) for k in (3, 0, 1)}
        assert {gallery_ids[g] for g in semi[position]} == expected
    cross = selection(plan_dataset(config("vigor", root, tmp_path / "o", "vigor.protocol=cross_area",
                                          "vigor.train_cities=[NewYork]", "vigor.test_cities=[Chicago]")))
    assert counts(cross) == {"queries": {"panorama": 3}, "gallery": 4, "reverse_queries": 3,
                             "reverse_gallery": {"panorama": 3}}


def test_cvusa_cvact_and_manifest_protocols(tmp_path):
    make_cvusa(tmp_path / "CVUSA")
    cvusa = plan_dataset(config("cvusa", tmp_path / "CVUSA", tmp_path / "o"))
    assert counts(selection(cvusa)) == {"queries": {"panorama": 2}, "gallery": 2, "reverse_queries": 2,
                                        "reverse_gallery": {"panorama": 2}}
    assert cvusa.evaluation["test"]["top1_percent_rule"] == "floor"
    assert cvusa.evaluation["test"]["official"]["panorama->satellite"] == {"queries": 8884, "gallery": 8884}
    as_val = plan_dataset(config("cvusa", tmp_path / "CVUSA", tmp_path / "o", "cvusa.val_split=val"))
    assert set(as_val.evaluation) == {"val"} and counts(selection(as_val, "val"))["gallery"] == 2
    make_cvact(tmp_path / "CVACT")
    cvact = plan_dataset(config("cvact", tmp_path / "CVACT", tmp_path / "o"))
    assert counts(selection(cvact))["queries"] == {"panorama": 1} and counts(selection(cvact))["gallery"] == 1
    assert cvact.evaluation["test"]["top1_percent_rule"] == "floor"
    # generic manifest: split 'gallery' tiles join every evaluation split's gallery
    root = tmp_path / "pairs"
    for name in ("photos/a.jpg", "photos/b.jpg", "tiles/a.png", "tiles/b.png", "tiles/c.png"):
        write_image(root / name)
    (root / "manifest.csv").write_text(
        "query,satellite,modality,lat,lon,split\n"
        "photos/a.jpg,tiles/a.png,ground,47.37,8.54,test\n"
        "photos/b.jpg,tiles/b.png,ground,47.38,8.54,val\n"
        ",tiles/c.png,satellite,47.39,8.55,gallery\n")
    plan = plan_dataset(config("manifest", root, tmp_path / "o"))
    assert counts(selection(plan, "test"))["gallery"] == 2 and counts(selection(plan, "val"))["gallery"] == 2


def test_protocol_json_is_checked():
    with pytest.raises(ValueError, match="unknown evaluation protocol fields"):
        EvaluationProtocol.from_json({"gallery": ["test"]})
    with pytest.raises(ValueError, match="gallery_splits"):
        EvaluationProtocol.from_json({"gallery_splits": ["holdout"]})
    with pytest.raises(ValueError, match="top1_percent_rule"):
        EvaluationProtocol.from_json({"top1_percent_rule": "ceil"})


def test_vigor_hit_rate_and_counts_through_the_evaluate_job(ray_session, tmp_path, capsys):
    """Ingest a VIGOR tree, evaluate a tiny checkpoint with jobs/evaluate_core.py (flip TTA, a Platt
    calibrator): the benchmark's gallery (test + gallery tiles), hit rate from the semi-positives,
    counts in the summary, ECE and a reliability plot.  Then an index of the same gallery with the
    same TTA and the calibrator, served by the Retriever (confidence, fused multi-photo queries)."""
    import torch

    from gleam.core.evaluate import EvaluateCoreConfig, evaluate_checkpoint
    from gleam.core.model import GleamEncoder, ModelConfig
    from gleam.data.ingest import ingest
    from gleam.runtime import run_job

    root, data = tmp_path / "VIGOR", tmp_path / "shards"
    make_vigor(root)
    ingest(config("vigor", root, data, "vigor.cities=[NewYork, Chicago]"))
    torch.manual_seed(0)
    checkpoint = str(tmp_path / "ckpt")
    GleamEncoder(ModelConfig(backbone="resnet10t", embedding_dim=8, image_size=32,
                             panorama_size=[32, 64])).save_pretrained(checkpoint)
    job = load_script("jobs/evaluate_core.py", "evaluate_job")
    output = str(tmp_path / "eval.json")
    rc = run_job(EvaluateCoreConfig, evaluate_checkpoint, job.summarize,
                 [f"checkpoint={checkpoint}", f"dataset={data}", "split=test", f"output={output}", "batch_size=4",
                  "tta.flip=true", "calibration.method=platt", "calibration.fit_split=test"], job.__doc__)
    assert rc == 0
    summary = capsys.readouterr().out
    assert "protocol: vigor-same-area" in summary and "query->satellite: 2 queries, gallery 8 tiles" in summary
    report = json.load(open(output))
    assert report["counts"]["query->satellite"] == {"queries": 2, "gallery": 8, "queries_by_modality": {"panorama": 2}}
    forward = report["metrics"]["query->satellite"]["all"]
    assert forward["gallery_size"] == 8 and forward["queries_evaluated"] == 2
    assert forward["hit_rate"] is not None and forward["hit_rate"] >= forward["R@1"]
    assert f"hit rate (query->satellite): {forward['hit_rate']:.1f} %" in summary
    assert set(forward["localisation_at_k"]) == {"1", "5"}  # k = 10 exceeds the 8-tile gallery
    assert forward["localisation_at_k"]["5"]["median"] <= forward["localisation_at_k"]["1"]["median"]
    assert forward["localisation_at_k"]["1"]["median"] == forward["localisation_error_m"]["median"]
    assert forward["top1%_rule"] == "max(1, floor(G/100 + 0.5))"
    calibration = report["calibration"]
    assert calibration["queries"] == 2 and os.path.exists(calibration["plot"])
    assert f"ECE raw {calibration['ece_raw']:.1f} % -> platt {calibration['ece_calibrated']:.1f} %" in summary
    assert report["options"]["tta"] == {"flip": True, "scales": [1.0]}

    from gleam.core.calibration import Calibrator
    from gleam.data.schema import decode_image
    from gleam.data.shards import iter_samples, shard_urls
    from gleam.retrieval.build import BuildIndexConfig, build_index
    from gleam.retrieval.embed import Embedder
    from gleam.retrieval.index import GalleryIndex
    from gleam.serving.app import RetrieverImpl

    index = str(tmp_path / "index")
    built = build_index(load_config(BuildIndexConfig, None, [
        f"checkpoint={checkpoint}", f"source={data}", "split=test", f"output={index}", "tta.flip=true",
        f"calibration={calibration['file']}", "ray.cpus_per_worker=0.5"]))
    assert built["count"] == 8 and built["gallery_splits"] == ["test", "gallery"]
    tiles = {s.location_id: s for s in iter_samples(shard_urls(str(data)))}
    flip = Embedder(checkpoint, device="cpu", tta={"flip": True, "scales": [1.0]})
    loaded = GalleryIndex.load(index)
    some = list(loaded.ids)[:3]
    expected = flip.embed([decode_image(tiles[i].satellite_image) for i in some], "satellite")
    found = loaded.search(expected, 1)
    assert [h[0]["id"] for h in (found[r] for r in range(3))] == some
    np.testing.assert_allclose([found[r][0]["score"] for r in range(3)], 1.0, atol=1e-5)

    retriever = RetrieverImpl(index, device="cpu")
    assert retriever.embedder.tta.flip and retriever.calibrator is not None
    pano = next(s for s in tiles.values() if s.split == "test")
    image = decode_image(pano.query_image)
    single = retriever.localize_many([(image, "panorama", 3)])[0]
    top = [c["score"] for c in single["candidates"]]
    assert single["confidence"] == pytest.approx(float(Calibrator.from_json(json.load(open(calibration["file"])))
                                                       .predict([top[0]], [top[1]])[0]))
    fused = retriever.localize_fused([image, image[:, ::-1].copy()], "panorama", 3, "mean")
    vectors = flip.embed([image, image[:, ::-1].copy()], "panorama")
    mean = vectors.sum(0, keepdims=True) / np.linalg.norm(vectors.sum(0))
    assert [c["id"] for c in fused["candidates"]] == [h["id"] for h in loaded.search(mean, 3)[0]]
    best = retriever.localize_fused([image, image[:, ::-1].copy()], "panorama", 3, "max")
    scores = vectors @ np.stack([loaded.index.reconstruct(i) for i in range(loaded.count)]).T
    assert [c["id"] for c in best["candidates"]] == [loaded.ids[i] for i in np.argsort(-scores.max(0), kind="stable")[:3]]
