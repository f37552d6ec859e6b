"""Localize every image (jpg/png) under a folder or s3:// prefix against a gallery index with
Ray Data; writes results.parquet + results.jsonl + report.json (unreadable files: error rows).

    python jobs/localize_batch.py input=photos/ index=runs/index-local output=runs/localize-photos
    python jobs/localize_batch.py input=s3://bucket/uav-flights modality=uav output=s3://bucket/out
"""

from __future__ import annotations

import sys

from gleam.retrieval.batch import LocalizeBatchConfig, localize_batch
from gleam.runtime import run_job


def summarize(config: LocalizeBatchConfig, report: dict) -> dict:
    return {k: report[k] for k in ("output", "images", "ok", "errors", "seconds", "images_per_second")}


if __name__ == "__main__":
    sys.exit(run_job(LocalizeBatchConfig, localize_batch, summarize, None, __doc__,
                     errors=(ValueError, OSError)))
