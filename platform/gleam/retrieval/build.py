"""Build a gallery index from a GLEAM-C checkpoint and a shard dataset (``jobs/build_index.py``).

Embeds the split's satellite gallery with a Ray Data actor pool (``embed_gallery``), builds the
faiss index (``GalleryIndex``) and publishes it to ``output`` as one build (``gleam.retrieval.folder``:
staging folder, ``manifest.json`` with every file's sha256, one rename) with ``config.yaml`` and
``report.json`` (count, dim, kind, timings, embeddings per second, read report), and with
``tiles`` the encoded tile images and their footprints (``tiles.parquet``,
``gleam.retrieval.tiles``) that serving shows, explains and draws as the map's basemap.

The gallery is the one the evaluation split's benchmark protocol names (``gleam.data.benchmark``:
University-1652 / VIGOR test = the tiles of splits test + gallery).  With ``tta`` the tiles are
embedded with test-time augmentation, recorded in ``retrieval.json`` so serving embeds queries
the same way; ``calibration`` copies a fitted calibrator (``calibration.json`` written by
``jobs/evaluate_core.py calibration.method=platt``) into the index folder, and serving returns
its P(top-1 correct) as ``confidence``.  ``retrieval.json`` also records the embedding settings
(``Embedder.settings``: checkpoint, dimension, TTA, input size per modality, normalisation) that
every consumer of the index embeds its queries with (``Embedder.for_index``).

Every setting is checked before anything is embedded (``check_config``; the IVF rules against the
largest gallery the dataset's manifest allows), and a run that keeps no tile or loses more than
``max_rejected_fraction`` of the samples (default 0: a missing tile is a place that can never be
found) fails and publishes nothing, with the rejected samples grouped by reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from gleam import storage
from gleam.config import InputPath, ModelPath, OutputPath, RayConfig, RunConfig, save_config
from gleam.core.tta import TTAConfig
from gleam.retrieval.embed import EMBEDDING_KEY, EmbedConfig, embed_gallery
from gleam.retrieval.index import GalleryIndex, IndexConfig
from gleam.rejections import check_fraction

REPORT_FILE = "report.json"
RETRIEVAL_FILE = "retrieval.json"  # how queries must be embedded to match the gallery (tta)


@dataclass
class BuildIndexConfig:
    """Root config of ``jobs/build_index.py``."""

    kind: str = "build_index"
    checkpoint: ModelPath = "runs/gleam-c-local/final"  # GLEAM-C folder (model.safetensors + config.json)
    source: InputPath = "data/synth"  # shard dataset folder or s3:// URL with manifest.json
    split: str | None = "test"  # None: every split's tiles
    output: OutputPath = "runs/index-local"  # index folder (local or s3://)
    tiles: bool = True  # also store the tile images (tiles.parquet) for serving
    tta: TTAConfig = field(default_factory=TTAConfig)  # test-time flip / multi-scale of tiles (and of served queries)
    calibration: InputPath = ""  # calibration.json from jobs/evaluate_core.py to store with the index ("" = none)
    max_rejected_fraction: float = 0.0  # share of gallery samples that may be corrupt (0: none; the run fails otherwise)
    index: IndexConfig = field(default_factory=IndexConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    ray: RayConfig = field(default_factory=lambda: RayConfig(num_workers=1))  # embedding actors
    run: RunConfig = field(default_factory=lambda: RunConfig(name="index-local"))


def gallery_upper_bound(source: Any, splits: Any) -> int | None:
    """At most this many gallery tiles (the samples of the gallery splits, from the dataset's
    manifest), known before anything is embedded; None when the manifest does not say."""
    if not isinstance(source, str):
        return None
    url = storage.join(source, "manifest.json")
    try:
        manifest = storage.read_json(url) if storage.exists(url) else None
    except (OSError, ValueError):
        return None
    per_split = manifest.get("splits") if isinstance(manifest, dict) else None
    if not isinstance(per_split, dict):
        return None
    if splits is None:
        return int(sum(int(v) for v in per_split.values()))
    wanted = [splits] if isinstance(splits, str) else list(splits)
    return int(sum(int(per_split.get(name, 0)) for name in wanted))


def check_config(config: BuildIndexConfig, dim: int | None = None, gallery_bound: int | None = None) -> None:
    """Every setting checked before any embedding or Ray task (key, value, limit and fix)."""
    from gleam.retrieval.index import IndexSettingsError, check_settings

    config.tta.check()
    config.embed.check()
    check_fraction("max_rejected_fraction", config.max_rejected_fraction)
    if config.ray.num_workers < 1:
        raise ValueError(f"ray.num_workers={config.ray.num_workers}: must be >= 1 embedding actor; set ray.num_workers=1")
    check_settings(config.index, None, dim)
    if gallery_bound is not None:
        if gallery_bound == 0:
            raise ValueError(f"{config.source}: its manifest lists no samples in the gallery splits; check split=")
        try:
            # the rules that need the gallery size hold for the largest gallery the splits can give;
            # the exact size is checked again before training (a smaller gallery can still fail)
            check_settings(config.index, gallery_bound, dim)
        except IndexSettingsError as error:
            raise IndexSettingsError(f"{error} (the gallery has at most {gallery_bound} tiles: the samples of "
                                     f"its splits in {config.source}/manifest.json)") from None


def build_index(config: BuildIndexConfig) -> dict[str, Any]:
    """Validate, embed the gallery, build the index and publish every file of the build in one
    step (``gleam.retrieval.folder``); Ray must be initialised. Returns the report.  A failure at
    any step leaves ``output`` as it was."""
    from gleam.retrieval.embed import Embedder
    from gleam.retrieval.folder import BuildWriter
    from gleam.rejections import check_kept

    started = time.perf_counter()
    check_config(config)
    calibrator = None
    if config.calibration:
        from gleam.core.calibration import Calibrator

        calibrator = Calibrator.from_json(storage.read_json(config.calibration))
    splits: str | list[str] | None = config.split
    if config.split is not None and isinstance(config.source, str):
        from gleam.data.benchmark import protocol_for

        splits = protocol_for(config.source, config.split).gallery_splits
    tta = {"flip": config.tta.flip, "scales": [float(s) for s in config.tta.scales]}
    settings = Embedder(config.checkpoint, device="cpu", tta=tta).settings()  # dim and settings, before the work
    check_config(config, settings["dim"], gallery_upper_bound(config.source, splits))
    gallery = embed_gallery(config.checkpoint, config.source, split=splits, tta=tta,
                            batch_size=config.embed.batch_size, num_actors=config.ray.num_workers,
                            num_cpus_per_actor=config.ray.cpus_per_worker,
                            num_gpus_per_actor=config.ray.gpus_per_worker, device=config.embed.device,
                            keep_images=config.tiles)
    read = gallery.read_report
    check_kept(f"build_index of {config.source} (split={config.split!r})", int(read.get("samples", len(gallery))),
               int(read.get("corrupt", 0)), config.max_rejected_fraction, read.get("rejected_by_reason", {}),
               "max_rejected_fraction", read)
    index_started = time.perf_counter()
    index = GalleryIndex.build(gallery.embeddings, gallery.ids, gallery.latitudes, gallery.longitudes,
                               config.index, checkpoint=config.checkpoint)
    index_seconds = time.perf_counter() - index_started
    with BuildWriter(config.output) as build:
        index.write_files(build)
        if config.tiles:
            from gleam.retrieval.tiles import TileStore

            TileStore.write(build, gallery.ids, gallery.images or [], gallery.bounds)
        build.write_json(RETRIEVAL_FILE, {"tta": tta, "gallery_splits": splits, EMBEDDING_KEY: settings,
                                          "build_id": build.build_id})
        if calibrator is not None:
            from gleam.core.calibration import FILE

            build.write_json(FILE, calibrator.to_json())
        save_config(config, build.staging)
        seconds = time.perf_counter() - started
        report = {"name": config.run.name, "output": config.output, "build_id": build.build_id,
                  "checkpoint": config.checkpoint, "source": config.source, "split": config.split,
                  "gallery_splits": splits, "tta": tta, "embedding": settings,
                  "calibration": bool(calibrator), "count": index.count, "dim": index.dim,
                  "kind": index.kind, "gpu": index.on_gpu, "tiles": config.tiles, "seconds": round(seconds, 3),
                  "embed_seconds": round(gallery.seconds, 3), "index_seconds": round(index_seconds, 3),
                  "embeddings_per_second": round(len(gallery) / gallery.seconds, 2) if gallery.seconds else None,
                  "embed_startup_seconds": None if gallery.startup_seconds is None else round(gallery.startup_seconds, 3),
                  "steady_embeddings_per_second": None if gallery.steady_per_second is None
                  else round(gallery.steady_per_second, 2),
                  "read_report": read}
        build.write_json(REPORT_FILE, report)
    return report
