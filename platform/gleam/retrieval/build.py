"""Build a gallery index from a GLEAM-C checkpoint and a shard dataset (``jobs/build_index.py``).

Embeds the split's satellite gallery with a Ray Data actor pool (``embed_gallery``), builds the
faiss index (``GalleryIndex``) and writes it to ``output`` with ``config.yaml`` and
``report.json`` (count, dim, kind, timings, embeddings per second, read report), and with
``tiles`` the encoded tile images and their footprints (``tiles.parquet``,
``gleam.retrieval.tiles``) that serving shows, explains and draws as the map's basemap.

The gallery is the one the evaluation split's benchmark protocol names (``gleam.data.benchmark``:
University-1652 / VIGOR test = the tiles of splits test + gallery).  With ``tta`` the tiles are
embedded with test-time augmentation, recorded in ``retrieval.json`` so serving embeds queries
the same way; ``calibration`` copies a fitted calibrator (``calibration.json`` written by
``jobs/evaluate_core.py calibration.method=platt``) into the index folder, and serving returns
its P(top-1 correct) as ``confidence``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from gleam import storage
from gleam.config import InputPath, OutputPath, RayConfig, RunConfig, save_config
from gleam.core.tta import TTAConfig
from gleam.retrieval.embed import EmbedConfig, embed_gallery
from gleam.retrieval.index import GalleryIndex, IndexConfig

REPORT_FILE = "report.json"
RETRIEVAL_FILE = "retrieval.json"  # how queries must be embedded to match the gallery (tta)


@dataclass
class BuildIndexConfig:
    """Root config of ``jobs/build_index.py``."""

    kind: str = "build_index"
    checkpoint: InputPath = "runs/gleam-c-local/final"  # GLEAM-C folder (model.safetensors + config.json)
    source: InputPath = "data/synth"  # shard dataset folder or s3:// URL with manifest.json
    split: str | None = "test"  # None: every split's tiles
    output: OutputPath = "runs/index-local"  # index folder (local or s3://)
    tiles: bool = True  # also store the tile images (tiles.parquet) for serving
    tta: TTAConfig = field(default_factory=TTAConfig)  # test-time flip / multi-scale of tiles (and of served queries)
    calibration: InputPath = ""  # calibration.json from jobs/evaluate_core.py to store with the index ("" = none)
    index: IndexConfig = field(default_factory=IndexConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    ray: RayConfig = field(default_factory=lambda: RayConfig(num_workers=1))  # embedding actors
    run: RunConfig = field(default_factory=lambda: RunConfig(name="index-local"))


def build_index(config: BuildIndexConfig) -> dict[str, Any]:
    """Embed the gallery, build and save the index; Ray must be initialised. Returns the report."""
    started = time.perf_counter()
    config.tta.check()
    calibrator = None
    if config.calibration:
        from gleam.core.calibration import Calibrator

        calibrator = Calibrator.from_json(storage.read_json(config.calibration))
    splits: str | list[str] | None = config.split
    if config.split is not None and isinstance(config.source, str):
        from gleam.data.benchmark import protocol_for

        splits = protocol_for(config.source, config.split).gallery_splits
    tta = {"flip": config.tta.flip, "scales": [float(s) for s in config.tta.scales]}
    gallery = embed_gallery(config.checkpoint, config.source, split=splits, tta=tta,
                            batch_size=config.embed.batch_size, num_actors=config.ray.num_workers,
                            num_cpus_per_actor=config.ray.cpus_per_worker,
                            num_gpus_per_actor=config.ray.gpus_per_worker, device=config.embed.device,
                            keep_images=config.tiles)
    index_started = time.perf_counter()
    index = GalleryIndex.build(gallery.embeddings, gallery.ids, gallery.latitudes, gallery.longitudes,
                               config.index, checkpoint=config.checkpoint)
    index_seconds = time.perf_counter() - index_started
    index.save(config.output)
    if config.tiles:
        from gleam.retrieval.tiles import TileStore

        TileStore.write(config.output, gallery.ids, gallery.images or [], gallery.bounds)
    storage.write_json(storage.join(config.output, RETRIEVAL_FILE), {"tta": tta, "gallery_splits": splits})
    if calibrator is not None:
        from gleam.core.calibration import FILE

        storage.write_json(storage.join(config.output, FILE), calibrator.to_json())
    save_config(config, config.output)
    seconds = time.perf_counter() - started
    report = {"name": config.run.name, "output": config.output, "checkpoint": config.checkpoint,
              "source": config.source, "split": config.split, "gallery_splits": splits, "tta": tta,
              "calibration": bool(calibrator), "count": index.count, "dim": index.dim,
              "kind": index.kind, "gpu": index.on_gpu, "tiles": config.tiles, "seconds": round(seconds, 3),
              "embed_seconds": round(gallery.seconds, 3), "index_seconds": round(index_seconds, 3),
              "embeddings_per_second": round(len(gallery) / gallery.seconds, 2) if gallery.seconds else None,
              "read_report": gallery.read_report}
    storage.write_json(storage.join(config.output, REPORT_FILE), report)
    return report
