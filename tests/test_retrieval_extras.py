"""Retrieval beyond one nearest neighbour, each against a plain reference: R@top1% rules, metres at
k, the reverse direction's extra gallery and query mask, multi-query fusion (mean and max),
query-expansion re-ranking, test-time flip / multi-scale, calibration (Platt, isotonic, ECE)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gleam.core import calibration
from gleam.core.evaluate import (EvaluationEmbeddings, FusionConfig, evaluate_retrieval, haversine_m, retrieval_metrics,
                                 score_embeddings, top1_outcomes, top1_percent_k)
from gleam.core.rerank import RerankConfig, alpha_query_expansion, apply_rerank, database_side_augmentation


pytestmark = pytest.mark.usefixtures("single_torch_thread")  # conftest: one torch thread


def unit(rng, count, dim=8):
    vectors = rng.normal(size=(count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def world(seed=0, locations=30, per_location=3, dim=8, noise=0.6):
    """Gallery: one tile per location; queries: noisy copies, ``per_location`` per place, 2 views."""
    rng = np.random.default_rng(seed)
    gallery = unit(rng, locations, dim)
    ids = np.repeat(np.arange(locations), per_location)
    queries = gallery[ids] + noise * rng.normal(size=(len(ids), dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    modalities = np.array(["uav", "ground"] * (len(ids) // 2) + ["uav"] * (len(ids) % 2))
    gallery_latlon = np.stack([47.0 + rng.uniform(0, 0.05, locations), 8.0 + rng.uniform(0, 0.05, locations)], 1)
    return queries, ids, gallery, np.arange(locations), modalities, gallery_latlon


def test_top1_percent_rules_state_their_k():
    assert top1_percent_k(8884) == 89 and top1_percent_k(8884, "floor") == 88
    assert top1_percent_k(50, "floor") == 1 and top1_percent_k(150) == 2 and top1_percent_k(149) == 1
    with pytest.raises(ValueError, match="top1_percent_rule='ceil'"):
        top1_percent_k(100, "ceil")
    queries, ids, gallery, gallery_ids, _, _ = world(locations=250, per_location=1)
    floor = retrieval_metrics(queries, ids, gallery, gallery_ids, ks=(2, 3), top1_percent_rule="floor")
    rounded = retrieval_metrics(queries, ids, gallery, gallery_ids, ks=(2, 3))
    assert (floor["top1%_k"], rounded["top1%_k"]) == (2, 3)
    assert floor["top1%_rule"] == "max(1, G // 100)" and rounded["top1%_rule"] == "max(1, floor(G/100 + 0.5))"
    assert floor["R@top1%"] == floor["R@2"] and rounded["R@top1%"] == rounded["R@3"]


def test_localisation_best_of_top_k_matches_brute_force():
    queries, ids, gallery, gallery_ids, _, gallery_latlon = world(seed=1)
    query_latlon = gallery_latlon[ids] + 0.0002
    result = retrieval_metrics(queries, ids, gallery, gallery_ids, query_latlon=query_latlon,
                               gallery_latlon=gallery_latlon, chunk_size=7)
    order = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")
    for k in (1, 5, 10):
        best = np.array([min(haversine_m(*query_latlon[q], *gallery_latlon[g].T) for g in order[q, :k])
                         for q in range(len(ids))])
        summary = result["localisation_at_k"][str(k)]
        assert summary["median"] == pytest.approx(np.median(best)) and summary["queries"] == len(ids)
        for threshold in (25, 50, 100, 500):
            assert summary[f"within_{threshold}m"] == pytest.approx(100 * np.mean(best <= threshold))
    assert result["localisation_at_k"]["1"] == result["localisation_error_m"]


def test_reverse_extra_gallery_and_query_mask_match_direct_ranking():
    """satellite->query with extra images (University-1652 gallery_drone) and only the tiles of
    queried places as queries equals ranking those tiles against queries + extra directly."""
    queries, ids, gallery, gallery_ids, modalities, _ = world(seed=2, locations=12, per_location=2)
    rng = np.random.default_rng(5)
    extra_ids = np.array([12, 13, 13, 3])  # distractor places' images + one more of place 3
    gallery = np.concatenate([gallery, unit(rng, 2)])  # tiles 12, 13: distractors
    gallery_ids = np.arange(14)
    extra = unit(rng, 4)
    mask = np.isin(gallery_ids, ids)
    result = evaluate_retrieval(queries, ids, gallery, gallery_ids, query_modalities=modalities,
                                reverse_extra_embeddings=extra, reverse_extra_ids=extra_ids,
                                reverse_extra_modalities=["uav"] * 4, reverse_query_mask=mask, chunk_size=5)
    reverse = result["satellite->query"]
    expected = retrieval_metrics(gallery[mask], gallery_ids[mask], np.concatenate([queries, extra]),
                                 np.concatenate([ids, extra_ids]), direction="satellite->query")
    assert reverse["all"] == expected
    uav = np.concatenate([modalities == "uav", [True] * 4])
    expected_uav = retrieval_metrics(gallery[mask], gallery_ids[mask], np.concatenate([queries, extra])[uav],
                                     np.concatenate([ids, extra_ids])[uav], direction="satellite->uav")
    assert reverse["uav"] == expected_uav
    assert reverse["all"]["queries"] == 12 and reverse["all"]["gallery_size"] == len(ids) + 4
    assert result["query->satellite"]["all"]["gallery_size"] == 14


def embedded(queries, ids, gallery, gallery_ids, modalities, query_latlon=None, gallery_latlon=None):
    return EvaluationEmbeddings(
        queries=torch.from_numpy(queries), query_ids=[str(i) for i in ids], query_modalities=list(modalities),
        query_latlon=query_latlon, gallery=torch.from_numpy(gallery), gallery_ids=[str(i) for i in gallery_ids],
        gallery_latlon=gallery_latlon, extra=None, extra_ids=[], extra_modalities=[], extra_latlon=None,
        reverse_query_mask=None, semi_positives=None, protocol={})


def test_fusion_mean_and_max_match_grouped_reference():
    queries, ids, gallery, gallery_ids, modalities, _ = world(seed=3, locations=40, per_location=4, noise=0.9)
    embeddings = embedded(queries, ids, gallery, gallery_ids, modalities)
    single = score_embeddings(embeddings, both_directions=False)["query->satellite"]["all"]["R@1"]
    similarities = queries @ gallery.T
    for method in ("mean", "max"):
        result = score_embeddings(embeddings, fusion=FusionConfig(method, "location"), chunk_size=3)
        assert set(result) == {"query->satellite"}
        fused = result["query->satellite"]["fused"]
        rows = [similarities[ids == place] for place in range(40)]
        scores = np.stack([r.mean(0) if method == "mean" else r.max(0) for r in rows])
        expected_r1 = 100 * np.mean(np.argmax(scores, axis=1) == np.arange(40))
        assert fused["queries"] == 40 and fused["R@1"] == pytest.approx(expected_r1)
        outcomes = top1_outcomes(embeddings, fusion=FusionConfig(method, "location"))
        assert 100 * outcomes["correct"].mean() == pytest.approx(expected_r1)
        assert fused["R@1"] > single  # four noisy views of a place beat one
    by_view = score_embeddings(embeddings, fusion=FusionConfig("mean", "location_modality"))["query->satellite"]
    assert by_view["uav"]["queries"] == by_view["ground"]["queries"] == 40


def test_query_expansion_is_the_weighted_sum_of_the_top_k():
    rng = np.random.default_rng(4)
    queries, gallery = torch.from_numpy(unit(rng, 9)), torch.from_numpy(unit(rng, 20))
    expanded = alpha_query_expansion(queries, gallery, k=3, alpha=2.0, chunk_size=4)
    for q in range(9):
        scores = (gallery @ queries[q]).numpy()
        top = np.argsort(-scores)[:3]
        vector = queries[q].numpy() + sum(max(scores[j], 0) ** 2 * gallery[j].numpy() for j in top)
        assert np.allclose(expanded[q].numpy(), vector / np.linalg.norm(vector), atol=1e-5)
    augmented = database_side_augmentation(gallery, k=2, alpha=1.0, chunk_size=6)
    neighbour = int(np.argsort(-(gallery @ gallery[0]).numpy())[1])
    weight = max(float(gallery[neighbour] @ gallery[0]), 0)
    vector = gallery[0].numpy() + weight * gallery[neighbour].numpy()
    assert np.allclose(augmented[0].numpy(), vector / np.linalg.norm(vector), atol=1e-5)
    assert apply_rerank(queries, gallery, RerankConfig()) == (queries, gallery)
    with pytest.raises(ValueError, match="rerank.method"):
        apply_rerank(queries, gallery, RerankConfig(method="kreciprocal"))


def test_flip_tta_embedding_is_invariant_to_the_flip_it_averages():
    from gleam.core.model import GleamEncoder, ModelConfig
    from gleam.core.tta import TTAConfig, encode_with_tta
    from gleam.data.transforms import IMAGENET_MEAN, IMAGENET_STD, flip_view

    torch.manual_seed(0)
    model = GleamEncoder(ModelConfig(backbone="resnet10t", embedding_dim=8, image_size=32,
                                     panorama_size=[32, 64])).eval()
    rng = np.random.default_rng(0)
    panorama = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)
    tile = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert np.array_equal(flip_view(flip_view(panorama, "panorama"), "panorama"), panorama)
    assert np.array_equal(flip_view(panorama, "panorama")[:, 0], panorama[:, 0])  # north column stays north
    with torch.no_grad():
        for image, kind in ((panorama, "panorama"), (tile, "satellite")):
            flipped = flip_view(image, kind)
            plain = encode_with_tta(model, [image, flipped], kind, "cpu", IMAGENET_MEAN, IMAGENET_STD, None)
            assert not torch.allclose(plain[0], plain[1], atol=1e-4)
            tta = encode_with_tta(model, [image, flipped], kind, "cpu", IMAGENET_MEAN, IMAGENET_STD, TTAConfig(flip=True))
            assert torch.allclose(tta[0], tta[1], atol=1e-5)
            assert torch.allclose(tta.norm(dim=1), torch.ones(2), atol=1e-5)
        scales = encode_with_tta(model, [tile], "satellite", "cpu", IMAGENET_MEAN, IMAGENET_STD,
                                 TTAConfig(flip=True, scales=[1.0, 1.5]))
        assert scales.shape == (1, 8) and TTAConfig(flip=True, scales=[1.0, 1.5]).passes == 4


def test_platt_recovers_a_known_logistic_and_isotonic_is_monotone():
    rng = np.random.default_rng(0)
    top1 = rng.uniform(0.2, 0.9, 4000)
    top2 = top1 - rng.uniform(0.0, 0.3, 4000)
    truth = 1 / (1 + np.exp(-(6 * top1 + 10 * (top1 - top2) - 5)))
    correct = rng.random(4000) < truth
    platt = calibration.fit_calibrator(top1, top2, correct, "platt")
    assert platt.weights == pytest.approx([6, 10, -5], abs=1.2)
    predicted = platt.predict(top1, top2)
    assert calibration.expected_calibration_error(predicted, correct) < 3.0
    assert platt.fitted_on["ece_fitted"] < platt.fitted_on["ece_raw"]
    isotonic = calibration.fit_calibrator(top1, top2, correct, "isotonic")
    order = np.argsort(isotonic.score(top1, top2))
    assert np.all(np.diff(isotonic.predict(top1, top2)[order]) >= -1e-12)
    again = calibration.Calibrator.from_json(isotonic.to_json())
    assert np.array_equal(again.predict(top1[:50], top2[:50]), isotonic.predict(top1[:50], top2[:50]))
    # ECE by hand: two bins, confidences 0.1 (2 queries, 1 right) and 0.9 (2 queries, both right)
    assert calibration.expected_calibration_error([0.1, 0.1, 0.9, 0.9], [1, 0, 1, 1]) == \
        pytest.approx(100 * (2 / 4 * 0.4 + 2 / 4 * 0.1))
    with pytest.raises(ValueError, match="at least 2"):
        calibration.fit_calibrator([0.5], [0.4], [True])
