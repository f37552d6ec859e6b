"""Learning is tested by learning: GLEAM-C, trained briefly on CPU through the real job path
(Ray Train, 2 workers, two phases, the default pretrained EfficientNet-Lite0), must find places
it has never seen far above chance, and fit its training places.

Held out: the validation split's 16 locations lie in another region 100 km away (chance 1/16);
the fit is scored over the 24 training locations with the evaluation job's own code (chance
1/24).  No geometric augmentation, so the fit is learnable in this many steps.
"""

from __future__ import annotations

import math

import pytest

from gleam.config import load_config
from gleam.core.train import TrainCoreConfig, train_core

from synth_world import make_world

LOCATIONS, HELD_OUT = 24, 16


@pytest.mark.slow
def test_short_cpu_run_finds_new_places_far_above_chance(ray_session, tmp_path):
    from gleam.core.evaluate import EvaluateCoreConfig, evaluate_checkpoint

    dataset = make_world(str(tmp_path / "synth"), f"synth.locations={{train: {LOCATIONS}, val: {HELD_OUT}}}",
                         "synth.modalities=[streetmap, panorama]", "synth.panorama_width=128",
                         "synth.regions_per_split=1", "synth.biomes=[temperate]")
    config = load_config(TrainCoreConfig, "configs/local-cpu.yaml", [
        f"data.dataset={dataset}", "data.val_distractors=false",
        f"run.output_dir={tmp_path / 'runs'}", "run.name=learn", "model.image_size=64",
        "model.panorama_size=[64, 128]", "train.global_batch=12",
        "augment.rotate_satellite=false", "augment.flip_probability=0.0", "train.eval_every=0",
        "phases=[{name: streetmap, epochs: 8, modalities: [streetmap], lr: 0.0005, warmup_steps: 4},"
        " {name: both, epochs: 8, modalities: [streetmap, panorama], lr: 0.0003, warmup_steps: 0,"
        " carry_over: [logit_scale, optimizer]}]"])
    summary = train_core(config)
    final = summary["final"]
    print({k: round(v, 1) for k, v in final.items() if k.endswith("/R@1") or k.endswith("/R@5")})
    chance = 100.0 / HELD_OUT
    # measured here: held out streetmap 75 %, panorama 18.8 %, all 46.9 % (chance 6.25 %); fit 100 %
    assert final["val/query->satellite/streetmap/R@1"] >= 6 * chance, final
    assert final["val/query->satellite/all/R@1"] >= 3 * chance, final
    assert final["loss"] < math.log(12) - 0.25  # log(12) = 2.48: the loss of a collapsed encoder
    history = [line for line in open(tmp_path / "runs" / "learn" / "metrics.jsonl")]
    assert len(history) == 16
    fit = evaluate_checkpoint(EvaluateCoreConfig(checkpoint=summary["run_dir"] + "/final", dataset=dataset,
                                                 split="train"))["metrics"]["query->satellite"]
    print("fit", {view: round(m["R@1"], 1) for view, m in fit.items()})
    assert fit["streetmap"]["R@1"] >= 12 * 100.0 / LOCATIONS, fit
    assert fit["all"]["R@1"] >= 4 * 100.0 / LOCATIONS, fit
