"""Write the synthetic world as WebDataset shards (local folder or s3://), in parallel with Ray.

    python jobs/make_shards.py --config configs/make-shards-local.yaml output=data/synth synth.locations.train=256
    ray job submit -- python jobs/make_shards.py --config configs/make-shards-local.yaml output=s3://bucket/synth
"""

from __future__ import annotations

import sys

from gleam.data.make_shards import MakeShardsConfig, make_shards
from gleam.runtime import run_job


def summarize(config: MakeShardsConfig, manifest: dict) -> str:
    from gleam.progress import ending

    splits = ", ".join(f"{name} {count}" for name, count in manifest["splits"].items())
    views = ", ".join(f"{name} {count}" for name, count in manifest["modalities"].items())
    return ending(f"Wrote {manifest['num_samples']} samples in {manifest['num_shards']} shards "
                  f"(splits: {splits}; query views: {views})", "", f"{config.output}  (manifest.json, shards)",
                  [f"python jobs/train_core.py --config configs/local-cpu.yaml data.dataset={config.output}"])


if __name__ == "__main__":
    sys.exit(run_job(MakeShardsConfig, make_shards, summarize, None, __doc__,
                     "configs/make-shards-local.yaml", errors=(ValueError, OSError)))
