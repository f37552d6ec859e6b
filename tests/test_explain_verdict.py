"""GLEAM-X verdicts, tested by learning: the tiny Qwen2.5-VL fine-tuned on Ray Train with label-only
supervision (train.verdict_only_epochs covering the whole run) must beat the majority-class baseline
on match accuracy for pairs from regions it never saw.

The world spans the four biomes, so a model that compares the two views at all can tell many random
negatives apart (a colour-histogram distance alone separates the held-out pairs with an AUC of
0.70, benchmarks/bench_explain_verdict.py); a model that ignores the images, or reads only one of
them, stays at 50 %. World and run take
about 1.5 minutes on 2 cores."""

from __future__ import annotations

import json
import math
import os

import pytest

from gleam.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow
LOCATIONS = 64  # per split, in 4 regions (one per biome)
EPOCHS = 6  # of 10 steps (12 pairs each: 128 label-only pairs // 12)


@pytest.fixture(scope="module")
def world(ray_session, tmp_path_factory):
    from synth_world import make_world

    return make_world(str(tmp_path_factory.mktemp("verdict") / "synth"),
                      f"synth.locations={{train: {LOCATIONS}, val: {LOCATIONS}}}", "synth.modalities=[uav]",
                      "synth.regions_per_split=4")


def test_label_only_fine_tuning_beats_the_majority_baseline_on_new_regions(world, tmp_path):
    from gleam.explain.train import TrainExplainConfig, train_explain

    config = load_config(TrainExplainConfig, os.path.join(ROOT, "configs", "explain-local.yaml"), [
        f"data.source={world}", f"run.output_dir={tmp_path}", "run.name=verdict", "data.modalities=[uav]",
        f"train.epochs={EPOCHS}", f"train.verdict_only_epochs={EPOCHS}", "train.per_worker_batch=6",
        "train.eval_every=0", "train.eval_batch=32", "model.image_size=56", "model.max_length=320",
        f"data.max_val_examples={2 * LOCATIONS}", "data.verdict_only_fraction=0",
        # every epoch is label-only, so explanation prompts get a verdict line too: 8 tokens hold it
        # the default GLEAM-C tower with grounded decoding (model.vision.candidates): the tiny LM
        # alone ignores its image tokens (greedy answers alone: 47.9 % here), the match head does not
        "train.max_new_tokens=8"])
    summary = train_explain(config)
    history = [json.loads(line) for line in open(os.path.join(summary["run_dir"], "metrics.jsonl"))]
    assert [h["task"] for h in history] == ["verdict"] * EPOCHS
    assert summary["data"]["warm_start_examples"] == 2 * LOCATIONS
    val = summary["eval"]["val"]["verdict_only"]
    print({"val": val["match"], "fit": summary["eval"]["fit"]["verdict_only"]["match"],
           "loss": [round(h["loss"], 3) for h in history]})
    n = val["match"]["support"]
    assert n == 2 * LOCATIONS and val["parse_rate"] >= 0.95 and val["majority_baseline"] == 0.5
    # 128 held-out pairs: one standard error of a coin is 4.4 points. Measured: 71.9 % (74.5 % with 96
    # locations a split). The bar is 3 standard errors above 50 % (63.3 %).
    assert val["match"]["accuracy"] >= 0.5 + 3 * math.sqrt(0.25 / n), val
    assert summary["eval"]["fit"]["verdict_only"]["match"]["accuracy"] >= 0.58
