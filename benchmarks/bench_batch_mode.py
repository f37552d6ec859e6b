"""Mixed vs one-modality batches: the same short GLEAM-C run with each ``batch_mode``.

    python benchmarks/bench_batch_mode.py --dataset data/synth [--locations 24] [--epochs 24]
        [--seeds 0 1 2] [--out benchmarks/results/batch_mode.json]

Trains in this process (same model init, same data, same number of steps for both modes) on
the first ``--locations`` training locations in all four modalities, without geometric
augmentation, once per seed (the seed sets the initial weights and the batch plans), and
reports per modality: retrieval over those training locations (the fit) and over the
validation split's locations (held out: other regions), plus samples/s; then mean and standard
deviation over seeds and the per-seed difference mixed - per_modality. JSON goes to ``--out``.
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


def retrieval(encoder, dataset, rows, device, mean, std) -> dict:
    """query->satellite R@1/R@5 per modality over ``rows``, one gallery tile per location."""
    from gleam.core.evaluate import evaluate_retrieval
    from gleam.core.train import embed_rows

    first: dict[str, int] = {}
    for row in rows:
        first.setdefault(dataset.location_ids[row], int(row))
    gallery = np.array(list(first.values()))
    metrics = evaluate_retrieval(
        embed_rows(encoder, dataset, rows, "query", 64, device, mean, std),
        [dataset.location_ids[r] for r in rows],
        embed_rows(encoder, dataset, gallery, "satellite", 64, device, mean, std), list(first),
        query_modalities=[dataset.modalities[r] for r in rows], both_directions=False)["query->satellite"]
    return {"locations": len(first), "chance_R@1": 100.0 / len(first),
            "R@1": {m: v["R@1"] for m, v in metrics.items()}, "R@5": {m: v["R@5"] for m, v in metrics.items()}}


def run(config, train_set, rows, batch_mode: str, epochs: int, per_epoch: int, seed: int = 0,
        val_set=None, val_rows=None) -> dict:
    from gleam.core.evaluate import evaluate_retrieval
    from gleam.core.model import GleamEncoder
    from gleam.core.phases import cosine_with_warmup
    from gleam.core.train import _sub_index, embed_rows, train_step
    from gleam.data.sampling import plan_epoch

    phase = config.phases[0]
    phase.sampling.batch_mode = batch_mode
    torch.manual_seed(seed)
    encoder = GleamEncoder(config.model)
    data = encoder.data_config()
    mean, std = tuple(data["mean"]), tuple(data["std"])
    index = _sub_index(train_set, rows)
    plans = [plan_epoch(index, phase.sampling, epoch=e, seed=seed, global_batch=config.train.global_batch)
             for e in range(epochs)]
    steps = per_epoch * epochs
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=phase.lr, weight_decay=config.optim.weight_decay)
    scheduler = cosine_with_warmup(optimizer, steps, phase.warmup_steps, phase.min_lr_ratio)
    rng, device = np.random.default_rng(seed), torch.device("cpu")
    losses, started = [], time.perf_counter()
    for plan in plans:
        for step in plan[:per_epoch]:
            losses.append(train_step(encoder, encoder.logit_scale, train_set.fetch(rows[step[0]]), optimizer,
                                     scheduler, config, device, mean, std, rng))
    seconds = time.perf_counter() - started
    result = {"seed": seed, "steps": steps, "samples_per_s": steps * config.train.global_batch / seconds,
              "final_loss": float(np.mean(losses[-per_epoch:])),
              "fit": retrieval(encoder, train_set, rows, device, mean, std)}
    if val_set is not None:
        result["held_out"] = retrieval(encoder, val_set, val_rows, device, mean, std)
    return result


def summarise(runs: list[dict], section: str) -> dict:
    """Mean and standard deviation over seeds of R@1 per modality in ``section``."""
    out = {}
    for modality in runs[0][section]["R@1"]:
        values = np.array([r[section]["R@1"][modality] for r in runs])
        out[modality] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
    return out


def main() -> None:
    import ray

    from gleam.config import load_config
    from gleam.core.train import TrainCoreConfig, _phase_rows, load_splits

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="data/synth")
    parser.add_argument("--locations", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--modes", nargs="+", default=["mixed", "per_modality"], choices=["mixed", "per_modality"])
    parser.add_argument("--val-locations", type=int, default=64, help="held-out locations scored (0: none)")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[],
                        help="extra config overrides, e.g. model.logit_scale_init=1.0")
    parser.add_argument("--out", default="benchmarks/results/batch_mode.json")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    config = load_config(TrainCoreConfig, "configs/local-cpu.yaml", [
        f"data.dataset={args.dataset}", "train.global_batch=12", "model.image_size=64",
        "model.panorama_size=[64, 128]", "augment.rotate_satellite=false", "augment.flip_probability=0.0",
        "phases=[{name: all, epochs: 1, modalities: [uav, streetmap, panorama, ground], lr: 0.001, warmup_steps: 30}]",
        *args.overrides])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    train_set, val_set = load_splits(config)
    rows = _phase_rows(train_set, config.phases[0])
    keep = sorted({train_set.location_ids[r] for r in rows})[:args.locations]
    rows = np.array([r for r in rows if train_set.location_ids[r] in keep])
    val_rows = None
    if args.val_locations and val_set is not None:
        val_rows = _phase_rows(val_set, config.phases[0])
        held = set(sorted({val_set.location_ids[r] for r in val_rows})[:args.val_locations])
        val_rows = np.array([r for r in val_rows if val_set.location_ids[r] in held])
    results: dict = {"locations": len(keep), "samples": len(rows), "chance_R@1": 100.0 / len(keep),
                     "seeds": args.seeds, "epochs": args.epochs, "overrides": args.overrides}
    modes = tuple(args.modes)
    per_epoch = min(steps_per_epoch(config, train_set, rows, mode, args.epochs) for mode in modes)
    if per_epoch == 0:
        raise SystemExit(f"--locations {len(keep)} is too few for a global batch of {config.train.global_batch} "
                         "in one-modality batches: use at least that many locations")
    for mode in modes:
        results[mode] = {"runs": []}
        for seed in args.seeds:
            outcome = run(config, train_set, rows, mode, args.epochs, per_epoch, seed,
                          val_set if val_rows is not None else None, val_rows)
            results[mode]["runs"].append(outcome)
            print(mode, json.dumps(outcome), flush=True)
        for section in ("fit", "held_out"):
            if section in results[mode]["runs"][0]:
                results[mode][section] = summarise(results[mode]["runs"], section)
    for section in ("fit", "held_out"):
        if len(modes) < 2 or section not in results["mixed"]:
            continue
        differences = {}
        for modality in results["mixed"][section]:
            delta = np.array([m[section]["R@1"][modality] - p[section]["R@1"][modality]
                              for m, p in zip(results["mixed"]["runs"], results["per_modality"]["runs"])])
            differences[modality] = {"mean": float(delta.mean()),
                                     "std": float(delta.std(ddof=1)) if len(delta) > 1 else 0.0,
                                     "mixed_better_in": int((delta > 0).sum()), "of": len(delta)}
        results[f"mixed_minus_per_modality_{section}"] = differences
    ray.shutdown()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
