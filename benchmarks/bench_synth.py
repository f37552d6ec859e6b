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
    parser.add_argument("--out", default="benchmarks/results/synth.json", help="JSON result file")
    return parser.parse_args()


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
    return {
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
