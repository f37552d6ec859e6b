"""Read a shard dataset end to end with Ray Data and report counts and corrupt samples.

    python jobs/inspect_shards.py data/synth
    python jobs/inspect_shards.py s3://bucket/synth
Exit status 1 when any sample was corrupt; --json prints the whole report.
"""

from __future__ import annotations

import argparse
import json
import sys

from gleam.config import RayConfig
from gleam.data.pipeline import inspect_dataset
from gleam.runtime import init_ray, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("dataset", help="dataset folder or URL holding manifest.json")
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    args = parser.parse_args(argv)
    setup_logging("WARNING")
    init_ray(RayConfig())
    try:
        summary = inspect_dataset(args.dataset)
    except (FileNotFoundError, ValueError, OSError) as error:
        print(f"inspect_shards failed: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        print(f"Read {summary['samples']} samples from {summary['shards_read']} shards of {args.dataset} with "
              f"Ray Data: {summary['corrupt']} corrupt {summary['corrupt_by_field'] or ''}".rstrip())
        for split, counts in summary["counts"].items():
            print(f"  {split}: " + ", ".join(f"{view} {count}" for view, count in counts.items()))
        for example in summary["examples_of_corrupt"][:5]:
            print(f"  corrupt: {example}")
    return 1 if summary["corrupt"] else 0


if __name__ == "__main__":
    sys.exit(main())
