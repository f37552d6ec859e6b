"""Evaluate a GLEAM-C checkpoint on a split: R@1/5/10/top-1%, AP, localisation error, per
modality and in both directions; writes the metrics as JSON.

    python jobs/evaluate_core.py checkpoint=runs/gleam-c-local/final split=test
"""

from __future__ import annotations

import sys

from gleam.core.evaluate import EvaluateCoreConfig, evaluate_checkpoint
from gleam.runtime import run_job


def summarize(config: EvaluateCoreConfig, report: dict) -> dict:
    forward = report["metrics"]["query->satellite"]
    return {"output": report["output"], "queries": report["queries"], "gallery": report["gallery"],
            "query->satellite R@1": {modality: values["R@1"] for modality, values in forward.items()}}


if __name__ == "__main__":
    sys.exit(run_job(EvaluateCoreConfig, evaluate_checkpoint, summarize, None, __doc__))
