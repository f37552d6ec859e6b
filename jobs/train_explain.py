"""GLEAM-X: fine-tune a vision-language model (LoRA) to verify and explain matches, on Ray Train.

    python jobs/train_explain.py --config configs/explain-local.yaml
    ray job submit --working-dir . -- python jobs/train_explain.py --config configs/explain-local.yaml \
        data.source=$PWD/data/synth run.output_dir=$PWD/runs data.retrieval_checkpoint=$PWD/runs/gleam-c-local/final
"""

from __future__ import annotations

import sys

from gleam.explain.train import TrainExplainConfig, train_explain
from gleam.runtime import run_job


def summarize(config: TrainExplainConfig, summary: dict) -> str:
    from gleam.progress import elapsed, ending, verdict_table

    final = summary.get("final", {})
    return ending(f"GLEAM-X trained in {elapsed(summary['seconds'])}: {summary['epochs']} epochs, final loss "
                  f"{final.get('loss', float('nan')):.4f}", verdict_table(summary.get("eval", {})),
                  f"{summary['run_dir']}  (summary.json, eval.json, metrics.jsonl, adapter/, final/, tensorboard/)",
                  ["./run.sh serve"])


if __name__ == "__main__":
    sys.exit(run_job(TrainExplainConfig, train_explain, summarize, None, __doc__, "configs/explain-local.yaml",
                     errors=(ValueError, FileNotFoundError, OSError)))
