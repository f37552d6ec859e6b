"""GLEAM-X: fine-tune a vision-language model (LoRA) to verify and explain matches, on Ray Train.

    python jobs/train_explain.py --config configs/explain-local.yaml
    ray job submit --working-dir . -- python jobs/train_explain.py --config configs/explain-local.yaml \
        data.retrieval_checkpoint=runs/gleam-c-local/final train.epochs=5
"""

from __future__ import annotations

import sys

from gleam.explain.train import TrainExplainConfig, train_explain
from gleam.runtime import run_job


def summarize(config: TrainExplainConfig, summary: dict) -> dict:
    return {k: summary[k] for k in ("run_dir", "seconds", "epochs", "final", "merged_model", "eval") if k in summary}


if __name__ == "__main__":
    sys.exit(run_job(TrainExplainConfig, train_explain, summarize, None, __doc__, "configs/explain-local.yaml",
                     errors=(ValueError, FileNotFoundError, OSError)))
