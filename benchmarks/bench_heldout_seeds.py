"""Held-out GLEAM-C retrieval over several (world, training) seeds: mean and standard error.

    python benchmarks/bench_heldout_seeds.py --pairs 0:0 1:1 2:2 --out benchmarks/results/heldout_seeds.json \
        -- --train-locations 1536 --variants pretrained_lr3e-4 --steps 800 --eval-every 200 ...

Runs ``bench_heldout.py`` once per ``WORLD:TRAIN`` seed pair (``--world-seed`` chooses the
places of all three splits, ``--seed`` the training), with every argument after ``--`` passed
through, each writing ``<out stem>-w<world>-s<train>.json``; a pair whose file already holds
finished rows is not run again (``--rerun`` forces it).  The summary (``--out``) gives, for each
row (training locations, variant) and each view, the test split's R@1, R@5, AP, R@1_biome and
median metres as mean, sample standard deviation (n - 1) and standard error (sd / sqrt(n)) over
the seed pairs, beside each pair's own numbers and the validation step that chose its encoder.
Each pair's test number is the encoder validation chose, scored once (``bench_heldout``'s
protocol); nothing here is chosen on test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("R@1", "R@5", "AP", "R@1_biome", "median_error_m")


def parse_pair(text: str) -> tuple[int, int]:
    try:
        world, train = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed pair {text!r}: write WORLD:TRAIN, e.g. 1:1") from None
    return world, train


def mean_se(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (ddof 1) and standard error sd / sqrt(n) of ``values``;
    sd and se are None for a single value."""
    n = len(values)
    sd = statistics.stdev(values) if n > 1 else None
    return {"n": n, "mean": statistics.fmean(values), "sd": sd, "se": sd / math.sqrt(n) if sd is not None else None,
            "values": values}


def summarise(results: dict[tuple[int, int], dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (train_locations, variant) row: per view and metric, mean/sd/se over pairs."""
    rows: dict[tuple[Any, Any], list[tuple[tuple[int, int], dict[str, Any]]]] = {}
    for pair, result in sorted(results.items()):
        for row in result.get("rows", []):
            if "held_out" in row:
                rows.setdefault((row["train_locations"], row["variant"]), []).append((pair, row))
    out = []
    for (locations, variant), entries in sorted(rows.items(), key=lambda item: str(item[0])):
        views = sorted({v for _, row in entries for v in row["held_out"]["views"]})
        table = {}
        for view in views:
            table[view] = {}
            for metric in METRICS:
                values = [row["held_out"]["views"][view][metric] for _, row in entries
                          if view in row["held_out"]["views"] and row["held_out"]["views"][view].get(metric) is not None]
                if values:
                    table[view][metric] = mean_se([float(v) for v in values])
        out.append({"train_locations": locations, "variant": variant,
                    "pairs": [{"world_seed": w, "seed": s, "chosen_step": row.get("selection", {}).get("chosen_step"),
                               "val_mean_R@1": row.get("selection", {}).get("chosen_score"),
                               "encoder": row.get("encoder"), "steps": row.get("steps")}
                              for (w, s), row in entries],
                    "test": table})
    return out


def main() -> None:
    argv = sys.argv[1:]
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", type=parse_pair, default=[(0, 0), (1, 1), (2, 2)],
                        metavar="WORLD:TRAIN")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "heldout_seeds.json"))
    parser.add_argument("--rerun", action="store_true", help="run pairs whose result file exists again")
    args = parser.parse_args(own)
    for flag in ("--seed", "--world-seed", "--out"):
        if flag in passthrough:
            parser.error(f"{flag} after '--': the seeds come from --pairs and the per-pair files from --out")
    if len(args.pairs) < 2:
        parser.error("--pairs: give at least two seed pairs (a standard error needs them)")
    stem = os.path.splitext(args.out)[0]
    results: dict[tuple[int, int], dict[str, Any]] = {}
    for world, train in args.pairs:
        path = f"{stem}-w{world}-s{train}.json"
        done = os.path.exists(path) and not args.rerun
        if done:
            with open(path) as handle:
                existing = json.load(handle)
            done = bool(existing.get("rows")) and not any("error" in r for r in existing["rows"])
        if not done:
            command = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_heldout.py"), *passthrough,
                       "--world-seed", str(world), "--seed", str(train), "--out", path]
            print("running", " ".join(command), flush=True)
            subprocess.run(command, check=True)
        with open(path) as handle:
            results[(world, train)] = json.load(handle)
    from gleam.provenance import provenance

    summary = {"benchmark": "bench_heldout_seeds", "command": " ".join(sys.argv),
               "pairs": [{"world_seed": w, "seed": s, "file": os.path.relpath(f"{stem}-w{w}-s{s}.json", ROOT)}
                         for w, s in args.pairs],
               "protocol": ("each pair: train on its world's train split, choose the step on val (mean R@1 over "
                            "the four views), score test once; here: mean, sd (n - 1) and se = sd / sqrt(n) over "
                            "the pairs of those test numbers"),
               "rows": summarise(results), "provenance": provenance([sys.executable, *sys.argv], {
                   "pairs": [list(p) for p in args.pairs]})}
    tmp = args.out + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(summary, handle, indent=1)
    os.replace(tmp, args.out)
    for row in summary["rows"]:
        cells = [f"{view} {m['R@1']['mean']:.1f} +- {m['R@1']['se'] or 0:.1f}" for view, m in row["test"].items()]
        print(row["train_locations"], row["variant"], "; ".join(cells))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
