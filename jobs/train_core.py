"""GLEAM-C: two-phase multi-view contrastive training on Ray Train.

    python jobs/train_core.py --config configs/local-cpu.yaml train.global_batch=32
    ray job submit --working-dir . -- python jobs/train_core.py --config configs/local-cpu.yaml
Re-running with the same run.name resumes from the run's latest checkpoint.
"""

from __future__ import annotations

import sys

from gleam.core.train import TrainCoreConfig, train_core
from gleam.runtime import run_job


def summarize(config: TrainCoreConfig, summary: dict) -> dict:
    return {k: summary[k] for k in ("run_dir", "seconds", "epochs", "final")}


if __name__ == "__main__":
    sys.exit(run_job(TrainCoreConfig, train_core, summarize, None, __doc__, "configs/local-cpu.yaml"))
