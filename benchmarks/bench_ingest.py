"""Ingest throughput: University-1652-shaped tree -> shards with Ray tasks vs the same parts
written one after another in this process (the baseline), as a ratio.

The tree is generated here (no downloads): ``--classes`` train classes, each with one 512 px
satellite JPEG, ``--drones`` drone JPEGs and one street JPEG, plus as many test classes with
query drones and gallery tiles. Both runs do the same work: plan (layout check + listing), then
read, verify and write every part (``gleam.data.ingest.common.write_part_task``); the Ray run
adds the manifest and report.

    python benchmarks/bench_ingest.py                  # writes benchmarks/results/ingest.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "ingest.json"


def make_tree(root: Path, classes: int, drones: int, size: int) -> int:
    from PIL import Image

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    files = 0

    def image(path: Path, seed: int) -> None:
        nonlocal files
        path.parent.mkdir(parents=True, exist_ok=True)
        shifted = np.roll(base, seed * 7, axis=(0, 1))  # cheap distinct pictures of realistic JPEG size
        Image.fromarray(shifted).save(path, quality=90)
        files += 1

    for c in range(classes):
        train, test = f"{c:04d}", f"{5000 + c:04d}"
        image(root / f"train/satellite/{train}/{train}.jpg", c)
        image(root / f"train/street/{train}/s.jpg", c + 1)
        for d in range(drones):
            image(root / f"train/drone/{train}/image-{d:02d}.jpeg", c * 31 + d)
        image(root / f"test/gallery_satellite/{test}/{test}.jpg", c + 3)
        image(root / f"test/query_street/{test}/s.jpg", c + 5)
        for d in range(drones):
            image(root / f"test/query_drone/{test}/image-{d:02d}.jpeg", c * 17 + d)
    return files


def main(argv: list[str] | None = None) -> dict:
    import ray

    from gleam.config import load_config
    from gleam.data.ingest import IngestConfig, ingest, plan_dataset
    from gleam.data.ingest.common import plan_parts, write_part_task

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=40)
    parser.add_argument("--drones", type=int, default=6)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    folder = Path(tempfile.mkdtemp(prefix="gleam-bench-ingest-"))
    try:
        files = make_tree(folder / "u1652", args.classes, args.drones, args.size)
        tree_bytes = sum(p.stat().st_size for p in (folder / "u1652").rglob("*") if p.is_file())

        def config(output: str) -> IngestConfig:
            return load_config(IngestConfig, None, ["dataset=university1652", f"root={folder / 'u1652'}",
                                                    f"output={output}", "records_per_part=64"])

        # baseline: the same parts, one after another, in this process
        started = time.perf_counter()
        base_config = config(str(folder / "sequential"))
        plan = plan_dataset(base_config)
        samples = 0
        for part in plan_parts(plan.records, base_config.records_per_part):
            result = write_part_task(base_config.output, part, plan.source, plan.root, base_config.shards,
                                     False, None)
            samples += result["samples"]
        sequential = time.perf_counter() - started

        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            started = time.perf_counter()
            report = ingest(config(str(folder / "ray")))
            parallel = time.perf_counter() - started
        finally:
            ray.shutdown()
        written = sum(report["counts"][split][m] for split in report["counts"] for m in report["counts"][split]) \
            if isinstance(report.get("counts"), dict) else samples
        result = {
            "benchmark": "ingest_university1652", "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "classes": args.classes, "files": files, "tree_mib": round(tree_bytes / 2**20, 1), "image_size": args.size,
            "samples": samples, "samples_written_by_ray": written,
            "sequential_seconds": round(sequential, 2), "ray_seconds": round(parallel, 2),
            "sequential_samples_per_second": round(samples / sequential, 1),
            "ray_samples_per_second": round(samples / parallel, 1),
            "ray_mib_per_second": round(tree_bytes / 2**20 / parallel, 1),
            "ratio_ray_vs_sequential": round(sequential / parallel, 3),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
