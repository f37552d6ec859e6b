"""Learning is tested by learning: GLEAM-C, trained briefly on CPU through the real job path
(Ray Train, 2 workers, two phases), must retrieve far above chance.

The synthetic world's views are hard: from scratch on 2 CPU cores no short run generalises to
new regions yet (see the README's numbers), so this test checks that the machinery learns —
retrieval over the training locations themselves (``data.val_split=train``), without geometric
augmentation, with chance at 1/24.
"""

from __future__ import annotations

import math

import pytest

from gleam.config import load_config
from gleam.core.train import TrainCoreConfig, train_core

from synth_world import make_world

LOCATIONS = 24


@pytest.mark.slow
def test_short_cpu_run_retrieves_far_above_chance(ray_session, tmp_path):
    dataset = make_world(str(tmp_path / "synth"), f"synth.locations={{train: {LOCATIONS}}}",
                         "synth.modalities=[streetmap, panorama]", "synth.panorama_width=128",
                         "synth.regions_per_split=1", "synth.biomes=[temperate]")
    config = load_config(TrainCoreConfig, "configs/local-cpu.yaml", [
        f"data.dataset={dataset}", "data.val_split=train", "data.val_distractors=false",
        f"run.output_dir={tmp_path / 'runs'}", "run.name=learn", "model.image_size=64",
        "model.panorama_size=[64, 128]", "model.logit_scale_init=0.0", "train.global_batch=12",
        "augment.rotate_satellite=false", "augment.flip_probability=0.0", "train.eval_every=0",
        "phases=[{name: streetmap, epochs: 24, modalities: [streetmap], lr: 0.001, warmup_steps: 10},"
        " {name: both, epochs: 8, modalities: [streetmap, panorama], lr: 0.0005, warmup_steps: 0,"
        " carry_over: [logit_scale, optimizer]}]"])
    summary = train_core(config)
    final = summary["final"]
    chance = 100.0 / LOCATIONS
    streetmap = final["val/query->satellite/streetmap/R@1"]
    print({k: v for k, v in final.items() if k.endswith("/R@1") or k.endswith("/R@5")})
    # measured here: streetmap 100 %, panorama 45.8 %, all 72.9 % (chance 4.2 %)
    assert streetmap >= 16 * chance, final
    assert final["val/query->satellite/panorama/R@1"] >= 4 * chance, final
    assert final["val/query->satellite/all/R@1"] >= 4 * chance, final
    assert final["loss"] < math.log(12) - 0.25  # log(12) = 2.48: the loss of a collapsed encoder
    history = [line for line in open(tmp_path / "runs" / "learn" / "metrics.jsonl")]
    assert len(history) == 32
