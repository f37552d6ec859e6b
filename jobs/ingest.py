"""Convert a real cross-view dataset (University-1652, VIGOR, CVUSA, CVACT, a CSV/Parquet manifest)
into WebDataset shards (local folder or s3://), in parallel with Ray, resumably.

    python jobs/ingest.py dataset=university1652 root=/data/University-Release output=s3://bucket/u1652
    python jobs/ingest.py --config configs/ingest-vigor.yaml root=/data/VIGOR output=data/vigor
    ray job submit -- python jobs/ingest.py dataset=cvusa root=s3://bucket/CVUSA output=s3://bucket/cvusa-shards

The output folder gets the shards, manifest.json, config.yaml and ingest_report.json (counts per
split and modality, every skipped file and why, duplicates, flags).
"""

from __future__ import annotations

import sys

from gleam.data.ingest import IngestConfig, ingest
from gleam.runtime import run_job


def summarize(config: IngestConfig, report: dict) -> dict:
    keys = ("dataset", "output", "num_samples", "num_shards", "counts", "skipped_count", "skipped_by_reason",
            "duplicates_removed", "scaling", "seconds")
    return {**{k: report[k] for k in keys if k in report},
            "flags": {name: flag.get("note", flag) if isinstance(flag, dict) else flag
                      for name, flag in report.get("flags", {}).items()},
            "report": f"{config.output.rstrip('/')}/ingest_report.json"}


if __name__ == "__main__":
    sys.exit(run_job(IngestConfig, ingest, summarize, None, __doc__, None, errors=(ValueError, OSError)))
