"""Retrieval: faiss gallery index (exactness, recall, storage round trips, errors), gallery
embedding with a Ray Data actor pool (build_index), and offline batch localization."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from gleam.retrieval.index import GalleryIndex, IndexConfig, SearchResult

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------- index


def unit_rows(array: np.ndarray) -> np.ndarray:
    return (array / np.linalg.norm(array, axis=1, keepdims=True)).astype(np.float32)


def clustered(count: int, dim: int, clusters: int, spread: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    return unit_rows(centres[rng.integers(0, clusters, count)] + spread * rng.normal(size=(count, dim)))


def gallery_columns(count: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return [f"loc{i:06d}" for i in range(count)], rng.uniform(-60, 60, count), rng.uniform(-170, 170, count)


def brute_force(queries: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ gallery.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.fixture(scope="module")
def big_set():
    gallery = clustered(20_000, 64, 200, 0.6, seed=1)
    queries = clustered(300, 64, 200, 0.6, seed=1)  # same centres (same seed), fresh noise below
    queries = unit_rows(queries + 0.3 * np.random.default_rng(2).normal(size=queries.shape))
    return gallery, queries, *gallery_columns(len(gallery))


def test_flat_index_equals_brute_force(big_set):
    gallery, queries, ids, lats, lons = big_set
    index = GalleryIndex.build(gallery, ids, lats, lons, IndexConfig(kind="auto"))
    assert index.kind == "flat" and index.count == 20_000 and index.dim == 64
    found = index.search(queries, 10)
    scores, order = brute_force(queries, gallery, 10)
    np.testing.assert_array_equal(found.indices, order)
    np.testing.assert_allclose(found.scores, scores, rtol=0, atol=2e-6)
    np.testing.assert_array_equal(found.ids, np.asarray(ids, dtype=object)[order])
    np.testing.assert_array_equal(found.latitudes, lats[order])
    np.testing.assert_array_equal(found.longitudes, lons[order])
    single = index.search(queries[0], 3)  # one [D] vector
    np.testing.assert_array_equal(single.indices, order[:1, :3])
    assert len(single) == 1 and single[0] == single.hits(0)
    assert single[0][0] == {"rank": 1, "id": ids[order[0, 0]], "score": pytest.approx(float(scores[0, 0]), abs=2e-6),
                            "lat": lats[order[0, 0]], "lon": lons[order[0, 0]]}
    assert [hit["rank"] for hit in single[0]] == [1, 2, 3]


@pytest.mark.parametrize("config", [IndexConfig(kind="ivf", nprobe=16), IndexConfig(kind="hnsw"),
                                    IndexConfig(kind="auto", exact_below=10_000)], ids=["ivf", "hnsw", "auto-ivf"])
def test_approximate_indexes_recall_against_flat(big_set, config):
    gallery, queries, ids, lats, lons = big_set
    _, exact = brute_force(queries, gallery, 10)
    index = GalleryIndex.build(gallery, ids, lats, lons, config)
    assert index.kind == ("ivf" if config.kind == "auto" else config.kind)
    found = index.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.indices, exact)])
    assert recall >= 0.9, f"{config.kind}: recall@10 {recall:.3f}"
    assert np.all(np.diff(found.scores, axis=1) <= 1e-6)  # best first


def small_index(kind: str = "flat", count: int = 200, dim: int = 16) -> tuple[GalleryIndex, np.ndarray]:
    vectors = clustered(count, dim, 8, 0.5, seed=3)
    return GalleryIndex.build(vectors, *gallery_columns(count), IndexConfig(kind=kind, nlist=4),
                              checkpoint="ckpt/final"), vectors


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_round_trip_local(tmp_path, kind):
    index, vectors = small_index(kind)
    url = str(tmp_path / "index")
    index.save(url)
    assert sorted(os.listdir(url)) == ["gallery.parquet", "index.faiss", "manifest.json", "meta.json"]
    meta = json.load(open(os.path.join(url, "meta.json")))
    assert {k: meta[k] for k in ("dim", "kind", "count", "checkpoint", "metric")} == {
        "dim": 16, "kind": kind, "count": 200, "checkpoint": "ckpt/final", "metric": "inner_product"}
    assert meta["created"]
    loaded = GalleryIndex.load(url)
    before, after = index.search(vectors[:20], 5), loaded.search(vectors[:20], 5)
    for name in ("indices", "ids", "scores", "latitudes", "longitudes"):
        np.testing.assert_array_equal(getattr(before, name), getattr(after, name))
    assert loaded.checkpoint == "ckpt/final" and loaded.kind == kind


def test_save_load_round_trip_s3(s3_bucket):
    index, vectors = small_index("ivf")
    url = f"{s3_bucket}/indexes/v1"
    index.save(url)
    loaded = GalleryIndex.load(url, nprobe=4)
    np.testing.assert_array_equal(loaded.search(vectors[:10], 5).indices, index.search(vectors[:10], 5).indices)
    assert loaded.config.nprobe == 4
    with pytest.raises(FileNotFoundError, match=f"{s3_bucket}/indexes/none: not a gallery index"):
        GalleryIndex.load(f"{s3_bucket}/indexes/none")


def test_index_errors(tmp_path, caplog):
    index, vectors = small_index()
    with pytest.raises(ValueError, match="dimension 8, but the index holds 16-d"):
        index.search(np.eye(8, dtype=np.float32), 3)
    with pytest.raises(ValueError, match="gallery is empty"):
        GalleryIndex.build(np.zeros((0, 16), np.float32), [], [], [])
    with pytest.raises(ValueError, match="must be L2-normalised"):
        GalleryIndex.build(vectors * 2, *gallery_columns(200))
    with pytest.raises(ValueError, match="ids has 3 entries but there are 200"):
        GalleryIndex.build(vectors, ["a", "b", "c"], np.zeros(200), np.zeros(200))
    with pytest.raises(ValueError, match="k must be an integer of at least 1"):
        index.search(vectors[:1], 0)
    assert index.search(vectors[:2], 1000).indices.shape == (2, 200)  # k capped at the gallery
    assert index.search(vectors[:2] * 3, 1, normalize=True).indices[:, 0].tolist() == \
        index.search(vectors[:2], 1).indices[:, 0].tolist()
    with pytest.raises(FileNotFoundError, match="not a gallery index"):
        GalleryIndex.load(str(tmp_path / "nothing"))
    url = str(tmp_path / "broken")
    index.save(url)
    os.remove(os.path.join(url, "gallery.parquet"))
    with pytest.raises(FileNotFoundError, match="gallery.parquet is missing"):
        GalleryIndex.load(url)
    index.save(url)
    other, _ = small_index(count=100)
    from gleam import storage

    storage.write_bytes(os.path.join(url, "index.faiss"), open(other.save(str(tmp_path / "o")) + "/index.faiss", "rb").read())
    with pytest.raises(ValueError, match="does not match manifest.json"):
        GalleryIndex.load(url)
    caplog.set_level("WARNING")
    on_cpu = GalleryIndex.build(vectors, *gallery_columns(200), IndexConfig(kind="flat", use_gpu=True))
    assert not on_cpu.on_gpu and "searching on CPU" in caplog.text


def test_missing_hits_are_marked():
    vectors = clustered(400, 8, 4, 0.05, seed=5)  # tight clusters: one IVF list holds few points
    index = GalleryIndex.build(vectors, *gallery_columns(400), IndexConfig(kind="ivf", nlist=8, nprobe=1))
    found: SearchResult = index.search(-vectors[:5], 400)
    missing = found.indices < 0
    assert missing.any()
    assert np.all(found.ids[missing] == "") and np.isnan(found.latitudes[missing]).all()
    assert np.isneginf(found.scores[missing]).all()
    assert len(found.hits(0)) == int((~missing[0]).sum())


# --------------------------------------------------------------------------- Ray: gallery + batch


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """A tiny GLEAM-C checkpoint and a shard dataset: test split = 6 locations seen by two query
    views each (shared satellite tile) + 3 satellite-only distractors; a train split besides."""
    import torch

    from gleam.config import ShardConfig
    from gleam.core.model import GleamEncoder, ModelConfig
    from gleam.data.shards import write_manifest, write_part
    from samples import make_sample

    root = tmp_path_factory.mktemp("retrieval")
    torch.manual_seed(0)
    checkpoint = str(root / "ckpt")
    GleamEncoder(ModelConfig(embedding_dim=16, image_size=32, panorama_size=[32, 64])).save_pretrained(checkpoint)
    test = [make_sample(i, modality=m, split="test") for i in range(6) for m in ("uav", "ground")]
    test += [make_sample(100 + i, modality="satellite", split="test") for i in range(3)]
    test[-3].metadata["tile_size_m"] = 200.0  # footprints the tile store keeps for the page's map
    test[-2].metadata["tile_bounds_latlon"] = [47.1, 8.398, 47.102, 8.401]
    train = [make_sample(200 + i, split="train") for i in range(4)]
    data = str(root / "data")
    # 7 samples a shard: location 3's uav sample ends shard 0, its ground sample starts shard 1
    records = [write_part(data, "test", lambda: test, ShardConfig(max_samples=7)),
               write_part(data, "train", lambda: train, ShardConfig())]
    write_manifest(data, records, dataset="tiny")
    return {"root": root, "checkpoint": checkpoint, "data": data, "test": test}


@pytest.fixture(scope="module")
def built_index(ray_session, tiny_world):
    from gleam.retrieval.build import BuildIndexConfig, build_index

    output = str(tiny_world["root"] / "index")
    report = build_index(BuildIndexConfig(checkpoint=tiny_world["checkpoint"], source=tiny_world["data"],
                                          split="test", output=output))
    return output, report


def test_build_index_embeds_one_tile_per_location(tiny_world, built_index):
    from gleam.retrieval.embed import Embedder

    output, report = built_index
    assert report["count"] == 9 and report["dim"] == 16 and report["kind"] == "flat"
    assert report["read_report"]["samples"] == 15 and report["read_report"]["corrupt"] == 0
    # each read task keeps one sample per location of its shard; the driver keeps one of location 3's two
    assert report["read_report"]["duplicate_tile_rows"] == 1
    assert report["embeddings_per_second"] > 0
    assert json.load(open(os.path.join(output, "report.json")))["count"] == 9
    index = GalleryIndex.load(output)
    tiles = {s.location_id: s for s in tiny_world["test"]}
    assert index.ids.tolist() == sorted(tiles)
    expected = Embedder(tiny_world["checkpoint"]).embed([tiles[i].satellite_array() for i in sorted(tiles)], "satellite")
    found = index.search(expected, 1)
    assert found.indices[:, 0].tolist() == list(range(9))
    np.testing.assert_allclose(found.scores[:, 0], 1.0, atol=1e-5)  # each tile finds itself
    np.testing.assert_array_equal(index.latitudes, [tiles[i].latitude for i in sorted(tiles)])
    assert index.checkpoint == tiny_world["checkpoint"] and index.meta["checkpoint"] == tiny_world["checkpoint"]
    from gleam.retrieval.tiles import TileStore

    store = TileStore.load(output)
    assert len(store) == 9 and all(store.get(i) == tiles[i].satellite_image for i in tiles)
    assert store.bounds("loc00101") == (47.1, 8.398, 47.102, 8.401)
    half = math.degrees(100.0 / 6_371_008.8)
    np.testing.assert_allclose(store.bounds("loc00100"), [47.1 - half, 8.4 - half / math.cos(math.radians(47.1)),
                                                          47.1 + half, 8.4 + half / math.cos(math.radians(47.1))])
    assert store.bounds("loc00102") is None and store.bounds("loc00000") is None


def test_embed_gallery_reports_an_empty_split(ray_session, tiny_world):
    from gleam.retrieval.embed import embed_gallery

    with pytest.raises(ValueError, match="no shard with split='val'"):
        embed_gallery(tiny_world["checkpoint"], tiny_world["data"], split="val")


def write_photo_folder(folder, samples) -> dict[str, tuple[str, np.ndarray]]:
    """3 uav + 3 ground query images (jpg and png) in modality folders, a corrupt jpg, a text file."""
    from PIL import Image

    expected = {}
    for number, sample in enumerate(samples):
        directory = folder / "flight" / sample.modality if sample.modality == "uav" else folder / sample.modality
        directory.mkdir(parents=True, exist_ok=True)
        image = sample.query_array()
        path = directory / (f"img{number}.png" if number % 2 else f"IMG{number}.JPG")
        Image.fromarray(image).save(path)
        expected[str(path)] = (sample.modality, np.asarray(Image.open(path).convert("RGB")))
    (folder / "ground" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return expected


def test_localize_batch_folder(ray_session, tiny_world, built_index, tmp_path):
    from gleam.retrieval.batch import LocalizeBatchConfig, ReadConfig, localize_batch, read_results
    from gleam.retrieval.embed import Embedder

    samples = [s for s in tiny_world["test"] if s.modality == "uav"][:3] + \
        [s for s in tiny_world["test"] if s.modality == "ground"][:3]
    photos = tmp_path / "photos"
    expected = write_photo_folder(photos, samples)
    output = str(tmp_path / "out")
    report = localize_batch(LocalizeBatchConfig(input=str(photos), index=built_index[0], output=output, top_k=3,
                                                read=ReadConfig(files_per_block=2), max_rejected_fraction=0.2))
    assert (report["images"], report["ok"], report["errors"]) == (7, 6, 1)
    assert report["images_per_second"] > 0
    # start-up (until the first result batch) reported apart from the steady rate after it
    assert 0 < report["startup_seconds"] < report["seconds"]
    assert report["steady_images_per_second"] is None or report["steady_images_per_second"] > 0
    rows = {row["path"]: row for row in read_results(output)}
    broken = rows.pop(str(photos / "ground" / "broken.jpg"))
    assert "cannot decode image" in broken["error"] and broken["top_ids"] == [] and broken["location_id"] is None
    assert set(rows) == set(expected)
    embedder, index = Embedder(tiny_world["checkpoint"]), GalleryIndex.load(built_index[0])
    for path, (modality, image) in expected.items():
        row = rows[path]
        assert row["error"] is None and row["modality"] == modality
        direct = index.search(embedder.embed([image], modality), 3)
        assert row["top_ids"] == direct.ids[0].tolist()
        assert row["location_id"] == direct.ids[0, 0] and row["latitude"] == direct.latitudes[0, 0]
        np.testing.assert_allclose(row["top_scores"], direct.scores[0], atol=1e-5)
    lines = [json.loads(line) for line in open(os.path.join(output, "results.jsonl"))]
    assert len(lines) == 7 and {line["path"] for line in lines} == set(rows) | {broken["path"]}
    assert json.load(open(os.path.join(output, "report.json")))["ok"] == 6


def test_localize_batch_on_s3_with_fixed_modality(ray_session, tiny_world, built_index, s3_bucket):
    from gleam import storage
    from gleam.config import RayConfig
    from gleam.data.schema import encode_jpeg
    from gleam.retrieval.batch import LocalizeBatchConfig, localize_batch, read_results

    sample = tiny_world["test"][0]
    storage.write_bytes(f"{s3_bucket}/in/a/one.jpg", encode_jpeg(sample.query_array()))
    storage.write_bytes(f"{s3_bucket}/in/b/two.jpeg", sample.query_image)
    report = localize_batch(LocalizeBatchConfig(input=f"{s3_bucket}/in", index=built_index[0],
                                                output=f"{s3_bucket}/out", modality="uav", top_k=2,
                                                ray=RayConfig(num_workers=1)))
    assert (report["ok"], report["errors"]) == (2, 0)
    rows = read_results(f"{s3_bucket}/out")
    assert sorted(r["path"] for r in rows) == [f"{s3_bucket}/in/a/one.jpg", f"{s3_bucket}/in/b/two.jpeg"]
    assert all(r["modality"] == "uav" and len(r["top_ids"]) == 2 for r in rows)
    assert storage.exists(f"{s3_bucket}/out/results.jsonl") and storage.exists(f"{s3_bucket}/out/report.json")


def test_localize_batch_config_errors(tiny_world, built_index, tmp_path):
    from gleam.retrieval.batch import LocalizeBatchConfig, ReadConfig, localize_batch, modality_of

    with pytest.raises(FileNotFoundError, match="not a gallery index"):
        localize_batch(LocalizeBatchConfig(input=str(tmp_path), index=str(tmp_path / "none")))
    with pytest.raises(ValueError, match="no images"):
        localize_batch(LocalizeBatchConfig(input=str(tmp_path), index=built_index[0], output=str(tmp_path / "o")))
    with pytest.raises(ValueError, match=r"read.concurrency=0: must be an integer >= 1"):  # before any listing or task
        localize_batch(LocalizeBatchConfig(input=str(tmp_path), index=built_index[0], output=str(tmp_path / "o"),
                                           read=ReadConfig(concurrency=0)))
    assert modality_of("/d/x/uav/trip/panorama/a.jpg", "/d", "auto", None) == "panorama"
    assert modality_of("/d/uav/a.jpg", "/d/uav", "auto", "ground") == "ground"  # only below the root
    assert modality_of("/d/a.jpg", "/d", "streetmap", None) == "streetmap"


def test_job_configs_load():
    from gleam.config import load_config
    from gleam.retrieval.batch import LocalizeBatchConfig
    from gleam.retrieval.build import BuildIndexConfig

    config = load_config(BuildIndexConfig, os.path.join(ROOT, "configs", "build-index-local.yaml"))
    assert (config.checkpoint, config.source, config.split, config.output) == (  # paths resolved on load
        "gleam-c-lite0-synth", os.path.abspath("data/synth"), "test",  # a named checkpoint stays a name
        os.path.abspath("runs/index-local"))
    assert config.index.kind == "auto" and config.ray.num_workers == 1
    batch = load_config(LocalizeBatchConfig, None, ["input=s3://b/photos", "modality=uav", "top_k=3"])
    assert batch.kind == "localize_batch" and batch.top_k == 3


def test_hits_without_coordinates_are_null_in_json():
    vectors = unit_rows(np.random.default_rng(3).normal(size=(4, 8)))
    index = GalleryIndex.build(vectors, ["a", "b", "c", "d"], [1.0, np.nan, 2.0, np.nan], [3.0, np.nan, 4.0, np.nan],
                               IndexConfig(kind="flat"))
    hits = {hit["id"]: hit for hit in index.search(vectors, 4)[0]}
    assert hits["a"]["lat"] == 1.0 and hits["b"]["lat"] is None and hits["b"]["lon"] is None
    json.dumps(hits, allow_nan=False)  # what the HTTP layer does: NaN would be a 500


def test_tile_footprints_from_metadata(tmp_path):
    from gleam.retrieval.tiles import TileStore, tile_bounds

    assert tile_bounds({"tile_bounds_latlon": [1, 2, 3, 4]}, 2, 3) == (1.0, 2.0, 3.0, 4.0)
    # a square of tile_size_m metres: 1 degree of latitude = pi R / 180 m (R = 6371008.8 m)
    lat_min, lon_min, lat_max, lon_max = tile_bounds({"tile_size_m": 256}, 60.0, 10.0)
    assert (lat_max - lat_min) * math.pi / 180 * 6_371_008.8 == pytest.approx(256, rel=1e-9)
    assert (lon_max - lon_min) == pytest.approx(2 * (lat_max - lat_min), rel=1e-9)  # cos 60 = 1/2
    unknown = [{}, None, {"tile_size_m": -1}, {"tile_size_m": "x"}, {"tile_bounds_latlon": [3, 2, 1, 4]},
               {"tile_bounds_latlon": "1,2,3,4"}]
    for metadata in unknown:
        assert all(math.isnan(v) for v in tile_bounds(metadata, 1.0, 2.0)), metadata
    assert all(math.isnan(v) for v in tile_bounds({"tile_size_m": 100}, float("nan"), 2.0))
    TileStore.write(str(tmp_path), ["a", "b"], [b"x", b"y"], [(1, 2, 3, 4), tile_bounds({}, 0, 0)])
    store = TileStore.load(str(tmp_path))
    assert store.bounds("a") == (1.0, 2.0, 3.0, 4.0) and store.bounds("b") is None and store.get("b") == b"y"
    with pytest.raises(ValueError, match="bounds must be 2 rows"):
        TileStore.write(str(tmp_path), ["a", "b"], [b"x", b"y"], [(1, 2, 3, 4)])
    TileStore.write(str(tmp_path), ["a"], [b"x"])  # no footprints: the map draws a default square
    assert TileStore.load(str(tmp_path)).bounds("a") is None


# --------------------------------------------------------------------------- one build, one truth


def test_an_index_folder_is_one_build(tmp_path):
    from gleam.retrieval.folder import BuildWriter, IndexFolder, IndexFolderError

    index, _ = small_index("flat")
    url = str(tmp_path / "index")
    index.save(url)
    first = IndexFolder.open(url).build_id
    # a file of another build in the folder (a calibrator left by an older build) is refused
    open(os.path.join(url, "calibration.json"), "w").write('{"kind": "isotonic"}')
    with pytest.raises(IndexFolderError, match="calibration.json do not belong to build"):
        GalleryIndex.load(url)
    # rebuilding into the folder never inherits a file
    index.save(url)
    assert "calibration.json" not in os.listdir(url) and IndexFolder.open(url).build_id != first
    assert GalleryIndex.load(url).count == 200
    # a build that fails part-way leaves the previous one as it was, and no staging folder
    before = {name: open(os.path.join(url, name), "rb").read() for name in os.listdir(url)}
    with pytest.raises(RuntimeError, match="embedding died"):
        with BuildWriter(url) as build:
            build.write_bytes("index.faiss", b"half a new index")
            raise RuntimeError("embedding died")
    assert {name: open(os.path.join(url, name), "rb").read() for name in os.listdir(url)} == before
    assert sorted(os.listdir(tmp_path)) == ["index"]
    # an edited file, a missing file, a folder from before manifests: each refused, saying how to fix it
    meta = os.path.join(url, "meta.json")
    open(meta, "a").write(" ")
    with pytest.raises(IndexFolderError, match="meta.json: content does not match manifest.json"):
        GalleryIndex.load(url)
    index.save(url)
    os.remove(os.path.join(url, "gallery.parquet"))
    with pytest.raises(FileNotFoundError, match="gallery.parquet is missing"):
        GalleryIndex.load(url)
    os.remove(os.path.join(url, "manifest.json"))
    with pytest.raises(IndexFolderError, match="without manifest.json.*rebuild it"):
        GalleryIndex.load(url)


@pytest.mark.parametrize("settings, count, message", [
    ({"kind": "ivf", "nlist": 500}, 200, "index.nlist=500: must be at most the gallery size"),
    ({"kind": "ivf", "nlist": 50, "train_size": 20}, 200, "must be at most the k-means training sample"),
    ({"kind": "ivf", "nprobe": 0}, 200, "index.nprobe=0: must be an integer >= 1"),
    ({"kind": "ivf", "nlist": 4, "nprobe": 8}, 200, "index.nprobe=8: must be at most index.nlist=4"),
    ({"kind": "hnsw", "hnsw_m": 0}, 200, "index.hnsw_m=0"),
    ({"kind": "hnsw", "ef_search": 0}, 200, "index.ef_search=0"),
    ({"kind": "ivfpq", "pq_m": 5}, 200, "index.pq_m=5: must divide the embedding dimension 16"),
    ({"kind": "ivfpq", "nlist": 2, "pq_nbits": 10, "train_size": 200}, 200, "needs at least 2\\*\\*10"),
    ({"kind": "annoy"}, 200, "index.kind='annoy': must be one of"),
])
def test_index_settings_that_cannot_work_are_refused_before_any_work(settings, count, message):
    from gleam.retrieval.index import IndexSettingsError, check_settings

    vectors = unit_rows(np.random.default_rng(0).normal(size=(count, 16)))
    with pytest.raises(IndexSettingsError, match=message):
        check_settings(IndexConfig(**settings), count, 16)
    with pytest.raises(IndexSettingsError, match=message):  # the same words from build, never a C++ error
        GalleryIndex.build(vectors, *gallery_columns(count), IndexConfig(**settings))


def test_search_settings_out_of_range_are_refused():
    from gleam.retrieval.index import IndexSettingsError

    index, _ = small_index("ivf")
    with pytest.raises(IndexSettingsError, match=r"index.nprobe=0: must be an integer in \[1, "):
        index.set_search_params(nprobe=0)
    with pytest.raises(IndexSettingsError, match="index.nprobe=100000"):
        index.set_search_params(nprobe=100_000)


def test_build_index_refuses_settings_before_embedding(ray_session, tiny_world, tmp_path):
    from gleam.retrieval.build import BuildIndexConfig, build_index
    from gleam.retrieval.index import IndexSettingsError

    output = tmp_path / "never"
    with pytest.raises(IndexSettingsError, match=r"index.nlist=64.*at most 15 tiles"):
        build_index(BuildIndexConfig(checkpoint=tiny_world["checkpoint"], source=tiny_world["data"], split="test",
                                     output=str(output), index=IndexConfig(kind="ivf", nlist=64)))
    assert not output.exists()


def test_one_photo_one_answer_in_batch_localization_and_serving(ray_session, tiny_world, tmp_path):
    """An index built with flip TTA: batch localization and the serving retriever both embed
    queries with it (taken from the index, never from their own defaults), so they agree."""
    from gleam.core.tta import TTAConfig
    from gleam.retrieval.batch import LocalizeBatchConfig, localize_batch, read_results
    from gleam.retrieval.build import BuildIndexConfig, build_index
    from gleam.retrieval.embed import Embedder
    from gleam.serving.app import RetrieverImpl

    output = str(tmp_path / "index-tta")
    build_index(BuildIndexConfig(checkpoint=tiny_world["checkpoint"], source=tiny_world["data"], split="test",
                                 output=output, tta=TTAConfig(flip=True)))
    served = RetrieverImpl(output)
    assert served.embedder.tta is not None and served.embedder.tta.flip
    samples = [s for s in tiny_world["test"] if s.modality in ("uav", "ground")]
    photos = tmp_path / "photos"
    expected = write_photo_folder(photos, samples)
    batch = localize_batch(LocalizeBatchConfig(input=str(photos), index=output, output=str(tmp_path / "out"),
                                               top_k=3, max_rejected_fraction=0.5))
    assert batch["ok"] == len(samples)
    rows = {row["path"]: row for row in read_results(str(tmp_path / "out"))}
    items = [(image, modality, 3) for modality, image in expected.values()]
    answers = served.localize_many(items)
    plain = Embedder(tiny_world["checkpoint"])  # no TTA: what a path that ignored the index would do
    differs = 0
    for (path, (modality, image)), answer in zip(expected.items(), answers):
        assert rows[path]["top_ids"] == [c["id"] for c in answer["candidates"]]
        np.testing.assert_allclose(rows[path]["top_scores"], [c["score"] for c in answer["candidates"]], atol=1e-5)
        with_flip = Embedder.for_index(output).embed([image], modality)[0]
        differs += not np.allclose(with_flip, plain.embed([image], modality)[0], atol=1e-4)
    assert differs == len(expected)  # the TTA really changes the embedding, so agreement means something


def test_queries_embed_as_the_gallery_was_or_are_refused(built_index, tiny_world, tmp_path, monkeypatch):
    """A modality registered after the build is not a mismatch; a checkpoint that sizes or
    normalises images differently from the index's build is refused, naming both."""
    import torch

    from gleam.core.model import GleamEncoder, ModelConfig
    from gleam.data import schema
    from gleam.retrieval.embed import Embedder

    monkeypatch.setattr(schema, "_MODALITIES", set(schema._MODALITIES))
    schema.register_modality("thermal")
    assert Embedder.for_index(built_index[0]).dim == 16
    torch.manual_seed(0)
    other = str(tmp_path / "ckpt-48")
    GleamEncoder(ModelConfig(embedding_dim=16, image_size=48, panorama_size=[48, 96])).save_pretrained(other)
    with pytest.raises(ValueError, match="input size per modality") as error:
        Embedder.for_index(built_index[0], checkpoint=other)
    assert other in str(error.value) and tiny_world["checkpoint"] in str(error.value)


def test_localize_batch_that_keeps_nothing_fails_and_publishes_nothing(ray_session, built_index, tmp_path):
    from gleam.rejections import RejectedRunError
    from gleam.retrieval.batch import LocalizeBatchConfig, localize_batch

    photos = tmp_path / "photos" / "uav"
    photos.mkdir(parents=True)
    for number in range(3):
        (photos / f"p{number}.jpg").write_bytes(b"<html>404 not found</html>")
    output = tmp_path / "out"
    with pytest.raises(RejectedRunError, match="kept none of 3 rows") as caught:
        localize_batch(LocalizeBatchConfig(input=str(tmp_path / "photos"), index=built_index[0], output=str(output)))
    assert "are these really JPEG/PNG images" in str(caught.value)
    assert not (output / "results.parquet").exists() and not (output / "report.json").exists()


def test_stream_timer_splits_start_up_from_the_steady_rate():
    import time

    from gleam.retrieval.embed import StreamTimer

    timer = StreamTimer()
    assert timer.summary(0)[1:] == (None, None)  # no batch came: neither figure exists
    time.sleep(0.05)
    timer.batch(10)
    assert timer.summary(10)[2] is None  # nothing after the first batch: no steady rate
    time.sleep(0.05)
    timer.batch(30)
    seconds, startup, steady = timer.summary(40)
    assert 0.05 <= startup < seconds
    assert 30 / (seconds - startup) == pytest.approx(steady, rel=1e-6)
