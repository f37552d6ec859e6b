"""Batch localization throughput (jobs/localize_batch.py's pipeline) against the encoder's raw
forward rate: same model, same batch size, same image size, same number of CPU threads.

- ``raw``: ``GleamEncoder`` forward passes on a ready, normalised ``[B, 3, S, S]`` tensor in one
  process with ``torch.set_num_threads(T)``: the ceiling for embedding alone.
- ``pipeline``: ``gleam.retrieval.batch.localize_batch`` over a folder of JPEG files at the
  encoder's input size: list, read, decode, resize (Ray tasks), embed + flat-index search
  (actor pool), stream results to Parquet + JSON lines.  ``end_to_end`` divides the images by
  the job's whole time (actor start-up and model/index loading included); ``marginal`` is
  ``(N2 - N1) / (t2 - t1)`` from runs over N1 and N2 images, i.e. the steady-state rate with
  the fixed start-up costs taken out; ``steady`` is the same within one run (the report's
  ``steady_images_per_second``: images after the first result batch over the time after it) and
  ``startup_seconds`` the time until that first batch (listing, actor start, model + index load).
- ``stage``: the actor stage alone (embed + search + result table) called in-process on ready
  batches at 1 thread: how much of the gap is the stage and how much Ray's plumbing.
- ratio = pipeline images/s / raw images/s at the same total thread count (the actors' threads).

The model is the local GLEAM-C architecture (configs/local-cpu.yaml: tf_efficientnet_lite0, 96 px,
128-d; ``--backbone`` another timm name) with fresh weights (speed does not depend on the weights);
the gallery is random unit vectors.  The raw rate is the faster of the two memory layouts
(NCHW-contiguous and channels-last), so the ratio is against the encoder's best bare speed.

    python benchmarks/bench_localize.py                      # writes benchmarks/results/localize.json
    python benchmarks/bench_localize.py --images 128 256 --out /tmp/localize.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "localize.json"
# actor pools "ACTORSxCPUS": each actor runs max(1, round(CPUS)) torch threads
DEFAULT_POOLS = ["1x1.0"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[256, 1024], metavar="N",
                        help="folder sizes (2 or more; marginal = between the smallest and the largest)")
    parser.add_argument("--headline", type=int, default=1024, help="the size the ratios are given at (one of --images)")
    parser.add_argument("--pools", nargs="+", default=DEFAULT_POOLS,
                        help="actor pools ACTORSxCPUS, e.g. 1x1.0 2x0.75 (2 cores: keep the sum + 0.25 <= 2)")
    parser.add_argument("--repeats", type=int, default=2, help="pipeline runs per size (fastest kept)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--embedding-dim", type=int, default=128)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0", help="timm backbone (the local default)")
    parser.add_argument("--gallery", type=int, default=10_000)
    parser.add_argument("--raw-seconds", type=float, default=4.0, help="timed seconds per raw measurement")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def make_checkpoint(folder: str, image_size: int, dim: int, backbone: str = "tf_efficientnet_lite0") -> str:
    import torch

    from gleam.core.model import GleamEncoder, ModelConfig

    torch.manual_seed(0)
    path = os.path.join(folder, "checkpoint")
    GleamEncoder(ModelConfig(backbone=backbone, embedding_dim=dim, image_size=image_size,
                             panorama_size=[image_size, 2 * image_size], logit_scale_init=0.0)).save_pretrained(path)
    return path


def make_index(folder: str, count: int, dim: int, checkpoint: str) -> str:
    """A flat index of ``count`` random unit vectors, published as one build with the embedding
    settings of ``checkpoint`` (``retrieval.json``), as ``jobs/build_index.py`` writes it."""
    from gleam.retrieval.build import RETRIEVAL_FILE
    from gleam.retrieval.embed import EMBEDDING_KEY, Embedder
    from gleam.retrieval.folder import BuildWriter
    from gleam.retrieval.index import GalleryIndex, IndexConfig

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    path = os.path.join(folder, "index")
    index = GalleryIndex.build(vectors, [f"tile{i:06d}" for i in range(count)], rng.uniform(-60, 60, count),
                               rng.uniform(-170, 170, count), IndexConfig(kind="flat"), checkpoint=checkpoint)
    settings = Embedder(checkpoint, device="cpu").settings()
    with BuildWriter(path) as build:
        index.write_files(build)
        build.write_json(RETRIEVAL_FILE, {"tta": settings["tta"], "gallery_splits": None, EMBEDDING_KEY: settings,
                                          "build_id": build.build_id})
    return path


def make_images(folder: str, count: int, size: int) -> str:
    from gleam.data.schema import encode_jpeg

    rng = np.random.default_rng(1)
    os.makedirs(folder, exist_ok=True)
    for number in range(count):
        image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        with open(os.path.join(folder, f"img{number:05d}.jpg"), "wb") as handle:
            handle.write(encode_jpeg(image))
    return folder


def raw_forward_rate(checkpoint: str, batch_size: int, image_size: int, threads: int, seconds: float,
                     repeats: int = 3) -> float:
    """Images/s of encoder forward passes on a ready batch, ``threads`` torch threads; the best
    of ``repeats`` timed windows (other processes on a shared machine only ever slow it down) and
    of the two memory layouts (NCHW-contiguous, channels-last: which is faster depends on the
    backbone and the CPU)."""
    import torch

    from gleam.core.model import GleamEncoder

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = GleamEncoder.from_pretrained(checkpoint).eval()
        contiguous = torch.randn(batch_size, 3, image_size, image_size)
        rates = []
        with torch.inference_mode():
            for batch in (contiguous, contiguous.contiguous(memory_format=torch.channels_last)):
                for _ in range(3):
                    model(batch)
                for _ in range(repeats):
                    done, started = 0, time.perf_counter()
                    while time.perf_counter() - started < seconds / repeats:
                        model(batch)
                        done += batch_size
                    rates.append(done / (time.perf_counter() - started))
        return max(rates)
    finally:
        torch.set_num_threads(previous)


def stage_rate(checkpoint: str, index: str, batch_size: int, image_size: int, threads: int, seconds: float) -> float:
    """Images/s of the pipeline's actor stage (``LocalizeStage``: embed + search + result table)
    called in-process on ready batches: the pipeline minus Ray's scheduling, decoding and writing."""
    import torch

    from gleam.retrieval.batch import LocalizeStage

    previous = torch.get_num_threads()
    stage = LocalizeStage(checkpoint, index, 5, "cpu", batch_size, threads, False)
    try:
        rng = np.random.default_rng(2)
        images = [rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8) for _ in range(batch_size)]
        batch = {"path": np.array([f"img{i}" for i in range(batch_size)], dtype=object),
                 "modality": np.array(["uav"] * batch_size, dtype=object),
                 "pixels": np.array([image.tobytes() for image in images], dtype=object),
                 "height": np.full(batch_size, image_size, np.int32), "width": np.full(batch_size, image_size, np.int32),
                 "error": np.array([""] * batch_size, dtype=object)}
        for _ in range(3):
            stage(batch)
        best = 0.0
        for _ in range(3):
            done, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds / 3:
                stage(batch)
                done += batch_size
            best = max(best, done / (time.perf_counter() - started))
        return best
    finally:
        torch.set_num_threads(previous)


def pipeline_run(folder: str, index: str, output: str, actors: int, cpus: float, batch_size: int) -> dict:
    from gleam.config import RayConfig
    from gleam.retrieval.batch import LocalizeBatchConfig, ReadConfig, localize_batch

    config = LocalizeBatchConfig(input=folder, index=index, output=output, modality="uav", top_k=5,
                                 read=ReadConfig(files_per_block=batch_size, cpus_per_task=0.25),
                                 ray=RayConfig(num_workers=actors, cpus_per_worker=cpus))
    config.embed.batch_size = batch_size
    report = localize_batch(config)
    assert report["errors"] == 0, report["error_examples"]
    return report


def main(argv: list[str] | None = None) -> dict:
    import ray
    import torch

    args = parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    sizes = sorted(set(args.images))
    if len(sizes) < 2 or args.headline not in sizes:
        raise SystemExit(f"--images {args.images}: give 2 or more sizes including --headline {args.headline}")
    n1, n2, head = sizes[0], sizes[-1], args.headline
    with tempfile.TemporaryDirectory(prefix="gleam-bench-localize-") as folder:
        checkpoint = make_checkpoint(folder, args.image_size, args.embedding_dim, args.backbone)
        index = make_index(folder, args.gallery, args.embedding_dim, checkpoint)
        inputs = {n: make_images(os.path.join(folder, f"images{n}"), n, args.image_size) for n in sizes}
        pools = [(int(p.split("x")[0]), float(p.split("x")[1])) for p in args.pools]
        threads_needed = sorted({actors * max(1, round(cpus)) for actors, cpus in pools})
        load_before = os.getloadavg()
        raw = {t: raw_forward_rate(checkpoint, args.batch_size, args.image_size, t, args.raw_seconds)
               for t in threads_needed}
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        pipelines = []
        try:
            for actors, cpus in pools:
                threads = actors * max(1, round(cpus))
                runs = {}
                for n in sizes:
                    tries = [pipeline_run(inputs[n], index, os.path.join(folder, f"out-{actors}-{n}-{r}"), actors,
                                          cpus, args.batch_size) for r in range(args.repeats)]
                    runs[n] = min(tries, key=lambda report: report["seconds"])
                    runs[n]["driver_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
                marginal = (n2 - n1) / (runs[n2]["seconds"] - runs[n1]["seconds"])
                end_to_end = runs[head]["images_per_second"]
                pipelines.append({
                    "actors": actors, "cpus_per_actor": cpus, "torch_threads_total": threads,
                    "seconds": {str(n): runs[n]["seconds"] for n in sizes},
                    "end_to_end_images_per_second": {str(n): runs[n]["images_per_second"] for n in sizes},
                    "marginal_images_per_second": round(marginal, 1),
                    # one run's own split (localize_batch's report): until the first result batch, then after it
                    "startup_seconds": {str(n): runs[n]["startup_seconds"] for n in sizes},
                    "steady_images_per_second": {str(n): runs[n]["steady_images_per_second"] for n in sizes},
                    "driver_peak_rss_mib": {str(n): runs[n]["driver_peak_rss_mib"] for n in sizes},
                    "raw_forward_images_per_second": round(raw[threads], 1),
                    "ratio_end_to_end": round(end_to_end / raw[threads], 3),
                    "ratio_marginal": round(marginal / raw[threads], 3),
                })
                print(json.dumps(pipelines[-1]))
        finally:
            ray.shutdown()
        # measured again after the pipelines: the best of both, so that a busy spell of other
        # processes during one measurement does not inflate the ratio
        raw_after = {t: raw_forward_rate(checkpoint, args.batch_size, args.image_size, t, args.raw_seconds)
                     for t in threads_needed}
        stage = stage_rate(checkpoint, index, args.batch_size, args.image_size, 1, args.raw_seconds)
        for entry in pipelines:
            threads = entry["torch_threads_total"]
            best = max(raw[threads], raw_after[threads])
            marginal = entry["marginal_images_per_second"]
            end_to_end = entry["end_to_end_images_per_second"][str(head)]
            entry.update({"raw_forward_images_per_second": round(best, 1),
                          "ratio_end_to_end": round(end_to_end / best, 3),
                          "ratio_marginal": round(marginal / best, 3),
                          "ratio_steady": round(entry["steady_images_per_second"][str(head)] / best, 3),
                          "ratio_end_to_end_by_images": {n: round(v / best, 3) for n, v in
                                                         entry["end_to_end_images_per_second"].items()}})
    result = {
        "benchmark": "localize_batch vs raw encoder forward",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "ray": ray.__version__},
        "model": {"backbone": args.backbone, "image_size": args.image_size, "embedding_dim": args.embedding_dim},
        "batch_size": args.batch_size, "images": sizes, "ratios_at_images": head, "gallery": args.gallery, "index": "flat",
        "raw_forward_images_per_second": {str(t): {"before": round(raw[t], 1), "after": round(raw_after[t], 1)}
                                          for t in threads_needed},
        "in_process_stage_images_per_second_1_thread": round(stage, 1),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "pipelines": pipelines,
        "note": "CPU-only; the machine may be shared with other processes, so treat small differences as noise",
    }
    from gleam.provenance import provenance

    result["provenance"] = provenance(seeds={"weights": 0, "gallery": 0, "images": 1})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
