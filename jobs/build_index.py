"""Build a faiss gallery index: embed a split's satellite tiles with a GLEAM-C checkpoint (Ray
Data actor pool) and write index + ids/coordinates + meta + report to a folder or s3:// prefix.

    python jobs/build_index.py --config configs/build-index-local.yaml
    python jobs/build_index.py --config configs/build-index-local.yaml index.kind=hnsw output=s3://bucket/index
"""

from __future__ import annotations

import sys

from gleam.retrieval.build import BuildIndexConfig, build_index
from gleam.runtime import run_job


def summarize(config: BuildIndexConfig, report: dict) -> str:
    from gleam.progress import elapsed, ending

    return ending(f"Indexed {report['count']} tiles of split {config.split or 'all'} ({report['kind']}, "
                  f"{report['dim']}-d) in {elapsed(report['seconds'])}, "
                  f"{report['embeddings_per_second']:.1f} tiles/s", "", f"{report['output']}  (index, ids, report.json)",
                  ["./run.sh serve",
                   f"python jobs/localize_batch.py input=<folder of photos> index={report['output']} output=runs/localized"])


def run(config: BuildIndexConfig) -> dict:
    from gleam.core.model import resolve_checkpoint

    config.checkpoint = resolve_checkpoint(config.checkpoint)  # on the driver: a bare name loads models/<name>
    return build_index(config)


if __name__ == "__main__":
    sys.exit(run_job(BuildIndexConfig, run, summarize, None, __doc__,
                     "configs/build-index-local.yaml", errors=(ValueError, OSError)))
