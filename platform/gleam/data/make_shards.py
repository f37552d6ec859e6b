"""Write the synthetic world as WebDataset shards, in parallel with Ray, resumably.

The work is cut into parts of ``synth.locations_per_task`` locations of one split (plus parts
of distractor tiles for the evaluation splits); each part is one Ray task that renders its
samples and writes them through ``gleam.data.shards.write_part``.  A re-run skips parts that
are complete and verified, so a killed job resumes where it stopped.  The output folder gets
the shards, ``manifest.json`` (with the world's settings), the resolved ``config.yaml`` and a
``make_shards_report.json`` with timings.

Sample keys: ``{split}-{location_id}-{modality}-{view}``; distractors ``{split}-{tile_id}-satellite``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from gleam import storage
from gleam.config import OutputPath, RayConfig, RunConfig, ShardConfig, SynthConfig, save_config, to_dict
from gleam.data import shards
from gleam.data.schema import SATELLITE_ONLY, Sample, encode_jpeg

log = logging.getLogger(__name__)

SOURCE = "gleam-synth"


@dataclass
class MakeShardsConfig:
    """Root config of ``jobs/make_shards.py``."""

    kind: str = "make_shards"
    output: OutputPath = "data/synth"  # local folder or s3://bucket/prefix
    resume: bool = True
    run: RunConfig = field(default_factory=RunConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)


@dataclass(frozen=True)
class PartSpec:
    """One unit of work: a slice of a split's locations, or of its distractor tiles."""

    name: str
    split: str
    start: int  # location index within the region
    stop: int
    distractors: bool = False
    region: int = 0
    spill_region: int | None = None  # where locations go that ``region`` cannot hold


def _slices(count: int, per_region: int, step: int) -> list[tuple[int, int, int]]:
    """(region, start, stop) slices of ``count`` items, at most ``step`` long, never crossing regions."""
    out = []
    for first in range(0, count, per_region):
        region, stop = first // per_region, min(count, first + per_region) - first
        out.extend((region, start, min(stop, start + step)) for start in range(0, stop, step))
    return out


def plan_parts(synth: SynthConfig) -> list[PartSpec]:
    """Deterministic parts for the whole dataset (same config, same parts, same names).

    A split's locations are spread evenly over ``max(regions_per_split, ceil(count /
    locations_per_region))`` regions; distractor tiles of the evaluation splits likewise.
    A region that cannot hold its share (a sparse road network) hands the rest to its own
    spill region, a fresh region numbered after the split's planned ones (``spill_region``),
    so a world of any size never stops on a full region; the report says where they went.
    """
    parts = []
    step = max(1, synth.locations_per_task)
    for split, count in synth.locations.items():
        regions = min(count, max(synth.regions_per_split, -(-count // max(1, synth.locations_per_region))))
        per_region = -(-count // max(1, regions))
        for chunk, (region, start, stop) in enumerate(_slices(count, per_region, step)):
            parts.append(PartSpec(f"{split}-{chunk:04d}", split, start, stop, region=region,
                                  spill_region=regions + region))
        if synth.distractors and split != "train":
            per_region_distractors = -(-synth.distractors // max(1, regions))
            for chunk, (region, start, stop) in enumerate(_slices(synth.distractors, per_region_distractors, step)):
                parts.append(PartSpec(f"{split}-distractors-{chunk:04d}", split, start, stop,
                                      distractors=True, region=region, spill_region=regions + region))
    return parts


@functools.lru_cache(maxsize=4)
def _world(seed: int, split: str, region: int, size_m: float, origin_lat: float, origin_lon: float,
           biome: str | None) -> Any:
    from gleam.data.synth import generate_split_world

    return generate_split_world(seed, split, size_m=size_m, origin_lat=origin_lat, origin_lon=origin_lon,
                                region_index=region, biome=biome)


def world_for(synth: SynthConfig, split: str, region: int = 0) -> Any:
    biome = synth.biomes[region % len(synth.biomes)] if synth.biomes else None
    return _world(synth.seed, split, region, synth.size_m, synth.origin_lat, synth.origin_lon, biome)


def _location_metadata(world: Any, location: Any, synth: SynthConfig) -> dict[str, Any]:
    return {"world_id": world.world_id, "world_seed": synth.seed, "biome": world.biome.name,
            "location_kind": location.kind, "x_m": round(location.x, 2), "y_m": round(location.y, 2),
            "tile_size_m": world.config.tile_size_m, "tile_bounds_latlon": list(world.tile_bounds_latlon(location))}


def part_locations(synth: SynthConfig, part: PartSpec) -> list[tuple[Any, Any]]:
    """``(world, location)`` of every location (or distractor tile) of a part, in order.

    Locations ``[start, stop)`` of the part's region; those beyond what the region can hold
    come, in the same order, from its spill region (after that region's capacity is known,
    deterministically, so every part of a region agrees).  Raises ``ValueError`` naming the
    region when even the spill region is full (lower ``synth.locations_per_region``).
    """
    role = "distractor" if part.distractors else "query"
    world = world_for(synth, part.split, part.region)
    capacity = world.capacity(part.stop, role)

    def take(w: Any, n: int) -> list[Any]:
        return w.distractor_tiles(n) if part.distractors else w.locations(n)

    out = [(world, loc) for loc in take(world, min(part.stop, capacity))[part.start:part.stop]]
    if capacity >= part.stop:
        return out
    if part.spill_region is None:
        raise ValueError(f"region {part.region} of split {part.split} holds {capacity} locations, "
                         f"the plan asks {part.stop}: lower synth.locations_per_region")
    spill = world_for(synth, part.split, part.spill_region)
    first, last = max(part.start, capacity) - capacity, part.stop - capacity
    if spill.capacity(last, role) < last:
        raise ValueError(f"regions {part.region} and {part.spill_region} of split {part.split} cannot hold "
                         f"the {part.stop} locations planned: lower synth.locations_per_region "
                         f"(now {synth.locations_per_region})")
    return out + [(spill, loc) for loc in take(spill, last)[first:last]]


def part_samples(synth: SynthConfig, part: PartSpec, jpeg_quality: int,
                 spread: Counter[str] | None = None) -> Iterator[Sample]:
    """Render every sample of ``part``; ``spread`` (if given) counts its locations per world."""
    located = part_locations(synth, part)
    if spread is not None:
        spread.update(world.world_id for world, _ in located)
    if part.distractors:
        for world, tile in located:
            yield Sample(key=f"{part.split}-{tile.location_id}-satellite", location_id=tile.location_id,
                         modality=SATELLITE_ONLY, query_image=None,
                         satellite_image=encode_jpeg(world.render_satellite(tile, size=synth.image_size), jpeg_quality),
                         latitude=tile.lat, longitude=tile.lon, split=part.split, source=SOURCE,
                         metadata={**_location_metadata(world, tile, synth), "distractor": True})
        return
    for world, location in located:
        satellite = encode_jpeg(world.render_satellite(location, size=synth.image_size), jpeg_quality)
        facts = world.scene_facts(location)
        for modality in synth.modalities:
            for view in range(synth.views_per_location):
                size = synth.panorama_width if modality == "panorama" else synth.image_size
                image, view_info = world.render_query(location, modality, view, size=size)
                yield Sample(
                    key=f"{part.split}-{location.location_id}-{modality}-{view}",
                    location_id=location.location_id, modality=modality,
                    query_image=encode_jpeg(image, jpeg_quality), satellite_image=satellite,
                    latitude=location.lat, longitude=location.lon, heading=view_info.get("heading"),
                    split=part.split, source=SOURCE,
                    metadata={**_location_metadata(world, location, synth), "view": view_info,
                              "facts": facts},
                )


def _write_part_task(config: MakeShardsConfig, part: PartSpec) -> dict[str, Any]:
    spread: Counter[str] = Counter()
    record = shards.write_part(config.output, part.name,
                               lambda: part_samples(config.synth, part, config.shards.jpeg_quality, spread),
                               config.shards, resume=config.resume,
                               details=lambda: {"spread": dict(sorted(spread.items()))})
    if "spread" in record.details:  # a resumed part reports what its record says, without re-placing
        spread = Counter(record.details["spread"])
    else:  # a record from before spreads were recorded
        spread = Counter(world.world_id for world, _ in part_locations(config.synth, part))
    return {"part": part.name, "skipped": record.skipped, "samples": record.samples,
            "seconds": record.seconds, "record": record.to_json(), "split": part.split,
            "distractors": part.distractors, "spread": dict(spread)}


def spread_report(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per split and role: how many regions hold locations, min/max per region, and each
    region's count by world id (spill regions included)."""
    out: dict[str, Any] = {}
    for result in results:
        role = "distractors" if result.get("distractors") else "locations"
        entry = out.setdefault(result["split"], {}).setdefault(role, {"by_region": {}})
        for world_id, count in result.get("spread", {}).items():
            entry["by_region"][world_id] = entry["by_region"].get(world_id, 0) + count
    for roles in out.values():
        for entry in roles.values():
            counts = list(entry["by_region"].values()) or [0]
            entry.update({"regions": len(entry["by_region"]), "total": sum(counts),
                          "min_per_region": min(counts), "max_per_region": max(counts)})
    return out


def make_shards(config: MakeShardsConfig) -> dict[str, Any]:
    """Write the dataset described by ``config``; returns the manifest. Ray must be initialised.

    Raises ``shards.PartsFailed`` (a ValueError) after every part ended when some failed."""
    _check(config)
    started = time.perf_counter()
    storage.makedirs(config.output)
    save_config(config, config.output)
    parts = plan_parts(config.synth)
    # a failing part does not stop the others; shards.PartsFailed (one line per part) at the end
    results = shards.run_part_tasks(_write_part_task, [(config, part) for part in parts], [p.name for p in parts],
                                    lambda i, r: f"part {r['part']}: " + ("skipped, already complete" if r["skipped"]
                                                 else f"wrote in {r['seconds']:.1f}s") + f", {r['samples']} samples")
    records = [shards.PartRecord.from_json(r["record"]) for r in sorted(results, key=lambda r: r["part"])]
    manifest = shards.write_manifest(config.output, records, dataset="gleam-synth",
                                     extra={"synth": asdict(config.synth)})
    elapsed = time.perf_counter() - started
    written = [r for r in results if not r["skipped"]]
    report = {
        "output": config.output, "parts": len(parts), "parts_written": len(written),
        "parts_skipped": len(parts) - len(written), "samples": manifest["num_samples"],
        "samples_written": sum(r["samples"] for r in written), "shards": manifest["num_shards"],
        "seconds": round(elapsed, 2),
        "samples_per_second": round(sum(r["samples"] for r in written) / elapsed, 2) if written else None,
        "modalities": manifest["modalities"], "splits": manifest["splits"],
        "spread": spread_report(results), "config": to_dict(config),
    }
    storage.write_json(storage.join(config.output, "make_shards_report.json"), report)
    return manifest


def _check(config: MakeShardsConfig) -> None:
    from gleam.data.schema import check_query_modalities

    check_query_modalities(config.synth.modalities, "synth.modalities")
    from gleam.data.synth import BIOME_NAMES

    unknown_biomes = [b for b in config.synth.biomes if b not in BIOME_NAMES]
    if unknown_biomes:
        raise ValueError(f"synth.biomes: {unknown_biomes} unknown; choose from {list(BIOME_NAMES)}")
    bad_splits = [s for s in config.synth.locations if s not in ("train", "val", "test")]
    if bad_splits:
        raise ValueError(f"synth.locations: splits {bad_splits} unknown; use train, val, test")
