"""Retrieval beyond one nearest neighbour, measured: flip TTA, multi-query fusion, re-ranking, calibration.

On one evaluation split of a shard dataset (default: the synthetic world's held-out ``test``
regions) and a GLEAM-C checkpoint, query->satellite R@1 of:

- ``flip_tta``: queries and tiles embedded as the mean of the image and its mirror
  (``gleam.core.tta``), against plain embeddings;
- ``rerank_qe`` / ``rerank_qe_dba``: αQE of the top-k (and database-side augmentation),
  ``gleam.core.rerank``, against plain ranking;
- ``fusion_all_views_mean|max``: every query image of a place (all modalities) fused into one
  query, against the mean single-image R@1 of that place's images;
- ``fusion_uav_headings_mean|max``: the UAV views of a place fused (only when the dataset has
  several UAV views per place), against the mean single-UAV-image R@1 of the place.

Each comparison is a paired difference (percentage points) with its standard error
(std of the per-query — or per-place — differences / sqrt(n)).  Calibration: Platt and isotonic
calibrators fitted on ``--fit-split`` (default ``val``; when the dataset has none, 2-fold
cross-fitting on the evaluated split, and the report says so), ECE (15 bins) of the raw top-1
similarity and of each calibrated confidence on the evaluated split.

    python benchmarks/bench_retrieval_extras.py --checkpoint runs/gleam-c-local/final --dataset data/synth
    python benchmarks/bench_retrieval_extras.py --checkpoint ... --dataset ... --out /tmp/extras.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "retrieval_extras.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="GLEAM-C folder (model.safetensors + config.json)")
    parser.add_argument("--dataset", required=True, help="shard dataset folder or s3:// URL with manifest.json")
    parser.add_argument("--split", default="test")
    parser.add_argument("--fit-split", default="val", help="split the calibrators are fitted on")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rerank-k", type=int, default=5)
    parser.add_argument("--rerank-alpha", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--num-cpus", type=int, default=0, help="CPUs of the local Ray runtime (0: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean of a - b (percentage points) with its standard error; a, b are 0-1 per unit."""
    difference = 100.0 * (np.asarray(a, np.float64) - np.asarray(b, np.float64))
    n = len(difference)
    return {"n": int(n), "with": float(100 * np.mean(a)) if n else None, "without": float(100 * np.mean(b)) if n else None,
            "difference_pp": float(difference.mean()) if n else None,
            "standard_error_pp": float(difference.std(ddof=1) / np.sqrt(n)) if n > 1 else None}


def per_place_baseline(outcomes: dict, members: list[np.ndarray]) -> np.ndarray:
    """Mean single-image top-1 correctness over each fused group's member images."""
    correct = outcomes["correct"].astype(np.float64)
    return np.array([correct[m].mean() for m in members])


def fusion_comparison(embeddings, single: dict, group_by: str, method: str, only_modality: str | None) -> dict:
    from gleam.core.evaluate import EvaluationEmbeddings, FusionConfig, fuse_queries, top1_outcomes

    if only_modality is not None:
        keep = [i for i, m in enumerate(embeddings.query_modalities) if m == only_modality]
        subset = EvaluationEmbeddings(**{**embeddings.__dict__,
                                         "queries": embeddings.queries[torch.tensor(keep, dtype=torch.long)],
                                         "query_ids": [embeddings.query_ids[i] for i in keep],
                                         "query_modalities": [only_modality] * len(keep),
                                         "query_latlon": None, "semi_positives": None})
        single = {k: (v[keep] if isinstance(v, np.ndarray) else v) for k, v in single.items()}
        embeddings = subset
    fusion = FusionConfig(method, group_by)
    groups = fuse_queries(embeddings, fusion)
    sizes = np.array([len(m) for m in groups.members])
    fused = top1_outcomes(embeddings, fusion=fusion)
    valid = fused["has_positive"]
    baseline = per_place_baseline(single, groups.members)
    result = paired(fused["correct"][valid], baseline[valid])
    result.update({"places": int(len(groups.members)), "images_per_place": float(sizes.mean()) if len(sizes) else 0.0,
                   "unit": "place", "baseline": "mean single-image R@1 of the place's images"})
    return result


def calibration_report(fit_outcomes: dict | None, outcomes: dict, split: str, fit_split: str) -> dict:
    from gleam.core.calibration import expected_calibration_error, fit_calibrator, raw_confidence

    keep = outcomes["has_positive"]
    top1, top2, correct = outcomes["top1"][keep], outcomes["top2"][keep], outcomes["correct"][keep]
    report: dict = {"queries": int(keep.sum()), "top1_accuracy": float(100 * correct.mean()) if keep.any() else None,
                    "ece_raw": expected_calibration_error(raw_confidence(top1), correct), "bins": 15}
    for method in ("platt", "isotonic"):
        if fit_outcomes is not None:
            fk = fit_outcomes["has_positive"]
            calibrator = fit_calibrator(fit_outcomes["top1"][fk], fit_outcomes["top2"][fk], fit_outcomes["correct"][fk], method)
            confidence = calibrator.predict(top1, top2)
            report["fitted_on"] = fit_split
        else:  # 2-fold cross-fitting on the evaluated split
            rng = np.random.default_rng(0)
            fold = rng.permutation(len(correct)) % 2
            confidence = np.zeros(len(correct))
            for part in (0, 1):
                train = fold != part
                calibrator = fit_calibrator(top1[train], top2[train], correct[train], method)
                confidence[~train] = calibrator.predict(top1[~train], top2[~train])
            report["fitted_on"] = f"2-fold cross-fitting on {split} (no {fit_split!r} split)"
        report[f"ece_{method}"] = expected_calibration_error(confidence, correct)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import ray

    from gleam.core.evaluate import (EvaluateCoreConfig, embed_evaluation_set, evaluation_counts, load_evaluation_set,
                                     score_embeddings, top1_outcomes)
    from gleam.core.model import GleamEncoder
    from gleam.core.rerank import RerankConfig
    from gleam.core.tta import TTAConfig
    from gleam.data.shards import read_manifest

    started = time.perf_counter()
    ray.init(num_cpus=args.num_cpus or None, include_dashboard=False, log_to_driver=False)
    try:
        encoder = GleamEncoder.from_pretrained(args.checkpoint)
        mean, std = (tuple(encoder.data_config()[k]) for k in ("mean", "std"))
        config = EvaluateCoreConfig(checkpoint=args.checkpoint, dataset=args.dataset, split=args.split)
        dataset = load_evaluation_set(config, encoder, args.split)
        device = torch.device("cpu")
        plain = embed_evaluation_set(encoder, dataset, args.batch_size, device, mean, std, None)
        flipped = embed_evaluation_set(encoder, dataset, args.batch_size, device, mean, std, TTAConfig(flip=True))
        splits = read_manifest(args.dataset).get("splits", {})
        fit = None
        if args.fit_split != args.split and splits.get(args.fit_split):
            fit_set = load_evaluation_set(config, encoder, args.fit_split)
            fit = embed_evaluation_set(encoder, fit_set, args.batch_size, device, mean, std, None)
    finally:
        ray.shutdown()

    single = top1_outcomes(plain)
    valid = single["has_positive"]
    comparisons: dict = {}
    flip_outcomes = top1_outcomes(flipped)
    comparisons["flip_tta"] = {**paired(flip_outcomes["correct"][valid], single["correct"][valid]), "unit": "query"}
    rerankers = {"rerank_qe": RerankConfig("qe", args.rerank_k, args.rerank_alpha),
                 "rerank_qe_dba": RerankConfig("qe+dba", args.rerank_k, args.rerank_alpha)}
    for name, rerank in rerankers.items():
        outcomes = top1_outcomes(plain, rerank=rerank)
        comparisons[name] = {**paired(outcomes["correct"][valid], single["correct"][valid]), "unit": "query",
                             "k": rerank.k, "alpha": rerank.alpha}
    for method in ("mean", "max"):
        comparisons[f"fusion_all_views_{method}"] = fusion_comparison(plain, single, "location", method, None)
    uav = [i for i, m in enumerate(plain.query_modalities) if m == "uav"]
    uav_places = {plain.query_ids[i] for i in uav}
    if uav and len(uav) > len(uav_places):
        for method in ("mean", "max"):
            comparisons[f"fusion_uav_headings_{method}"] = fusion_comparison(plain, single, "location_modality",
                                                                             method, "uav")
    else:
        comparisons["fusion_uav_headings"] = {"skipped": f"{len(uav)} UAV images of {len(uav_places)} places: "
                                                         "one heading per place (make_shards synth.views_per_location=1)"}
    fit_outcomes = top1_outcomes(fit) if fit is not None else None
    calibration = calibration_report(fit_outcomes, single, args.split, args.fit_split)
    metrics = {"plain": score_embeddings(plain, both_directions=False)["query->satellite"],
               "flip_tta": score_embeddings(flipped, both_directions=False)["query->satellite"]}
    result = {
        "benchmark": "retrieval_extras", "checkpoint": args.checkpoint, "dataset": args.dataset, "split": args.split,
        "protocol": plain.protocol, "counts": evaluation_counts(plain),
        "comparisons": comparisons, "calibration": calibration,
        "metrics": {name: {m: {k: v for k, v in values.items() if k in ("queries", "gallery_size", "R@1", "R@5", "R@10")}
                           for m, values in per.items()} for name, per in metrics.items()},
        "seconds": round(time.perf_counter() - started, 1),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor()},
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| variant | unit | n | R@1 with | R@1 without | difference (pp) ± SE |\n|---|---|---|---|---|---|")
    for name, row in comparisons.items():
        if "skipped" in row:
            print(f"| {name} | | | | | skipped: {row['skipped']} |")
            continue
        se = row["standard_error_pp"]
        print(f"| {name} | {row['unit']} | {row['n']} | {row['with']:.1f} | {row['without']:.1f} | "
              f"{row['difference_pp']:+.1f} ± {se if se is not None else float('nan'):.1f} |")
    print(f"ECE (%, {calibration['queries']} queries, fitted on {calibration['fitted_on']}): raw "
          f"{calibration['ece_raw']:.1f}, Platt {calibration['ece_platt']:.1f}, isotonic {calibration['ece_isotonic']:.1f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
