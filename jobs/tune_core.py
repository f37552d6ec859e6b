"""Ray Tune sweep of GLEAM-C (temperature, label smoothing, phase schedule) with ASHA.

    python jobs/tune_core.py --config configs/sweep-local.yaml tune.num_samples=8
"""

from __future__ import annotations

import sys

from gleam.core.tune import TuneCoreConfig, tune_core
from gleam.runtime import run_job

if __name__ == "__main__":
    sys.exit(run_job(TuneCoreConfig, tune_core, lambda config, summary: summary, None, __doc__,
                     "configs/sweep-local.yaml"))
