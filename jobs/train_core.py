"""GLEAM-C: two-phase multi-view contrastive training on Ray Train.

    python jobs/train_core.py --config configs/local-cpu.yaml train.global_batch=32
    ray job submit --working-dir . -- python jobs/train_core.py --config configs/local-cpu.yaml data.dataset=$PWD/data/synth run.output_dir=$PWD/runs
Re-running with the same run.name resumes from the run's latest checkpoint. Under `ray job submit
--working-dir` the job runs in a temporary copy of the folder: give data and outputs as absolute
paths (or s3://).
"""

from __future__ import annotations

import sys

from gleam.core.train import TrainCoreConfig, train_core
from gleam.runtime import run_job


def summarize(config: TrainCoreConfig, summary: dict) -> str:
    from gleam.progress import elapsed, ending, recall_table

    final = summary["final"]
    body = recall_table(final, "val/query->satellite")
    if body:
        body = (f"validation split '{config.data.val_split}', query -> satellite, "
                f"gallery {int(final.get('val/query->satellite/all/gallery_size', 0))} tiles\n{body}")
    return ending(f"GLEAM-C trained in {elapsed(summary['seconds'])}: {summary['epochs']} epochs, "
                  f"{int(final.get('global_step', 0))} steps, final loss {final.get('loss', float('nan')):.4f}",
                  body, f"{summary['run_dir']}  (summary.json, metrics.jsonl, plots/, final/, tensorboard/)",
                  ["./run.sh serve", f"tensorboard --logdir {summary['run_dir']}/tensorboard"])


if __name__ == "__main__":
    sys.exit(run_job(TrainCoreConfig, train_core, summarize, None, __doc__, "configs/local-cpu.yaml"))
