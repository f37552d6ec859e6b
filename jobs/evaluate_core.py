"""Evaluate a GLEAM-C checkpoint on a split: R@1/5/10/top-1%, AP, localisation error, per
modality and in both directions; writes the metrics as JSON.

    python jobs/evaluate_core.py checkpoint=runs/gleam-c-local/final split=test
"""

from __future__ import annotations

import json
import sys

from gleam.core.evaluate import EvaluateCoreConfig, evaluate_checkpoint
from gleam.runtime import init_ray, parse_job_args, setup_logging
from gleam.config import RayConfig


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    config = parse_job_args(EvaluateCoreConfig, argv, __doc__.strip().splitlines()[0])
    init_ray(RayConfig())
    try:
        report = evaluate_checkpoint(config)
    except (ValueError, FileNotFoundError) as error:
        print(f"evaluate_core failed: {error}", file=sys.stderr)
        return 1
    overall = report["metrics"]["query->satellite"]
    print(json.dumps({"output": report["output"], "queries": report["queries"], "gallery": report["gallery"],
                      "query->satellite R@1": {m: v["R@1"] for m, v in overall.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
