"""Gallery indexing throughput (jobs/build_index.py's pipeline) against the encoder's bare forward rate.

- ``raw``: ``GleamEncoder`` forward passes on ready ``[B, 3, S, S]`` tensors in this process at the
  embedding actors' thread count (``bench_localize.raw_forward_rate``: best of the NCHW and
  channels-last layouts): the ceiling for embedding alone.
- ``build``: ``gleam.retrieval.build.build_index`` over a WebDataset shard dataset of ``N``
  satellite tiles (JPEG, the encoder's input size) written here: read shards (Ray Data), keep the
  first sample per location, decode + embed (actor pool), build a flat faiss index, publish the
  folder. ``embeddings_per_second`` is the embedding run's whole time (start-up included);
  ``steady_embeddings_per_second`` the tiles after the first embedded batch over the time after it;
  ``embed_startup_seconds`` the time until that batch (actors start, model load, first shard).
- ratio = build rate / raw rate at the same thread count, per ``N`` (the scale table: how time
  and memory grow with the gallery).

The model is the local GLEAM-C architecture (tf_efficientnet_lite0 at 96 px, 128-d) with fresh
weights; tiles are random-noise JPEGs (decode cost as for real tiles of that size).

    python benchmarks/bench_build_index.py                        # writes benchmarks/results/build_index.json
    python benchmarks/bench_build_index.py --tiles 1000 10000 --cpus 1.0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_localize import make_checkpoint, raw_forward_rate  # noqa: E402  (shared fixtures)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "build_index.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, nargs="+", default=[1000, 10000], help="gallery sizes")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cpus", type=float, default=1.0, help="CPUs of the one embedding actor (its torch threads)")
    parser.add_argument("--raw-seconds", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def write_gallery(folder: str, count: int, size: int) -> str:
    """A shard dataset of ``count`` satellite tiles (one location each), with its manifest."""
    from gleam.config import ShardConfig
    from gleam.data.schema import Sample, encode_jpeg
    from gleam.data.shards import write_manifest, write_part

    rng = np.random.default_rng(0)
    # a few distinct noise tiles re-used: encoding 10k JPEGs would cost more than the benchmark
    tiles = [encode_jpeg(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(64)]

    def samples():
        for number in range(count):
            yield Sample(key=f"tile{number:06d}", location_id=f"tile{number:06d}", modality="satellite",
                         satellite_image=tiles[number % len(tiles)], latitude=float(rng.uniform(-60, 60)),
                         longitude=float(rng.uniform(-170, 170)), split="test", source="bench")

    record = write_part(folder, "test", samples, ShardConfig(max_samples=512), resume=False)
    write_manifest(folder, [record], dataset="bench-gallery")
    return folder


def main(argv: list[str] | None = None) -> dict:
    import ray
    import torch

    from gleam.config import RayConfig, RunConfig
    from gleam.retrieval.build import BuildIndexConfig, build_index
    from gleam.retrieval.index import IndexConfig

    args = parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    threads = max(1, round(args.cpus))
    rows = []
    with tempfile.TemporaryDirectory(prefix="gleam-bench-index-") as folder:
        checkpoint = make_checkpoint(folder, args.image_size, 128)
        raw_before = raw_forward_rate(checkpoint, args.batch_size, args.image_size, threads, args.raw_seconds)
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        try:
            for count in sorted(args.tiles):
                source = write_gallery(os.path.join(folder, f"gallery{count}"), count, args.image_size)
                config = BuildIndexConfig(checkpoint=checkpoint, source=source, split=None, tiles=False,
                                          output=os.path.join(folder, f"index{count}"),
                                          index=IndexConfig(kind="flat"),
                                          ray=RayConfig(num_workers=1, cpus_per_worker=args.cpus),
                                          run=RunConfig(name=f"bench-{count}", output_dir=folder))
                config.embed.batch_size = args.batch_size
                started = time.perf_counter()
                report = build_index(config)
                assert report["count"] == count, report
                rows.append({"tiles": count, "seconds": round(time.perf_counter() - started, 3),
                             "embed_seconds": report["embed_seconds"], "index_seconds": report["index_seconds"],
                             "embeddings_per_second": report["embeddings_per_second"],
                             "embed_startup_seconds": report["embed_startup_seconds"],
                             "steady_embeddings_per_second": report["steady_embeddings_per_second"],
                             "driver_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
                print(json.dumps(rows[-1]), flush=True)
        finally:
            ray.shutdown()
        raw_after = raw_forward_rate(checkpoint, args.batch_size, args.image_size, threads, args.raw_seconds)
    raw = max(raw_before, raw_after)
    for row in rows:
        row["ratio_end_to_end"] = round(row["embeddings_per_second"] / raw, 3)
        row["ratio_steady"] = None if row["steady_embeddings_per_second"] is None else \
            round(row["steady_embeddings_per_second"] / raw, 3)
    from gleam.provenance import provenance

    result = {"benchmark": "build_index vs raw encoder forward",
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                          "ray": ray.__version__},
              "model": {"backbone": "tf_efficientnet_lite0", "image_size": args.image_size, "embedding_dim": 128},
              "batch_size": args.batch_size, "actor_cpus": args.cpus, "torch_threads": threads,
              "raw_forward_images_per_second": {"before": round(raw_before, 1), "after": round(raw_after, 1),
                                                "used": round(raw, 1)},
              "rows": rows, "provenance": provenance(seeds={"weights": 0, "tiles": 0})}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
