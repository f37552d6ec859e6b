"""GLEAM-X evaluation math: verdict metrics, BLEU, ROUGE-L and sentence-embedding similarity.

Everything here is a pure function of its inputs (the embedder is a pure function of a local
model folder).  Conventions:

- Verdicts: ``True`` = match, ``False`` = no match, ``None`` = unparseable.  An unparseable
  prediction is wrong for accuracy, not a positive for precision and a miss (false negative)
  for recall when the truth is a match.  Divisions by zero give 0.0.
- Tokenisation (``tokenize``): lowercase; every CJK character is one token (Chinese text is
  tokenised by characters); Latin words/numbers (with inner ' or -) are tokens; every other
  non-space character (punctuation) is a token.
- BLEU: corpus level (clipped n-gram counts and lengths summed over the corpus), uniform weights
  up to ``max_n``, brevity penalty against the closest reference length (shorter wins ties), and
  add-one smoothing of the n >= 2 precisions (Lin & Och 2004) unless ``smooth=False``.
- ROUGE-L: LCS-based F-measure (``beta=1``: F1) per pair; ``rouge_l_corpus`` averages pairs.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from typing import Any, Sequence

import numpy as np

_TOKEN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[a-z0-9]+(?:['\-][a-z0-9]+)*|[^\s]")


def tokenize(text: str, language: str = "en") -> list[str]:
    """Tokens of ``text`` (see module doc); ``language`` is ``en`` or ``zh``."""
    if language not in ("en", "zh"):
        raise ValueError(f"language must be 'en' or 'zh', got {language!r}")
    return _TOKEN.findall(text.lower())


# ------------------------------------------------------------------------------ verdicts


def match_metrics(predicted: Sequence[bool | None], truth: Sequence[bool]) -> dict[str, Any]:
    """accuracy, precision, recall, f1, parse_rate, predicted_positive_rate, support and counts."""
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} labels")
    tp = sum(1 for p, t in zip(predicted, truth) if p is True and t)
    fp = sum(1 for p, t in zip(predicted, truth) if p is True and not t)
    tn = sum(1 for p, t in zip(predicted, truth) if p is False and not t)
    fn = sum(1 for p, t in zip(predicted, truth) if p is not True and t)
    unparsed = sum(1 for p in predicted if p is None)
    n = len(truth)

    def ratio(a: float, b: float) -> float:
        return a / b if b else 0.0

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {"support": n, "accuracy": ratio(tp + tn, n), "precision": precision, "recall": recall,
            "f1": ratio(2 * precision * recall, precision + recall), "parse_rate": ratio(n - unparsed, n),
            "predicted_positive_rate": ratio(tp + fp, n), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "unparsed": unparsed}


def grouped(predicted: Sequence[bool | None], truth: Sequence[bool], **groups: Sequence[str]) -> dict[str, Any]:
    """``match_metrics`` overall and per value of every grouping, e.g.
    ``grouped(p, t, language=langs, modality=mods)`` ->
    ``{"overall": {...}, "language": {"en": {...}, "zh": {...}}, "modality": {...}}``."""
    out: dict[str, Any] = {"overall": match_metrics(predicted, truth)}
    for name, values in groups.items():
        if len(values) != len(truth):
            raise ValueError(f"grouping {name!r} has {len(values)} values for {len(truth)} labels")
        out[name] = {}
        for value in sorted(set(values), key=str):
            rows = [i for i, v in enumerate(values) if v == value]
            out[name][value] = match_metrics([predicted[i] for i in rows], [truth[i] for i in rows])
    return out


def majority_baseline(truth: Sequence[bool]) -> float:
    """Accuracy of always answering the more frequent label."""
    if not truth:
        return 0.0
    positives = sum(1 for t in truth if t)
    return max(positives, len(truth) - positives) / len(truth)


# ------------------------------------------------------------------------------ BLEU / ROUGE-L


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _as_corpus(candidates: str | Sequence[str], references: Any) -> tuple[list[str], list[list[str]]]:
    if isinstance(candidates, str):
        refs = [references] if isinstance(references, str) else list(references)
        return [candidates], [refs]
    candidates = list(candidates)
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates for {len(references)} references")
    return candidates, [[r] if isinstance(r, str) else list(r) for r in references]


def bleu_stats(candidates: str | Sequence[str], references: Any, language: str = "en",
               max_n: int = 4) -> dict[str, Any]:
    """Corpus n-gram statistics: ``matches[n-1]``, ``totals[n-1]``, candidate and reference lengths."""
    candidates, references = _as_corpus(candidates, references)
    matches, totals = [0] * max_n, [0] * max_n
    cand_len = ref_len = 0
    for candidate, refs in zip(candidates, references):
        if not refs:
            raise ValueError("every candidate needs at least one reference")
        tokens = tokenize(candidate, language)
        ref_tokens = [tokenize(r, language) for r in refs]
        cand_len += len(tokens)
        ref_len += min((len(r) for r in ref_tokens), key=lambda length: (abs(length - len(tokens)), length))
        for n in range(1, max_n + 1):
            counts = _ngrams(tokens, n)
            best: Counter = Counter()
            for r in ref_tokens:
                best |= _ngrams(r, n)
            matches[n - 1] += sum(min(c, best[g]) for g, c in counts.items())
            totals[n - 1] += sum(counts.values())
    return {"matches": matches, "totals": totals, "candidate_length": cand_len, "reference_length": ref_len}


def bleu(candidates: str | Sequence[str], references: Any, language: str = "en", max_n: int = 4,
         smooth: bool = True) -> float:
    """Corpus BLEU in [0, 1].

    ``candidates``: a list of strings with ``references`` aligned (each a string or a list of
    reference strings), or one candidate string with one reference string or a list of them.
    """
    stats = bleu_stats(candidates, references, language, max_n)
    c, r = stats["candidate_length"], stats["reference_length"]
    if c == 0:
        return 0.0
    log_sum = 0.0
    for n, (m, t) in enumerate(zip(stats["matches"], stats["totals"]), start=1):
        if smooth and n > 1:
            m, t = m + 1, t + 1
        if m == 0 or t == 0:
            return 0.0
        log_sum += math.log(m / t)
    brevity = 1.0 if c > r else math.exp(1.0 - r / c)
    return brevity * math.exp(log_sum / max_n)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (bit-parallel, Hyyrö 2004: O(len(b)) big-int ops)."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def rouge_l(candidate: str, reference: str, language: str = "en", beta: float = 1.0) -> float:
    """ROUGE-L F-measure of one candidate against one reference (1.0 when both are empty)."""
    c, r = tokenize(candidate, language), tokenize(reference, language)
    if not c and not r:
        return 1.0
    lcs = lcs_length(c, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(c), lcs / len(r)
    return (1 + beta**2) * precision * recall / (recall + beta**2 * precision)


def rouge_l_corpus(candidates: Sequence[str], references: Sequence[str], language: str = "en") -> float:
    """Mean ROUGE-L F1 over aligned pairs (0.0 for an empty corpus)."""
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates for {len(references)} references")
    scores = [rouge_l(c, r, language) for c, r in zip(candidates, references)]
    return float(np.mean(scores)) if scores else 0.0


# ------------------------------------------------------------------------------ embeddings


class SentenceEmbedder:
    """A local Hugging Face encoder: mean pooling over the attention mask, then L2 norm.

    Loaded by ``from_path`` from a local folder only (``local_files_only=True``: never a hub
    download), e.g. a Sentence-BERT model saved with ``save_pretrained``.
    """

    def __init__(self, tokenizer: Any, model: Any, device: str = "cpu", max_length: int = 256, batch_size: int = 32):
        self.tokenizer, self.model = tokenizer, model.to(device).eval()
        self.device, self.max_length, self.batch_size = device, max_length, batch_size
        import inspect

        self._inputs = set(inspect.signature(model.forward).parameters)

    @classmethod
    def from_path(cls, path: str, device: str = "cpu", max_length: int = 256, batch_size: int = 32) -> "SentenceEmbedder":
        if not os.path.isdir(path):
            raise FileNotFoundError(f"sentence encoder folder {path!r} not found: give a local folder saved with "
                                    "save_pretrained (models are never downloaded)")
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
        return cls(tokenizer, model, device, max_length, batch_size)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), hidden) float32 unit vectors."""
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                inputs = {k: v.to(self.device) for k, v in batch.items() if k in self._inputs}
                hidden = self.model(**inputs).last_hidden_state
                mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                out.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy())
        if not out:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)

    def pairwise(self, candidates: Sequence[str], references: Sequence[str]) -> np.ndarray:
        """Cosine similarity of each aligned (candidate, reference) pair."""
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates for {len(references)} references")
        if not candidates:
            return np.zeros(0, dtype=np.float32)
        embedded = self.embed(list(candidates) + list(references))
        return np.sum(embedded[:len(candidates)] * embedded[len(candidates):], axis=1)

    def similarity(self, candidates: Sequence[str], references: Sequence[str]) -> float:
        """Mean cosine similarity over aligned pairs (0.0 for none)."""
        scores = self.pairwise(candidates, references)
        return float(scores.mean()) if len(scores) else 0.0
