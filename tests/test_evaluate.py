"""Chunked retrieval metrics (gleam.core.evaluate) against a plain brute-force reference.

The reference below builds the dense similarity matrix, sorts every row with Python's ``sorted``
and applies the textbook definitions in loops.  Random embeddings are built so that every dot
product is exact in float32 (entries +-1/4 or +-1/8, fixed number of non-zeros, unit norm): any
summation order gives the same bits, so rankings, ties included, must match exactly.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gleam.core import evaluate
from gleam.core.evaluate import evaluate_retrieval, haversine_m, rank_queries, retrieval_metrics, top_k

ZURICH = (47.3769, 8.5417)
BERN = (46.9480, 7.4474)
THRESHOLDS_M = (25.0, 50.0, 100.0, 500.0)


pytestmark = pytest.mark.usefixtures("single_torch_thread")  # conftest: one torch thread


# ------------------------------------------------------------------------------------------
# Reference implementation (plain, dense, loops)
# ------------------------------------------------------------------------------------------

def reference_distance_m(lat1, lon1, lat2, lon2):
    radius = 6_371_008.8
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    d_phi, d_lambda = phi2 - phi1, math.radians(lon2 - lon1)
    a = math.sin(d_phi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(d_lambda / 2) ** 2
    return 2 * radius * math.asin(math.sqrt(min(1.0, a)))


def reference_ranking(similarity_row):
    return sorted(range(len(similarity_row)), key=lambda j: (-similarity_row[j], j))


def reference_ap(positive_ranks):
    """University-1652 compute_mAP, written out."""
    ap = 0.0
    for i, rank in enumerate(sorted(positive_ranks)):
        precision = (i + 1) / (rank + 1)
        old_precision = i / rank if rank != 0 else 1.0
        ap += (old_precision + precision) / 2 / len(positive_ranks)
    return ap


def reference_metrics(similarities, query_ids, gallery_ids, ks, query_mask=None, semi=None,
                      query_latlon=None, gallery_latlon=None):
    num_queries, gallery_size = similarities.shape
    top1_k = max(1, int(gallery_size / 100 + 0.5))
    selected = [q for q in range(num_queries) if query_mask is None or query_mask[q]]
    first_ranks, aps, hits, errors = [], [], [], []
    for q in selected:
        order = reference_ranking(list(similarities[q]))
        position = {j: r for r, j in enumerate(order)}
        positive_ranks = [position[j] for j in range(gallery_size) if gallery_ids[j] == query_ids[q]]
        if not positive_ranks:
            continue
        first_ranks.append(min(positive_ranks))
        aps.append(reference_ap(positive_ranks))
        if semi is not None:
            hits.append(min(positive_ranks) == 0 or order[0] in list(semi.get(q, [])))
        if query_latlon is not None:
            coordinates = [*query_latlon[q], *gallery_latlon[order[0]]]
            if not any(math.isnan(value) for value in coordinates):
                errors.append(reference_distance_m(*coordinates))
    n = len(first_ranks)
    pct = (lambda values: 100.0 * sum(values) / len(values) if values else None)
    result = {"queries": len(selected), "gallery_size": gallery_size, "queries_evaluated": n,
              "queries_without_positive": len(selected) - n, "top1%_k": top1_k,
              "R@top1%": pct([r < top1_k for r in first_ranks]), "AP": pct(aps)}
    for k in ks:
        result[f"R@{k}"] = pct([r < k for r in first_ranks])
    if semi is not None:
        result["hit_rate"] = pct(hits)
    if query_latlon is not None:
        ordered = sorted(errors)
        median = None
        if ordered:
            middle = len(ordered) // 2
            median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
        loc = {"queries": len(errors), "median": median, "mean": sum(errors) / len(errors) if errors else None}
        for threshold in THRESHOLDS_M:
            loc[f"within_{threshold:g}m"] = pct([e <= threshold for e in errors])
        result["localisation_error_m"] = loc
    return result


def assert_metrics_match(actual, expected):
    for key, value in expected.items():
        if isinstance(value, dict):
            assert_metrics_match(actual[key], value)
        elif value is None or isinstance(value, int):
            assert actual[key] == value, key
        else:
            assert actual[key] == pytest.approx(value, abs=1e-9), key


# ------------------------------------------------------------------------------------------
# Random data with exact similarities
# ------------------------------------------------------------------------------------------

def exact_unit_vectors(rng, count, dim, nonzeros):
    """Rows with ``nonzeros`` entries of +-1/sqrt(nonzeros) (a power of 4): unit norm, exact dots."""
    vectors = np.zeros((count, dim), np.float32)
    for row in vectors:
        row[rng.choice(dim, nonzeros, replace=False)] = rng.choice([-1.0, 1.0], nonzeros) / math.sqrt(nonzeros)
    return vectors


def make_dataset(seed, dim=32, nonzeros=16, num_locations=60, num_queries=90):
    rng = np.random.default_rng(seed)
    location_latlon = np.column_stack([47.3 + rng.uniform(0, 0.01, num_locations),
                                       8.5 + rng.uniform(0, 0.01, num_locations)])
    gallery_locations = np.concatenate([np.repeat(np.arange(num_locations), rng.integers(0, 4, num_locations)),
                                        rng.integers(0, num_locations, 10)])
    query_locations = rng.integers(0, num_locations + 8, num_queries)  # some not in the gallery
    gallery_latlon = location_latlon[gallery_locations] + rng.normal(0, 1e-4, (len(gallery_locations), 2))
    gallery_latlon[rng.random(len(gallery_locations)) < 0.05] = np.nan
    query_latlon = np.column_stack([47.3 + rng.uniform(0, 0.01, num_queries), 8.5 + rng.uniform(0, 0.01, num_queries)])
    semi = {int(q): rng.integers(0, len(gallery_locations), rng.integers(0, 4)).tolist()
            for q in rng.choice(num_queries, num_queries // 2, replace=False)}
    return {
        "queries": exact_unit_vectors(rng, num_queries, dim, nonzeros),
        "query_ids": [f"loc{i}" for i in query_locations],
        "gallery": exact_unit_vectors(rng, len(gallery_locations), dim, nonzeros),
        "gallery_ids": [f"loc{i}" for i in gallery_locations],
        "modalities": rng.choice(["uav", "panorama", "ground"], num_queries).tolist(),
        "query_latlon": query_latlon, "gallery_latlon": gallery_latlon, "semi": semi,
    }


DATASETS = {"many_ties": dict(dim=32, nonzeros=16), "fewer_ties": dict(dim=128, nonzeros=64)}


@pytest.fixture(params=sorted(DATASETS))
def dataset(request):
    return make_dataset(seed=len(request.param), **DATASETS[request.param])


# ------------------------------------------------------------------------------------------
# Against the reference
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_retrieval_metrics_match_reference(dataset, chunk_size):
    ks = (1, 3, 5, 10)
    actual = retrieval_metrics(dataset["queries"], dataset["query_ids"], dataset["gallery"], dataset["gallery_ids"],
                               ks=ks, query_latlon=dataset["query_latlon"], gallery_latlon=dataset["gallery_latlon"],
                               semi_positives=dataset["semi"], chunk_size=chunk_size)
    similarities = dataset["queries"].astype(np.float64) @ dataset["gallery"].T.astype(np.float64)
    expected = reference_metrics(similarities, dataset["query_ids"], dataset["gallery_ids"], ks,
                                 semi=dataset["semi"], query_latlon=dataset["query_latlon"],
                                 gallery_latlon=dataset["gallery_latlon"])
    assert expected["queries_without_positive"] > 0 and expected["queries_evaluated"] > 0
    assert_metrics_match(actual, expected)
    json.dumps(actual, allow_nan=False)


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_both_directions_per_modality_match_reference(dataset, chunk_size):
    ks = (1, 5)
    results = evaluate_retrieval(dataset["queries"], dataset["query_ids"], dataset["gallery"],
                                 dataset["gallery_ids"], query_modalities=dataset["modalities"], ks=ks,
                                 query_latlon=dataset["query_latlon"], gallery_latlon=dataset["gallery_latlon"],
                                 semi_positives=dataset["semi"], chunk_size=chunk_size)
    similarities = dataset["queries"].astype(np.float64) @ dataset["gallery"].T.astype(np.float64)
    modalities = np.array(dataset["modalities"])
    common = dict(semi=dataset["semi"], query_latlon=dataset["query_latlon"], gallery_latlon=dataset["gallery_latlon"])
    assert set(results["query->satellite"]) == {"all", "uav", "panorama", "ground"}
    assert_metrics_match(results["query->satellite"]["all"],
                         reference_metrics(similarities, dataset["query_ids"], dataset["gallery_ids"], ks, **common))
    for modality in ("uav", "panorama", "ground"):
        expected = reference_metrics(similarities, dataset["query_ids"], dataset["gallery_ids"], ks,
                                     query_mask=modalities == modality, **common)
        assert results["query->satellite"][modality]["direction"] == f"{modality}->satellite"
        assert_metrics_match(results["query->satellite"][modality], expected)
    for name in ("all", "uav", "panorama", "ground"):
        subset = [q for q in range(len(modalities)) if name == "all" or modalities[q] == name]
        inverted = {}
        for new_position, q in enumerate(subset):
            for tile in dataset["semi"].get(q, []):
                inverted.setdefault(tile, []).append(new_position)
        expected = reference_metrics(similarities.T[:, subset], dataset["gallery_ids"],
                                     [dataset["query_ids"][q] for q in subset], ks, semi=inverted,
                                     query_latlon=dataset["gallery_latlon"],
                                     gallery_latlon=dataset["query_latlon"][subset])
        assert_metrics_match(results["satellite->query"][name], expected)
    json.dumps(results, allow_nan=False)


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
@pytest.mark.parametrize("k", [1, 4, 9])
def test_top_k_matches_stable_sort(dataset, chunk_size, k):
    scores, indices = top_k(dataset["queries"], dataset["gallery"], k, chunk_size)
    similarities = dataset["queries"].astype(np.float64) @ dataset["gallery"].T.astype(np.float64)
    for q, row in enumerate(similarities):
        expected = reference_ranking(list(row))[:k]
        assert indices[q].tolist() == expected
        assert scores[q].tolist() == [row[j] for j in expected]


def test_top_k_whole_gallery_and_boundary_ties():
    gallery = np.array([[1, 0], [0, 1], [0, 1], [0, 1], [-1, 0]], np.float32)
    queries = np.array([[0, 1], [1, 0]], np.float32)
    _, indices = top_k(queries, gallery, 2)
    assert indices.tolist() == [[1, 2], [0, 1]]  # ties go to the smaller gallery index
    _, indices = top_k(queries, gallery, 5)
    assert indices.tolist() == [[1, 2, 3, 0, 4], [0, 1, 2, 3, 4]]


def test_continuous_embeddings_match_dense_float32_reference():
    rng = np.random.default_rng(3)
    queries = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(50, 16)).astype(np.float32)), dim=1)
    gallery = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(120, 16)).astype(np.float32)), dim=1)
    query_ids, gallery_ids = rng.integers(0, 70, 50), rng.integers(0, 60, 120)
    actual = retrieval_metrics(queries, query_ids, gallery, gallery_ids, chunk_size=1000)
    similarities = (queries @ gallery.T).double().numpy()  # the same float32 product, one chunk
    assert_metrics_match(actual, reference_metrics(similarities, query_ids.tolist(), gallery_ids.tolist(), (1, 5, 10)))


def test_similarity_blocks_never_exceed_chunk_size(monkeypatch, dataset):
    shapes = []
    original = evaluate.top_k_of_chunk

    def recording(similarities, k):
        shapes.append(tuple(similarities.shape))
        return original(similarities, k)

    monkeypatch.setattr(evaluate, "top_k_of_chunk", recording)
    retrieval_metrics(dataset["queries"], dataset["query_ids"], dataset["gallery"], dataset["gallery_ids"],
                      chunk_size=7)
    assert max(rows for rows, _ in shapes) == 7
    assert sum(rows for rows, _ in shapes) == len(dataset["queries"])


# ------------------------------------------------------------------------------------------
# Hand-computed cases
# ------------------------------------------------------------------------------------------

GALLERY_4 = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], np.float32)
GALLERY_4_IDS = ["a", "b", "c", "a"]
QUERIES_3 = np.array([[1, 0], [0, 1], [0, -1]], np.float32)
QUERIES_3_IDS = ["a", "c", "z"]


def test_hand_computed_small_case():
    # q0 ranks g0 (1), g1 (0), g3 (0, tie -> after g1), g2 (-1): positives g0, g3 at ranks 0 and 2
    #    AP = ((1 + 1) / 2 + (1/2 + 2/3) / 2) / 2 = 19/24
    # q1 ranks g1, g0, g2, g3: positive g2 at rank 2: AP = (0 + 1/3) / 2 = 1/6; top-1 g1
    # q2 ("z") has no positive: counted, excluded
    result = retrieval_metrics(QUERIES_3, QUERIES_3_IDS, GALLERY_4, GALLERY_4_IDS, ks=(1, 2, 3),
                               semi_positives={1: [1]},
                               query_latlon=[[0, 0], [0, 0], [0, 0]],
                               gallery_latlon=[[0, 0], [0, 0.001], [1, 0], [0, 0]])
    assert result["queries"] == 3 and result["queries_evaluated"] == 2
    assert result["queries_without_positive"] == 1
    assert (result["R@1"], result["R@2"], result["R@3"]) == (50.0, 50.0, 100.0)
    assert result["top1%_k"] == 1 and result["R@top1%"] == 50.0
    assert result["AP"] == pytest.approx(100 * (19 / 24 + 1 / 6) / 2)
    assert result["hit_rate"] == 100.0  # q1's top-1 g1 is its semi-positive
    loc = result["localisation_error_m"]
    assert loc["queries"] == 2 and loc["within_25m"] == 50.0 and loc["within_500m"] == 100.0
    assert loc["mean"] == pytest.approx(111.195 / 2, abs=0.01)


def test_hand_computed_reverse_direction():
    # satellites as queries over images q0 (a), q1 (c), q2 (z):
    # g0 (a): q0 first -> rank 0, AP 1;  g1 (b): no positive;  g2 (c): ranks q1 (0), q2 (0), q0 (-1)
    # -> q1 at rank 0, AP 1;  g3 (a): q2 (1), q0 (0), q1 (-1) -> q0 at rank 1, AP 1/4
    results = evaluate_retrieval(QUERIES_3, QUERIES_3_IDS, GALLERY_4, GALLERY_4_IDS, ks=(1, 2))
    reverse = results["satellite->query"]["all"]
    assert reverse["queries"] == 4 and reverse["queries_without_positive"] == 1
    assert reverse["R@1"] == pytest.approx(200 / 3) and reverse["R@2"] == 100.0
    assert reverse["AP"] == pytest.approx(100 * (1 + 1 + 0.25) / 3)
    assert set(results) == {"query->satellite", "satellite->query"}
    assert "satellite->query" not in evaluate_retrieval(QUERIES_3, QUERIES_3_IDS, GALLERY_4, GALLERY_4_IDS,
                                                        both_directions=False)


def test_single_positive_ap_and_top1_percent():
    # one positive at rank r gives AP 1 / (2 (r + 1)); G = 250 gives k = 3 (2.5 rounds up)
    gallery = np.eye(250, dtype=np.float32)
    query = (np.eye(250, dtype=np.float32)[:1] * 0.6 + np.eye(250, dtype=np.float32)[1:2] * 0.8)
    ranking = rank_queries(query, [0], gallery, np.arange(250))
    assert ranking.first_positive_rank.tolist() == [1]
    assert ranking.average_precision[0] == pytest.approx(0.25)
    result = retrieval_metrics(query, [0], gallery, np.arange(250), ks=(1,))
    assert result["top1%_k"] == 3 and result["R@top1%"] == 100.0 and result["R@1"] == 0.0


def test_torch_int_ids_and_normalize_option():
    raw = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    result = retrieval_metrics(raw, torch.tensor([7, 8]), raw, np.array([8, 7]), normalize=True, device="cpu")
    assert result["R@1"] == 0.0 and result["R@5"] == 100.0 and result["AP"] == 25.0


# ------------------------------------------------------------------------------------------
# Haversine
# ------------------------------------------------------------------------------------------

def test_haversine_known_distances():
    assert float(haversine_m(0, 0, 1, 0)) == pytest.approx(111_195, abs=1)  # one degree of latitude
    assert float(haversine_m(0, 0, 0, 1)) == pytest.approx(111_195, abs=1)  # one of longitude at the equator
    assert float(haversine_m(60, 10, 60, 11)) == pytest.approx(111_195 / 2, rel=1e-3)  # cos 60 = 1/2
    assert 94_000 < float(haversine_m(*ZURICH, *BERN)) < 97_000
    assert float(haversine_m(0, 0, 0, 180)) == pytest.approx(math.pi * 6_371_008.8)
    assert float(haversine_m(*ZURICH, *ZURICH)) == 0.0
    distances = haversine_m([0, 0], [0, 0], [[1], [2]], [0, 0])
    assert distances.shape == (2, 2)
    assert distances[1, 0] == pytest.approx(2 * 111_195, abs=2)


# ------------------------------------------------------------------------------------------
# Bad inputs
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    (dict(query_ids=["a", "c"]), "query_ids must be 1-D with 3"),
    (dict(gallery_ids=[1, 2, 3, 4]), "both be strings or both be integers"),
    (dict(gallery_ids=[0.5, 1.0, 2.0, 3.0]), "integers or strings"),
    (dict(query_embeddings=np.ones(3, np.float32)), "2-D"),
    (dict(query_embeddings=np.ones((3, 3), np.float32) / math.sqrt(3)), "differ in dimension"),
    (dict(query_embeddings=QUERIES_3 * 2), "L2-normalised"),
    (dict(gallery_embeddings=np.full((4, 2), np.nan, np.float32)), "NaN"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(ks=(1, 0)), "ks"),
    (dict(query_latlon=[[0, 0]] * 3, gallery_latlon=[[0, 0]] * 3), r"gallery_latlon must have shape \(4, 2\)"),
    (dict(query_latlon=[[0, 0]] * 3), "both query_latlon and gallery_latlon"),
    (dict(query_latlon=[[95, 0]] * 3, gallery_latlon=[[0, 0]] * 4), "outside lat"),
    (dict(semi_positives={0: [4]}), "outside"),
    (dict(semi_positives={3: [0]}), "names query 3"),
])
def test_bad_inputs_raise_clear_errors(change, message):
    arguments = dict(query_embeddings=QUERIES_3, query_ids=QUERIES_3_IDS, gallery_embeddings=GALLERY_4,
                     gallery_ids=GALLERY_4_IDS)
    arguments.update(change)
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(**arguments)


def test_bad_modalities_and_k():
    with pytest.raises(ValueError, match="query_modalities"):
        evaluate_retrieval(QUERIES_3, QUERIES_3_IDS, GALLERY_4, GALLERY_4_IDS, query_modalities=["uav"])
    with pytest.raises(ValueError, match="reserved"):
        evaluate_retrieval(QUERIES_3, QUERIES_3_IDS, GALLERY_4, GALLERY_4_IDS, query_modalities=["all"] * 3)
    with pytest.raises(ValueError, match="exceeds the gallery size"):
        top_k(QUERIES_3, GALLERY_4, 5)
