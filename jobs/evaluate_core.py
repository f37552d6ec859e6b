"""Evaluate a GLEAM-C checkpoint on a split: R@1/5/10/top-1%, AP, hit rate (VIGOR), localisation
error (top-1 and best of the top 1/5/10), per modality and in both directions, with the query and
gallery counts of the benchmark protocol recorded in the dataset manifest; writes the metrics as
JSON.  Options: tta.flip / tta.scales, fusion.method (mean | max), rerank.method (qe | dba |
qe+dba), top1_percent_rule (round | floor), calibration.method (platt | isotonic).

    python jobs/evaluate_core.py checkpoint=runs/gleam-c-local/final split=test
"""

from __future__ import annotations

import sys

from gleam.core.evaluate import EvaluateCoreConfig, evaluate_checkpoint
from gleam.runtime import run_job


def summarize(config: EvaluateCoreConfig, report: dict) -> str:
    from gleam.core.train import flatten_metrics
    from gleam.progress import ending, recall_table

    forward = report["metrics"]["query->satellite"]
    counts = report["counts"]
    lines = [f"protocol: {report['protocol'].get('benchmark', 'split')}",
             f"query->satellite: {counts['query->satellite']['queries']} queries, "
             f"gallery {counts['query->satellite']['gallery']} tiles",
             f"satellite->query: {counts['satellite->query']['queries']} tiles, "
             f"gallery {counts['satellite->query']['gallery']} images"]
    hit_rate = forward.get("all", {}).get("hit_rate")
    if hit_rate is not None:
        lines.append(f"hit rate (query->satellite): {hit_rate:.1f} %")
    if "calibration" in report:
        calibration = report["calibration"]
        lines.append(f"ECE raw {calibration['ece_raw']:.1f} % -> {calibration['method']} "
                     f"{calibration['ece_calibrated']:.1f} % ({calibration['plot']})")
    table = recall_table(flatten_metrics(report["metrics"]), "query->satellite")
    body = "\n".join(lines) + (f"\n\n{table}" if table else "")
    return ending(f"Evaluated {config.checkpoint} on split '{config.split}': {report['queries']} queries, "
                  f"gallery {report['gallery']} tiles (query -> satellite)", body,
                  f"{report['output']}  (every metric, both directions)", [])


def run(config: EvaluateCoreConfig) -> dict:
    from gleam.core.model import resolve_checkpoint

    config.checkpoint = resolve_checkpoint(config.checkpoint)  # on the driver: a bare name loads models/<name>
    return evaluate_checkpoint(config)


if __name__ == "__main__":
    sys.exit(run_job(EvaluateCoreConfig, run, summarize, None, __doc__))
