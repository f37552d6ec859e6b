"""Small synthetic worlds for tests: the embedded default config (configs/make-shards-local.yaml)
with no gallery distractors, 64 px views and 12 locations per task, plus the test's overrides."""

from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_world(folder: str, *overrides: str) -> str:
    """Write the shards of a synthetic world to ``folder`` and return it."""
    from gleam.config import load_config
    from gleam.data.make_shards import MakeShardsConfig, make_shards

    make_shards(load_config(MakeShardsConfig, os.path.join(ROOT, "configs", "make-shards-local.yaml"), [
        f"output={folder}", "synth.distractors=0", "synth.image_size=64", "synth.locations_per_task=12",
        *overrides]))
    return folder
