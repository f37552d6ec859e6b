"""Benchmark the synthetic world: generation and every renderer, against the 1 s/sample target.

    python benchmarks/bench_synth.py --locations 20 --out benchmarks/results/synth.json

A *sample* is the five views of one location (satellite, street map, UAV, panorama, ground
photo) at their default sizes, rendered on one core; the target is well under 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from gleam.data.synth import VIEWS, WorldConfig, generate_world

TARGET_SAMPLE_S = 1.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--locations", type=int, default=20, help="locations to render")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--biome", default=None, help="biome (default: the seed's)")
    parser.add_argument("--size-m", type=float, default=2000.0, help="region size in metres")
    parser.add_argument("--generation-repeats", type=int, default=2, help="world generations to time")
    parser.add_argument("--scale-sizes", type=int, nargs="*", default=[128, 256],
                        help="image sizes of the scale measurement (empty: skip it)")
    parser.add_argument("--scale-locations", type=int, nargs="*", default=[1000, 10000],
                        help="dataset sizes (train locations) of the scale measurement")
    parser.add_argument("--scale-parts", type=int, default=4, help="parts timed per (size, dataset size)")
    parser.add_argument("--out", default="benchmarks/results/synth.json", help="JSON result file")
    return parser.parse_args()


def scale(sizes: list[int], counts: list[int], parts_timed: int, seed: int) -> list[dict]:
    """Locations/s per core of ``make_shards``' own part rendering at dataset scale.

    For each (image size, train locations) the real plan (``plan_parts``: regions, spill regions)
    is made and ``parts_timed`` parts spread over it are rendered to encoded samples on this one
    core, each from a cold world cache (region generation included, as a fresh Ray task pays it).
    Rate = locations / CPU-seconds of this process (robust to other load on the machine; wall
    seconds are recorded beside it); the per-core rate times cores estimates a cluster's.
    """
    from gleam.config import SynthConfig
    from gleam.data import make_shards

    rows = []
    for size in sizes:
        for count in counts:
            synth = SynthConfig(seed=seed, locations={"train": count}, image_size=size, panorama_width=2 * size,
                                regions_per_split=4, biomes=["temperate", "arid", "tropical", "nordic-winter"])
            plan = make_shards.plan_parts(synth)
            chosen = [plan[i] for i in np.linspace(0, len(plan) - 1, parts_timed).round().astype(int)]
            seconds, wall, located = 0.0, 0.0, 0
            for part in chosen:
                make_shards._world.cache_clear()
                started, cpu = time.perf_counter(), time.process_time()
                samples = list(make_shards.part_samples(synth, part, 90))
                seconds += time.process_time() - cpu
                wall += time.perf_counter() - started
                located += len({s.location_id for s in samples})
            rows.append({"image_size": size, "train_locations": count, "regions": len({p.region for p in plan}),
                         "parts": len(plan), "parts_timed": len(chosen), "locations_timed": located,
                         "cpu_seconds": round(seconds, 2), "wall_seconds": round(wall, 2),
                         "locations_per_s_per_core": round(located / seconds, 3),
                         "hours_on_one_core": round(count / (located / seconds) / 3600, 2)})
            print(f"scale: {size} px, {count} locations: {rows[-1]['locations_per_s_per_core']} locations/s per core",
                  flush=True)
    return rows


def _timed(function):
    start = time.perf_counter()
    result = function()
    return result, (time.perf_counter() - start) * 1000.0


def _summary(values_ms: list[float]) -> dict:
    return {"median_ms": round(statistics.median(values_ms), 2),
            "mean_ms": round(statistics.fmean(values_ms), 2),
            "min_ms": round(min(values_ms), 2), "max_ms": round(max(values_ms), 2)}


def run(args: argparse.Namespace) -> dict:
    config = WorldConfig(seed=args.seed, biome=args.biome, size_m=args.size_m)
    generation_ms = []
    for _ in range(args.generation_repeats):
        world, elapsed = _timed(lambda: generate_world(config))
        generation_ms.append(elapsed)
    locations, locations_ms = _timed(lambda: world.locations(args.locations))
    per_view: dict[str, list[float]] = {view: [] for view in VIEWS}
    facts_ms, sample_ms = [], []
    for loc in locations:
        total = 0.0
        for view in VIEWS:
            _, elapsed = _timed(lambda: world.render_view(loc, view, view_index=0))
            per_view[view].append(elapsed)
            total += elapsed
        sample_ms.append(total)
        facts_ms.append(_timed(lambda: world.scene_facts(loc))[1])
    sample = _summary(sample_ms)
    scaling = scale(args.scale_sizes, args.scale_locations, args.scale_parts, args.seed) if args.scale_sizes else []
    return {
        "scale": scaling,
        "benchmark": "synth",
        "config": config.to_dict(),
        "biome": world.biome.name,
        "world": world.describe()["counts"],
        "generation": _summary(generation_ms),
        "locations": {"n": len(locations), "sampling_ms": round(locations_ms, 2)},
        "views": {view: _summary(values) for view, values in per_view.items()},
        "facts": _summary(facts_ms),
        "sample_5_views": sample,
        "target_sample_ms": TARGET_SAMPLE_S * 1000.0,
        "sample_vs_target_ratio": round(sample["median_ms"] / (TARGET_SAMPLE_S * 1000.0), 3),
        "environment": {"python": platform.python_version(), "numpy": np.__version__,
                        "machine": platform.machine(), "cpus": os.cpu_count(),
                        "load_average_1m": round(os.getloadavg()[0], 2)},
    }


def write_json(result: dict, path: str) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_suffix(target.suffix + ".tmp")
    temporary.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(temporary, target)


def main() -> None:
    args = parse_args()
    result = run(args)
    write_json(result, args.out)
    views = ", ".join(f"{view} {stats['median_ms']:.0f}" for view, stats in result["views"].items())
    print(f"generation {result['generation']['median_ms']:.0f} ms | per view (median ms): {views} | "
          f"5-view sample {result['sample_5_views']['median_ms']:.0f} ms "
          f"= {result['sample_vs_target_ratio']:.2f} x target | wrote {args.out}")


if __name__ == "__main__":
    main()
