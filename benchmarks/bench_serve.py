"""Serving throughput and latency of POST /v1/localize with and without @serve.batch.

The same app (gleam.serving.app.build_app: FastAPI ingress -> Retriever with the local GLEAM-C
architecture, tf_efficientnet_lite0 at 96 px, fresh weights, and a flat index of random unit vectors)
runs on a local Ray Serve; ``concurrency`` client threads (httpx) send ``requests`` uploads of a
96 px JPEG. Measured: requests/s over the whole burst, p50/p99 latency, and the batch sizes the
Retriever actually formed, for each batch wait (``--batch-waits``). ``max_batch_size=1`` is the
no-batching baseline; the ratio is batched / unbatched requests/s in the same run on the same
machine. ``cpu_ms_per_request``: CPU milliseconds each process role (client, Serve's HTTP proxy,
Ingress, Retriever, the rest of Ray) spent per request over the burst (warm-up included): where a
request's time goes on a machine whose cores are all busy. ``forward_batch_speedup`` is the encoder's own per-image gain from batching at one
thread (measured here, before Serve starts): where the forward pass is the Retriever's cost,
batching cannot raise requests/s by more than that.

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
    parser.add_argument("--batch-waits", type=float, nargs="+", default=[0.01, 0.05],
                        help="batch_wait_timeout_s of each batched run (the unbatched run has none)")
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


def process_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) so far of every process on this machine, grouped by role:
    ``client`` (this process: the httpx threads), ``proxy`` (Serve's HTTP proxy), ``Ingress`` /
    ``Retriever`` (the replicas, by Ray's process title), ``controller`` (Serve's controller),
    ``ray`` (raylet, GCS, idle workers) and ``other``; differences over a burst, per request, say
    where a request's CPU goes."""
    import psutil

    roles: dict[str, float] = {}
    me = os.getpid()
    for process in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
        try:
            times = process.info["cpu_times"]
            line = " ".join(process.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if times is None:
            continue
        if process.info["pid"] == me:
            role = "client"
        elif "ServeReplica:gleam:" in line:
            role = line.split("ServeReplica:gleam:", 1)[1].split()[0].split(".")[0]
        elif "ProxyActor" in line:
            role = "proxy"
        elif "ServeController" in line:
            role = "controller"
        elif "ray" in line:
            role = "ray"
        else:
            role = "other"
        roles[role] = roles.get(role, 0.0) + times.user + times.system
    return roles


def cpu_per_request(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
    """CPU milliseconds per request of each role between two ``process_cpu_seconds`` readings."""
    return {role: round((after.get(role, 0.0) - before.get(role, 0.0)) / requests * 1000, 2)
            for role in sorted(set(before) | set(after)) if after.get(role, 0.0) - before.get(role, 0.0) > 0}


def forward_ms_per_image(checkpoint: str, image_size: int, batch_sizes: list[int], seconds: float = 2.0) -> dict:
    """Encoder forward time per image (ms) at each batch size, 1 torch thread (a Retriever replica
    at one CPU), channels-last as serving feeds it: what batching can gain in the forward at most."""
    import torch

    from gleam.core.model import GleamEncoder

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = GleamEncoder.from_pretrained(checkpoint).eval()
        times = {}
        with torch.inference_mode():
            for batch in batch_sizes:
                images = torch.randn(batch, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
                for _ in range(3):
                    model(images)
                runs, started = 0, time.perf_counter()
                while time.perf_counter() - started < seconds:
                    model(images)
                    runs += 1
                times[str(batch)] = round((time.perf_counter() - started) / runs / batch * 1000, 2)
        return times
    finally:
        torch.set_num_threads(previous)


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
        forward = forward_ms_per_image(checkpoint, args.image_size, sorted({1, *args.batch_sizes}))
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
        port = 8000 + os.getpid() % 1000
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            runs = [(size, wait) for size in args.batch_sizes for wait in ([0.0] if size == 1 else args.batch_waits)]
            for batch_size, wait in runs:
                config = ServeAppConfig(index=index, checkpoint=checkpoint, explainer="", retriever=DeploymentSection(
                    num_cpus=1.0, max_batch_size=batch_size, batch_wait_timeout_s=wait,
                    max_ongoing_requests=max(2 * batch_size, 8),
                    autoscaling=AutoscalingSection(min_replicas=1, max_replicas=1)))
                serve.run(build_app(config), name="gleam", route_prefix="/")
                url = f"http://127.0.0.1:{port}"
                cpu_before = process_cpu_seconds()
                measured = burst(url + "/v1/localize", image, args.requests, args.concurrency)
                measured["cpu_ms_per_request"] = cpu_per_request(cpu_before, process_cpu_seconds(),
                                                                 args.requests + args.concurrency)
                batching = httpx.get(url + "/healthz", timeout=60).json()["retriever"]["batching"]
                measured.update({"max_batch_size": batch_size, "batch_wait_timeout_s": wait,
                                 "mean_batch": round(batching["requests"] / max(batching["batches"], 1), 2),
                                 "max_batch": batching["max_batch"]})
                results.append(measured)
                print(json.dumps(measured))
                serve.delete("gleam")
        finally:
            serve.shutdown()
            ray.shutdown()
    base = results[0]["requests_per_second"]

    def name(run: dict) -> str:
        return f"{run['max_batch_size']}@{run['batch_wait_timeout_s']:g}s"

    largest = str(max(args.batch_sizes))
    report = {"benchmark": "serve_localize", "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "image_size": args.image_size, "gallery": args.gallery, "concurrency": args.concurrency,
              "runs": results,
              "ratio_requests_per_second_vs_unbatched": {name(r): round(r["requests_per_second"] / base, 3)
                                                         for r in results},
              "p99_ratio_vs_unbatched": {name(r): round(r["latency_ms"]["p99"] / results[0]["latency_ms"]["p99"], 3)
                                         for r in results},
              # the encoder's own gain from batching at one thread: batching cannot raise the
              # Retriever's rate by more than this where the forward pass is its cost
              "forward_ms_per_image_1_thread": forward,
              "forward_batch_speedup": round(forward["1"] / forward[largest], 3)}
    from gleam.provenance import provenance

    report["provenance"] = provenance(seeds={"weights": 0, "gallery": 0, "image": 0})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
