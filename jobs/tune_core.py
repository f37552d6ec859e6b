"""Ray Tune sweep of GLEAM-C (temperature, label smoothing, phase schedule) with ASHA.

    python jobs/tune_core.py --config configs/sweep-local.yaml tune.num_samples=8
"""

from __future__ import annotations

import json
import sys

from gleam.core.tune import TuneCoreConfig, tune_core
from gleam.runtime import init_ray, parse_job_args, setup_logging


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    config = parse_job_args(TuneCoreConfig, argv, __doc__.strip().splitlines()[0],
                            default_config="configs/sweep-local.yaml")
    init_ray(config.ray)
    try:
        summary = tune_core(config)
    except (ValueError, FileNotFoundError) as error:
        print(f"tune_core failed: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
