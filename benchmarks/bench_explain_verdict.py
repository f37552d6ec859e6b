"""GLEAM-X verdicts: explanation supervision vs explanation + label-only supervision (the paper's
two variants) vs a label-only warm start before both, on held-out regions of the synthetic world,
against the majority-class baseline.

    python benchmarks/bench_explain_verdict.py [--locations 384] [--val-locations 96]
        [--modalities uav] [--steps-per-epoch 64] [--epochs 10] [--warm-epochs 6]
        [--variants explanations,explanations+label_only,warm_start,label_only,warm_start+example_loss]
        [--work /tmp/gleam-bench-explain]

Makes a synthetic world (all four biomes, ``--modalities`` views, 64 px; kept in ``--work`` and
reused), then fine-tunes the tiny Qwen2.5-VL with the real job code path
(``gleam.explain.train.train_explain``: Ray Train, 2 DDP workers, LoRA), once per variant:
``explanations`` (explanations only), ``explanations+label_only`` (a label-only twin of every pair
added, ``data.verdict_only_fraction=1``), ``warm_start`` (that data after ``--warm-epochs`` epochs
on the twins alone, ``train.verdict_only_epochs``; that much longer), ``label_only`` (the
warm-start epochs alone) and ``warm_start+example_loss`` (``warm_start`` with the loss averaged per
example, ``train.loss_reduction=example``). Each model answers every validation pair twice: with
an explanation prompt (the verdict parsed from its last line) and with a verdict-only prompt.
Reports accuracy, the majority baseline and one binomial standard error per cell. JSON goes to
``benchmarks/results/explain_verdict.json``; variants not run this time keep their earlier entry.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "explain_verdict.json"


def make_world(folder: str, locations: int, val_locations: int, modalities: list[str]) -> None:
    from gleam.config import load_config
    from gleam.data.make_shards import MakeShardsConfig, make_shards

    make_shards(load_config(MakeShardsConfig, str(ROOT / "configs" / "make-shards-local.yaml"), [
        f"output={folder}", f"synth.locations={{train: {locations}, val: {val_locations}}}",
        "synth.distractors=0", f"synth.modalities=[{', '.join(modalities)}]", "synth.image_size=64",
        "synth.regions_per_split=4", "synth.locations_per_task=24"]))


# name -> (data.verdict_only_fraction, label-only epochs first, then the --epochs of all data?,
#          train.loss_reduction)
VARIANTS = {"explanations": (0.0, False, True, "token"), "explanations+label_only": (1.0, False, True, "token"),
            "warm_start": (1.0, True, True, "token"), "label_only": (0.0, True, False, "token"),
            "warm_start+example_loss": (1.0, True, True, "example")}


def colour_pair_auc(world: str, modalities: list[str], seed: int = 1) -> dict:
    """How far colour alone separates the validation pairs: the AUC of a colour-histogram distance
    (``gleam.data.synth.baseline``) over the same positives and random negatives the runs are
    scored on (``build_examples`` with the validation seed, run.seed + 1)."""
    import numpy as np

    from gleam.data.schema import decode_image
    from gleam.data.synth.baseline import chi_square_distances, colour_histogram
    from gleam.explain.dataset import build_examples
    from gleam.explain.train import _read_split

    examples = build_examples(_read_split(world, "val", modalities), hard_fraction=0.0, seed=seed)
    histograms = {}

    def histogram(data: bytes) -> np.ndarray:
        if id(data) not in histograms:
            histograms[id(data)] = colour_histogram(decode_image(data))
        return histograms[id(data)]

    closeness = np.array([-chi_square_distances(histogram(e.query_image)[None], histogram(e.satellite_image)[None])[0, 0]
                          for e in examples])
    match = np.array([bool(e.match) for e in examples])
    positives, negatives = closeness[match], closeness[~match]
    wins = (positives[:, None] > negatives[None, :]).mean() + 0.5 * (positives[:, None] == negatives[None, :]).mean()
    return {"auc": round(float(wins), 4), "pairs": len(examples)}


def cell(report: dict) -> dict:
    accuracy = report["match"]["accuracy"]
    n = report["match"]["support"]
    return {"accuracy": accuracy, "majority_baseline": report["majority_baseline"], "examples": n,
            "standard_error": math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / n) if n else None,
            "parse_rate": report["parse_rate"],
            "by_modality": {k: v["accuracy"] for k, v in report["groups"].get("modality", {}).items()}}


def main() -> None:
    import ray

    from gleam.config import load_config
    from gleam.explain.train import TrainExplainConfig, train_explain

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--locations", type=int, default=384)
    parser.add_argument("--val-locations", type=int, default=96)
    parser.add_argument("--modalities", default="uav")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps-per-epoch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=56)
    parser.add_argument("--warm-epochs", type=int, default=6)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--work", default="/tmp/gleam-bench-explain")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()
    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    world = os.path.join(args.work, "synth")
    started = time.perf_counter()
    if not os.path.exists(os.path.join(world, "manifest.json")):
        make_world(world, args.locations, args.val_locations, modalities)
    results: dict = {"benchmark": "explain_verdict", "locations": args.locations,
                     "val_locations": args.val_locations, "modalities": modalities,
                     "steps": args.epochs * args.steps_per_epoch, "global_batch": 12,
                     "image_size": args.image_size, "world_seconds": round(time.perf_counter() - started, 1),
                     "colour_histogram_val_pairs": colour_pair_auc(world, modalities), "variants": {}}
    previous = {}
    if os.path.exists(args.out):
        with open(args.out) as handle:
            previous = json.load(handle).get("variants", {})
    for name in VARIANTS:
        if name not in chosen:
            if name in previous:
                results["variants"][name] = previous[name]
            continue
        fraction, warm, then_all, reduction = VARIANTS[name]
        warm_epochs = args.warm_epochs if warm else 0
        epochs = warm_epochs + (args.epochs if then_all else 0)
        config = load_config(TrainExplainConfig, str(ROOT / "configs" / "explain-local.yaml"), [
            f"data.source={world}", f"run.output_dir={os.path.join(args.work, 'runs')}", f"run.name={name}",
            f"data.modalities=[{', '.join(modalities)}]", f"data.verdict_only_fraction={fraction}",
            f"data.max_val_examples={2 * args.val_locations * len(modalities)}",
            f"train.epochs={epochs}", f"train.verdict_only_epochs={warm_epochs}", f"train.loss_reduction={reduction}",
            f"train.max_steps_per_epoch={args.steps_per_epoch}",
            "train.per_worker_batch=6", "train.eval_batch=16", "train.max_new_tokens=128", "train.eval_every=0",
            f"model.image_size={args.image_size}", "model.max_length=320", "ray.num_workers=2"])
        begun = time.perf_counter()
        summary = train_explain(config)
        entry = {"verdict_only_fraction": fraction, "verdict_only_epochs": warm_epochs, "loss_reduction": reduction,
                 "steps": epochs * args.steps_per_epoch,
                 "train_examples": summary["data"]["train_examples"],
                 "seconds": round(time.perf_counter() - begun, 1), "final_loss": summary["final"].get("loss")}
        with open(os.path.join(summary["run_dir"], "eval.json")) as handle:
            evaluation = json.load(handle)
        for split in ("val", "fit"):
            report = evaluation.get(split)
            if report:
                entry[split] = {"explanation_prompt": cell(report), "verdict_only_prompt": cell(report["verdict_only"]),
                                "well_formed_rate": report["well_formed_rate"]}
        results["variants"][name] = entry
        print(name, json.dumps(entry), flush=True)
    results["environment"] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    ray.shutdown()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
