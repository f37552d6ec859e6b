"""Serving throughput and latency of POST /v1/localize with and without @serve.batch.

The same app (gleam.serving.app.build_app: FastAPI ingress -> Retriever with the local GLEAM-C
architecture, tf_efficientnet_lite0 at 96 px, fresh weights, and a flat index of random unit vectors)
runs on a local Ray Serve; ``concurrency`` client threads (httpx) send ``requests`` uploads of a
96 px JPEG. Measured: requests/s over the whole burst, p50/p99 latency, and the batch sizes the
Retriever actually formed. ``max_batch_size=1`` is the no-batching baseline; the ratio is
batched / unbatched requests/s in the same run on the same machine.

    python benchmarks/bench_serve.py                   # writes benchmarks/results/serve.json
    python benchmarks/bench_serve.py --requests 400 --concurrency 32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_localize import make_checkpoint, make_index  # noqa: E402  (shared fixtures)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "serve.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--batch-wait", type=float, default=0.01)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--gallery", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def burst(url: str, image: bytes, requests: int, concurrency: int) -> dict:
    import httpx

    client = httpx.Client(timeout=120, limits=httpx.Limits(max_connections=concurrency))

    def one(_: int) -> float:
        started = time.perf_counter()
        response = client.post(url, files={"image": ("q.jpg", image)}, data={"modality": "uav", "top_k": "5"})
        response.raise_for_status()
        return time.perf_counter() - started

    for _ in range(concurrency):  # warm-up: models loaded, connections open
        one(0)
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = np.array(list(pool.map(one, range(requests))))
    wall = time.perf_counter() - started
    client.close()
    return {"requests": requests, "concurrency": concurrency, "seconds": round(wall, 2),
            "requests_per_second": round(requests / wall, 2),
            "latency_ms": {"p50": round(float(np.percentile(latencies, 50)) * 1000, 1),
                           "p99": round(float(np.percentile(latencies, 99)) * 1000, 1),
                           "mean": round(float(latencies.mean()) * 1000, 1)}}


def main(argv: list[str] | None = None) -> dict:
    import httpx
    import ray
    from ray import serve

    from gleam.data.schema import encode_jpeg
    from gleam.serving.app import build_app
    from gleam.serving.config import AutoscalingSection, DeploymentSection, ServeAppConfig

    args = parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    image = encode_jpeg(np.random.default_rng(0).integers(0, 256, (args.image_size, args.image_size, 3), np.uint8))
    results = []
    with tempfile.TemporaryDirectory(prefix="gleam-bench-serve-") as folder:
        checkpoint = make_checkpoint(folder, args.image_size, 128)
        index = make_index(folder, args.gallery, 128, checkpoint)
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
        port = 8000 + os.getpid() % 1000
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            for batch_size in args.batch_sizes:
                config = ServeAppConfig(index=index, checkpoint=checkpoint, explainer="", retriever=DeploymentSection(
                    num_cpus=1.0, max_batch_size=batch_size, batch_wait_timeout_s=args.batch_wait,
                    max_ongoing_requests=max(2 * batch_size, 8),
                    autoscaling=AutoscalingSection(min_replicas=1, max_replicas=1)))
                serve.run(build_app(config), name="gleam", route_prefix="/")
                url = f"http://127.0.0.1:{port}"
                measured = burst(url + "/v1/localize", image, args.requests, args.concurrency)
                batching = httpx.get(url + "/healthz", timeout=60).json()["retriever"]["batching"]
                measured.update({"max_batch_size": batch_size, "batch_wait_timeout_s": args.batch_wait,
                                 "mean_batch": round(batching["requests"] / max(batching["batches"], 1), 2),
                                 "max_batch": batching["max_batch"]})
                results.append(measured)
                print(json.dumps(measured))
                serve.delete("gleam")
        finally:
            serve.shutdown()
            ray.shutdown()
    base = results[0]["requests_per_second"]
    report = {"benchmark": "serve_localize", "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "image_size": args.image_size, "gallery": args.gallery, "runs": results,
              "ratio_requests_per_second_vs_unbatched": {str(r["max_batch_size"]): round(r["requests_per_second"] / base, 3)
                                                         for r in results},
              "p99_ratio_vs_unbatched": {str(r["max_batch_size"]): round(r["latency_ms"]["p99"] /
                                                                        results[0]["latency_ms"]["p99"], 3)
                                         for r in results}}
    from gleam.provenance import provenance

    report["provenance"] = provenance(seeds={"weights": 0, "gallery": 0, "image": 0})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
