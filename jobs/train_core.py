"""GLEAM-C: two-phase multi-view contrastive training on Ray Train.

    python jobs/train_core.py --config configs/local-cpu.yaml train.global_batch=32
    ray job submit --working-dir . -- python jobs/train_core.py --config configs/local-cpu.yaml
Re-running with the same run.name resumes from the run's latest checkpoint.
"""

from __future__ import annotations

import json
import sys

from gleam.core.train import TrainCoreConfig, train_core
from gleam.runtime import init_ray, parse_job_args, setup_logging


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    config = parse_job_args(TrainCoreConfig, argv, __doc__.strip().splitlines()[0],
                            default_config="configs/local-cpu.yaml")
    init_ray(config.ray)
    try:
        summary = train_core(config)
    except (ValueError, FileNotFoundError) as error:
        print(f"train_core failed: {error}", file=sys.stderr)
        return 1
    print(json.dumps({k: summary[k] for k in ("run_dir", "seconds", "epochs", "final")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
