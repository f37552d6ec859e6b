"""The GLEAM-X dataset: (query image, satellite image, instruction) -> explanation + verdict.

Building.  ``build_examples`` turns platform ``Sample`` records (query views whose scene facts
are in ``metadata["facts"]``, see ``gleam.data.make_shards``) into examples: one positive per
query sample (its own location's satellite tile) and ``negatives_per_positive`` negatives, a
``hard_fraction`` of them *hard* (the most similar wrong satellites by GLEAM-C retrieval, from
``hard_neighbours``; ``hard_neighbours_from_embeddings`` computes that mapping) and the rest
random.  A hard slot whose query location has no usable neighbour falls back to a random
negative and is counted (``report["hard_fallback_random"]``).  Languages are balanced per class
by a seeded shuffle (no correlation with sample order, hence none with modality), and the whole
build is deterministic for a seed.

Storage format: one format for our exports and user data, LLaVA/ShareGPT conversation JSON plus
image files.  ``write_conversations`` writes

    {folder}/images/<id>_q.<ext>, {folder}/images/<id>_s.<ext>     (ext from the image bytes)
    {folder}/{split}.json   [{"id", "images": [query, satellite],
                              "conversations": [{"from": "human", "value": "<image>\\n<image>\\n" + instruction},
                                                {"from": "gpt", "value": answer}],
                              "meta": {"match", "language", "modality", "negative", "location_id",
                                       "satellite_location_id", "query_facts", "satellite_facts", "source",
                                       "task": "explain" | "verdict" (label-only: the verdict line alone)}}]

atomically through ``gleam.storage`` (images first, the JSON last: a split file exists only when
all its images do; works for ``s3://`` folders).

Importing.  ``load_conversations`` reads JSON or JSONL in either style:
``{"conversations": [{"from": "human"|"user", "value"}, {"from": "gpt"|"assistant", "value"}]}``
or ``{"messages": [{"role": "user"|"assistant", "content": str | [{"type": "text"|"image", ...}]}]}``
(system turns are ignored).  Images: ``"images"`` (or ``"image"``) relative to the JSON file,
absolute, or URLs (``s3://``); in the messages style also the ``image`` items' paths.  The
``<image>`` placeholders (or image items) must match the images, and there must be exactly 2:
the query first, then the satellite tile (a record with no placeholder at all takes its two
images as prepended; counted as ``implicit_placeholders``).  Without ``"meta"`` the label comes
from the answer's verdict line (``prompts.parse_answer``) and the language from its script.

Errors.  A malformed file or record raises ``ConversationError`` (a ``ValueError``) naming the
file, the record index/id (and JSONL line), the field and the fix.  A record whose image is
missing or unreadable is *skipped and counted*: ``load_conversations`` returns an
``ExampleList`` (a ``list`` of ``ExplainExample``) whose ``.report`` is a ``LoadReport`` listing
every skipped record with its reason; skips are also logged as a warning.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import random
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Sequence

import numpy as np

from gleam import storage
from gleam.data.schema import SATELLITE_ONLY, Sample
from gleam.explain.prompts import (LANGUAGES, TASKS, VERDICT_LINES, instruction as make_instruction, is_verdict_only,
                                   make_answer, parse_answer, script_language, verdict_instruction)

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
NEGATIVE_KINDS = (None, "random", "hard")
_HUMAN_ROLES = {"human": "user", "user": "user"}
_ASSISTANT_ROLES = {"gpt": "assistant", "assistant": "assistant", "bot": "assistant", "model": "assistant"}


@dataclass
class ExplainExample:
    """One GLEAM-X example: two encoded images, an instruction and the reference answer."""

    id: str
    query_image: bytes
    satellite_image: bytes
    modality: str
    language: str
    instruction: str
    answer: str
    match: bool
    negative: str | None = None  # None for a positive; "random" or "hard" for a negative
    location_id: str | None = None
    satellite_location_id: str | None = None
    query_facts: dict | None = None
    satellite_facts: dict | None = None
    source: str = ""
    task: str = "explain"  # "explain": reasoning + verdict; "verdict": the verdict line only

    def meta(self) -> dict[str, Any]:
        return {"match": self.match, "task": self.task, "language": self.language, "modality": self.modality,
                "negative": self.negative, "location_id": self.location_id,
                "satellite_location_id": self.satellite_location_id, "source": self.source,
                "query_facts": self.query_facts, "satellite_facts": self.satellite_facts}


class ExampleList(list):
    """A list of ``ExplainExample`` with a ``report`` (build statistics or a ``LoadReport``)."""

    def __init__(self, items: Iterable[ExplainExample] = (), report: Any = None):
        super().__init__(items)
        self.report = report


# ------------------------------------------------------------------------------ building


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "example"


def _balanced(values: Sequence[str], count: int, rng: random.Random) -> list[str]:
    out = [values[i % len(values)] for i in range(count)]
    rng.shuffle(out)
    return out


def _twin_id(example_id: str) -> str:
    return f"{example_id}--verdict"


def verdict_only(example: ExplainExample, rng: Any = None) -> ExplainExample:
    """The label-only twin of ``example``: same images and label, a verdict-only instruction, and
    the verdict line as the whole answer."""
    return replace(example, id=_twin_id(example.id), task="verdict",
                   instruction=verdict_instruction(example.language, example.modality, rng),
                   answer=VERDICT_LINES[example.language][bool(example.match)])


def label_only_examples(examples: Iterable[ExplainExample], rng: Any = None) -> list[ExplainExample]:
    """Every pair of ``examples`` once, label-only, in order: the label-only examples as they are,
    and the ``verdict_only`` twin of each explanation example whose twin is not already there."""
    examples = list(examples)
    present = {e.id for e in examples if e.task == "verdict"}
    return [e if e.task == "verdict" else verdict_only(e, rng)
            for e in examples if e.task == "verdict" or _twin_id(e.id) not in present]


def build_examples(samples: Iterable[Sample], *, languages: Sequence[str] = LANGUAGES,
                   negatives_per_positive: int = 1, hard_fraction: float = 0.5,
                   hard_neighbours: dict[str, list[str]] | None = None, seed: int = 0,
                   verdict_only_fraction: float = 0.0) -> ExampleList:
    """Positives and (random/hard) negatives from ``samples``; ``.report`` holds the counts.

    Satellite tiles come from the samples, one per ``location_id`` (the first seen); gallery-only
    tiles (modality ``satellite``) have no facts and are not used.  Query samples without facts
    are skipped and counted.  ``hard_neighbours`` maps a location id to wrong satellite location
    ids, most similar first; the first one not yet used for that query is taken.
    """
    if not languages or any(lang not in LANGUAGES for lang in languages):
        raise ValueError(f"languages must be a non-empty subset of {LANGUAGES}, got {list(languages)}")
    if negatives_per_positive < 0:
        raise ValueError(f"negatives_per_positive must be >= 0, got {negatives_per_positive}")
    if not 0.0 <= hard_fraction <= 1.0:
        raise ValueError(f"hard_fraction must lie in [0, 1], got {hard_fraction}")
    if not 0.0 <= verdict_only_fraction <= 1.0:
        raise ValueError(f"verdict_only_fraction must lie in [0, 1], got {verdict_only_fraction}")
    rng = random.Random(seed)
    satellites: dict[str, bytes] = {}
    facts: dict[str, dict] = {}
    queries: list[Sample] = []
    report = {"samples": 0, "query_samples": 0, "gallery_tiles_unused": 0, "skipped_no_facts": 0,
              "positives": 0, "negatives_random": 0, "negatives_hard": 0, "hard_fallback_random": 0,
              "negatives_unavailable": 0}
    for sample in samples:
        report["samples"] += 1
        sample_facts = sample.metadata.get("facts") if isinstance(sample.metadata, dict) else None
        if sample.modality == SATELLITE_ONLY or sample.query_image is None:
            report["gallery_tiles_unused"] += 1
            continue
        satellites.setdefault(sample.location_id, sample.satellite_image)
        if sample_facts:
            facts.setdefault(sample.location_id, sample_facts)
        queries.append(sample)
    report["query_samples"] = len(queries)
    usable = [q for q in queries if q.location_id in facts]
    report["skipped_no_facts"] = len(queries) - len(usable)
    pool = sorted(loc for loc in satellites if loc in facts)

    total_negatives = negatives_per_positive * len(usable)
    hard_slots = set(rng.sample(range(total_negatives), int(round(hard_fraction * total_negatives))))
    pairs: list[tuple[Sample, str, str | None]] = []  # (query, satellite location, negative kind)
    for index, query in enumerate(usable):
        pairs.append((query, query.location_id, None))
        used = {query.location_id}
        for j in range(negatives_per_positive):
            slot = index * negatives_per_positive + j
            chosen, kind = None, "random"
            if slot in hard_slots:
                neighbours = (hard_neighbours or {}).get(query.location_id, [])
                chosen = next((n for n in neighbours if n not in used and n in facts and n in satellites), None)
                if chosen is None:
                    report["hard_fallback_random"] += 1
                else:
                    kind = "hard"
            if chosen is None:
                chosen = _random_other(pool, used, rng)
            if chosen is None:
                report["negatives_unavailable"] += 1
                continue
            used.add(chosen)
            report[f"negatives_{kind}"] += 1
            pairs.append((query, chosen, kind))
    report["positives"] = len(usable)

    positives = _balanced(list(languages), sum(1 for p in pairs if p[2] is None), rng)
    negatives = _balanced(list(languages), sum(1 for p in pairs if p[2] is not None), rng)
    examples, seen = [], set()
    for query, sat_location, kind in pairs:
        match = kind is None
        language = positives.pop() if match else negatives.pop()
        example_id = _safe_id(f"{query.key}--{sat_location}")
        while example_id in seen:
            example_id += "_"
        seen.add(example_id)
        query_facts, sat_facts = facts[query.location_id], facts[sat_location]
        examples.append(ExplainExample(
            id=example_id, query_image=query.query_image, satellite_image=satellites[sat_location],
            modality=query.modality, language=language,
            instruction=make_instruction(language, query.modality, rng),
            answer=make_answer(query_facts, sat_facts, match, language, rng, modality=query.modality),
            match=match, negative=kind, location_id=query.location_id, satellite_location_id=sat_location,
            query_facts=query_facts, satellite_facts=sat_facts, source=query.source))
    if verdict_only_fraction:
        # label-only twins of a seeded share of the pairs (positives and negatives alike)
        twin_rng = random.Random(seed + 1)
        examples += [verdict_only(e, twin_rng) for e in list(examples) if twin_rng.random() < verdict_only_fraction]
    report["verdict_only_examples"] = sum(e.task == "verdict" for e in examples)
    report["examples"] = len(examples)
    report["languages"] = {lang: sum(e.language == lang for e in examples) for lang in languages}
    if report["hard_fallback_random"]:
        log.info("build_examples: %d hard negatives fell back to random (no usable neighbour)",
                 report["hard_fallback_random"])
    return ExampleList(examples, report)


def _random_other(pool: list[str], exclude: set[str], rng: random.Random) -> str | None:
    if len(pool) <= len(exclude) and all(p in exclude for p in pool):
        return None
    if len(pool) > 4 * len(exclude):
        while True:
            candidate = rng.choice(pool)
            if candidate not in exclude:
                return candidate
    rest = [p for p in pool if p not in exclude]
    return rng.choice(rest) if rest else None


def hard_neighbours_from_embeddings(query_loc_ids: Sequence[str], query_emb: np.ndarray,
                                    sat_loc_ids: Sequence[str], sat_emb: np.ndarray, k: int = 8,
                                    chunk_size: int = 1024) -> dict[str, list[str]]:
    """location id -> the ``k`` most similar *wrong* satellite location ids (cosine), best first.

    Query rows of one location (several modalities or views) are merged by their best
    similarity.  Rows are processed ``chunk_size`` at a time, so memory is
    ``chunk_size x len(sat_emb)`` similarities, never a dense N x N.  Ties: location id order.
    """
    query_emb = np.asarray(query_emb, dtype=np.float32)
    sat_emb = np.asarray(sat_emb, dtype=np.float32)
    if query_emb.ndim != 2 or sat_emb.ndim != 2 or query_emb.shape[1] != sat_emb.shape[1]:
        raise ValueError(f"embeddings must be 2-D with equal widths, got {query_emb.shape} and {sat_emb.shape}")
    if len(query_loc_ids) != len(query_emb) or len(sat_loc_ids) != len(sat_emb):
        raise ValueError("one location id per embedding row is required")
    if k <= 0 or chunk_size <= 0:
        raise ValueError("k and chunk_size must be positive")

    def normalise(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    query_emb, sat_emb = normalise(query_emb), normalise(sat_emb)
    codes: dict[str, int] = {}
    sat_codes = np.array([codes.setdefault(s, len(codes)) for s in sat_loc_ids], dtype=np.int64)
    query_codes = np.array([codes.get(q, -1) for q in query_loc_ids], dtype=np.int64)
    max_copies = int(np.bincount(sat_codes).max()) if len(sat_codes) else 1
    take = min(len(sat_emb), k * max_copies + max_copies)  # enough to hold k distinct wrong locations
    best: dict[str, dict[str, float]] = {}
    for start in range(0, len(query_emb), chunk_size):
        sims = query_emb[start:start + chunk_size] @ sat_emb.T
        sims[query_codes[start:start + chunk_size, None] == sat_codes[None, :]] = -np.inf
        if take < sims.shape[1]:
            top = np.argpartition(-sims, take - 1, axis=1)[:, :take]
        else:
            top = np.broadcast_to(np.arange(sims.shape[1]), sims.shape)
        for row in range(sims.shape[0]):
            merged = best.setdefault(query_loc_ids[start + row], {})
            for column in top[row]:
                value = float(sims[row, column])
                if value == -np.inf:
                    continue
                location = sat_loc_ids[column]
                if value > merged.get(location, -np.inf):
                    merged[location] = value
    return {loc: [s for s, _ in sorted(m.items(), key=lambda item: (-item[1], item[0]))[:k]]
            for loc, m in best.items()}


# ------------------------------------------------------------------------------ writing


def image_extension(data: bytes) -> str:
    """File extension of encoded image bytes (jpg, png, webp, gif, bmp; 'img' when unknown)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"GIF8",):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    return "img"


def to_record(example: ExplainExample) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The conversation record of ``example`` and its image files (relative path -> bytes)."""
    query_path = f"images/{example.id}_q.{image_extension(example.query_image)}"
    sat_path = f"images/{example.id}_s.{image_extension(example.satellite_image)}"
    record = {
        "id": example.id,
        "images": [query_path, sat_path],
        "conversations": [
            {"from": "human", "value": f"{IMAGE_TOKEN}\n{IMAGE_TOKEN}\n{example.instruction}"},
            {"from": "gpt", "value": example.answer},
        ],
        "meta": example.meta(),
    }
    return record, {query_path: example.query_image, sat_path: example.satellite_image}


def write_conversations(examples: Sequence[ExplainExample], folder_url: str, split: str, workers: int = 8) -> str:
    """Write ``examples`` as ``{folder}/{split}.json`` + ``{folder}/images/``; returns the JSON URL."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", split):
        raise ValueError(f"split {split!r}: use letters, digits, '_', '-' or '.'")
    ids = [e.id for e in examples]
    if len(set(ids)) != len(ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"example ids must be unique; duplicated: {duplicates}")
    storage.makedirs(storage.join(folder_url, "images"))
    records, files = [], {}
    for example in examples:
        record, images = to_record(example)
        records.append(record)
        files.update(images)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(lambda item: storage.write_bytes(storage.join(folder_url, item[0]), item[1]), files.items()))
    url = storage.join(folder_url, f"{split}.json")
    storage.write_json(url, records, indent=1)
    return url


# ------------------------------------------------------------------------------ loading


class ConversationError(ValueError):
    """A conversation file or record is malformed; names file, record, field and the fix."""

    def __init__(self, file: str, problem: str, fix: str, *, index: int | None = None,
                 record_id: str | None = None, field_name: str | None = None, line: int | None = None):
        self.file, self.problem, self.fix = file, problem, fix
        self.index, self.record_id, self.field, self.line = index, record_id, field_name, line
        where = [file]
        if line is not None:
            where.append(f"line {line}")
        if index is not None:
            where.append(f"record {index}" + (f" (id {record_id!r})" if record_id is not None else ""))
        if field_name is not None:
            where.append(f"field '{field_name}'")
        super().__init__(f"{': '.join(where)}: {problem}. Fix: {fix}")


@dataclass
class LoadReport:
    """What ``load_conversations`` read: counts and every skipped record with its reason."""

    file: str
    records: int = 0
    loaded: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {"index", "id", "reason"}
    inferred_from_answer: int = 0  # records without "meta": label/language from the answer
    implicit_placeholders: int = 0  # records without <image> placeholders (images taken as prepended)

    @property
    def skipped_count(self) -> int:
        return len(self.skipped)

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "records": self.records, "loaded": self.loaded,
                "skipped": self.skipped, "skipped_count": self.skipped_count,
                "inferred_from_answer": self.inferred_from_answer,
                "implicit_placeholders": self.implicit_placeholders}


@dataclass
class _Parsed:
    index: int
    record_id: str
    line: int | None
    images: list[str]
    instruction: str
    answer: str
    meta: dict[str, Any]
    inferred: bool
    implicit: bool


def _resolve_file(url_or_path: str, split: str | None) -> str:
    if url_or_path.endswith((".json", ".jsonl")):
        if not storage.exists(url_or_path):
            raise ConversationError(url_or_path, "file not found", "check the path (local, absolute or s3:// URL)")
        return url_or_path
    if split is None:
        raise ConversationError(url_or_path, "is not a .json/.jsonl file and no split was given",
                                "pass split='train' (reads {folder}/train.json or .jsonl) or the file itself")
    for suffix in (".json", ".jsonl"):
        candidate = storage.join(url_or_path, f"{split}{suffix}")
        if storage.exists(candidate):
            return candidate
    raise ConversationError(url_or_path, f"no {split}.json or {split}.jsonl in this folder",
                            "check the folder and the split name")


def _read_records(url: str) -> list[tuple[int | None, Any]]:
    """(line number for JSONL, record) pairs."""
    try:
        text = storage.read_text(url)
    except UnicodeDecodeError as error:
        raise ConversationError(url, f"not UTF-8 text ({error})", "save the file as UTF-8 JSON") from None
    if not url.endswith(".jsonl"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            if error.msg != "Extra data":
                raise ConversationError(url, f"not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}",
                                        "fix the JSON syntax there (or use .jsonl with one record per line)",
                                        line=error.lineno) from None
        else:
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                data = data["data"]
            if isinstance(data, dict) and ("conversations" in data or "messages" in data):
                data = [data]
            if not isinstance(data, list):
                raise ConversationError(url, f"top level is a {type(data).__name__}",
                                        "make the top level a list of records (or use JSONL)")
            return [(None, record) for record in data]
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError as error:
            raise ConversationError(url, f"not valid JSON: {error.msg} at column {error.colno}",
                                    "write one complete JSON object per line", line=number) from None
    return records


def _content_text(content: Any, fail) -> tuple[str, int, list[str]]:
    """(text, image item count, image item paths) of a message's content."""
    if isinstance(content, str):
        return content, content.count(IMAGE_TOKEN), []
    if not isinstance(content, list):
        raise fail("content must be a string or a list of {type: text|image} items")
    texts, count, paths = [], 0, []
    for item in content:
        if isinstance(item, str):
            texts.append(item)
            continue
        if not isinstance(item, dict) or item.get("type") not in ("text", "image", "image_url"):
            raise fail("content items must be objects with type 'text' or 'image'")
        if item["type"] == "text":
            texts.append(str(item.get("text", "")))
            continue
        count += 1
        path = item.get("image") or item.get("path") or item.get("url") or item.get("image_url")
        if isinstance(path, dict):
            path = path.get("url")
        if isinstance(path, str):
            paths.append(path)
    text = "\n".join(texts)
    return text, count + text.count(IMAGE_TOKEN), paths


def _parse_record(url: str, index: int, line: int | None, record: Any, stem: str) -> _Parsed:
    record_id = str(record.get("id")) if isinstance(record, dict) and record.get("id") is not None else f"{stem}-{index}"

    def error(field_name: str, problem: str, fix: str) -> ConversationError:
        return ConversationError(url, problem, fix, index=index, record_id=record_id, field_name=field_name, line=line)

    if not isinstance(record, dict):
        raise error("(record)", f"is a {type(record).__name__}, not an object", "make every record a JSON object")
    if "conversations" in record:
        turns_field, turns = "conversations", record["conversations"]
        role_key, text_key = "from", "value"
    elif "messages" in record:
        turns_field, turns = "messages", record["messages"]
        role_key, text_key = "role", "content"
    else:
        raise error("conversations", "missing (neither 'conversations' nor 'messages')",
                    "add 'conversations': [{from: human, value: '<image>\\n<image>\\n...'}, {from: gpt, value: answer}]")
    if not isinstance(turns, list):
        raise error(turns_field, "must be a list of turns", "use a list of {from, value} (or {role, content}) objects")
    user, assistant = [], []
    for position, turn in enumerate(turns):
        where = f"{turns_field}[{position}]"
        if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
            raise error(where, f"a turn needs '{role_key}' and '{text_key}'",
                        f"write turns as {{'{role_key}': ..., '{text_key}': ...}}")
        role = str(turn[role_key]).lower()
        if role == "system":
            continue
        if role in _HUMAN_ROLES:
            user.append((where, turn[text_key]))
        elif role in _ASSISTANT_ROLES:
            assistant.append((where, turn[text_key]))
        else:
            raise error(f"{where}.{role_key}", f"unknown role {turn[role_key]!r}",
                        "use human/user for the question and gpt/assistant for the answer")
    if len(user) != 1 or len(assistant) != 1:
        raise error(turns_field, f"{len(user)} user and {len(assistant)} assistant turns",
                    "keep exactly one question (with the two images) and one answer per record")
    user_where, user_content = user[0]
    answer_where, answer_content = assistant[0]
    text, placeholders, item_paths = _content_text(user_content, lambda p: error(f"{user_where}.{text_key}", p,
                                                                                  "see the messages format"))
    answer, _, _ = _content_text(answer_content, lambda p: error(f"{answer_where}.{text_key}", p,
                                                                  "give the answer as text"))
    images = record.get("images", record.get("image"))
    if images is None:
        images = item_paths
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not all(isinstance(i, str) and i for i in images):
        raise error("images", "must be a list of image paths", "list the query image, then the satellite tile")
    implicit = placeholders == 0 and len(images) == 2
    if not implicit and placeholders != len(images):
        raise error("images", f"{len(images)} image(s) but {placeholders} '{IMAGE_TOKEN}' placeholder(s) in {user_where}",
                    f"put one '{IMAGE_TOKEN}' per image in the question")
    if len(images) != 2:
        raise error("images", f"{len(images)} image(s); a GLEAM-X record needs exactly 2",
                    "give two images: the query view first, then the satellite tile")
    if not answer.strip():
        raise error(answer_where, "the answer is empty", "write the explanation ending with a verdict line")
    meta = record.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise error("meta", "must be an object", "make 'meta' a JSON object or leave it out")
    meta = dict(meta or {})
    inferred = "match" not in meta
    if inferred:
        verdict = parse_answer(answer).verdict
        if verdict is None:
            raise error(f"{answer_where}.{text_key}", "no verdict line in the answer and no meta.match",
                        "end the answer with 'Verdict: match'/'Verdict: no match' (或 结论：匹配/结论：不匹配) "
                        "or add meta.match")
        meta["match"] = verdict
    if not isinstance(meta["match"], bool):
        raise error("meta.match", f"must be true or false, got {meta['match']!r}", "use a JSON boolean")
    if "language" not in meta:
        meta["language"] = script_language(answer) or parse_answer(answer).language or script_language(text) or "en"
    if meta["language"] not in LANGUAGES:
        raise error("meta.language", f"unknown language {meta['language']!r}", f"use one of {list(LANGUAGES)}")
    if meta.get("negative") not in NEGATIVE_KINDS:
        raise error("meta.negative", f"must be null, 'random' or 'hard', got {meta['negative']!r}",
                    "use null for positives")
    if "task" not in meta:
        meta["task"] = "verdict" if is_verdict_only(answer) else "explain"
    if meta["task"] not in TASKS:
        raise error("meta.task", f"unknown task {meta['task']!r}",
                    f"use one of {list(TASKS)} (or leave it out: inferred from the answer)")
    for key in ("query_facts", "satellite_facts"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise error(f"meta.{key}", "must be an object", "store the scene facts as a JSON object or null")
    instruction_text = text.replace(IMAGE_TOKEN, "").strip()
    return _Parsed(index, record_id, line, images, instruction_text, answer, meta, inferred, implicit)


def _image_url(base_url: str, path: str) -> str:
    if "://" in path or os.path.isabs(path):
        return path
    folder = posixpath.dirname(base_url) if storage.is_remote(base_url) else os.path.dirname(os.path.abspath(
        base_url[len("file://"):] if base_url.startswith("file://") else base_url))
    return storage.join(folder, path)


def _read_image(url: str) -> tuple[bytes | None, str | None]:
    from gleam.data.images import ImageError, decode_image

    try:
        data = storage.read_bytes(url)
    except (FileNotFoundError, IsADirectoryError):
        return None, f"missing image {url}"
    except OSError as error:  # StorageError included
        return None, f"unreadable image {url} ({error})"
    try:
        decode_image(data)  # the one decoder: what training will decode must decode here
    except ImageError as error:
        return None, f"unreadable image {url} ({type(error).__name__}: {error.detail})"
    return data, None


def load_conversations(url_or_path: str, split: str | None = None, workers: int = 8) -> ExampleList:
    """Import a LLaVA/ShareGPT conversation file (JSON or JSONL, local or s3://).

    ``url_or_path`` is a ``.json``/``.jsonl`` file, or a folder plus ``split``.  Returns an
    ``ExampleList`` whose ``.report`` is the ``LoadReport``; records with a missing or unreadable
    image are skipped and listed there (and logged), malformed records raise ``ConversationError``.
    """
    url = _resolve_file(url_or_path, split)
    stem = posixpath.basename(url).rsplit(".", 1)[0]
    parsed = [_parse_record(url, index, line, record, stem)
              for index, (line, record) in enumerate(_read_records(url))]
    report = LoadReport(file=url, records=len(parsed))
    urls = [_image_url(url, path) for p in parsed for path in p.images]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        loaded = list(pool.map(_read_image, urls))
    examples = ExampleList(report=report)
    for position, item in enumerate(parsed):
        (query, query_error), (satellite, sat_error) = loaded[2 * position], loaded[2 * position + 1]
        if query is None or satellite is None:
            reasons = [r for r in (query_error and f"query: {query_error}", sat_error and f"satellite: {sat_error}") if r]
            report.skipped.append({"index": item.index, "id": item.record_id, "reason": "; ".join(reasons)})
            continue
        meta = item.meta
        report.inferred_from_answer += item.inferred
        report.implicit_placeholders += item.implicit
        examples.append(ExplainExample(
            id=item.record_id, query_image=query, satellite_image=satellite,
            modality=str(meta.get("modality") or "unknown"), language=meta["language"],
            instruction=item.instruction, answer=item.answer, match=meta["match"],
            negative=meta.get("negative"), location_id=meta.get("location_id"),
            satellite_location_id=meta.get("satellite_location_id"),
            query_facts=meta.get("query_facts"), satellite_facts=meta.get("satellite_facts"),
            source=str(meta.get("source") or posixpath.basename(url)), task=meta["task"]))
    report.loaded = len(examples)
    if report.skipped:
        log.warning("%s: skipped %d of %d records with missing/unreadable images (first: %s)",
                    url, report.skipped_count, report.records, report.skipped[0])
    return examples
