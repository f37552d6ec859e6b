"""Write the synthetic world as WebDataset shards (local folder or s3://), in parallel with Ray.

    python jobs/make_shards.py --config configs/make-shards-local.yaml output=data/synth synth.locations.train=256
    ray job submit -- python jobs/make_shards.py --config configs/make-shards-local.yaml output=s3://bucket/synth
"""

from __future__ import annotations

import json
import sys

from gleam.data.make_shards import MakeShardsConfig, make_shards
from gleam.runtime import init_ray, parse_job_args, setup_logging


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    config = parse_job_args(MakeShardsConfig, argv, __doc__.strip().splitlines()[0],
                            default_config="configs/make-shards-local.yaml")
    init_ray(config.ray)
    try:
        manifest = make_shards(config)
    except (ValueError, OSError) as error:
        print(f"make_shards failed: {error}", file=sys.stderr)
        return 1
    summary = {k: manifest[k] for k in ("num_shards", "num_samples", "modalities", "splits")}
    print(json.dumps({"output": config.output, **summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
