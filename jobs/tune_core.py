"""Ray Tune sweep of GLEAM-C (temperature, label smoothing, phase schedule) with ASHA.

    python jobs/tune_core.py --config configs/sweep-local.yaml tune.num_samples=8
"""

from __future__ import annotations

import sys

from gleam.core.tune import TuneCoreConfig, tune_core
from gleam.runtime import run_job



def summarize(config: TuneCoreConfig, summary: dict) -> str:
    from gleam import storage
    from gleam.progress import ending, table

    rows = storage.read_json(summary["results"])
    metric = config.tune.metric
    keys = ["temperature", "label_smoothing", "phase1_epochs", "phase2_lr"]
    body = table(keys + [metric, "epochs", "error"],
                 [[row.get(k) for k in keys] + [row.get(metric), row.get("epochs_run"),
                                                (row.get("error") or "")[:40] or None] for row in rows])
    sweep_dir = summary["results"].rsplit("/", 1)[0]
    return ending(f"Sweep of {summary['trials']} trials, best first ({config.tune.mode} {metric})", body,
                  f"{sweep_dir}  (tune_results.json, best_config.yaml, trials/)",
                  [f"python jobs/train_core.py --config {sweep_dir}/best_config.yaml"])


if __name__ == "__main__":
    sys.exit(run_job(TuneCoreConfig, tune_core, summarize, None, __doc__, "configs/sweep-local.yaml"))
