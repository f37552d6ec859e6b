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
from gleam.config import InputPath, OutputPath, RayConfig, RunConfig

log = logging.getLogger(__name__)


def predict(model: Any, processor: Any, examples: Sequence[Any], *, image_size: int, max_new_tokens: int,
            batch_size: int = 16) -> list[str]:
    """Greedy answers for ``examples`` (the model must be in eval mode)."""
    import torch

    from gleam.explain.model import generate

    texts: list[str] = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            texts += generate(model, processor, list(examples[start:start + batch_size]), image_size=image_size,
                              max_new_tokens=max_new_tokens)
    return texts


def score_verdicts(examples: Sequence[Any], answers: Sequence[str]) -> dict[str, Any]:
    """Verdict metrics only (for label-only answers)."""
    from gleam.explain.metrics import grouped, majority_baseline, match_metrics
    from gleam.explain.prompts import parse_answer

    predicted = [parse_answer(text).verdict for text in answers]
    truth = [bool(e.match) for e in examples]
    return {"examples": len(examples), "match": match_metrics(predicted, truth),
            "majority_baseline": majority_baseline(truth) if truth else None,
            "groups": grouped(predicted, truth, language=[e.language for e in examples],
                              modality=[e.modality for e in examples]),
            "parse_rate": float(np.mean([p is not None for p in predicted])) if predicted else 0.0}


def score(examples: Sequence[Any], answers: Sequence[str], sentence_model: str = "") -> dict[str, Any]:
    """Every metric of ``answers`` generated for ``examples`` (see the module docstring)."""
    from gleam.explain.metrics import SentenceEmbedder, bleu, rouge_l
    from gleam.explain.prompts import faithfulness, parse_answer

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
    if sentence_model:
        embedder = SentenceEmbedder.from_path(sentence_model)
        text["sentence_similarity"] = embedder.similarity(list(answers), [e.answer for e in examples])
    report["text"] = text
    claims = true = 0
    per_language: dict[str, list[int]] = {}
    with_facts = 0
    for example, answer in zip(examples, answers):
        if not example.query_facts:
            continue
        with_facts += 1
        satellite_facts = example.satellite_facts if example.satellite_facts is not None else example.query_facts
        result = faithfulness(answer, example.language, example.query_facts, satellite_facts)
        claims += result["claims"]
        true += result["true"]
        counts = per_language.setdefault(example.language, [0, 0])
        counts[0] += result["claims"]
        counts[1] += result["true"]
    if with_facts:
        report["faithfulness"] = {
            "examples_with_facts": with_facts, "claims": claims, "true": true,
            "precision": true / claims if claims else None,
            "claims_per_answer": claims / with_facts,
            "by_language": {lang: {"claims": c, "true": t, "precision": t / c if c else None}
                            for lang, (c, t) in sorted(per_language.items())},
        }
    report["samples"] = [{"id": e.id, "language": e.language, "modality": e.modality, "match": bool(e.match),
                          "reference": e.answer, "generated": a} for e, a in list(zip(examples, answers))[:8]]
    return report


VERDICT_ONLY_NEW_TOKENS = 16


def evaluate_examples(model: Any, processor: Any, examples: Sequence[Any], *, image_size: int,
                      max_new_tokens: int, batch_size: int = 16, sentence_model: str = "",
                      verdict_only: bool = True) -> dict[str, Any]:
    """Generate and score; adds timing.  ``verdict_only``: also ask every explanation pair for
    the verdict alone (label-only prompt) and score that under ``report["verdict_only"]``."""
    from gleam.explain.dataset import verdict_only as verdict_twin

    explain = [e for e in examples if getattr(e, "task", "explain") != "verdict"]
    labels = [e for e in examples if getattr(e, "task", "explain") == "verdict"]
    if verdict_only:
        twin_rng = np.random.default_rng(0)
        labels += [verdict_twin(e, twin_rng) for e in explain]
    report: dict[str, Any] = {"examples": 0}
    if explain:
        started = time.perf_counter()
        answers = predict(model, processor, explain, image_size=image_size, max_new_tokens=max_new_tokens,
                          batch_size=batch_size)
        seconds = time.perf_counter() - started
        report = score(explain, answers, sentence_model)
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
    sentence_model: InputPath = ""  # local sentence-embedding model folder ("" = skip that metric)
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
