"""Mixed vs one-modality batches: the same short GLEAM-C run with each ``batch_mode``.

    python benchmarks/bench_batch_mode.py --dataset data/synth [--locations 24] [--epochs 24]

Trains in this process (same model init, same data, same number of steps for both modes) on
the first ``--locations`` training locations in all four modalities, without geometric
augmentation, and reports retrieval over those locations (a fit: the number of steps a CPU
allows does not generalise to new regions yet) per modality, plus samples/s. JSON goes to
``benchmarks/results/batch_mode.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import numpy as np
import torch


def steps_per_epoch(config, train_set, rows, batch_mode: str, epochs: int) -> int:
    from gleam.core.train import _sub_index
    from gleam.data.sampling import plan_epoch

    sampling = copy.deepcopy(config.phases[0].sampling)
    sampling.batch_mode = batch_mode
    index = _sub_index(train_set, rows)
    return min(len(plan_epoch(index, sampling, epoch=e, seed=0, global_batch=config.train.global_batch))
               for e in range(epochs))


def run(config, train_set, rows, batch_mode: str, epochs: int, per_epoch: int) -> dict:
    from gleam.core.evaluate import evaluate_retrieval
    from gleam.core.model import GleamEncoder
    from gleam.core.phases import cosine_with_warmup
    from gleam.core.train import _sub_index, embed_rows, train_step
    from gleam.data.sampling import plan_epoch

    phase = config.phases[0]
    phase.sampling.batch_mode = batch_mode
    torch.manual_seed(0)
    encoder = GleamEncoder(config.model)
    data = encoder.data_config()
    mean, std = tuple(data["mean"]), tuple(data["std"])
    index = _sub_index(train_set, rows)
    plans = [plan_epoch(index, phase.sampling, epoch=e, seed=0, global_batch=config.train.global_batch)
             for e in range(epochs)]
    steps = per_epoch * epochs
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=phase.lr, weight_decay=config.optim.weight_decay)
    scheduler = cosine_with_warmup(optimizer, steps, phase.warmup_steps, phase.min_lr_ratio)
    rng, device = np.random.default_rng(0), torch.device("cpu")
    losses, started = [], time.perf_counter()
    for plan in plans:
        for step in plan[:per_epoch]:
            losses.append(train_step(encoder, encoder.logit_scale, train_set.fetch(rows[step[0]]), optimizer,
                                     scheduler, config, device, mean, std, rng))
    seconds = time.perf_counter() - started
    first = {}
    for row in rows:
        first.setdefault(train_set.location_ids[row], int(row))
    gallery = np.array(list(first.values()))
    metrics = evaluate_retrieval(
        embed_rows(encoder, train_set, rows, "query", 64, device, mean, std),
        [train_set.location_ids[r] for r in rows],
        embed_rows(encoder, train_set, gallery, "satellite", 64, device, mean, std), list(first),
        query_modalities=[train_set.modalities[r] for r in rows], both_directions=False)["query->satellite"]
    return {"steps": steps, "samples_per_s": steps * config.train.global_batch / seconds,
            "final_loss": float(np.mean(losses[-per_epoch:])),
            "R@1": {m: v["R@1"] for m, v in metrics.items()}, "R@5": {m: v["R@5"] for m, v in metrics.items()}}


def main() -> None:
    import ray

    from gleam.config import load_config
    from gleam.core.train import TrainCoreConfig, _phase_rows, load_splits

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="data/synth")
    parser.add_argument("--locations", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--out", default="benchmarks/results/batch_mode.json")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    config = load_config(TrainCoreConfig, "configs/local-cpu.yaml", [
        f"data.dataset={args.dataset}", "train.global_batch=12", "model.image_size=64",
        "model.panorama_size=[64, 128]", "augment.rotate_satellite=false", "augment.flip_probability=0.0",
        "phases=[{name: all, epochs: 1, modalities: [uav, streetmap, panorama, ground], lr: 0.001, warmup_steps: 3}]"])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    train_set, _ = load_splits(config)
    rows = _phase_rows(train_set, config.phases[0])
    keep = sorted({train_set.location_ids[r] for r in rows})[:args.locations]
    rows = np.array([r for r in rows if train_set.location_ids[r] in keep])
    results = {"locations": len(keep), "samples": len(rows), "chance_R@1": 100.0 / len(keep)}
    modes = ("mixed", "per_modality")
    per_epoch = min(steps_per_epoch(config, train_set, rows, mode, args.epochs) for mode in modes)
    for mode in modes:
        results[mode] = run(config, train_set, rows, mode, args.epochs, per_epoch)
        print(mode, json.dumps(results[mode]), flush=True)
    ray.shutdown()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
