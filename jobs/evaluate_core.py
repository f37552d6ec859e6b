"""Evaluate a GLEAM-C checkpoint on a split: R@1/5/10/top-1%, AP, localisation error, per
modality and in both directions; writes the metrics as JSON.

    python jobs/evaluate_core.py checkpoint=runs/gleam-c-local/final split=test
"""

from __future__ import annotations

import sys

from gleam.core.evaluate import EvaluateCoreConfig, evaluate_checkpoint
from gleam.runtime import run_job


def summarize(config: EvaluateCoreConfig, report: dict) -> str:
    from gleam.core.train import flatten_metrics
    from gleam.progress import ending, recall_table

    body = recall_table(flatten_metrics(report["metrics"]), "query->satellite")
    return ending(f"Evaluated {config.checkpoint} on split '{config.split}': {report['queries']} queries, "
                  f"gallery {report['gallery']} tiles (query -> satellite)", body,
                  f"{report['output']}  (every metric, both directions)", [])


if __name__ == "__main__":
    sys.exit(run_job(EvaluateCoreConfig, evaluate_checkpoint, summarize, None, __doc__))
