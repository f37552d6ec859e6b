"""GLEAM-X evaluation math: verdict metrics, BLEU, ROUGE-L (against independent brute force) and
the sentence-embedding similarity with a tiny local BERT."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from gleam.explain.metrics import (SentenceEmbedder, bleu, grouped, lcs_length, majority_baseline, match_metrics,
                                   rouge_l, rouge_l_corpus, tokenize)

# ------------------------------------------------------------------------------ verdicts


def test_match_metrics_hand_computed():
    predicted = [True, True, False, None, False, True]
    truth = [True, False, False, True, True, True]
    m = match_metrics(predicted, truth)
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["unparsed"]) == (2, 1, 1, 2, 1)
    assert m["accuracy"] == pytest.approx(3 / 6)  # the unparseable one counts as wrong
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 4)
    assert m["f1"] == pytest.approx(4 / 7)
    assert m["parse_rate"] == pytest.approx(5 / 6) and m["predicted_positive_rate"] == pytest.approx(3 / 6)
    assert m["support"] == 6
    empty = match_metrics([False, False], [False, False])
    assert empty["accuracy"] == 1.0 and empty["precision"] == 0.0 and empty["f1"] == 0.0
    with pytest.raises(ValueError, match="2 predictions for 1 labels"):
        match_metrics([True, False], [True])


def test_grouped_and_majority_baseline():
    predicted = [True, False, None, True, True, False]
    truth = [True, False, True, False, True, True]
    result = grouped(predicted, truth, language=["en", "en", "en", "zh", "zh", "zh"],
                     modality=["uav", "ground", "uav", "uav", "ground", "ground"])
    assert result["overall"]["accuracy"] == pytest.approx(3 / 6)
    assert result["language"]["en"]["accuracy"] == pytest.approx(2 / 3)
    assert result["language"]["zh"]["accuracy"] == pytest.approx(1 / 3)
    assert result["language"]["en"]["parse_rate"] == pytest.approx(2 / 3)
    assert result["modality"]["uav"]["support"] == 3 and result["modality"]["ground"]["accuracy"] == pytest.approx(2 / 3)
    assert majority_baseline([True, True, False]) == pytest.approx(2 / 3)
    assert majority_baseline([False] * 7 + [True] * 3) == pytest.approx(0.7)
    assert majority_baseline([]) == 0.0


# ------------------------------------------------------------------------------ BLEU


def brute_bleu(candidates, references, max_n=4, smooth=True):
    """Independent corpus BLEU over pre-tokenised input: plain loops, no Counters."""
    matches, totals, c_len, r_len = [0] * max_n, [0] * max_n, 0, 0
    for cand, refs in zip(candidates, references):
        c_len += len(cand)
        r_len += sorted((abs(len(r) - len(cand)), len(r)) for r in refs)[0][1]
        for n in range(1, max_n + 1):
            grams = [tuple(cand[i:i + n]) for i in range(len(cand) - n + 1)]
            for gram in set(grams):
                in_refs = max(sum(1 for i in range(len(r) - n + 1) if tuple(r[i:i + n]) == gram) for r in refs)
                matches[n - 1] += min(grams.count(gram), in_refs)
            totals[n - 1] += len(grams)
    precisions = []
    for n in range(max_n):
        m, t = matches[n], totals[n]
        if smooth and n > 0:
            m, t = m + 1, t + 1
        if m == 0:
            return 0.0
        precisions.append(m / t)
    bp = 1.0 if c_len > r_len else math.exp(1 - r_len / c_len)
    return bp * math.prod(precisions) ** (1 / max_n)


def test_bleu_identical_and_hand_computed():
    text = "Both images show a roundabout to the north-east."
    assert bleu(text, text, "en") == pytest.approx(1.0)
    assert bleu([text, "另外，两张图中都有湖泊。"], [text, "另外，两张图中都有湖泊。"], "zh") == pytest.approx(1.0)
    cand, ref = "the cat sat on the mat", "the cat is on the mat"
    # unigrams 5/6, bigrams 3/5, trigrams 1/4, 4-grams 0/3; equal lengths: no brevity penalty
    assert bleu(cand, ref, max_n=2, smooth=False) == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
    assert bleu(cand, ref, smooth=False) == 0.0
    assert bleu(cand, ref) == pytest.approx((5 / 6 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25)  # add-one for n >= 2
    assert bleu("the cat", "the cat sat on the mat", max_n=2, smooth=False) == pytest.approx(math.exp(1 - 6 / 2))
    # closest reference length wins: the 2-token reference removes the brevity penalty
    assert bleu("the cat", ["the cat sat on the mat", "the cat"], max_n=2) == pytest.approx(1.0)
    assert bleu("", "the cat") == 0.0


def test_bleu_matches_brute_force_on_random_corpora():
    rng = random.Random(7)
    vocab = list("abcdef")
    for trial in range(40):
        candidates, references = [], []
        for _ in range(rng.randint(1, 4)):
            candidates.append([rng.choice(vocab) for _ in range(rng.randint(1, 12))])
            references.append([[rng.choice(vocab) for _ in range(rng.randint(1, 12))] for _ in range(rng.randint(1, 3))])
        for smooth, max_n in ((True, 4), (False, 2), (True, 3)):
            ours = bleu([" ".join(c) for c in candidates], [[" ".join(r) for r in refs] for refs in references],
                        max_n=max_n, smooth=smooth)
            assert ours == pytest.approx(brute_bleu(candidates, references, max_n, smooth), abs=1e-12), trial


def test_tokenize_languages():
    assert tokenize("The T-junction, to the NORTH-east!", "en") == ["the", "t-junction", ",", "to", "the", "north-east", "!"]
    assert tokenize("两张图中都有环岛。", "zh") == list("两张图中都有环岛。")
    assert tokenize("约有45栋建筑", "zh") == ["约", "有", "45", "栋", "建", "筑"]
    with pytest.raises(ValueError):
        tokenize("x", "fr")


# ------------------------------------------------------------------------------ ROUGE-L


def dp_lcs(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a)):
        for j in range(len(b)):
            table[i + 1][j + 1] = table[i][j] + 1 if a[i] == b[j] else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def exhaustive_lcs(a, b):
    for size in range(min(len(a), len(b)), 0, -1):
        subsequences = {tuple(a[i] for i in idx) for idx in itertools.combinations(range(len(a)), size)}
        if any(tuple(b[i] for i in idx) in subsequences for idx in itertools.combinations(range(len(b)), size)):
            return size
    return 0


def test_lcs_against_brute_force():
    rng = random.Random(3)
    for _ in range(60):
        a = [rng.choice("abc") for _ in range(rng.randint(0, 7))]
        b = [rng.choice("abc") for _ in range(rng.randint(0, 7))]
        assert lcs_length(a, b) == exhaustive_lcs(a, b) == dp_lcs(a, b)
    for _ in range(100):
        a = [rng.choice("abcdefgh") for _ in range(rng.randint(0, 90))]
        b = [rng.choice("abcdefgh") for _ in range(rng.randint(0, 90))]
        assert lcs_length(a, b) == dp_lcs(a, b)


def test_rouge_l_values():
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)  # LCS 5 of 6 and 6
    assert rouge_l("the cat", "the cat sat on the mat") == pytest.approx(2 * 1.0 * (2 / 6) / (1.0 + 2 / 6))
    assert rouge_l("a b c", "x y z") == 0.0
    text = "在两张图中，东北方有一个环岛。"
    assert rouge_l(text, text, "zh") == pytest.approx(1.0)
    # zh by characters: LCS of 东北方有环岛 / 东南方有环岛 is 5 of 6 characters
    assert rouge_l("东北方有环岛", "东南方有环岛", "zh") == pytest.approx(5 / 6)
    rng = random.Random(1)
    for _ in range(30):
        a = [rng.choice("abcd") for _ in range(rng.randint(1, 15))]
        b = [rng.choice("abcd") for _ in range(rng.randint(1, 15))]
        lcs = dp_lcs(a, b)
        expected = 0.0 if lcs == 0 else 2 * (lcs / len(a)) * (lcs / len(b)) / (lcs / len(a) + lcs / len(b))
        assert rouge_l(" ".join(a), " ".join(b)) == pytest.approx(expected)
    assert rouge_l_corpus(["a b", "a b c"], ["a b", "x"]) == pytest.approx(0.5)


# ------------------------------------------------------------------------------ sentence embeddings


def _tiny_encoder(folder) -> None:
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    corpus = ["Both images show a roundabout to the north-east.", "The satellite tile has no water at all.",
              "The drone view shows a lake to the south, but the tile has a park.",
              "Densely packed buildings and little greenery.", "The tallest building stands to the west.",
              "在两张图中，东北方有一个环岛。", "卫星图中没有水体。"] * 3
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")),
                                                 ("[SEP]", tokenizer.token_to_id("[SEP]"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)


def test_sentence_embedder_from_local_folder(tmp_path):
    _tiny_encoder(tmp_path / "encoder")
    embedder = SentenceEmbedder.from_path(str(tmp_path / "encoder"), batch_size=2)
    a = "Both images show a roundabout to the north-east."
    b = "卫星图中没有水体。"
    c = "Densely packed buildings and little greenery."
    vectors = embedder.embed([a, b, c])
    assert vectors.shape == (3, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # padding must not change a sentence's vector (mean pooling over the attention mask)
    alone = embedder.embed([a])[0]
    padded = SentenceEmbedder.from_path(str(tmp_path / "encoder"), batch_size=8).embed([b, a, c])[1]
    assert np.allclose(alone, padded, atol=1e-5)
    identical = embedder.similarity([a, c], [a, c])
    unrelated = embedder.similarity([a, c], [b, a])
    assert identical == pytest.approx(1.0, abs=1e-5)
    assert unrelated < identical - 1e-3
    pairs = embedder.pairwise([a, a], [a, b])
    assert pairs[0] == pytest.approx(1.0, abs=1e-5) and pairs[1] < pairs[0]
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        SentenceEmbedder.from_path(str(tmp_path / "missing"))


# ------------------------------------------------------------------------------ claims, tiles, the paper's metric

FACTS_A = {"junctions": [{"type": "roundabout", "direction": "north"}],
           "features": [{"type": "water", "kind": "lake", "direction": "east"}],
           "buildings": {"count": 30, "tallest": {"floors": 5, "direction": "west"}}, "green_fraction": 0.3}
FACTS_B = {"junctions": [{"type": "crossroad", "direction": "south"}], "features": [],
           "buildings": {"count": 0}, "green_fraction": 0.01}


def _example(answer: str, match: bool, location: str = "a", tile: str = "a", language: str = "en"):
    from types import SimpleNamespace

    return SimpleNamespace(id=f"{location}-{tile}", answer=answer, match=match, language=language, modality="uav",
                           location_id=location,
                           satellite_location_id=tile, query_facts=FACTS_A,
                           satellite_facts=FACTS_A if match else FACTS_B, negative=None if match else "hard")


def test_claim_scores_precision_recall_and_unparsed_mentions():
    from gleam.explain.evaluate import claim_scores

    reference = "Both images show a roundabout to the north and a lake to the east.\nVerdict: match"
    # one true claim (roundabout north), one false (lake to the west), one vague mention of buildings
    generated = "Both images show a roundabout to the north. A lake lies to the west. There are buildings.\nVerdict: match"
    scores = claim_scores([_example(reference, True)], [generated])
    assert scores["claims"] == 2 and scores["true"] == 1 and scores["precision"] == 0.5
    assert scores["unparsed"] == 1 and scores["strict_precision"] == pytest.approx(1 / 3)
    assert scores["reference"] == 2 and scores["recalled"] == 1 and scores["recall"] == 0.5
    assert scores["by_kind"]["feature"] == {**scores["by_kind"]["feature"], "claims": 1, "true": 0, "recall": 0.0}
    assert scores["by_language"]["en"]["precision"] == 0.5


def test_distinct_explanations_per_query_and_tile():
    from gleam.explain.evaluate import distinct_explanations

    same = "Both images show a roundabout to the north.\nVerdict: match"
    examples = [_example(same, True, "a", "a"), _example(same, False, "a", "b"),
                _example(same, True, "c", "c"), _example("Unlike the tile, no lake.\nVerdict: no match", False, "c", "d")]
    report = distinct_explanations(examples, [e.answer for e in examples])
    assert report == {"queries": 2, "differ_rate": 0.5, "queries_with_both_truths": 2, "verdict_follows": 0.5}


def test_packaged_sentence_encoder_is_the_default_similarity():
    from gleam.explain.evaluate import resolve_sentence_model, score

    path = resolve_sentence_model("")
    assert path.endswith("model") and resolve_sentence_model("none") == ""
    embedder = SentenceEmbedder.from_path(path)
    close = embedder.pairwise(["A roundabout lies to the north."], ["There is a roundabout north of here."])[0]
    far = embedder.pairwise(["A roundabout lies to the north."], ["The tennis court is south-west."])[0]
    assert close > far + 0.1
    examples = [_example("Both images show a roundabout to the north.\nVerdict: match", True)]
    report = score(examples, ["Both images show a roundabout in the north.\nVerdict: match"])
    assert report["text"]["en"]["sentence_similarity"] > 0.8 and report["text"]["sentence_model"] == path
