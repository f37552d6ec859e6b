"""Offline localization of a whole folder or bucket of images with Ray Data.

    list files (driver) -> read + decode + resize (tasks) -> embed + search (actor pool) -> write

- Inputs: ``*.jpg``, ``*.jpeg``, ``*.png`` (case-insensitive, configurable) anywhere under
  ``input``, a local folder or an ``s3://`` prefix.
- Modality: ``modality`` names one for every image, or ``"auto"`` takes it from the nearest
  enclosing folder named after a query modality (``input/uav/...``, ``input/trip1/ground/...``);
  ``fallback_modality`` covers images under no such folder (unset: they become error rows).
- A file that cannot be read or decoded becomes a row with ``error`` set, never a failed run.
- Every embedding actor loads the checkpoint and the index once and serves many batches.
- Results: ``results.parquet`` and ``results.jsonl`` (one row per image, same columns), plus
  ``report.json`` and ``config.yaml``, under ``output`` (local or s3://).  Results stream
  from the pipeline into local temporary files that are published atomically at the end, so
  the driver's memory stays flat and a reader never sees a partial result file.

Columns: path, modality, error (null when localized), location_id / latitude / longitude /
score of the top-1 tile, and top_ids / top_latitudes / top_longitudes / top_scores (best first).
"""

from __future__ import annotations

import io
import json
import logging
import math
import posixpath
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gleam import storage
from gleam.config import InputPath, ModelPath, OutputPath, RayConfig, save_config
from gleam.retrieval.embed import EmbedConfig, Embedder, StreamTimer, actor_threads, warn_if_starved
from gleam.rejections import batch_hints, batch_reason, check_fraction, check_kept, group_rejections

log = logging.getLogger(__name__)

RESULTS_PARQUET = "results.parquet"
RESULTS_JSONL = "results.jsonl"
REPORT_FILE = "report.json"


@dataclass
class ReadConfig:
    """Which files are images and how the read/decode tasks are sized."""

    extensions: list[str] = field(default_factory=lambda: [".jpg", ".jpeg", ".png"])
    files_per_block: int = 32  # files per read/decode task
    cpus_per_task: float = 0.25  # fractional: leaves cores to the embedding actors (RAY_NOTES)
    # read/decode tasks running at once; None: one per embedding actor. Decoding a 96 px JPEG
    # costs about 0.5 ms on one core, an embedding several ms, so one task keeps a CPU actor
    # busy; more tasks only take cores from the actors (while they start: torch + timm imports).
    # Raise it for GPU actors or large photos.
    concurrency: int | None = None


@dataclass
class LocalizeBatchConfig:
    """Root config of ``jobs/localize_batch.py``."""

    kind: str = "localize_batch"
    input: InputPath = "data/queries"  # folder or s3:// prefix, searched recursively
    index: InputPath = "runs/index-local"  # a gallery index written by jobs/build_index.py
    checkpoint: ModelPath | None = None  # None: the checkpoint the index was built with
    output: OutputPath = "runs/localize-local"
    modality: str = "auto"  # a modality for every image, or auto: from the enclosing folder's name
    fallback_modality: str | None = None  # auto, no folder names a modality: this one (None: error row)
    top_k: int = 5
    # share of the images that may end as error rows (0.01: a stray broken file in a hundred);
    # beyond it, or when no image is localized, the run fails and publishes no result file
    max_rejected_fraction: float = 0.01
    index_use_gpu: bool = False  # search on GPU when faiss-gpu and a GPU are there
    read: ReadConfig = field(default_factory=ReadConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    ray: RayConfig = field(default_factory=RayConfig)  # num_workers embedding actors of cpus/gpus_per_worker


# --------------------------------------------------------------------------- listing


def list_images(url: str, extensions: list[str]) -> list[str]:
    """Sorted URLs of the files under ``url`` (recursively) whose names end with an extension."""
    fs, path = storage.filesystem(url)
    wanted = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    try:
        if fs.isfile(path):
            found = [path]
        elif fs.isdir(path):
            fs.invalidate_cache(path)
            found = fs.find(path)
        else:
            raise FileNotFoundError(f"{url}: no such folder or bucket prefix")
    except FileNotFoundError:
        raise
    except Exception as error:  # credentials, missing bucket: storage's messages say how to fix
        raise storage.explain_error(error, url, "list") from error
    files = sorted(p for p in found if p.lower().endswith(wanted))
    if storage.is_remote(url):
        scheme = url.split("://", 1)[0]
        return [f"{scheme}://{p}" for p in files]
    return files


def modality_of(url: str, root: str, modality: str, fallback: str | None) -> str | None:
    """The modality of the image at ``url``: ``modality`` unless "auto"; then the nearest folder
    between ``root`` and the file named after a query modality, else ``fallback``."""
    from gleam.data.schema import query_modalities

    if modality != "auto":
        return modality
    root = root.rstrip("/")
    relative = url[len(root):].lstrip("/") if url.startswith(root + "/") else posixpath.basename(url)
    folders = posixpath.dirname(relative.replace("\\", "/")).split("/")
    known = set(query_modalities())
    for folder in reversed(folders):
        if folder in known:
            return folder
    return fallback


# --------------------------------------------------------------------------- stages


def decode_photo(data: bytes) -> np.ndarray:
    """Encoded image -> uint8 HxWx3 RGB by the platform's one decoder
    (``gleam.data.images.decode_rgb``: EXIF orientation, 16-bit/float scaling, alpha...);
    raises its ``ImageError`` subclasses."""
    from gleam.data.images import decode_rgb

    return decode_rgb(data)


def read_and_decode(batch: dict[str, np.ndarray], sizes: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    """Ray Data task: read each file, decode it, resize it to its modality's input size.

    Failures become rows with ``error`` set and no pixels."""
    from gleam.data.transforms import fit_view

    pixels, heights, widths, errors = [], [], [], []
    for path, modality in zip(batch["path"], batch["modality"]):
        image, error = None, ""
        if not modality:
            error = ("no modality: the image is under no folder named after a query modality "
                     f"({', '.join(sorted(sizes))}); set modality= or fallback_modality=")
        elif modality not in sizes:
            error = f"unknown modality {modality!r}"
        else:
            try:
                data = storage.read_bytes(str(path))
            except Exception as failure:  # unreadable file: an error row, not a failed job
                error = f"cannot read: {type(failure).__name__}: {failure}"
            else:
                try:
                    image = fit_view(decode_photo(data), sizes[modality], modality)
                except Exception as failure:  # PIL raises many types for broken files
                    error = f"cannot decode image: {type(failure).__name__}: {failure}"
        pixels.append(b"" if image is None else np.ascontiguousarray(image).tobytes())
        heights.append(0 if image is None else image.shape[0])
        widths.append(0 if image is None else image.shape[1])
        errors.append(error)
    return {"path": batch["path"], "modality": np.array([m or "" for m in batch["modality"]], dtype=object),
            "pixels": np.array(pixels, dtype=object), "height": np.array(heights, np.int32),
            "width": np.array(widths, np.int32), "error": np.array(errors, dtype=object)}


def result_schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("path", pa.string()), ("modality", pa.string()), ("error", pa.string()),
        ("location_id", pa.string()), ("latitude", pa.float64()), ("longitude", pa.float64()),
        ("score", pa.float32()),
        ("top_ids", pa.list_(pa.string())), ("top_latitudes", pa.list_(pa.float64())),
        ("top_longitudes", pa.list_(pa.float64())), ("top_scores", pa.list_(pa.float32())),
    ])


class LocalizeStage:
    """Ray Data actor: embeds decoded images with ``Embedder`` and searches ``GalleryIndex``,
    both loaded once per actor; returns result rows (``result_schema``)."""

    def __init__(self, checkpoint: str, index: str, top_k: int, device: str, batch_size: int,
                 threads: int | None, index_use_gpu: bool):
        from gleam.retrieval.folder import IndexFolder
        from gleam.retrieval.index import GalleryIndex

        folder = IndexFolder.open(index)
        # queries embedded exactly as the gallery was (TTA, input sizes, normalisation of the index)
        self.embedder = Embedder.for_index(folder, checkpoint, device=device, batch_size=batch_size, threads=threads)
        self.index = GalleryIndex.load(folder, use_gpu=index_use_gpu)
        if self.index.dim != self.embedder.dim:
            raise ValueError(f"{checkpoint} embeds {self.embedder.dim}-d vectors but {index} holds "
                             f"{self.index.dim}-d ones: use the checkpoint the index was built with")
        self.top_k = top_k

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        import pyarrow as pa

        count = len(batch["path"])
        errors: list[str | None] = [e or None for e in batch["error"]]
        hits: list[tuple[list, list, list, list]] = [([], [], [], [])] * count
        by_modality: dict[str, list[int]] = {}
        for row in range(count):
            if errors[row] is None:
                by_modality.setdefault(str(batch["modality"][row]), []).append(row)
        for modality, rows in by_modality.items():
            images = [np.frombuffer(batch["pixels"][r], np.uint8).reshape(int(batch["height"][r]),
                                                                            int(batch["width"][r]), 3)
                      for r in rows]
            try:
                found = self.index.search(self.embedder.embed(images, modality), self.top_k)
            except Exception as failure:  # a bad modality/model pairing fails these rows only
                for r in rows:
                    errors[r] = f"cannot embed/search: {type(failure).__name__}: {failure}"
                continue
            for position, r in enumerate(rows):
                keep = found.indices[position] >= 0
                hits[r] = (found.ids[position][keep].tolist(), found.latitudes[position][keep].tolist(),
                           found.longitudes[position][keep].tolist(), found.scores[position][keep].tolist())

        def first(values: list, missing: Any) -> Any:
            return values[0] if values else missing

        return pa.Table.from_pydict({
            "path": [str(p) for p in batch["path"]],
            "modality": [str(m) or None for m in batch["modality"]],
            "error": errors,
            "location_id": [first(h[0], None) for h in hits],
            "latitude": [first(h[1], math.nan) for h in hits],
            "longitude": [first(h[2], math.nan) for h in hits],
            "score": [first(h[3], math.nan) for h in hits],
            "top_ids": [h[0] for h in hits], "top_latitudes": [h[1] for h in hits],
            "top_longitudes": [h[2] for h in hits], "top_scores": [h[3] for h in hits],
        }, schema=result_schema())


# --------------------------------------------------------------------------- driver


def resolve_checkpoint(config: LocalizeBatchConfig) -> tuple[str, dict[str, Any], Any, dict[str, Any]]:
    """(checkpoint, index meta, the index's embedding settings), checked against each other and
    against the index's build manifest before any work."""
    from gleam.config import from_dict
    from gleam.core.model import CONFIG_NAME, ModelConfig
    from gleam.retrieval.embed import index_embedding
    from gleam.retrieval.folder import IndexFolder
    from gleam.retrieval.index import GalleryIndex

    folder = IndexFolder.open(config.index)
    meta = GalleryIndex.read_meta(folder)
    embedding = index_embedding(folder)
    checkpoint = config.checkpoint or meta.get("checkpoint")
    if not checkpoint:
        raise ValueError(f"{config.index} does not name its checkpoint: set checkpoint=")
    if config.checkpoint and meta.get("checkpoint") and config.checkpoint != meta["checkpoint"]:
        log.warning("checkpoint %s differs from the one %s was built with (%s): the embeddings must "
                    "come from the same model", config.checkpoint, config.index, meta["checkpoint"])
    config_url = storage.join(checkpoint, CONFIG_NAME)
    if not storage.exists(config_url):
        raise FileNotFoundError(f"{checkpoint}: not a GLEAM-C checkpoint (no {CONFIG_NAME})")
    model_config = from_dict(ModelConfig, storage.read_json(config_url), config_url)
    if model_config.embedding_dim and model_config.embedding_dim != meta["dim"]:
        raise ValueError(f"{checkpoint} embeds {model_config.embedding_dim}-d vectors but {config.index} "
                         f"holds {meta['dim']}-d ones: use the checkpoint the index was built with")
    sizes = embedding.get("input_sizes") or {}
    for modality, size in sizes.items():
        if list(model_config.input_size(modality)) != list(size):
            raise ValueError(f"{checkpoint} fits {modality} images to {list(model_config.input_size(modality))} but "
                             f"{config.index} was embedded at {list(size)}: use the checkpoint the index was built with")
    return checkpoint, meta, model_config, embedding


def check_config(config: LocalizeBatchConfig, gallery: int | None = None) -> None:
    """Every setting checked before any Ray task (key, value, limit and fix)."""
    from gleam.retrieval.embed import check_modality

    for key, value in (("top_k", config.top_k), ("embed.batch_size", config.embed.batch_size),
                       ("read.files_per_block", config.read.files_per_block), ("ray.num_workers", config.ray.num_workers),
                       *((("read.concurrency", config.read.concurrency),) if config.read.concurrency is not None else ())):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}={value!r}: must be an integer >= 1; set {key} to a positive number")
    if gallery is not None and config.top_k > gallery:
        raise ValueError(f"top_k={config.top_k}: the index {config.index} holds only {gallery} tiles; "
                         f"set top_k<={gallery}")
    if not config.read.cpus_per_task > 0:
        raise ValueError(f"read.cpus_per_task={config.read.cpus_per_task!r}: must be > 0; set read.cpus_per_task=0.25")
    if not config.read.extensions:
        raise ValueError("read.extensions=[]: no file would be read; set read.extensions=[.jpg,.jpeg,.png]")
    check_fraction("max_rejected_fraction", config.max_rejected_fraction)
    if config.modality != "auto":
        check_modality(config.modality)
    if config.fallback_modality is not None:
        check_modality(config.fallback_modality)


def localize_dataset(config: LocalizeBatchConfig, paths: list[str], checkpoint: str,
                     model_config: Any, embedding: dict[str, Any] | None = None) -> Any:
    """The lazy Ray Dataset of result rows for ``paths`` (see ``LocalizeStage``)."""
    import ray

    from gleam.data.schema import modalities

    check_config(config)
    warn_if_starved(config.ray.num_workers, config.ray.cpus_per_worker, config.read.cpus_per_task)
    recorded = (embedding or {}).get("input_sizes") or {}
    sizes = {m: tuple(recorded.get(m) or model_config.input_size(m)) for m in modalities()}
    root = config.input if storage.is_remote(config.input) else storage.filesystem(config.input)[1]
    items = [{"path": p, "modality": modality_of(p, root, config.modality, config.fallback_modality) or ""}
             for p in paths]
    per_block = max(1, config.read.files_per_block)
    device = config.embed.device
    if device == "auto" and config.ray.gpus_per_worker > 0:
        device = "cuda"
    return (ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / per_block)))
            .map_batches(read_and_decode, batch_format="numpy", batch_size=per_block,
                         num_cpus=config.read.cpus_per_task, concurrency=config.read.concurrency or config.ray.num_workers,
                         fn_kwargs={"sizes": sizes})
            .map_batches(LocalizeStage, batch_format="numpy", batch_size=config.embed.batch_size,
                         compute=ray.data.ActorPoolStrategy(size=config.ray.num_workers),
                         num_cpus=config.ray.cpus_per_worker, num_gpus=config.ray.gpus_per_worker,
                         fn_constructor_kwargs={
                             "checkpoint": checkpoint, "index": config.index, "top_k": config.top_k,
                             "device": device, "batch_size": config.embed.batch_size,
                             "threads": actor_threads(config.ray.cpus_per_worker, config.ray.gpus_per_worker),
                             "index_use_gpu": config.index_use_gpu}))


def _json_float(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def localize_batch(config: LocalizeBatchConfig) -> dict[str, Any]:
    """Localize every image under ``config.input``; Ray must be initialised. Returns the report."""
    import pyarrow.parquet as pq

    started = time.perf_counter()
    check_config(config)
    checkpoint, meta, model_config, embedding = resolve_checkpoint(config)
    check_config(config, meta["count"])
    paths = list_images(config.input, config.read.extensions)
    if not paths:
        raise ValueError(f"{config.input}: no images ({', '.join(config.read.extensions)}) found")
    log.info("localizing %d images from %s against %s (%d tiles)", len(paths), config.input,
             config.index, meta["count"])
    dataset = localize_dataset(config, paths, checkpoint, model_config, embedding)
    storage.makedirs(config.output)
    ok = errors = 0
    error_examples: list[dict[str, str]] = []
    rejected: list[dict[str, str]] = []
    parquet_url = storage.join(config.output, RESULTS_PARQUET)
    jsonl_url = storage.join(config.output, RESULTS_JSONL)
    with storage.atomic_local_file(parquet_url, suffix=".parquet") as parquet_tmp, \
            storage.atomic_local_file(jsonl_url, suffix=".jsonl") as jsonl_tmp:
        with pq.ParquetWriter(parquet_tmp, result_schema()) as writer, \
                open(jsonl_tmp, "w", encoding="utf-8") as lines:
            timer = StreamTimer(started)  # start-up (listing, planning, actors, model + index) apart from the steady rate
            for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                timer.batch(table.num_rows)
                table = table.select(result_schema().names).cast(result_schema())
                writer.write_table(table)
                for row in table.to_pylist():
                    if row["error"] is None:
                        ok += 1
                    else:
                        errors += 1
                        if len(error_examples) < 20:
                            error_examples.append({"path": row["path"], "error": row["error"]})
                        rejected.append({"where": row["path"], "error": row["error"],
                                         "reason": batch_reason(row["error"])})
                    lines.write(json.dumps({k: _json_float(v) for k, v in row.items()}, ensure_ascii=False) + "\n")
            groups = group_rejections(rejected)
            from gleam.data.schema import query_modalities

            batch_hints(groups, [r["where"] for r in rejected], ok + errors, list(query_modalities()),
                        config.input)
            # raising here publishes neither result file (atomic_local_file discards them)
            check_kept(f"localize_batch of {config.input}", ok, errors, config.max_rejected_fraction, groups,
                       "max_rejected_fraction")
    seconds, startup, steady = timer.summary(ok + errors)
    report = {"input": config.input, "index": config.index, "checkpoint": checkpoint,
              "output": {"parquet": parquet_url, "jsonl": jsonl_url},
              "images": ok + errors, "ok": ok, "errors": errors, "error_examples": error_examples,
              "rejected_by_reason": groups, "max_rejected_fraction": config.max_rejected_fraction,
              "top_k": config.top_k, "gallery": meta["count"], "seconds": round(seconds, 3),
              "images_per_second": round((ok + errors) / seconds, 2) if seconds > 0 else None,
              "startup_seconds": None if startup is None else round(startup, 3),
              "steady_images_per_second": None if steady is None else round(steady, 2)}
    save_config(config, config.output)
    storage.write_json(storage.join(config.output, REPORT_FILE), report)
    return report


def read_results(output: str) -> list[dict[str, Any]]:
    """The rows of ``results.parquet`` under ``output`` (for tests and small result sets)."""
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(storage.read_bytes(storage.join(output, RESULTS_PARQUET)))).to_pylist()
