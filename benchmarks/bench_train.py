"""GLEAM-C training throughput: the Ray Train loop vs a bare PyTorch loop on the same model,
batch and data, and the data pipeline's rate vs the trainer's consumption.

    python benchmarks/bench_train.py [--dataset data/synth] [--steps 12] [--out benchmarks/results/train.json]

Both loops call the same ``gleam.core.train.train_step`` on batches planned by the same
sampler from the same ``TrainingSet``, with the model in the trainer's memory layout
(channels_last); the bare loop runs in this process.  Ray sets OMP_NUM_THREADS=1 in a worker
with under 2 CPUs, so the bare loop is measured with 1 thread (same compute) and with torch's
default threads.

Steady state on both sides: the first step (oneDNN primitive creation, up to 6 s for an NCHW
model fed channels_last inputs) is left out of the bare loop's rate, and the trainer runs two
epochs of ``--steps`` and reports the second.  The data pipeline (Ray Data read + decode into
the ``TrainingSet``) is timed twice: cold (first read, workers start) and warm; its ratio to
the trainer's consumption uses the warm read, and the cold one is recorded beside it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import numpy as np
import torch


def bare_loop(config, train_set, steps: int, threads: int) -> float:
    """Samples/s of ``steps`` train steps after one warm-up step."""
    from gleam.core.model import GleamEncoder
    from gleam.core.phases import cosine_with_warmup
    from gleam.core.train import _phase_rows, _sub_index, train_step
    from gleam.data.sampling import plan_epoch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        encoder = GleamEncoder(config.model).to(memory_format=torch.channels_last)  # as train_loop has it
        data = encoder.data_config()
        mean, std = tuple(data["mean"]), tuple(data["std"])
        phase = config.phases[0]
        rows = _phase_rows(train_set, phase)
        plan = plan_epoch(_sub_index(train_set, rows), phase.sampling, epoch=0, seed=0,
                          global_batch=config.train.global_batch, world_size=1)[:steps + 1]
        optimizer = torch.optim.AdamW(encoder.parameters(), lr=phase.lr)
        scheduler = cosine_with_warmup(optimizer, len(plan), 0, 0.1)
        rng = np.random.default_rng(0)
        device = torch.device("cpu")
        started = None
        for position, step in enumerate(plan):
            if position == 1:
                started = time.perf_counter()  # after the warm-up step
            train_step(encoder, encoder.logit_scale, train_set.fetch(rows[step[0]]), optimizer, scheduler,
                       config, device, mean, std, rng)
        return (len(plan) - 1) * config.train.global_batch / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous)


def ray_loop(config, train_set, val_set, steps: int, workers: int, cpus: float, tmp: str) -> float:
    from gleam.core.train import make_trainer

    config = copy.deepcopy(config)
    config.ray.num_workers, config.ray.cpus_per_worker = workers, cpus
    config.run.output_dir, config.run.name = tmp, f"bench-{workers}w-{time.time_ns()}"
    result = make_trainer(config, train_set, val_set).fit()
    return float(result.metrics["train_samples_per_second"])


def main() -> None:
    import tempfile

    import ray

    from gleam.config import load_config
    from gleam.core.train import TrainCoreConfig, load_splits

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="data/synth")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", default="benchmarks/results/train.json")
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    phase = ("phases=[{name: bench, epochs: 2, modalities: [uav, streetmap, panorama, ground], lr: 0.0005,"
             " sampling: {batch_mode: mixed}}]")
    config = load_config(TrainCoreConfig, "configs/local-cpu.yaml",
                         [f"data.dataset={args.dataset}", phase, f"train.global_batch={args.batch}",
                          f"train.max_steps_per_epoch={args.steps}", "train.final_eval=false"])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    started = time.perf_counter()
    train_set, val_set = load_splits(config)
    cold_seconds = time.perf_counter() - started
    started = time.perf_counter()
    train_set, val_set = load_splits(config)  # warm: the read tasks' workers are up
    load_seconds = time.perf_counter() - started
    pipeline_rate = (len(train_set) + len(val_set)) / load_seconds
    results = {"backbone": config.model.backbone, "global_batch": args.batch, "steps": args.steps,
               "train_samples": len(train_set)}
    with tempfile.TemporaryDirectory() as tmp:
        results["bare_1_thread_samples_per_s"] = bare_loop(config, train_set, args.steps, 1)
        results["bare_default_threads_samples_per_s"] = bare_loop(config, train_set, args.steps, torch.get_num_threads())
        results["ray_train_1_worker_samples_per_s"] = ray_loop(config, train_set, val_set, args.steps, 1, 1.0, tmp)
        results["ray_train_2_workers_samples_per_s"] = ray_loop(config, train_set, val_set, args.steps, 2, 0.5, tmp)
    results["ratio_ray_1_worker_vs_bare_1_thread"] = results["ray_train_1_worker_samples_per_s"] / results["bare_1_thread_samples_per_s"]
    results["ratio_ray_2_workers_vs_bare_default_threads"] = results["ray_train_2_workers_samples_per_s"] / results["bare_default_threads_samples_per_s"]
    results["data_pipeline_samples_per_s"] = pipeline_rate
    results["data_pipeline_seconds"] = load_seconds
    results["data_pipeline_cold_seconds"] = cold_seconds
    results["data_pipeline_cold_samples_per_s"] = (len(train_set) + len(val_set)) / cold_seconds
    results["protocol"] = ("steady state: bare loop after 1 warm-up step; Ray Train's second of 2 epochs of "
                           f"{args.steps} steps; channels_last on both sides; pipeline rate from a warm read")
    results["ratio_pipeline_rate_vs_trainer_consumption"] = pipeline_rate / results["ray_train_2_workers_samples_per_s"]
    ray.shutdown()
    from gleam.provenance import provenance

    results["provenance"] = provenance(seeds={"weights": 0, "plan": 0})
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump({k: round(v, 4) if isinstance(v, float) else v for k, v in results.items()}, handle, indent=2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
