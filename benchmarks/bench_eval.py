"""Time and peak memory of chunked retrieval metrics vs dense baselines, as the gallery grows.

Methods (Q queries, G gallery tiles, D dims, one positive per query, coordinates given):

- ``chunked``: ``gleam.core.evaluate.retrieval_metrics`` with ``--chunk-size`` queries per block;
- ``dense``: the same code with one block holding every query (a full Q x G similarity matrix);
- ``dense_argsort``: the naive exact way: full Q x G matrix, full stable argsort of every row.

Each measurement runs in a fresh subprocess.  Peak memory is the growth of the process's peak
resident set (VmHWM, reset through /proc/self/clear_refs after the inputs are built) over its
resident set before the run; where the reset is not allowed, VmHWM includes input construction
and the report says so.  The analytic size of the largest similarity block is reported too.

    python benchmarks/bench_eval.py                       # G = 1k, 10k, 50k; Q = 2k; D = 256
    python benchmarks/bench_eval.py --gallery-sizes 1000 --out /tmp/eval.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gleam.core.evaluate import retrieval_metrics

METHODS = ("chunked", "dense", "dense_argsort")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "eval.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery-sizes", type=int, nargs="+", default=[1_000, 10_000, 50_000])
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--dense-max", type=int, default=10_000, help="largest G run with the dense baselines")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (fastest reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--gallery-size", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------------------------
# Worker: one method, one gallery size, in its own process
# --------------------------------------------------------------------------------------------

def memory_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def unit_rows(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((count, dim), dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def make_inputs(num_queries: int, gallery_size: int, dim: int, seed: int) -> dict:
    """Gallery tiles with distinct ids; each query is a noisy copy of one tile (its positive)."""
    rng = np.random.default_rng(seed)
    gallery = unit_rows(rng, gallery_size, dim)
    positive = rng.integers(0, gallery_size, num_queries)
    queries = gallery[positive] + 0.2 * rng.standard_normal((num_queries, dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    gallery_latlon = np.column_stack([rng.uniform(47.0, 47.5, gallery_size), rng.uniform(8.0, 8.5, gallery_size)])
    return {"queries": queries, "query_ids": positive, "gallery": gallery, "gallery_ids": np.arange(gallery_size),
            "query_latlon": gallery_latlon[positive] + rng.normal(0, 1e-4, (num_queries, 2)),
            "gallery_latlon": gallery_latlon}


def dense_argsort_metrics(inputs: dict) -> dict:
    """Full similarity matrix and a stable argsort of every row (exact ranks, O(Q x G) memory)."""
    similarities = inputs["queries"] @ inputs["gallery"].T
    order = np.argsort(-similarities, axis=1, kind="stable")
    is_positive = inputs["gallery_ids"][order] == inputs["query_ids"][:, None]
    first_rank = np.argmax(is_positive, axis=1)
    return {"R@1": float(100 * np.mean(first_rank < 1)), "R@5": float(100 * np.mean(first_rank < 5)),
            "AP": float(100 * np.mean(np.where(first_rank == 0, 1.0, 1 / (2 * (first_rank + 1)))))}


def run_method(method: str, inputs: dict, chunk_size: int) -> dict:
    if method == "dense_argsort":
        return dense_argsort_metrics(inputs)
    rows_per_block = chunk_size if method == "chunked" else len(inputs["queries"])
    metrics = retrieval_metrics(inputs["queries"], inputs["query_ids"], inputs["gallery"], inputs["gallery_ids"],
                                query_latlon=inputs["query_latlon"], gallery_latlon=inputs["gallery_latlon"],
                                chunk_size=rows_per_block)
    return {key: metrics[key] for key in ("R@1", "R@5", "AP")}


def worker(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    run_method(args.worker, make_inputs(64, 128, args.dim, args.seed), args.chunk_size)  # warm-up, untimed
    inputs = make_inputs(args.queries, args.gallery_size, args.dim, args.seed)
    gc.collect()
    peak_was_reset = reset_peak_rss()
    rss_before_kib = memory_kib("VmRSS")
    run_seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        metrics = run_method(args.worker, inputs, args.chunk_size)
        run_seconds.append(time.perf_counter() - start)
    seconds = min(run_seconds)
    peak_extra_bytes = (memory_kib("VmHWM") - rss_before_kib) * 1024
    rows_per_block = min(args.chunk_size, args.queries) if args.worker == "chunked" else args.queries
    print(json.dumps({"seconds": seconds, "run_seconds": run_seconds, "peak_extra_bytes": peak_extra_bytes,
                      "peak_was_reset": peak_was_reset,
                      "similarity_block_bytes": rows_per_block * args.gallery_size * 4, "metrics": metrics}))


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

def measure(method: str, gallery_size: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", method, "--gallery-size", str(gallery_size),
               "--queries", str(args.queries), "--dim", str(args.dim), "--chunk-size", str(args.chunk_size),
               "--seed", str(args.seed), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def compare(row: dict) -> None:
    """Add chunked/dense ratios and whether the methods agree on the metrics."""
    chunked = row["chunked"]
    for baseline in ("dense", "dense_argsort"):
        if baseline in row:
            row[f"time_ratio_chunked_over_{baseline}"] = ratio(chunked["seconds"], row[baseline]["seconds"])
            row[f"memory_ratio_chunked_over_{baseline}"] = ratio(chunked["peak_extra_bytes"],
                                                                 row[baseline]["peak_extra_bytes"])
            row[f"metrics_agree_with_{baseline}"] = all(
                abs(chunked["metrics"][key] - row[baseline]["metrics"][key]) < 1e-9 for key in chunked["metrics"])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    rows = []
    for gallery_size in args.gallery_sizes:
        methods = METHODS if gallery_size <= args.dense_max else ("chunked",)
        row: dict = {"gallery_size": gallery_size}
        for method in methods:
            row[method] = measure(method, gallery_size, args)
            print(f"G={gallery_size:>6} {method:<14} {row[method]['seconds']:7.2f} s  "
                  f"peak +{row[method]['peak_extra_bytes'] / 2**20:8.1f} MiB", flush=True)
        compare(row)
        rows.append(row)
    report = {"queries": args.queries, "dim": args.dim, "chunk_size": args.chunk_size, "seed": args.seed,
              "repeats": args.repeats,
              "seconds": "fastest timed run (least disturbed by other load), after an untimed warm-up",
              "machine": {"cpus": os.cpu_count(), "torch_threads": args.threads or torch.get_num_threads(),
                          "load_average_before": os.getloadavg(),
                          "python": platform.python_version(), "torch": torch.__version__},
              "memory_measure": "VmHWM growth over VmRSS before the run (peak reset via /proc/self/clear_refs)",
              "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
