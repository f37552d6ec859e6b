"""GLEAM-X's GLEAM-C vision tower: pixels folded back exactly, save/load/merge keep every output,
fact targets are the checker's truth, the match head learns, bad settings are refused."""

from __future__ import annotations

import io
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from gleam.core.model import GleamEncoder, ModelConfig
from gleam.explain.model import (LoraSettings, VLMConfig, collate, load_adapter, load_image, load_vlm, merge_and_save,
                                 resolve_model_path, save_adapter)
from gleam.explain.vision import (FACT_VOCAB, LAYOUT_GRID, VIEW_KINDS, VISION_CONFIG, GleamVisionTower, TowerMerger,
                                  VisionSettings, _images_from_patches, auxiliary_loss, auxiliary_targets, check_vision_settings, fact_targets, find_tower,
                                  match_probabilities)

IMAGE_SIZE = 56


def picture(seed: int, size: int = IMAGE_SIZE) -> bytes:
    pixels = (np.random.default_rng(seed).random((7, 7, 3)) * 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((size, size), Image.NEAREST).save(buffer, "PNG")
    return buffer.getvalue()


def pair(query: int, satellite: int, match: bool, facts: dict | None = None):
    return SimpleNamespace(query_image=picture(query), satellite_image=picture(satellite), match=match,
                           instruction="Same place?", answer="Verdict: match" if match else "Verdict: no match",
                           query_facts=facts, satellite_facts=None if match else facts)


@pytest.fixture(scope="module")
def gleam_c(tmp_path_factory) -> str:
    """A small GLEAM-C checkpoint: ImageNet Lite0 from the pinned package, 32-d head."""
    torch.manual_seed(0)
    encoder = GleamEncoder(ModelConfig(backbone="tf_efficientnet_lite0", pretrained="efficientnet_lite0",
                                       embedding_dim=32, image_size=IMAGE_SIZE, panorama_size=[IMAGE_SIZE, 2 * IMAGE_SIZE]))
    folder = str(tmp_path_factory.mktemp("gleam-c") / "ckpt")
    encoder.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return resolve_model_path(VLMConfig(cache_dir=str(tmp_path_factory.mktemp("vlm"))))


def outputs(model, batch):
    model.eval()
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    return logits, torch.tensor(match_probabilities(model))


def test_patches_fold_back_into_the_images(tiny, gleam_c):
    model, processor = load_vlm(tiny, vision=VisionSettings(source="gleam_c", checkpoint=gleam_c))
    tower = find_tower(model)
    assert isinstance(tower, GleamVisionTower)
    examples = [pair(1, 2, True), pair(3, 4, False)]
    batch = collate(examples, processor, IMAGE_SIZE, 256, train=False)
    images = _images_from_patches(batch["pixel_values"], batch["image_grid_thw"], tower.patch_size,
                                  tower.spatial_merge_size, tower.temporal_patch_size)
    assert len(images) == 4
    for image, data in zip(images, [examples[0].query_image, examples[0].satellite_image,
                                    examples[1].query_image, examples[1].satellite_image]):
        expected = torch.from_numpy(np.asarray(load_image(data, IMAGE_SIZE), dtype=np.float32) / 255).permute(2, 0, 1)
        restored = image * tower.processor_std + tower.processor_mean
        assert float((restored - expected).abs().max()) < 1e-5
    # one token per merged patch, as the language model's placeholders expect
    features = tower(batch["pixel_values"], batch["image_grid_thw"]).pooler_output
    assert features.shape == (int(batch["image_grid_thw"].prod(-1).sum()) // 4, model.config.text_config.hidden_size)
    assert tower.last_match_logits.shape == (2,) and tower.last_fact_logits.shape == (4, len(FACT_VOCAB))
    assert tower.last_view_logits.shape == (4, len(VIEW_KINDS))


def test_adapter_and_merged_folders_keep_logits_and_match_head(tiny, gleam_c, tmp_path):
    torch.manual_seed(3)
    settings = VisionSettings(source="gleam_c", checkpoint=gleam_c, train_backbone="last_stage")
    lora = LoraSettings(r=4, dropout=0.0, train_projector=True)
    model, processor = load_vlm(tiny, lora, vision=settings)
    tower = find_tower(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("merger" in n for n in trainable) and any("lora_" in n for n in trainable)
    assert any("backbone.blocks.6" in n for n in trainable) and not any("backbone.blocks.0" in n for n in trainable)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.05)
    batch = collate([pair(1, 2, True), pair(5, 6, False)], processor, IMAGE_SIZE, 256)
    expected_logits, expected_match = outputs(model, batch)
    assert tower.settings.train_backbone == "last_stage"

    adapter = save_adapter(model, processor, str(tmp_path / "adapter"))
    reloaded, _ = load_adapter(tiny, adapter)
    torch.testing.assert_close(outputs(reloaded, batch)[0], expected_logits)
    torch.testing.assert_close(outputs(reloaded, batch)[1], expected_match)

    merged = merge_and_save(model, processor, str(tmp_path / "merged"))
    again, _ = load_vlm(merged)  # the folder brings its tower back; no checkpoint path needed
    assert isinstance(find_tower(again), GleamVisionTower)
    logits, match = outputs(again, batch)
    torch.testing.assert_close(logits, expected_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(match, expected_match, atol=1e-5, rtol=1e-5)

    saved = json.loads((tmp_path / "merged" / VISION_CONFIG).read_text())
    del saved["match_inputs"]  # a folder from before the layout comparison
    (tmp_path / "merged" / VISION_CONFIG).write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="match head compares embeddings.view.*retrain GLEAM-X"):
        load_vlm(merged)


def test_fact_targets_are_the_checkers_truth():
    facts = {"junctions": [{"type": "roundabout", "direction": "north"}],
             "features": [{"type": "water", "kind": "lake", "direction": "east"},
                          {"type": "park", "direction": "center"}],
             "buildings": {"count": 30, "tallest": {"floors": 5, "direction": "west"}}, "green_fraction": 0.3}
    targets = dict(zip(FACT_VOCAB, fact_targets(facts)))
    assert targets[("junction", "roundabout", None)] == 1 and targets[("junction", "crossroad", None)] == 0
    assert targets[("junction", "any", "north")] == 1 and targets[("junction", "any", "north-east")] == 1  # adjacent
    assert targets[("junction", "any", "south")] == 0
    assert targets[("feature", "lake", None)] == 1 and targets[("feature", "river", None)] == 0
    assert targets[("feature", "water", "east")] == 1 and targets[("feature", "park", "center")] == 1
    assert targets[("buildings", "moderate", None)] == 1 and targets[("buildings", "dense", None)] == 0
    assert targets[("tallest", None, "west")] == 1 and targets[("green", "moderate", None)] == 1
    assert fact_targets(None) is None
    first, second = pair(1, 2, False, facts), pair(3, 3, True, None)
    first.modality = "ground"  # the second has no modality: its query's view kind is unknown
    match, facts_tensor, mask, views = auxiliary_targets([first, second])
    assert match.tolist() == [0.0, 1.0] and mask.tolist() == [True, True, False, False]
    assert facts_tensor.shape == (4, len(FACT_VOCAB))
    assert views.tolist() == [VIEW_KINDS.index("ground"), VIEW_KINDS.index("satellite"), -100, 0]


def train_heads_then_judge(model, processor, make, rng, steps: int, held_out_seeds) -> tuple[list, dict]:
    """Train only the tower's merger on ``make(seeds)`` batches of 8 by the auxiliary loss, then
    run the tower once on held-out examples -> (those examples, the last training step's parts)."""
    tower = find_tower(model)
    optimizer = torch.optim.AdamW([p for p in tower.merger.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    parts: dict = {}
    for _ in range(steps):
        chosen = make(rng.integers(0, 400, 8).tolist())
        batch = collate(chosen, processor, IMAGE_SIZE, 256, train=False)
        tower(batch["pixel_values"], batch["image_grid_thw"])
        loss, parts = auxiliary_loss(model, *auxiliary_targets(chosen))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    held_out = make(held_out_seeds)
    batch = collate(held_out, processor, IMAGE_SIZE, 256, train=False)
    model.eval()
    with torch.no_grad():
        tower(batch["pixel_values"], batch["image_grid_thw"])
    return held_out, parts


def test_match_head_learns_same_place_from_gleam_c_features(tiny, gleam_c):
    """Learning, not plumbing: only the tower's merger trains, on pairs whose satellite image is
    the query itself (same place) or another picture; held-out pairs are then judged well above
    chance (50 %)."""
    torch.manual_seed(0)
    model, processor = load_vlm(tiny, LoraSettings(enabled=False, train_projector=True),
                                vision=VisionSettings(source="gleam_c", checkpoint=gleam_c, fact_loss=0.0))
    rng = np.random.default_rng(0)

    def pairs(seeds):
        out = []
        for seed in seeds:
            same = bool(rng.random() < 0.5)
            out.append(pair(seed, seed if same else seed + 1000, same))
        return out

    held_out, _ = train_heads_then_judge(model, processor, pairs, rng, 40, range(500, 532))
    predicted = [p >= 0.5 for p in match_probabilities(model)]
    accuracy = float(np.mean([p == e.match for p, e in zip(predicted, held_out)]))
    assert accuracy >= 0.8, accuracy


def test_bad_vision_settings_are_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="model.vision.source"):
        check_vision_settings(VisionSettings(source="clip"))
    with pytest.raises(ValueError, match="model.vision.checkpoint"):
        check_vision_settings(VisionSettings(source="gleam_c"))
    with pytest.raises(ValueError, match="train_backbone"):
        check_vision_settings(VisionSettings(source="gleam_c", checkpoint="x", train_backbone="half"))
    from gleam.explain.vision import resolve_gleam_c

    with pytest.raises(FileNotFoundError, match="model.vision.checkpoint"):
        resolve_gleam_c(str(tmp_path / "missing"))


def test_verify_rerank_orders_by_match_probability_and_says_why():
    from gleam.serving.app import verify_rerank

    candidates = [{"id": "a", "match_probability": 0.2}, {"id": "b", "match_probability": 0.9},
                  {"id": "c", "match_probability": None}, {"id": "d", "match_probability": 0.2}]
    ordered = verify_rerank([dict(c) for c in candidates])
    assert [c["id"] for c in ordered] == ["b", "a", "d", "c"]  # ties keep GLEAM-C's order; unverified last
    assert [c["retrieval_rank"] for c in ordered] == [2, 1, 4, 3]
    assert ordered[0]["moved"].startswith("up from #2 to #1") and "0.90" in ordered[0]["moved"]
    assert ordered[2]["moved"].startswith("up from #4 to #3")
    assert ordered[3]["moved"] == "down from #3 to #4: not verified"
    unscored = [{"id": "x", "match_probability": None}, {"id": "y", "match_probability": None}]
    assert [c["id"] for c in verify_rerank(unscored)] == ["x", "y"] and "moved" not in unscored[0]
    # fused with GLEAM-C's score: a small weight moves only a close call, weight 0 moves nothing
    close = [{"id": "a", "score": 0.80, "match_probability": 0.3}, {"id": "b", "score": 0.79, "match_probability": 0.7},
             {"id": "c", "score": 0.50, "match_probability": 0.99}]
    assert [c["id"] for c in verify_rerank([dict(c) for c in close], 0.02)] == ["b", "a", "c"]
    assert [c["id"] for c in verify_rerank([dict(c) for c in close], 0.0)] == ["a", "b", "c"]
    assert [c["id"] for c in verify_rerank([dict(c) for c in close], math.inf)] == ["c", "b", "a"]
    with pytest.raises(ValueError, match="verify_weight"):
        verify_rerank([dict(c) for c in close], -1.0)


def test_grounded_decoding_keeps_the_head_verdict_and_the_best_supported_claims():
    from gleam.explain.vision import answer_support, claim_probability, select_grounded
    from gleam.explain.prompts import Claim

    facts = {"junctions": [{"type": "roundabout", "direction": "north"}],
             "features": [{"type": "water", "kind": "lake", "direction": "east"}],
             "buildings": {"count": 30}, "green_fraction": 0.3}
    sure = fact_targets(facts)  # a fact head that is certain and right
    assert claim_probability(Claim("junction", "roundabout", "north"), sure) == 1.0
    assert claim_probability(Claim("feature", "lake", None, present=False), sure) == 0.0
    assert claim_probability(Claim("feature", "tennis", "north"), sure) == 0.0
    true_text = "Both images show a roundabout to the north and a lake to the east.\nVerdict: match"
    false_text = "Both images show a crossroads to the south and a river to the west.\nVerdict: match"
    assert answer_support(true_text, sure, sure) == 1.0 and answer_support(false_text, sure, sure) == 0.0
    refusal = "Unlike the satellite tile, the query view shows no lake.\nVerdict: no match"
    # the head says "same place": the no-match answer is out, the true claims win over the greedy one
    best, info = select_grounded([false_text, refusal, true_text], 0.9, sure, sure)
    assert best == 2 and info == {"grounded": True, "candidates": 3, "agreeing": 2, "claim_support": 1.0}
    assert select_grounded([false_text, refusal, true_text], 0.1, sure, sure)[0] == 1
    best, info = select_grounded([false_text], 0.1, sure, sure)
    assert best == 0 and info["grounded"] is False


def test_claims_the_heads_do_not_back_are_pruned_sentence_by_sentence_in_both_languages():
    from gleam.explain.vision import VisionSettings, check_vision_settings, prune_claims
    from gleam.explain.evaluate import claim_scores
    from gleam.explain.prompts import extract_claims
    from types import SimpleNamespace

    facts = {"junctions": [{"type": "roundabout", "direction": "north"}],
             "features": [{"type": "water", "kind": "lake", "direction": "east"}],
             "buildings": {"count": 30}, "green_fraction": 0.3}
    sure = fact_targets(facts)
    text = ("Both images show a roundabout to the north. Both images show a river to the west. "
            "The layout is consistent.\nVerdict: match")
    kept, dropped = prune_claims(text, sure, sure, 0.5)
    assert dropped == 1 and kept == "Both images show a roundabout to the north. The layout is consistent.\nVerdict: match"
    assert prune_claims(text, sure, sure, 0.0) == (text, 0)  # 0: every sentence stays
    # every claim left is true, so precision rises from 1/2 to 1/1; the verdict line is untouched
    example = SimpleNamespace(query_facts=facts, satellite_facts=facts, language="en", answer="", match=True)
    before, after = claim_scores([example], [text]), claim_scores([example], [kept])
    assert before["precision"] == 0.5 and after["precision"] == 1.0 and after["claims"] == len(extract_claims(kept))
    zh = "两张图里北边都有一个环岛。两张图里西边都有一条河。\n结论：匹配"
    kept_zh, dropped_zh = prune_claims(zh, sure, sure, 0.5)
    assert dropped_zh == 1 and kept_zh == "两张图里北边都有一个环岛。\n结论：匹配"
    # a head that is unsure of everything keeps nothing it cannot back, but never the verdict away
    unsure = [0.3] * len(sure)
    assert prune_claims(text, unsure, unsure, 0.5)[0] == "The layout is consistent.\nVerdict: match"
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="claim_threshold"):
            check_vision_settings(VisionSettings(claim_threshold=bad))


def test_view_head_learns_which_kind_of_image_it_sees(tiny, gleam_c):
    """The match head is told the query's view kind by the view head: trained from the examples'
    modality alone, it tells flat-coloured map tiles from noisy photos it has not seen."""
    torch.manual_seed(0)
    model, processor = load_vlm(tiny, LoraSettings(enabled=False, train_projector=True),
                                vision=VisionSettings(source="gleam_c", checkpoint=gleam_c, fact_loss=0.0, match_loss=0.0,
                                                      view_loss=1.0))
    tower = find_tower(model)
    palette = np.array([[242, 239, 233], [255, 255, 255], [170, 211, 223], [217, 208, 201]], dtype=np.uint8)

    def image(seed: int, kind: str) -> bytes:
        rng = np.random.default_rng(seed)
        pixels = palette[rng.integers(0, 4, (4, 4))] if kind == "streetmap" else (rng.random((28, 28, 3)) * 255).astype("uint8")
        buffer = io.BytesIO()
        Image.fromarray(pixels).resize((IMAGE_SIZE, IMAGE_SIZE), Image.NEAREST).save(buffer, "PNG")
        return buffer.getvalue()

    def examples(seeds):
        out = []
        for seed in seeds:
            kind = "streetmap" if seed % 2 else "ground"
            example = pair(seed, seed + 1, True)
            example.query_image, example.modality = image(seed, kind), kind
            out.append(example)
        return out

    held_out, parts = train_heads_then_judge(model, processor, examples, np.random.default_rng(0), 30, range(500, 532))
    predicted = tower.last_view_logits[0::2].argmax(-1).tolist()
    accuracy = float(np.mean([VIEW_KINDS[p] == e.modality for p, e in zip(predicted, held_out)]))
    assert accuracy >= 0.9, accuracy
    assert parts["view_accuracy"] >= 0.5 and "match_loss" not in parts



def test_match_head_compares_layouts_not_only_what_is_in_the_images():
    """The layout correlation at work: each negative pair is one image against itself with its
    feature-map cells shuffled (the same embedding and pooled features: the same things, in
    other places), so only the layout can tell it from a positive; the match head alone, trained
    by BCE, tells held-out pairs apart."""
    torch.manual_seed(0)
    channels, dim, cells = 16, 8, LAYOUT_GRID ** 2
    merger = TowerMerger(channels, dim, text_hidden=16, hidden=32, condition=False)

    def batch(pairs: int):
        embeddings = F.normalize(torch.randn(pairs, dim), dim=-1).repeat_interleave(2, 0)
        features = torch.randn(pairs, channels).repeat_interleave(2, 0)
        layouts = torch.randn(pairs, channels, cells)
        layouts = F.normalize(layouts - layouts.mean(-1, keepdim=True), dim=1).repeat_interleave(2, 0)
        match = torch.rand(pairs) < 0.5
        for p in torch.nonzero(~match)[:, 0].tolist():
            shuffled = torch.randperm(cells)
            while bool((shuffled == torch.arange(cells)).all()):
                shuffled = torch.randperm(cells)
            layouts[2 * p + 1] = layouts[2 * p + 1][:, shuffled]
        return embeddings, features, layouts, match.float()

    optimizer = torch.optim.AdamW(merger.match_head.parameters(), lr=3e-3)
    merger.train()
    for _ in range(150):
        embeddings, features, layouts, match = batch(32)
        logits = merger(embeddings, features, [torch.zeros(1, channels)] * len(layouts), layouts)[1]
        loss = F.binary_cross_entropy_with_logits(logits, match)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    merger.eval()
    embeddings, features, layouts, match = batch(256)
    with torch.no_grad():
        logits = merger(embeddings, features, [torch.zeros(1, channels)] * len(layouts), layouts)[1]
    accuracy = float(((logits > 0).float() == match).float().mean())
    assert accuracy >= 0.9, accuracy


def test_the_head_verdict_replaces_the_one_the_language_model_wrote():
    from gleam.explain.prompts import parse_answer, with_verdict

    text = "Both images show a lake to the east.\nVerdict: match"
    fixed = with_verdict(text, False)
    assert fixed == "Both images show a lake to the east.\nVerdict: no match"
    assert parse_answer(fixed).verdict is False and parse_answer(fixed).well_formed
    zh = "两张图都在东边有湖。结论：不匹配"
    assert with_verdict(zh, True) == "两张图都在东边有湖。\n结论：匹配"
    twice = "Verdict: no match. The roads agree. Verdict: match"
    assert with_verdict(twice, True).count("Verdict") == 1 and parse_answer(with_verdict(twice, True)).verdict
    assert with_verdict("", True, "zh") == "结论：匹配"  # a verdict-only answer, or nothing at all
    assert with_verdict("The roads agree.", False) == "The roads agree.\nVerdict: no match"
    with pytest.raises(ValueError, match="language 'fr'"):
        with_verdict(text, True, "fr")
