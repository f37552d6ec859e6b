"""GLEAM-X on Ray Train, tested by learning: the tiny Qwen2.5-VL (built from config, tokenizer
trained on the data's own English + Chinese text) fine-tuned with LoRA on the synthetic world
must learn to write well-formed bilingual explanations; the run resumes, exports its data as
conversations that read back as a training source, and jobs/evaluate_explain.py scores its model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gleam.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow
EPOCHS = 20

TRAIN_OVERRIDES = [
    "ray.num_workers=2", "train.per_worker_batch=6", "train.eval_batch=16", "train.max_new_tokens=128",
    "model.image_size=56", "model.max_length=320", "data.max_val_examples=24",
    "lora.target_modules=[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]",
    "lora.modules_to_save=[embed_tokens, lm_head]", "data.verdict_only_fraction=0.25",
    "train.verdict_only_epochs=0",  # explanations from the first epoch (the warm start has its own test)
    # what this file tests is the language side (format, languages, resume, export, the evaluate
    # job) on the VLM's own tower; the GLEAM-C tower learns in test_explain_verdict / test_explain_vision
    "model.vision.source=native",
]


@pytest.fixture(scope="module")
def world(ray_session, tmp_path_factory):
    from synth_world import make_world

    return make_world(str(tmp_path_factory.mktemp("explain") / "synth"), "synth.locations={train: 24, val: 8}",
                      "synth.modalities=[streetmap, uav]", "synth.regions_per_split=1", "synth.biomes=[temperate]")


def config_for(dataset: str, output: str, name: str, epochs: int, *extra: str):
    from gleam.explain.train import TrainExplainConfig

    return load_config(TrainExplainConfig, os.path.join(ROOT, "configs", "explain-local.yaml"), [
        f"data.source={dataset}", f"run.output_dir={output}", f"run.name={name}", f"train.epochs={epochs}",
        *TRAIN_OVERRIDES, *extra])


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    from gleam.explain.train import train_explain

    output = str(tmp_path_factory.mktemp("explain-runs"))
    summary = train_explain(config_for(world, output, "learn", EPOCHS))
    return output, summary


def test_fine_tuning_learns_well_formed_bilingual_explanations(trained):
    output, summary = trained
    run_dir = os.path.join(output, "learn")
    history = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert [h["epoch"] for h in history] == list(range(EPOCHS))
    print({"loss": [round(h["loss"], 3) for h in history], "eval": summary["eval"]})
    assert history[-1]["loss"] < 0.3 * history[0]["loss"]
    assert history[-1]["val_loss"] < 0.5 * history[0]["val_loss"]
    data = summary["data"]
    # 48 queries with 1 negative each, plus label-only twins of about a quarter of those pairs
    twins = data["train_verdict_only_examples"]
    assert data["train_examples"] == 96 + twins and 12 <= twins <= 36 and data["train_match_fraction"] == 0.5
    for name in ("val", "fit"):
        report = summary["eval"][name]
        # answers end with a verdict, in the language asked, and make checkable claims about the scene
        assert report["parse_rate"] >= 0.7, (name, report)
        assert report["language_consistency"] >= 0.9, (name, report)
        assert report["text"]["en"]["bleu"] > 0.08 and report["text"]["zh"]["bleu"] > 0.08, (name, report)
        assert report["faithfulness"]["claims_per_answer"] >= 1.0, (name, report)
        # the same pairs asked for the verdict alone (label-only prompt): answered in that format
        assert report["verdict_only"]["match"]["support"] == report["match"]["support"], (name, report)
        assert report["verdict_only"]["parse_rate"] >= 0.9, (name, report["verdict_only"])
    for folder in ("adapter", "final", "plots", "data"):
        assert os.path.isdir(os.path.join(run_dir, folder)), folder
    assert os.path.exists(os.path.join(run_dir, "data", "train.json"))
    assert os.path.exists(os.path.join(run_dir, "eval.json")) and os.path.exists(os.path.join(run_dir, "config.yaml"))


def test_merged_model_loads_and_is_scored_by_the_evaluate_job(trained, tmp_path):
    output, _ = trained
    run_dir = os.path.join(output, "learn")
    report_path = tmp_path / "eval.json"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "jobs", "evaluate_explain.py"),
                           f"model={run_dir}/final", f"data={run_dir}/data", "split=val", "max_examples=8",
                           "max_new_tokens=64", f"output={report_path}"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"outputs: {report_path}" in done.stdout and "majority %" in done.stdout  # the short ending
    report = json.loads(report_path.read_text())
    assert report["examples"] == 8 and report["match"]["support"] == 8 and report["verdict_only"]["match"]["support"] == 8
    assert {"language", "modality"} <= set(report["groups"])
    assert report["load_report"]["skipped_count"] == 0


def test_resume_and_exported_conversations_as_a_source(trained, world):
    from gleam.explain.train import train_explain

    output, _ = trained
    run_dir = os.path.join(output, "learn")
    before = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    # same run name, two more epochs: resumes from the last checkpoint instead of starting over
    summary = train_explain(config_for(world, output, "learn", EPOCHS + 1, "data.max_val_examples=4"))
    after = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert len(after) == EPOCHS + 1 and after[:EPOCHS] == before and summary["epochs"] == EPOCHS + 1
    # the exported conversations are a training source of their own (the importer's format):
    # the same examples come back, in the same order, ready for the same training loop
    from gleam.explain.train import build_datasets

    exported, _, fit, report = build_datasets(config_for(os.path.join(run_dir, "data"), output, "from-json", 1))
    twins = report["train_verdict_only_examples"]
    assert report["format"] == "conversations" and report["train_examples"] == 96 + twins and twins > 0 and fit == []
    assert report["train_load_report"]["skipped_count"] == 0
    original = json.load(open(os.path.join(run_dir, "data", "train.json")))
    assert [e.answer for e in exported] == [r["conversations"][1]["value"] for r in original]


def test_hard_negatives_come_from_a_gleam_c_checkpoint(world, tmp_path):
    """data.retrieval_checkpoint: negatives are GLEAM-C's most similar wrong tiles."""
    import numpy as np
    import torch

    from gleam.core.model import GleamEncoder, ModelConfig
    from gleam.explain.train import build_datasets
    from gleam.retrieval.embed import Embedder

    torch.manual_seed(0)
    checkpoint = str(tmp_path / "gleam-c")
    GleamEncoder(ModelConfig(embedding_dim=16, image_size=32, panorama_size=[32, 64])).save_pretrained(checkpoint)
    config = config_for(world, str(tmp_path / "runs"), "hard", 1, f"data.retrieval_checkpoint={checkpoint}",
                        "data.hard_fraction=1.0")
    train, val, fit, report = build_datasets(config)
    hard = [e for e in train if e.negative == "hard"]
    assert report["hard_negatives"] and len(hard) >= 0.9 * sum(not e.match for e in train)
    # a hard negative's tile is among the 5 tiles the encoder puts closest to one of the
    # location's query views (its own tile excluded); views of one location share their neighbours
    embedder = Embedder(checkpoint, device="cpu")
    from gleam.data.schema import decode_image

    tiles, views = {}, {}
    for example in train:
        tiles.setdefault(example.satellite_location_id, example.satellite_image)
        views.setdefault(example.location_id, {})[example.modality] = example.query_image
    ids = sorted(tiles)
    gallery = embedder.embed([decode_image(tiles[i]) for i in ids], "satellite")
    for example in hard[:8]:
        close = set()
        for modality, image in views[example.location_id].items():
            query = embedder.embed([decode_image(image)], modality)[0]
            close |= set([ids[i] for i in np.argsort(-(gallery @ query)) if ids[i] != example.location_id][:5])
        assert example.satellite_location_id in close, (example.location_id, example.satellite_location_id)


CONFIG_ERRORS = [
    (1, "data.verdict_only_fraction=1.5", r"data\.verdict_only_fraction: 1\.5 is outside \[0, 1\]"),
    (2, "train.verdict_only_epochs=3", r"train\.verdict_only_epochs: 3 must lie in \[0, train\.epochs=2\]"),
    (1, "train.loss_reduction=mean",
     r"train\.loss_reduction: 'mean' unknown; use one of \['token', 'example'\]"),
]


@pytest.mark.parametrize("epochs, override, message", CONFIG_ERRORS, ids=[e[1].split("=")[0] for e in CONFIG_ERRORS])
def test_bad_training_settings_are_config_errors(tmp_path, epochs, override, message):
    from gleam.explain.train import train_explain

    config = config_for(str(tmp_path / "none"), str(tmp_path / "runs"), "bad", epochs, override)
    with pytest.raises(ValueError, match=message):
        train_explain(config)
    assert not (tmp_path / "runs").exists()  # refused before anything is written


def test_warm_start_examples_are_the_label_only_twins_of_every_pair():
    from gleam.explain.dataset import ExplainExample, verdict_only
    from gleam.explain.prompts import VERDICT_LINES, is_verdict_only
    from gleam.explain.train import warm_start_examples

    def pair(i, match, language):
        return ExplainExample(id=f"p{i}", query_image=b"q", satellite_image=b"s", modality="uav", language=language,
                              instruction="Explain.", answer="Both show a road.\n" + VERDICT_LINES[language][match],
                              match=match)

    # pair 2 already has its label-only twin in the data (data.verdict_only_fraction): not doubled
    train = [pair(0, True, "en"), pair(1, False, "zh"), pair(2, False, "en"), verdict_only(pair(2, False, "en"))]
    warm = warm_start_examples(train, seed=0)
    assert [e.task for e in warm] == ["verdict"] * 3 and warm[2] is train[3]
    assert [e.answer for e in warm] == [VERDICT_LINES["en"][True], VERDICT_LINES["zh"][False], VERDICT_LINES["en"][False]]
    assert all(is_verdict_only(e.answer) and e.instruction != "Explain." for e in warm)
    assert [e.match for e in warm] == [True, False, False]
    assert [e.query_image for e in warm] == [b"q"] * 3


def test_answer_loss_per_token_or_per_example():
    import torch
    from types import SimpleNamespace

    from gleam.explain.train import answer_loss

    class Toy(torch.nn.Module):  # a causal LM's interface: logits, and its own token-mean loss
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.table = torch.nn.Embedding(11, 11)

        def forward(self, input_ids, attention_mask=None, labels=None):
            logits = self.table(input_ids)
            loss = None if labels is None else torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
            return SimpleNamespace(logits=logits, loss=loss)

    model = Toy()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 0, 0]])
    # example 0 answers with 4 tokens, example 1 with 1 (a bare verdict), padding ignored
    labels = torch.tensor([[-100, -100, 3, 4, 5, 6], [-100, -100, -100, 10, -100, -100]])
    batch = {"input_ids": ids, "attention_mask": (ids > 0).long(), "labels": labels}
    logits = model.table(ids)
    nll = -torch.log_softmax(logits, dim=-1)
    first = torch.stack([nll[0, t - 1, ids[0, t]] for t in (2, 3, 4, 5)])
    second = nll[1, 2, 10]
    torch.testing.assert_close(answer_loss(model, batch, "token"), torch.cat([first, second[None]]).mean())
    torch.testing.assert_close(answer_loss(model, batch, "example"), (first.mean() + second) / 2)
    with pytest.raises(ValueError, match="train.loss_reduction: 'sum' unknown"):
        answer_loss(model, batch, "sum")


def test_deepspeed_config_for_zero_2_and_3():
    from gleam.explain.train import DeepSpeedSection, ExplainOptimSection, deepspeed_config

    optim = ExplainOptimSection(lr=1e-4, warmup_steps=10, grad_clip=1.0)
    two = deepspeed_config(DeepSpeedSection(enabled=True, stage=2), 4, optim, total_steps=100)
    assert two["zero_optimization"]["stage"] == 2 and two["train_micro_batch_size_per_gpu"] == 4
    assert two["optimizer"]["params"]["lr"] == 1e-4 and two["scheduler"]["params"]["total_num_steps"] == 100
    three = deepspeed_config(DeepSpeedSection(enabled=True, stage=3, offload_optimizer=True), 2, optim, 5)
    assert three["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert three["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert three["scheduler"]["params"]["warmup_num_steps"] == 4  # never the whole run
    with pytest.raises(ValueError, match="stage"):
        deepspeed_config(DeepSpeedSection(enabled=True, stage=1), 2, optim, 5)
