"""GLEAM-X grounded in the images: verdicts, true claims, explanation similarity, and re-ranking.

    python benchmarks/bench_explain.py [--data data/synth] [--checkpoint models/gleam-c-lite0-synth]
        [--variants native gleamc_frozen gleamc_last_stage] [--epochs 10] [--set key=value ...]
        [--out benchmarks/results/explain_grounded.json]

Protocol (held-out regions, hard negatives included, both languages):
- every variant fine-tunes GLEAM-X with ``jobs/train_explain.py``'s own code (``train_explain``,
  Ray Train, ``configs/explain-local.yaml`` + the variant's overrides) on the shards' *train*
  split; pairs are the true tile (positive) and one negative per positive, half of them GLEAM-C's
  most similar wrong tile of the same split (``hard``: same regions and biomes), half random;
- the variant is chosen on the *val* split (other regions): verdict accuracy of the explanation
  prompt (the verdict line of the generated explanation);
- the chosen variant is scored once on the *test* split (other regions again): verdicts per
  pair kind and language, the match head alone, claim precision / strict precision / recall per
  language and claim kind, BLEU, ROUGE-L and the packaged all-MiniLM-L6-v2 explanation
  similarity per language;
- claims the fact heads do not back: the chosen model answers val once; the claim threshold
  (``model.vision.claim_threshold``: sentences stating a claim with fact-head P(true) below it
  are dropped, ``vision.prune_claims``) is the smallest of ``CLAIM_THRESHOLDS`` whose val strict
  claim precision has a 95 % Wilson lower bound of at least ``CLAIM_PRECISION_WANTED`` (a bound,
  not the point estimate: a threshold that only just reaches it on a hundred-odd val claims is
  a coin flip on test); it is written into the model folder, test is scored with it, and the
  test curve over every threshold is kept for reference only;
- re-ranking: every query's GLEAM-C top-``--rerank-k`` tiles of its split's gallery are
  re-ordered by GLEAM-C's cosine + w x logit(GLEAM-X's P(same place)) (``serving.app.verify_rerank``,
  the rule serving applies with ``verify_weight``); w is chosen on *val* queries (ties: the
  smallest, so w = 0, GLEAM-C's own order, wins unless verification helps), then test R@1 before
  and after at that w, with the paired standard error, the R@k ceiling, and the seconds GLEAM-X
  adds per query (one prompt forward per candidate, batched).

The numbers in README / benchmarks/README come from 1,024 training places (the fact heads
memorise a few dozen), made and run by::

    python jobs/make_shards.py --config configs/make-shards-local.yaml output=data/synth-explain \
        synth.locations.train=1024 synth.image_size=128 synth.panorama_width=256
    python benchmarks/bench_explain.py --data data/synth-explain --checkpoint models/gleam-c-lite0-synth \
        --variants gleamc_frozen --epochs 4 --set data.max_train_examples=3072 train.verdict_only_epochs=1 \
        --runs runs/bench-explain-1024L --out benchmarks/results/explain_grounded_1024_layout.json

(seeds: ``--set ... run.seed=S`` trains with seed S and draws the val/test pairs' random
negatives with it; ``explain_grounded_1024_layout_s{1,2}.json``).

``--rerank-only MODEL`` re-scores only the re-ranking of an already trained GLEAM-X folder
(``--variant`` names its overrides) and writes ``rerank`` into the existing ``--out`` file.

Variants: ``native`` (the VLM's own, randomly initialised vision tower: the baseline),
``gleamc_frozen`` (GLEAM-C backbone frozen, tokens + heads train), ``gleamc_last_stage``
(the backbone's last stage trains too), ``gleamc_nocond`` (frozen, heads trained but not fed
to the tokens).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "platform"))

VARIANTS: dict[str, list[str]] = {
    "native": ["model.vision.source=native"],
    "gleamc_frozen": ["model.vision.source=gleam_c", "model.vision.train_backbone=frozen"],
    "gleamc_last_stage": ["model.vision.source=gleam_c", "model.vision.train_backbone=last_stage"],
    "gleamc_nocond": ["model.vision.source=gleam_c", "model.vision.condition=false"],
}


def _default_checkpoint() -> str:
    named = os.path.join(ROOT, "models", "gleam-c-lite0-synth")
    return named if os.path.isfile(os.path.join(named, "config.json")) else os.path.join(
        ROOT, "runs", "gleam-c-local", "final")


def _verdict_accuracy(report: dict[str, Any]) -> float:
    return float(report.get("match", {}).get("accuracy", 0.0))


def test_examples(config: Any, split: str) -> list[Any]:
    """Pairs of ``split`` built like the training run's validation pairs (hard negatives included)."""
    from gleam.explain.dataset import build_examples
    from gleam.explain.train import _hard_neighbours, _read_split

    data = config.data
    samples = _read_split(data.source, split, list(data.modalities))
    neighbours = _hard_neighbours(data.retrieval_checkpoint, samples)
    return list(build_examples(samples, languages=tuple(data.languages), negatives_per_positive=data.negatives_per_positive,
                               hard_fraction=data.hard_fraction, hard_neighbours=neighbours, seed=config.run.seed + 7))


CLAIM_THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9)
CLAIM_PRECISION_WANTED = 0.75  # the val strict precision's lower bound must reach it (the 70 % target + a margin)
CLAIM_BOUND_Z = 1.96  # a two-sided 95 % Wilson interval


def wilson_lower_bound(successes: float, trials: int, z: float = CLAIM_BOUND_Z) -> float:
    """Lower end of the Wilson score interval for a proportion (Wilson 1927, JASA 22:209); 0 for 0 trials."""
    if trials <= 0:
        return 0.0
    p = successes / trials
    centre = p + z * z / (2 * trials)
    spread = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return (centre - spread) / (1 + z * z / trials)


def strict_precision_bound(row: dict[str, Any]) -> float:
    """The Wilson lower bound of a curve row's strict precision: true claims over claims + unparsed."""
    return wilson_lower_bound(row.get("true") or 0, (row.get("claims") or 0) + (row.get("unparsed") or 0))


def pruned_answers(grounding: list[dict[str, Any]], threshold: float) -> tuple[list[str], float]:
    """Each answer with the sentences its fact heads do not back at ``threshold`` dropped
    (``vision.prune_claims``) -> (answers, mean sentences dropped per answer)."""
    from gleam.explain.vision import prune_claims

    answers, dropped = [], 0
    for item in grounding:
        text, count = prune_claims(item["selected"], item["query_facts"], item["satellite_facts"], threshold)
        answers.append(text)
        dropped += count
    return answers, dropped / max(len(grounding), 1)


def claim_curve(examples: list[Any], grounding: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Claim precision / strict precision / recall of the explanations at every ``CLAIM_THRESHOLDS``."""
    from gleam.explain.evaluate import claim_scores

    explain = [e for e in examples if getattr(e, "task", "explain") != "verdict"]
    curve = []
    for threshold in CLAIM_THRESHOLDS:
        answers, dropped = pruned_answers(grounding, threshold)
        scores = claim_scores(explain, answers) or {}
        row = {"threshold": threshold, "sentences_dropped_per_answer": round(dropped, 3),
               **{k: scores.get(k) for k in ("claims", "true", "unparsed", "precision", "strict_precision",
                                              "recall", "claims_per_answer")}}
        row["strict_precision_lower_95"] = strict_precision_bound(row)
        curve.append(row)
    return curve


def choose_claim_threshold(curve: list[dict[str, Any]]) -> float:
    """The smallest threshold whose val strict precision's 95 % Wilson lower bound reaches
    ``CLAIM_PRECISION_WANTED`` (fewest claims dropped); when none does, the one with the highest
    lower bound."""
    reaching = [row for row in curve if strict_precision_bound(row) >= CLAIM_PRECISION_WANTED]
    if reaching:
        return float(min(row["threshold"] for row in reaching))
    return float(max(curve, key=lambda row: (strict_precision_bound(row), -row["threshold"]))["threshold"])


def keep_claim_threshold(model_folder: str, threshold: float) -> None:
    """Write the chosen threshold into the model folder's ``gleam_vision.json``, so serving and
    evaluation of that model prune as the benchmark chose."""
    from gleam.explain.vision import VISION_CONFIG

    path = os.path.join(model_folder, VISION_CONFIG)
    with open(path, encoding="utf-8") as handle:
        saved = json.load(handle)
    saved["settings"]["claim_threshold"] = threshold
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(saved, handle, indent=1)
    os.replace(path + ".tmp", path)


RERANK_WEIGHTS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, math.inf)


def rerank_lists(model: Any, processor: Any, config: Any, split: str, k: int) -> dict[str, Any]:
    """GLEAM-C's top-k tiles (of ``split``'s gallery) for every query of ``split``, each with its
    cosine score and GLEAM-X's P(same place), and the seconds the verification took."""
    import torch

    from gleam.explain.model import collate
    from gleam.explain.prompts import verdict_instruction
    from gleam.explain.train import _read_split
    from gleam.explain.vision import match_probabilities
    from gleam.retrieval.embed import Embedder

    samples = _read_split(config.data.source, split, list(config.data.modalities))
    tiles: dict[str, Any] = {}
    for sample in samples:
        tiles.setdefault(sample.location_id, sample)
    tile_ids = sorted(tiles)
    queries = [s for s in samples if s.query_image is not None]
    embedder = Embedder(config.data.retrieval_checkpoint, device="cpu")
    gallery = embedder.embed([tiles[t].satellite_array() for t in tile_ids], "satellite")
    lists, seconds = [], 0.0
    languages = list(config.data.languages)
    for position, query in enumerate(queries):
        vector = embedder.embed([query.query_array()], query.modality)[0]
        top = np.argsort(-(gallery @ vector))[:k]
        candidates = [{"id": tile_ids[i], "score": float(gallery[i] @ vector)} for i in top]
        language = languages[position % len(languages)]
        pairs = [SimpleNamespace(query_image=query.query_image, satellite_image=tiles[c["id"]].satellite_image,
                                 answer=None, instruction=verdict_instruction(language, query.modality,
                                                                              np.random.default_rng(0)))
                 for c in candidates]
        started = time.perf_counter()
        with torch.no_grad():
            model(**collate(pairs, processor, config.model.image_size, 1 << 20, train=False))
        probabilities = match_probabilities(model)
        seconds += time.perf_counter() - started
        for candidate, probability in zip(candidates, probabilities):
            candidate["match_probability"] = float(probability)
        lists.append({"truth": query.location_id, "modality": query.modality, "candidates": candidates})
    return {"split": split, "gallery": len(tile_ids), "k": k, "lists": lists,
            "seconds_per_query": seconds / len(lists) if lists else None}


def rerank_at(lists: list[dict[str, Any]], weight: float) -> dict[str, Any]:
    """R@1 before and after ``verify_rerank`` at ``weight`` over ``lists``, paired difference with
    its standard error (percentage points)."""
    from gleam.serving.app import verify_rerank

    before, after = [], []
    for item in lists:
        ordered = verify_rerank([dict(c) for c in item["candidates"]], weight)
        before.append(float(item["candidates"][0]["id"] == item["truth"]))
        after.append(float(ordered[0]["id"] == item["truth"]))
    diff = np.array(after) - np.array(before)
    n = len(lists)
    return {"weight": "inf" if math.isinf(weight) else weight, "queries": n,
            "R@1_gleam_c": 100.0 * float(np.mean(before)), "R@1_reranked": 100.0 * float(np.mean(after)),
            "difference_pp": 100.0 * float(diff.mean()),
            "difference_se_pp": 100.0 * float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else None}


def rerank(model: Any, processor: Any, config: Any, k: int) -> dict[str, Any]:
    """Verification that re-ranks, chosen on val and reported once on test: the fusion weight of
    ``serving.app.fused_score`` (GLEAM-C cosine + w x logit P) that gives the best val R@1 (ties:
    the smallest weight, so 0 = keep GLEAM-C's order wins unless verification helps), then test R@1
    at that weight; the R@k ceiling says how many test queries had the true tile in the top k."""
    val = rerank_lists(model, processor, config, "val", k)
    curve = [rerank_at(val["lists"], w) for w in RERANK_WEIGHTS]
    best = max(range(len(curve)), key=lambda i: (curve[i]["R@1_reranked"], -i))
    weight = RERANK_WEIGHTS[best]
    test = rerank_lists(model, processor, config, "test", k)
    reported = rerank_at(test["lists"], weight)
    ceiling = 100.0 * float(np.mean([any(c["id"] == item["truth"] for c in item["candidates"])
                                     for item in test["lists"]]))
    return {"selection": {"split": "val", "metric": "R@1 after re-ranking", "curve": curve,
                          "chosen_weight": curve[best]["weight"]},
            "split": "test", "gallery": test["gallery"], "k": k, **reported, "recall_at_k_ceiling": ceiling,
            "at_every_weight_for_reference_only": [rerank_at(test["lists"], w) for w in RERANK_WEIGHTS],
            "seconds_per_query": test["seconds_per_query"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(ROOT, "data", "synth"))
    parser.add_argument("--checkpoint", default=_default_checkpoint(), help="GLEAM-C checkpoint (vision + hard negatives)")
    parser.add_argument("--variants", nargs="+", default=["native", "gleamc_frozen", "gleamc_last_stage"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--set", dest="extra", nargs="*", default=[], help="overrides for every variant")
    parser.add_argument("--rerank-k", type=int, default=5)
    parser.add_argument("--rerank-only", default="", help="trained GLEAM-X folder: re-score re-ranking only")
    parser.add_argument("--variant", default="gleamc_frozen", help="with --rerank-only: the model's variant")
    parser.add_argument("--runs", default=os.path.join(ROOT, "runs", "bench-explain"))
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "explain_grounded.json"))
    args = parser.parse_args()
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")

    import ray

    from gleam.config import load_config
    from gleam.explain.evaluate import evaluate_examples
    from gleam.explain.model import load_vlm
    from gleam.explain.train import TrainExplainConfig, train_explain
    from gleam.explain.vision import find_tower

    try:
        from gleam.provenance import provenance
    except ImportError:  # older checkouts
        provenance = None
    started = time.perf_counter()
    result: dict[str, Any] = {"benchmark": "bench_explain", "command": " ".join(sys.argv), "data": args.data,
                              "gleam_c_checkpoint": args.checkpoint, "selection": {"split": "val",
                              "metric": "verdict accuracy of the explanation prompt"}, "variants": {}}

    def write() -> None:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out + ".tmp", "w") as handle:
            json.dump(result, handle, indent=1, default=str)
        os.replace(args.out + ".tmp", args.out)

    if args.rerank_only:
        overrides = [f"data.source={args.data}", f"data.retrieval_checkpoint={args.checkpoint}",
                     f"model.vision.checkpoint={args.checkpoint}", *VARIANTS[args.variant], *args.extra]
        config = load_config(TrainExplainConfig, os.path.join(ROOT, "configs", "explain-local.yaml"), overrides)
        model, processor = load_vlm(args.rerank_only)
        model.eval()
        with open(args.out) as handle:
            result = json.load(handle)
        result["rerank"] = {"model": args.rerank_only, "command": " ".join(sys.argv),
                            **rerank(model, processor, config, args.rerank_k)}
        if provenance is not None:
            result["rerank"]["provenance"] = provenance(command=sys.argv, seeds={"run": config.run.seed},
                                                        checkpoints={"gleam_c": args.checkpoint})
        write()
        print(json.dumps({k: v for k, v in result["rerank"].items() if k not in ("provenance",
                          "at_every_weight_for_reference_only")}, indent=1))
        return
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    configs = {}
    for variant in args.variants:
        overrides = [f"data.source={args.data}", f"data.retrieval_checkpoint={args.checkpoint}",
                     f"model.vision.checkpoint={args.checkpoint}", f"run.output_dir={args.runs}",
                     f"run.name={variant}", f"train.epochs={args.epochs}", *VARIANTS[variant], *args.extra]
        config = load_config(TrainExplainConfig, os.path.join(ROOT, "configs", "explain-local.yaml"), overrides)
        configs[variant] = config
        row_started = time.perf_counter()
        summary = train_explain(config)
        val = summary["eval"].get("val", {})
        result["variants"][variant] = {"overrides": VARIANTS[variant] + args.extra, "seconds": round(time.perf_counter() - row_started, 1),
                                       "val": val, "final": summary.get("final"), "data": summary.get("data"),
                                       "model": summary.get("merged_model")}
        print(f"{variant}: val verdict accuracy {_verdict_accuracy(val):.3f}, "
              f"claim precision {val.get('faithfulness', {}).get('precision')}", flush=True)
        write()
    chosen = max(result["variants"], key=lambda v: _verdict_accuracy(result["variants"][v]["val"]))
    result["selection"]["chosen"] = chosen
    config = configs[chosen]
    model, processor = load_vlm(result["variants"][chosen]["model"])
    model.eval()
    tower = find_tower(model)
    if tower is not None:  # claims the heads do not back: the threshold is chosen on val
        from gleam.explain.evaluate import predict

        tower.settings.claim_threshold = 0.0
        val_examples = test_examples(config, "val")
        grounding: list[dict[str, Any]] = []
        predict(model, processor, val_examples, image_size=config.model.image_size,
                max_new_tokens=config.train.max_new_tokens, batch_size=config.train.eval_batch, grounding=grounding)
        curve = claim_curve(val_examples, grounding)
        threshold = choose_claim_threshold(curve)
        result["claim_threshold"] = {"split": "val", "rule": f"smallest threshold whose strict claim precision has a 95 % "
                                     f"Wilson lower bound >= {CLAIM_PRECISION_WANTED}", "curve": curve, "chosen": threshold}
        tower.settings.claim_threshold = threshold
        keep_claim_threshold(result["variants"][chosen]["model"], threshold)
        write()
    examples = test_examples(config, "test")
    test_grounding: list[dict[str, Any]] = []
    test = evaluate_examples(model, processor, examples, image_size=config.model.image_size,
                             max_new_tokens=config.train.max_new_tokens, batch_size=config.train.eval_batch,
                             grounding=test_grounding)
    test.pop("samples", None)
    result["test"] = {"variant": chosen, **test}
    if tower is not None and test_grounding:
        result["test"]["claims_at_every_threshold_for_reference_only"] = claim_curve(examples, test_grounding)
    if config.model.vision.enabled():
        result["rerank"] = rerank(model, processor, config, args.rerank_k)
    if provenance is not None:
        result["provenance"] = provenance(command=sys.argv, seeds={"run": config.run.seed},
                                          checkpoints={"gleam_c": args.checkpoint})
    result["seconds"] = round(time.perf_counter() - started, 1)
    write()
    ray.shutdown()
    print(json.dumps({"chosen": chosen, "test_verdict_accuracy": _verdict_accuracy(test),
                      "test_match_head": test.get("match_head", {}).get("overall", {}).get("accuracy"),
                      "claim_precision": test.get("faithfulness", {}).get("precision"),
                      "claim_threshold": result.get("claim_threshold", {}).get("chosen"),
                      "rerank": result.get("rerank")}, indent=1))


if __name__ == "__main__":
    main()
