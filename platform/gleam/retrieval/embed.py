"""Embedding images with a GLEAM-C checkpoint: one image list at a time (``Embedder``, used by
serving and batch localization) or a whole shard dataset's satellite gallery with a Ray Data
actor pool (``embed_gallery``).

Images are fitted to the encoder's input size for their modality (``ModelConfig.input_size``)
as in training (``gleam.data.transforms.fit_view``) and normalised and encoded
by ``gleam.core.train.encode_images``: a query embeds exactly as it did during evaluation.

The gallery of a split is one satellite tile per location id: the split's satellite-only
distractors plus the satellite tiles of its query samples.  Samples of one location share their
tile, so the first tile seen for a location id stands for it: each read task keeps the first of
its shard (and decodes that tile once, the decode validation did), the driver keeps the first
embedding of a location that several shards hold.  No stage between the reads and the
embedding actors, so nothing there serialises the stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class EmbedConfig:
    """How the embedding actors run (their number and CPU/GPU shares come from ``ray``:
    ``num_workers`` actors of ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs)."""

    batch_size: int = 32  # images per Ray Data batch and per forward pass
    device: str = "auto"  # auto: cuda when the actor holds a GPU, else cpu

    def check(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"embed.batch_size={self.batch_size!r}: must be an integer >= 1; set embed.batch_size=32")


EMBEDDING_KEY = "embedding"  # retrieval.json's record of Embedder.settings()


def _normal(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    return round(float(value), 6) if isinstance(value, float) else value


def index_embedding(index: Any) -> dict[str, Any]:
    """The embedding settings an index was built with (``retrieval.json``, checked against the
    build's manifest); ValueError naming the fix when the build recorded none."""
    from gleam.retrieval.folder import open_folder

    folder = open_folder(index)
    if not folder.has("retrieval.json"):
        raise ValueError(f"{folder.url}: build {folder.build_id} records no embedding settings (retrieval.json): "
                         f"rebuild it with jobs/build_index.py output={folder.url}")
    recorded = folder.read_json("retrieval.json")
    settings = dict(recorded.get(EMBEDDING_KEY) or {})
    settings.setdefault("tta", recorded.get("tta"))
    return settings


def resolve_device(device: str = "auto") -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; anything else as given."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def as_rgb(image: np.ndarray) -> np.ndarray:
    """A uint8 HxWx3 view of a gray (HxW / HxWx1), RGB or RGBA uint8 image."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or 0 in array.shape[:2]:
        raise ValueError(f"images must be HxW, HxWx1, HxWx3 or HxWx4, got shape {array.shape}")
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    return array[:, :, :3]


def check_modality(modality: str) -> str:
    from gleam.data.schema import modalities

    if modality not in modalities():
        raise ValueError(f"unknown modality {modality!r}; known: {', '.join(modalities())}")
    return modality


def prepare_image(image: np.ndarray, modality: str, model_config: Any) -> np.ndarray:
    """An image as the encoder takes it for ``modality``: RGB uint8 at ``input_size(modality)``,
    fitted as in training (``gleam.data.transforms.fit_view``: panoramas keep their shape)."""
    from gleam.data.transforms import fit_view

    return np.ascontiguousarray(fit_view(as_rgb(image), model_config.input_size(check_modality(modality)), modality))


class Embedder:
    """A GLEAM-C checkpoint loaded once; ``embed`` turns images of one modality into unit vectors."""

    def __init__(self, checkpoint: str, *, device: str = "auto", batch_size: int = 64,
                 threads: int | None = None, tta: Any = None):
        import torch

        from gleam.core.tta import TTAConfig

        from gleam.core.model import GleamEncoder, resolve_checkpoint

        if threads:
            torch.set_num_threads(int(threads))
        self.checkpoint = resolve_checkpoint(checkpoint)  # a bare name: models/<name>
        self.device = torch.device(resolve_device(device))
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = GleamEncoder.from_pretrained(self.checkpoint).to(self.device).eval()
        # test-time augmentation (gleam.core.tta): a TTAConfig or its dict; gallery and queries must agree
        self.tta = TTAConfig(**tta) if isinstance(tta, dict) else tta
        if self.tta is not None:
            self.tta.check()
        data_config = self.model.data_config()
        self.mean, self.std = tuple(data_config["mean"]), tuple(data_config["std"])

    @property
    def config(self) -> Any:
        return self.model.config

    def settings(self, views: Iterable[str] | None = None) -> dict[str, Any]:
        """How this embedder turns an image into a vector (recorded with an index, so every
        consumer embeds queries as the gallery was embedded): checkpoint, dimension, test-time
        augmentation, input size per modality (``views``; default every registered modality),
        normalisation, how images are fitted."""
        from gleam.data.schema import modalities

        tta = self.tta
        return {"checkpoint": self.checkpoint, "dim": self.dim,
                "tta": {"flip": bool(tta.flip), "scales": [float(s) for s in tta.scales]} if tta is not None
                else {"flip": False, "scales": [1.0]},
                "input_sizes": {m: list(self.input_size(m)) for m in (modalities() if views is None else views)},
                "mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std],
                "fit": "gleam.data.transforms.fit_view", "gallery_modality": "satellite"}

    @classmethod
    def for_index(cls, index: Any, checkpoint: str | None = None, **options: Any) -> "Embedder":
        """The embedder an index's queries need: the index's checkpoint (unless ``checkpoint`` is
        given) with the test-time augmentation, input sizes and normalisation recorded in its
        ``retrieval.json`` (``index``: a URL or an opened ``gleam.retrieval.folder.IndexFolder``).
        ValueError when the checkpoint embeds differently from how the gallery was embedded."""
        from gleam.retrieval.folder import open_folder

        folder = open_folder(index)
        recorded = index_embedding(folder)
        chosen = checkpoint or recorded.get("checkpoint")
        if not chosen:
            raise ValueError(f"index {folder.url} records no checkpoint; pass checkpoint=<GLEAM-C folder>")
        embedder = cls(chosen, tta=recorded.get("tta"), **options)
        sizes = recorded.get("input_sizes")  # the index's views: a modality registered after the build is no mismatch
        mine = embedder.settings(views=list(sizes) if isinstance(sizes, dict) else None)
        for key, fix in (("dim", "the embedding dimension"), ("input_sizes", "the input size per modality"),
                         ("mean", "the normalisation mean"), ("std", "the normalisation std")):
            if key in recorded and _normal(recorded[key]) != _normal(mine[key]):
                raise ValueError(f"checkpoint {chosen}: {fix} is {mine[key]}, but index {folder.url} was embedded "
                                 f"with {recorded[key]} (checkpoint {recorded.get('checkpoint')}): use the checkpoint "
                                 "the index was built with, or rebuild the index with this one")
        return embedder

    @property
    def dim(self) -> int:
        return int(self.model.embedding_dim)

    def input_size(self, modality: str) -> tuple[int, int]:
        return self.model.config.input_size(check_modality(modality))

    def prepare(self, image: np.ndarray, modality: str) -> np.ndarray:
        return prepare_image(image, modality, self.model.config)

    def embed(self, images: list[np.ndarray], modality: str) -> np.ndarray:
        """float32 [N, D] unit embeddings of ``images`` (uint8 arrays of any size) of ``modality``
        (averaged over the test-time augmentations of ``tta`` when set)."""
        import torch

        from gleam.core.tta import encode_with_tta

        prepared = [self.prepare(image, modality) for image in images]
        if not prepared:
            return np.zeros((0, self.dim), np.float32)
        out = []
        with torch.inference_mode():
            for start in range(0, len(prepared), self.batch_size):
                chunk = prepared[start:start + self.batch_size]
                out.append(encode_with_tta(self.model, chunk, modality, self.device, self.mean, self.std, self.tta)
                           .float().cpu().numpy())
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


# --------------------------------------------------------------------------- Ray Data stages


class StreamTimer:
    """Start-up and steady rate of a streamed Ray Data run, as its driver sees the results:
    start-up ends when the first result batch arrives (actors up, model loaded, a batch done);
    the steady rate is the rows after that batch over the time after it (None when nothing
    came after it)."""

    def __init__(self, started: float | None = None) -> None:
        """``started``: a ``time.perf_counter()`` of the run's own start (default: now)."""
        self.started = time.perf_counter() if started is None else started
        self.first_result: float | None = None
        self.first_rows = 0

    def batch(self, rows: int) -> None:
        """Call for every result batch, with its row count."""
        if self.first_result is None:
            self.first_result, self.first_rows = time.perf_counter(), int(rows)

    def summary(self, total_rows: int) -> tuple[float, float | None, float | None]:
        """(seconds since the start, start-up seconds or None, steady rows/s or None)."""
        finished = time.perf_counter()
        if self.first_result is None:
            return finished - self.started, None, None
        after = finished - self.first_result
        steady = (total_rows - self.first_rows) / after if after > 0 and total_rows > self.first_rows else None
        return finished - self.started, self.first_result - self.started, steady


class GalleryEmbedStage:
    """Ray Data actor: embeds the decoded satellite tiles of ``gleam.data.pipeline.read_gallery_tiles``
    (columns of ``tile_row``; the checkpoint loaded once per actor)."""

    def __init__(self, checkpoint: str, device: str, batch_size: int, threads: int | None,
                 keep_images: bool = False, tta: dict | None = None):
        self.embedder = Embedder(checkpoint, device=device, batch_size=batch_size, threads=threads, tta=tta)
        self.keep_images = keep_images

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = [np.frombuffer(data, np.uint8).reshape(int(height), int(width), -1)
                  for data, height, width in zip(batch["pixels"], batch["height"], batch["width"])]
        out = {"location_id": batch["location_id"], "latitude": batch["latitude"].astype(np.float64),
               "longitude": batch["longitude"].astype(np.float64),
               "embedding": self.embedder.embed(images, "satellite")}
        if self.keep_images:
            import json

            from gleam.retrieval.tiles import tile_bounds

            out["image"] = batch["satellite"]  # the encoded tile, as stored in the shard
            out["bounds"] = np.asarray([tile_bounds(json.loads(text) if text else {}, lat, lon) for text, lat, lon
                                        in zip(batch["metadata"], batch["latitude"], batch["longitude"])],
                                       dtype=np.float64).reshape(-1, 4)  # the tile's footprint, NaN unknown
        return out


def actor_threads(num_cpus: float, num_gpus: float) -> int | None:
    """torch CPU threads for an actor holding ``num_cpus`` cores (None: leave torch's default)."""
    return None if num_gpus > 0 else max(1, int(round(num_cpus)))


def warn_if_starved(num_actors: int, num_cpus_per_actor: float, other_cpus: float = 1.0) -> None:
    """Check an actor pool's size; warn when, with ``other_cpus`` for the read/decode tasks, it
    asks for more CPUs than the cluster has (Ray Data then waits forever without an error:
    RAY_NOTES).  An autoscaling cluster may still grow, so this is a warning."""
    import ray

    if num_actors < 1:
        raise ValueError(f"num_actors must be at least 1, got {num_actors}")
    if num_cpus_per_actor < 0:
        raise ValueError(f"num_cpus_per_actor must be >= 0, got {num_cpus_per_actor}")
    total = ray.cluster_resources().get("CPU", 0.0) if ray.is_initialized() else 0.0
    wanted = num_actors * num_cpus_per_actor + other_cpus
    if total and wanted > total:
        log.warning("%d actors x %g CPU + %g CPU for reading = %g CPU > the cluster's %g: Ray Data may "
                    "stall without an error; use fewer actors or fractional CPUs", num_actors,
                    num_cpus_per_actor, other_cpus, wanted, total)


def gallery_dataset(checkpoint: str, source: str | list[str], *, split: str | list[str] | None = None,
                    batch_size: int = 64, num_actors: int = 1, num_cpus_per_actor: float = 0.5,
                    num_gpus_per_actor: float = 0.0, device: str = "auto",
                    keep_images: bool = False, tta: dict | None = None) -> tuple[Any, Any]:
    """The lazy Ray Dataset of gallery embeddings (columns location_id, latitude, longitude,
    embedding [D] float32, and with ``keep_images`` the encoded tile as ``image`` and its footprint
    as ``bounds`` [4] (``gleam.retrieval.tiles.tile_bounds``)), one row per location and shard
    (a location with samples in several shards repeats: ``embed_gallery`` keeps one), plus the
    ``SampleReader`` counting skipped samples.  Nothing runs until the dataset is consumed."""
    import ray

    from gleam.data.pipeline import read_gallery_tiles

    warn_if_starved(num_actors, num_cpus_per_actor)
    if device == "auto" and num_gpus_per_actor > 0:
        device = "cuda"
    reader = read_gallery_tiles(source, split=split, keep_encoded=keep_images)
    # the read tasks validate, keep one sample per location and shard, and decode each tile once;
    # the actors only run the encoder
    dataset = reader.dataset.map_batches(
        GalleryEmbedStage, batch_format="numpy", batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_cpus=num_cpus_per_actor, num_gpus=num_gpus_per_actor,
        fn_constructor_kwargs={"checkpoint": checkpoint, "device": device,
                               "batch_size": batch_size, "keep_images": keep_images,
                               "tta": tta, "threads": actor_threads(num_cpus_per_actor, num_gpus_per_actor)})
    return dataset, reader


@dataclass
class Gallery:
    """Gallery embeddings in memory, rows sorted by location id."""

    ids: list[str]
    latitudes: np.ndarray  # [N] float64
    longitudes: np.ndarray  # [N] float64
    embeddings: np.ndarray  # [N, D] float32, unit rows
    read_report: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # the whole embedding run
    startup_seconds: float | None = None  # until the first embedded batch arrived
    steady_per_second: float | None = None  # tiles/s after the first batch
    images: list[bytes] | None = None  # encoded tiles (``keep_images=True``)
    bounds: np.ndarray | None = None  # [N, 4] tile footprints in degrees, NaN unknown (``keep_images=True``)

    def __len__(self) -> int:
        return len(self.ids)


def embed_gallery(checkpoint: str, source: str | list[str], *, split: str | list[str] | None = None,
                  batch_size: int = 64, num_actors: int = 1, num_cpus_per_actor: float = 0.5,
                  num_gpus_per_actor: float = 0.0, device: str = "auto", keep_images: bool = False,
                  tta: dict | None = None) -> Gallery:
    """Embed the satellite gallery of ``source`` (a shard dataset folder / s3:// URL with a
    manifest, or shard URLs), ``split`` selecting samples; Ray must be initialised.
    ``keep_images`` also returns the encoded tiles (for serving's tile store); ``tta`` (a
    ``gleam.core.tta.TTAConfig`` as dict) averages flipped / rescaled tiles' embeddings.

    Raises ValueError when no sample is found.
    """
    started = time.perf_counter()
    dataset, reader = gallery_dataset(checkpoint, source, split=split, batch_size=batch_size,
                                      num_actors=num_actors, num_cpus_per_actor=num_cpus_per_actor,
                                      num_gpus_per_actor=num_gpus_per_actor, device=device,
                                      keep_images=keep_images, tta=tta)
    ids: list[str] = []
    images: list[bytes] = []
    bounds: list[np.ndarray] = []
    latitudes, longitudes, embeddings = [], [], []
    timer = StreamTimer(started)
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        timer.batch(len(batch["location_id"]))
        ids.extend(str(i) for i in batch["location_id"])
        latitudes.append(batch["latitude"])
        longitudes.append(batch["longitude"])
        embeddings.append(np.asarray(batch["embedding"], dtype=np.float32))
        if keep_images:
            images.extend(bytes(image) for image in batch["image"])
            bounds.append(np.asarray(batch["bounds"], dtype=np.float64).reshape(-1, 4))
    report = reader.report()
    from gleam.rejections import check_kept, gallery_hints, group_rejections

    groups = group_rejections({"reason": str(c.get("field", "other")), "error": c.get("reason", ""),
                               "where": f"{c.get('shard', '')}#{c.get('key', '')}"} for c in report["corrupt_samples"])
    gallery_hints(groups, report["corrupt"])
    report = {k: v for k, v in report.items() if k != "corrupt_samples"} | {
        "corrupt_examples": report["corrupt_samples"][:20], "rejected_by_reason": groups}
    if not ids and report["corrupt"]:
        check_kept(f"{source} (split={split!r})", 0, report["corrupt"], 0.0, groups, "max_rejected_fraction", report)
    if not ids:
        raise ValueError(f"{source}: no gallery tiles for split={split!r} "
                         f"({report['samples']} samples read, {report['corrupt']} corrupt)")
    seconds, startup, steady = timer.summary(len(ids))
    # one row per location: a location whose samples lie in several shards came from each of them
    _, first = np.unique(np.asarray(ids), return_index=True)  # sorted by id, first arrival of each
    order = first
    report["duplicate_tile_rows"] = len(ids) - len(order)
    return Gallery(ids=[ids[i] for i in order], latitudes=np.concatenate(latitudes)[order],
                   longitudes=np.concatenate(longitudes)[order],
                   embeddings=np.ascontiguousarray(np.concatenate(embeddings)[order]),
                   read_report=report, seconds=seconds, startup_seconds=startup, steady_per_second=steady,
                   images=[images[i] for i in order] if keep_images else None,
                   bounds=np.concatenate(bounds)[order] if keep_images else None)
