"""GLEAM on Ray Serve: a FastAPI ingress composed with a Retriever and an Explainer.

    Ingress (FastAPI)  GET /  GET /healthz  POST /v1/localize  POST /v1/localize/batch
                       POST /v1/explain  GET /v1/gallery  GET /v1/tiles/{id}
      ├─ Retriever   GLEAM-C encoder + faiss gallery index + tile store, @serve.batch
      └─ Explainer   GLEAM-X (vision-language model), @serve.batch, verdict + explanation

Both model deployments batch concurrent requests (``max_batch_size``, ``batch_wait_timeout_s``),
autoscale on ongoing requests and take their CPU/GPU needs from ``ServeAppConfig``.
"""

# no `from __future__ import annotations`: FastAPI must see real types (Request) on the routes

import asyncio
import functools
import logging
import math
import os
import time
from collections import defaultdict
from importlib import resources
from types import SimpleNamespace
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.exceptions import RayActorError

from gleam.retrieval.index import NORM_TOLERANCE, json_coordinate
from gleam.serving.config import VERDICT_PROMPTS, DeploymentSection, ServeAppConfig
from gleam.serving.guard import GuardSettings, RequestGuard, keys_from_env
from gleam.serving.requests import (LocalizeRequest, PixelGate, RequestError, RequestPixels, begin_pixels,
                                    check_fields, decode_base64_image, decode_image_bytes, end_pixels, is_json_media,
                                    item_error, media_type, parse_bool, parse_int, parse_language, parse_modality,
                                    raise_item_error, refuse_media, shown)

log = logging.getLogger(__name__)


def _record_batch(stats: dict[str, Any], size: int, seconds: float, errors: int = 0) -> None:
    stats["batches"] += 1
    stats["item_errors"] += errors
    stats["requests"] += size
    stats["max_batch"] = max(stats["max_batch"], size)
    stats["sizes"][size] += 1
    stats["seconds"] += seconds


def _new_stats() -> dict[str, Any]:
    return {"batches": 0, "requests": 0, "max_batch": 0, "sizes": defaultdict(int), "seconds": 0.0,
            "item_errors": 0}


def _public_stats(stats: dict[str, Any]) -> dict[str, Any]:
    return {**stats, "sizes": {str(k): v for k, v in sorted(stats["sizes"].items())}}


def load_retrieval_extras(index: Any) -> dict[str, Any]:
    """What jobs/build_index.py stored with the index, from the same build (its manifest checked:
    ``gleam.retrieval.folder``): the embedding settings queries must be embedded with
    (``retrieval.json``: TTA, input sizes, normalisation) and a fitted calibrator
    (``calibration.json``; none when this build has none, whatever an older build left)."""
    from gleam.core.calibration import FILE, Calibrator
    from gleam.retrieval.embed import index_embedding
    from gleam.retrieval.folder import open_folder

    folder = open_folder(index)
    embedding = index_embedding(folder)
    calibrator = Calibrator.from_json(folder.read_json(FILE)) if folder.has(FILE) else None
    return {"tta": embedding.get("tta"), "embedding": embedding, "calibrator": calibrator}


def confidence_of(calibrator: Any, scores: np.ndarray) -> dict[str, Any]:
    """``{"confidence": P(top-1 correct)}`` from the top-1 score and its margin, or {} without a calibrator."""
    if calibrator is None or len(scores) == 0 or not np.isfinite(scores[0]):
        return {}
    second = float(scores[1]) if len(scores) > 1 and np.isfinite(scores[1]) else -1.0
    return {"confidence": float(calibrator.predict([float(scores[0])], [second])[0])}


class RetrieverImpl:
    """Embeds queries with the GLEAM-C encoder and searches the gallery index (no Ray)."""

    def __init__(self, index: str, checkpoint: str = "", device: str = "cpu"):
        from gleam.retrieval.index import GalleryIndex
        from gleam.retrieval.tiles import TileStore
        from gleam.retrieval.embed import Embedder

        from gleam.retrieval.folder import IndexFolder

        folder = IndexFolder.open(index)  # one build: every file below is checked against its manifest
        self.index = GalleryIndex.load(folder)
        checkpoint = checkpoint or self.index.meta.get("checkpoint", "")
        if not checkpoint:
            raise ValueError(f"index {index} records no checkpoint; pass checkpoint=<GLEAM-C folder>")
        extras = load_retrieval_extras(folder)
        # queries embedded exactly as the gallery was (TTA, input sizes, normalisation of the index)
        self.embedder = Embedder.for_index(folder, checkpoint, device=device)
        self.calibrator = extras["calibrator"]
        self.tiles = TileStore.load(folder)
        self.checkpoint = checkpoint
        self.build_id = folder.build_id
        self.stats = _new_stats()

    def localize_many(self, items: list[tuple[np.ndarray, str, int]]) -> list[dict[str, Any]]:
        """[(image, modality, k)] -> per item ``{"candidates": [...]}`` or ``{"error": {...}}``.

        One embedding pass per modality. A failing item does not fail the others: when a
        group's pass raises, its items are embedded one by one, and an item whose embedding is
        non-finite or not unit-norm (the index's ``NORM_TOLERANCE``) becomes an error entry
        instead of reaching the index (whose search refuses the whole matrix)."""
        started = time.perf_counter()
        results: list[dict[str, Any]] = [{} for _ in items]
        by_modality: dict[str, list[int]] = defaultdict(list)
        for position, (_, modality, _) in enumerate(items):
            by_modality[modality].append(position)
        for modality, positions in by_modality.items():
            rows = self._embed_each(positions, [items[p][0] for p in positions], modality, results)
            if not rows:
                continue
            k = max(items[p][2] for p in rows)
            try:
                hits = self.index.search(np.stack([rows[p] for p in rows]), self._search_depth(k))
            except Exception as error:  # the index failed for the whole group: each item says so
                for position in rows:
                    results[position] = item_error(500, "index", f"search failed ({type(error).__name__}: "
                                                                 f"{error}); retry later")
                continue
            for row, position in enumerate(rows):
                results[position] = {"candidates": hits[row][: items[position][2]],
                                     **confidence_of(self.calibrator, hits.scores[row])}
        _record_batch(self.stats, len(items), time.perf_counter() - started, sum("error" in r for r in results))
        return results

    def _embed_each(self, positions: list[int], images: list[np.ndarray], modality: str,
                    results: list[dict[str, Any]]) -> dict[int, np.ndarray]:
        """{position: unit embedding} of the items that embed cleanly; the others get an error
        entry in ``results``."""
        try:
            vectors = list(self.embedder.embed(images, modality))
        except Exception as error:
            vectors = [error] if len(images) == 1 else []
            for image in images if len(images) > 1 else []:  # isolate the item that fails
                try:
                    vectors.append(self.embedder.embed([image], modality)[0])
                except Exception as item_failure:
                    vectors.append(item_failure)
        rows: dict[int, np.ndarray] = {}
        for position, vector in zip(positions, vectors):
            if isinstance(vector, Exception):
                results[position] = item_error(500, "image", f"could not be embedded ({type(vector).__name__}: "
                                                             f"{vector}); the other images were answered")
            elif not np.isfinite(vector).all():
                results[position] = item_error(500, "image", "the encoder produced a non-finite embedding (NaN or "
                                                             "inf) for this image; the other images were answered")
            elif abs(float(np.linalg.norm(vector.astype(np.float64))) - 1.0) > NORM_TOLERANCE:
                results[position] = item_error(500, "image", "the encoder produced a zero or unnormalised embedding "
                                                             "for this image; the other images were answered")
            else:
                rows[position] = vector
        return rows

    def _search_depth(self, k: int) -> int:
        """Hits to fetch for a top-``k`` answer: at least 2 with a calibrator (it reads the margin)."""
        return max(k, 2) if self.calibrator is not None else k

    def localize_fused(self, images: list[np.ndarray], modality: str, k: int, method: str) -> dict[str, Any]:
        """Several images of one place -> one ranking (multi-query fusion, gleam.core.evaluate.FusionConfig):
        ``mean`` searches the normalised mean embedding; ``max`` scores a tile by its best similarity to
        any image (exact: a tile of the fused top-k is in the top-k of the image it scores best with)."""
        embeddings = self.embedder.embed(images, modality)
        depth = self._search_depth(k)
        if method == "mean":
            fused = embeddings.sum(axis=0, keepdims=True)
            hits = self.index.search(fused / np.linalg.norm(fused), depth)
            return {"candidates": hits[0][:k], **confidence_of(self.calibrator, hits.scores[0])}
        hits = self.index.search(embeddings, depth)
        best: dict[int, dict[str, Any]] = {}
        for row in range(len(images)):
            for hit, index in zip(hits[row], hits.indices[row]):
                if int(index) not in best or hit["score"] > best[int(index)]["score"]:
                    best[int(index)] = dict(hit)
        ranked = sorted(best.items(), key=lambda item: (-item[1]["score"], item[0]))[:depth]
        candidates = [{**hit, "rank": rank + 1} for rank, (_, hit) in enumerate(ranked)]
        return {"candidates": candidates[:k],
                **confidence_of(self.calibrator, np.array([c["score"] for c in candidates]))}

    def gallery(self) -> dict[str, Any]:
        """Ids, coordinates and tile footprints of the gallery (``bounds[i]``: ``[lat_min, lon_min,
        lat_max, lon_max]`` in degrees, None when the index stores none), for the page's map."""
        return {"count": len(self.index), "ids": list(self.index.ids),
                "lat": [json_coordinate(v) for v in self.index.lats], "lon": [json_coordinate(v) for v in self.index.lons],
                "bounds": [_bounds(self.tiles.bounds(str(i))) for i in self.index.ids]}


def _bounds(bounds: Any) -> list[float] | None:
    return None if bounds is None else [round(float(v), 9) for v in bounds]


class ExplainerImpl:
    """GLEAM-X: (query, satellite, view, language) -> verdict + explanation (no Ray).

    Verify, then explain: with ``verdict_prompt="verdict_only"`` each pair is also asked the
    verdict-only question, and that answer is the verdict (``verdict_source: verdict_only``); the
    explanation's own verdict line is reported beside it (``explanation_verdict``, ``agrees``)."""

    def __init__(self, model: str, device: str = "cpu", max_new_tokens: int = 96,
                 verdict_prompt: str = "verdict_only"):
        import torch

        from gleam.explain.model import LoraSettings, load_vlm

        _check_verdict_prompt(verdict_prompt)
        self.model, self.processor = load_vlm(model, LoraSettings(enabled=False), dtype="float32", device=device)
        self.model.eval()
        self.image_size = int(getattr(self.model.config, "gleam_image_size", 0) or _read_image_size(model))
        self.max_new_tokens = max_new_tokens
        self.verdict_prompt = verdict_prompt
        self.torch = torch
        self.stats = _new_stats()

    def explain_many(self, items: list[tuple[bytes, bytes, str, str]]) -> list[dict[str, Any]]:
        """[(query, satellite, view, language)] -> per item an answer or ``{"error": {...}}``:
        when the batched generation raises, each item is answered alone, so one failing pair
        does not fail the pairs batched with it."""
        started = time.perf_counter()
        def failed(error: Exception) -> dict[str, Any]:
            return item_error(500, "explanation", f"GLEAM-X failed on this pair ({type(error).__name__}: {error}); "
                                                  "the other pairs were answered")

        try:
            out = self._answer(items)
        except Exception as error:
            out = [failed(error)] if len(items) == 1 else []
            for item in items if len(items) > 1 else []:  # isolate the pair that fails
                try:
                    out += self._answer([item])
                except Exception as item_failure:
                    out.append(failed(item_failure))
        _record_batch(self.stats, len(items), time.perf_counter() - started, sum("error" in r for r in out))
        return out

    def _answer(self, items: list[tuple[bytes, bytes, str, str]]) -> list[dict[str, Any]]:
        from gleam.explain.evaluate import VERDICT_ONLY_NEW_TOKENS
        from gleam.explain.model import generate
        from gleam.explain.prompts import instruction, parse_answer, verdict_instruction
        from gleam.explain.vision import match_probabilities

        def label(verdict: bool | None) -> str | None:
            return None if verdict is None else ("match" if verdict else "no match")

        explain, verify = [], []
        for query, satellite, modality, language in items:
            # the canonical phrasing (the first drawn by a fixed seed): same request, same answer
            explain.append(SimpleNamespace(query_image=query, satellite_image=satellite, answer=None,
                                           instruction=instruction(language, modality, np.random.default_rng(0))))
            if self.verdict_prompt == "verdict_only":
                verify.append(SimpleNamespace(
                    query_image=query, satellite_image=satellite, answer=None,
                    instruction=verdict_instruction(language, modality, np.random.default_rng(0))))
        with self.torch.no_grad():
            texts = generate(self.model, self.processor, explain, image_size=self.image_size,
                             max_new_tokens=self.max_new_tokens)
            # the GLEAM vision tower's match head, from the same forward (None for a native tower)
            probabilities = match_probabilities(self.model) or [None] * len(items)
            asked: list[bool | None] = [None] * len(items)
            if verify:
                asked = [parse_answer(t).verdict for t in generate(self.model, self.processor, verify,
                                                                   image_size=self.image_size,
                                                                   max_new_tokens=VERDICT_ONLY_NEW_TOKENS)]
        out = []
        for text, answer, probability, (_, _, _, language) in zip(texts, asked, probabilities, items):
            parsed = parse_answer(text)
            verdict, source = (answer, "verdict_only") if answer is not None else (parsed.verdict, "explanation")
            out.append({"verdict": label(verdict), "verdict_source": source if verdict is not None else None,
                        "explanation_verdict": label(parsed.verdict),
                        "agrees": None if verdict is None or parsed.verdict is None else verdict == parsed.verdict,
                        "match_probability": None if probability is None else round(float(probability), 4),
                        "well_formed": bool(parsed.well_formed), "language": language, "explanation": text})
        return out


def fused_score(score: float, probability: float, weight: float) -> float:
    """GLEAM-C's cosine ``score`` plus ``weight`` x logit(P(same place)) of GLEAM-X's match head
    (probability clipped to [1e-4, 1 - 1e-4]); ``weight`` inf orders by the probability alone.
    Late fusion of a retrieval score with a verifier's log-odds, as re-ranking stages do; the
    weight is chosen on validation queries (benchmarks/bench_explain.py, ``rerank.chosen_weight``)."""
    p = min(max(float(probability), 1e-4), 1.0 - 1e-4)
    log_odds = math.log(p / (1.0 - p))
    if math.isinf(weight):
        return log_odds
    return float(score) + float(weight) * log_odds


def verify_rerank(candidates: list[dict[str, Any]], weight: float = math.inf) -> list[dict[str, Any]]:
    """Verification that re-ranks: the explained candidates ordered by ``fused_score`` of their
    GLEAM-C ``score`` and GLEAM-X's ``match_probability``; GLEAM-C's order breaks ties, candidates
    without a probability stay after those with one; ``weight`` 0 keeps GLEAM-C's order.  Every
    candidate gets ``retrieval_rank`` (its GLEAM-C place, 1-based) and, when it moved, ``moved``:
    why, in words, for the page.  ValueError for a negative or NaN weight."""
    if not (weight >= 0.0):
        raise ValueError(f"verify_weight={weight!r}: must be >= 0 (0: GLEAM-C's order, inf: GLEAM-X's P alone)")
    for rank, candidate in enumerate(candidates, 1):
        candidate.setdefault("retrieval_rank", rank)
    scored = [c for c in candidates if c.get("match_probability") is not None]
    if not scored or weight == 0.0:
        return candidates
    for candidate in scored:
        candidate["fused_score"] = round(fused_score(candidate.get("score", 0.0) or 0.0,
                                                     candidate["match_probability"], weight), 6)
    order = sorted(scored, key=lambda c: (-c["fused_score"], c["retrieval_rank"]))
    order += [c for c in candidates if c.get("match_probability") is None]
    for rank, candidate in enumerate(order, 1):
        was = candidate["retrieval_rank"]
        if rank != was:
            direction = "up" if rank < was else "down"
            candidate["moved"] = (f"{direction} from #{was} to #{rank}: GLEAM-X gives P(same place) "
                                  f"{candidate['match_probability']:.2f}" if candidate.get("match_probability")
                                  is not None else f"down from #{was} to #{rank}: not verified")
    return order


def _check_verdict_prompt(value: str) -> None:
    if value not in VERDICT_PROMPTS:
        raise ValueError(f"verdict_prompt: {value!r} unknown; use one of {list(VERDICT_PROMPTS)} "
                         "(where a candidate's verdict comes from)")


def _read_image_size(model: str) -> int:
    import json

    from gleam import storage

    for name in ("gleam_explain.json", "config.json"):
        url = storage.join(model, name)
        if storage.exists(url):
            value = json.loads(storage.read_text(url)).get("gleam_image_size")
            if value:
                return int(value)
    return 112


async def _each_answered(method: Any, items: list[Any], field: str) -> list[dict[str, Any]]:
    """``method(items)`` in a thread; if it raises anyway (a bug, not an item), every item gets
    the error as its own entry, so callers see a JSON 500 and the replica keeps serving."""
    try:
        return await asyncio.to_thread(method, items)
    except Exception as error:
        log.exception("batched call failed for %d items", len(items))
        return [item_error(500, field, f"the server failed on this batch ({type(error).__name__}: {error})")
                for _ in items]


async def _call(method: Any, *args: Any, attempts: int = 2) -> Any:
    """``await method.remote(*args)``, again when the replica died under the call (RayActorError:
    killed, out of memory, node lost). Every call here is a read, safe to repeat, and Serve
    routes the repeat to a live replica (or the one it restarts), so a lost replica costs its
    in-flight requests latency, not errors (benchmarks/bench_serve_soak.py kills one)."""
    for attempt in range(attempts):
        try:
            return await method.remote(*args)
        except RayActorError as error:
            if attempt == attempts - 1:
                raise
            log.warning("replica lost during %s (%s); asking another", getattr(method, "_method_name", method),
                        type(error).__name__)


@serve.deployment(name="Retriever")
class Retriever:
    def __init__(self, index: str, checkpoint: str, device: str, max_batch_size: int, batch_wait_timeout_s: float):
        self.impl = RetrieverImpl(index, checkpoint, device)
        self.localize.set_max_batch_size(max_batch_size)
        self.localize.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.05)
    async def localize(self, items: list[tuple[np.ndarray, str, int]]) -> list[dict[str, Any]]:
        """Per item ``{"candidates"}`` or ``{"error"}``: requests batched together never share a failure."""
        return await _each_answered(self.impl.localize_many, items, "image")

    async def localize_list(self, items: list[tuple[np.ndarray, str, int]]) -> list[dict[str, Any]]:
        """A whole batch request in one call (already a batch: no waiting for company)."""
        return await _each_answered(self.impl.localize_many, items, "image")

    async def localize_fused(self, images: list[np.ndarray], modality: str, k: int, method: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.impl.localize_fused, images, modality, k, method)

    def tile(self, tile_id: str) -> bytes | None:
        return self.impl.tiles.get(tile_id)

    def gallery(self) -> dict[str, Any]:
        return self.impl.gallery()

    def info(self) -> dict[str, Any]:
        return {"gallery": len(self.impl.index), "checkpoint": self.impl.checkpoint,
                "index": self.impl.index.meta.get("kind"), "batching": _public_stats(self.impl.stats),
                "tta": self.impl.embedder.tta.__dict__ if self.impl.embedder.tta else None,
                "calibrated": self.impl.calibrator is not None, "build_id": self.impl.build_id}


@serve.deployment(name="Explainer")
class Explainer:
    def __init__(self, model: str, device: str, max_new_tokens: int, max_batch_size: int, batch_wait_timeout_s: float,
                 verdict_prompt: str = "verdict_only"):
        self.impl = ExplainerImpl(model, device, max_new_tokens, verdict_prompt)
        self.explain.set_max_batch_size(max_batch_size)
        self.explain.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)
    async def explain(self, items: list[tuple[bytes, bytes, str, str]]) -> list[dict[str, Any]]:
        """Per item an answer or ``{"error"}`` (see ExplainerImpl.explain_many)."""
        return await _each_answered(self.impl.explain_many, items, "explanation")

    def info(self) -> dict[str, Any]:
        return {"batching": _public_stats(self.impl.stats)}


api = FastAPI(title="GLEAM", description="Cross-view geo-localization with explanations")
# API keys and body caps before any route reads the body; settings in api.state.guard (Ingress)
api.add_middleware(RequestGuard)


def error_response(error: RequestError) -> JSONResponse:
    return JSONResponse(error.to_json(), status_code=error.status, headers=error.headers or None)


def pixel_budgeted(handler: Any) -> Any:
    """An endpoint whose decoded images count against one request's pixel budget and the
    replica's pixels in flight (``serving.requests.RequestPixels``), released when it returns."""
    @functools.wraps(handler)
    async def endpoint(self: Any, request: Request) -> JSONResponse:
        budget = RequestPixels(self.s["max_request_megapixels"] * 1_000_000, self.pixels_in_flight,
                               self.s.get("retry_after_s", 1.0))
        token = begin_pixels(budget)
        try:
            return await handler(self, request)
        finally:
            end_pixels(token)

    return endpoint


def _page() -> str:
    return resources.files("gleam.serving").joinpath("page.html").read_text(encoding="utf-8")


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    def __init__(self, retriever: Any, explainer: Any | None, settings: dict[str, Any]):
        self.retriever, self.explainer = retriever, explainer
        self.s = settings
        # decoded pixels held by this replica's requests in flight (RequestPixels per request)
        self.pixels_in_flight = PixelGate(int(settings["max_inflight_megapixels"] * 1_000_000))
        # keys from the config and the build's environment, plus this replica's $GLEAM_API_KEYS
        api.state.guard = GuardSettings(api_keys=[*settings.get("api_keys", []), *keys_from_env()],
                                        max_body_bytes=settings["max_body_bytes"],
                                        max_batch_body_bytes=settings["max_batch_body_bytes"])

    # ------------------------------------------------------------------ plumbing

    async def _form_or_json(self, request: Request) -> tuple[str, dict[str, Any]]:
        """("form" | "json", fields).  Media types compared as RFC 9110 says (case-insensitive,
        parameters ignored, ``application/*+json`` is JSON); a JSON body labelled as a form (curl
        -d), unlabelled or labelled anything else gets a 415 that says what to send."""
        media = media_type(request.headers.get("content-type"))
        if media == "multipart/form-data":
            try:
                form = await request.form()
            except Exception as error:  # starlette's MultiPartException and parser errors: our 400, no body echo
                if isinstance(error, RequestError):
                    raise
                raise RequestError(400, "body", f"is not a readable multipart form ({shown(str(error), 80)}); "
                                                "send it as curl -F image=@photo.jpg does") from None
            return "form", {key: form.getlist(key) if len(form.getlist(key)) > 1 else form.get(key)
                            for key in form.keys()}
        if is_json_media(media):
            try:
                body = await request.json()
            except ValueError:
                raise RequestError(400, "body", "is not valid JSON (check quoting and escapes; the body is "
                                                "not repeated here)") from None
            if not isinstance(body, dict):
                raise RequestError(422, "body", "must be a JSON object")
            return "json", body
        raise refuse_media(media, (await request.body())[:64])

    async def _image_field(self, kind: str, body: dict[str, Any], name: str) -> tuple[bytes, np.ndarray]:
        value = body.get(name)
        if value is None:
            raise RequestError(422, name, "is required" + (" (a file upload)" if kind == "form" else
                                                           " (a base64-encoded image)"))
        limit = self.s["max_image_bytes"]
        if kind == "form":
            if not hasattr(value, "read"):
                raise RequestError(422, name, "must be a file upload, not a text field")
            data = await value.read(limit + 1)
            return data, decode_image_bytes(data, name, limit)
        return decode_base64_image(value, name, limit)

    def _options(self, body: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        return {
            "modality": parse_modality(body.get("modality"), prefix + "modality"),
            "top_k": parse_int(body.get("top_k"), prefix + "top_k", self.s["top_k"], 1, self.s["max_top_k"]),
            "explain": parse_bool(body.get("explain"), prefix + "explain", False),
            "language": parse_language(body.get("language"), self.s["languages"], prefix + "language"),
        }

    async def _explain_candidates(self, request: LocalizeRequest, candidates: list[dict[str, Any]]) -> None:
        if not request.explain:
            return
        if self.explainer is None:
            raise RequestError(409, "explain", "this deployment has no GLEAM-X model (explainer=''); "
                                               "ask without explain=true")
        chosen = candidates[: self.s["explain_top"]]
        tiles = await asyncio.gather(*(_call(self.retriever.tile, c["id"]) for c in chosen))
        calls = [_call(self.explainer.explain, (request.image_bytes, tile, request.modality, request.language))
                 for tile in tiles if tile is not None]
        answers = iter(await asyncio.gather(*calls))
        for candidate, tile in zip(chosen, tiles):
            answer = next(answers) if tile is not None else None
            if answer is None or "error" in answer:  # this candidate unexplained; the others keep theirs
                candidate.update({"verdict": None, "explanation": None, "well_formed": False})
                candidate.update(answer if answer is not None else {"note": "no tile image stored for this id"})
            else:
                candidate.update(answer)
        if self.s.get("verify_rerank", True):
            candidates[: len(chosen)] = verify_rerank(chosen, float(self.s.get("verify_weight", math.inf)))

    def _result(self, request: LocalizeRequest, retrieved: dict[str, Any]) -> dict[str, Any]:
        return {"id": request.id or None, "modality": request.modality, "top_k": request.top_k,
                "language": request.language, "candidates": retrieved["candidates"],
                **({"confidence": retrieved["confidence"]} if "confidence" in retrieved else {})}

    # ------------------------------------------------------------------ endpoints

    @api.get("/", response_class=HTMLResponse)
    async def page(self) -> str:
        return _page()

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        retriever = await _call(self.retriever.info)
        explainer = await _call(self.explainer.info) if self.explainer is not None else None
        return {"status": "ok", "retriever": retriever, "explainer": explainer,
                "languages": self.s["languages"]}

    @api.get("/v1/gallery")
    async def gallery(self) -> dict[str, Any]:
        return await _call(self.retriever.gallery)

    @api.get("/v1/tiles/{tile_id:path}")
    async def tile(self, tile_id: str) -> Response:
        data = await _call(self.retriever.tile, tile_id)
        if data is None:
            return JSONResponse(RequestError(404, "tile_id", f"{shown(tile_id)} is not in the gallery").to_json(), 404)
        return Response(content=data, media_type="image/jpeg")

    @api.post("/v1/localize")
    @pixel_budgeted
    async def localize(self, request: Request) -> JSONResponse:
        try:
            kind, body = await self._form_or_json(request)
            check_fields(body, {"image", "modality", "top_k", "explain", "language", "id"}, "/v1/localize")
            image_bytes, image = await self._image_field(kind, body, "image")
            query = LocalizeRequest(image_bytes, image, **self._options(body), id=str(body.get("id") or ""))
            retrieved = raise_item_error(
                await _call(self.retriever.localize, (query.image, query.modality, query.top_k)))
            await self._explain_candidates(query, retrieved["candidates"])
            return JSONResponse(self._result(query, retrieved))
        except RequestError as error:
            return error_response(error)

    @api.post("/v1/localize/batch")
    @pixel_budgeted
    async def localize_batch(self, request: Request) -> JSONResponse:
        """Many images in one request; a bad image is an error entry, not a failed request."""
        try:
            kind, body = await self._form_or_json(request)
            check_fields(body, {"images", "modality", "top_k", "explain", "language"}, "/v1/localize/batch")
            defaults = self._options(body)
            entries = body.get("images")
            if kind == "form":
                entries = entries if isinstance(entries, list) else ([entries] if entries is not None else [])
            if not isinstance(entries, list) or not entries:
                raise RequestError(422, "images", "must be a non-empty list" + (
                    " of file uploads" if kind == "form" else " of {\"image\": base64, \"modality\"?, \"id\"?}"))
            if len(entries) > self.s["max_batch_images"]:
                raise RequestError(413, "images", f"{len(entries)} images; the limit per request is "
                                                  f"{self.s['max_batch_images']}: split the batch")
            parsed: list[LocalizeRequest | dict[str, Any]] = []
            for position, entry in enumerate(entries):
                where = f"images[{position}]"
                try:
                    if kind == "form":
                        image_bytes, image = await self._image_field("form", {"image": entry}, where)
                        options, ident = defaults, getattr(entry, "filename", "") or str(position)
                    else:
                        if not isinstance(entry, dict):
                            raise RequestError(422, where, "must be an object {\"image\": base64, ...}")
                        check_fields(entry, {"image", "modality", "top_k", "id"}, where)
                        image_bytes, image = decode_base64_image(entry.get("image"), where + ".image",
                                                                 self.s["max_image_bytes"])
                        # an entry may override the request's modality and top_k
                        options = self._options({**defaults, **{k: entry[k] for k in ("modality", "top_k")
                                                                if k in entry}}, where + ".")
                        ident = str(entry.get("id", position))
                    parsed.append(LocalizeRequest(image_bytes, image, **options, id=ident))
                except RequestError as error:
                    if error.status == 503:  # the replica is full: the whole request is retried later
                        raise
                    parsed.append({"id": str(position), **error.to_json()})
            good = [p for p in parsed if isinstance(p, LocalizeRequest)]
            retrieved = iter(await _call(self.retriever.localize_list, [(p.image, p.modality, p.top_k) for p in good])
                             if good else [])
            results = []
            for position, item in enumerate(parsed):
                if isinstance(item, LocalizeRequest):
                    found = next(retrieved)
                    if "error" in found:  # this image failed in the Retriever; the others stand
                        error = dict(found["error"], field=f"images[{position}].{found['error']['field']}")
                        results.append({"id": item.id, "error": error})
                        continue
                    await self._explain_candidates(item, found["candidates"])
                    results.append(self._result(item, found))
                else:
                    results.append(item)
            return JSONResponse({"count": len(results), "errors": sum("error" in r for r in results),
                                 "results": results})
        except RequestError as error:
            return error_response(error)

    @api.post("/v1/localize/place")
    @pixel_budgeted
    async def localize_place(self, request: Request) -> JSONResponse:
        """Several photos of one place fused into one query (``fusion``: mean | max); JSON
        ``{"images": [base64, ...], "modality"?, "top_k"?, "fusion"?}`` or a form with several
        ``images`` files."""
        try:
            kind, body = await self._form_or_json(request)
            check_fields(body, {"images", "modality", "top_k", "fusion"}, "/v1/localize/place")
            options = self._options({k: v for k, v in body.items() if k in ("modality", "top_k")})
            method = body.get("fusion") or "mean"
            if method not in ("mean", "max"):
                raise RequestError(422, "fusion", f"{shown(method)} is not a fusion method; use mean or max")
            entries = body.get("images")
            if kind == "form" and entries is not None and not isinstance(entries, list):
                entries = [entries]
            if not isinstance(entries, list) or not entries:
                raise RequestError(422, "images", "must be a non-empty list of images of one place")
            if len(entries) > self.s["max_batch_images"]:
                raise RequestError(413, "images", f"{len(entries)} images; the limit per request is "
                                                  f"{self.s['max_batch_images']}")
            images = []
            for position, entry in enumerate(entries):
                where = f"images[{position}]"
                if kind == "form":
                    images.append((await self._image_field("form", {"image": entry}, where))[1])
                else:
                    images.append(decode_base64_image(entry, where, self.s["max_image_bytes"])[1])
            found = await self.retriever.localize_fused.remote(images, options["modality"], options["top_k"], method)
            return JSONResponse({"modality": options["modality"], "top_k": options["top_k"], "fusion": method,
                                 "images": len(images), **found})
        except RequestError as error:
            return error_response(error)

    @api.post("/v1/explain")
    @pixel_budgeted
    async def explain(self, request: Request) -> JSONResponse:
        """Query + satellite (an upload, or ``tile_id`` of a gallery tile) -> verdict + explanation."""
        try:
            kind, body = await self._form_or_json(request)
            check_fields(body, {"query", "satellite", "tile_id", "modality", "language"}, "/v1/explain")
            if self.explainer is None:
                raise RequestError(409, "explainer", "this deployment has no GLEAM-X model (explainer='')")
            query_bytes, _ = await self._image_field(kind, body, "query")
            if body.get("tile_id"):
                satellite = await _call(self.retriever.tile, str(body["tile_id"]))
                if satellite is None:
                    raise RequestError(404, "tile_id", f"{shown(body['tile_id'])} is not in the gallery")
            else:
                satellite, _ = await self._image_field(kind, body, "satellite")
            modality = parse_modality(body.get("modality"))
            language = parse_language(body.get("language"), self.s["languages"])
            answer = raise_item_error(
                await _call(self.explainer.explain, (query_bytes, satellite, modality, language)))
            return JSONResponse({"modality": modality, **answer})
        except RequestError as error:
            return error_response(error)


def _backpressure(max_queued_requests: int, retry_after_s: float) -> dict[str, Any]:
    """Serve's bounded queue: past ``max_queued_requests`` waiting calls, a caller's handle raises
    BackPressureError, which Serve 2.60 answers over HTTP as ``backpressure_config.status_code``
    (503) with ``Retry-After: ceil(retry_after_s)`` (ray/serve/_private/router.py,
    http_util.retry_after_headers): at the proxy for the Ingress's own queue, and through the
    handler Serve registers on the ingress's FastAPI app for the Retriever's and Explainer's."""
    return {"max_queued_requests": max_queued_requests,
            "backpressure_config": {"status_code": 503, "retry_after_s": retry_after_s}}


def _deployment_options(section: DeploymentSection, retry_after_s: float) -> dict[str, Any]:
    scaling = section.autoscaling
    return {
        "ray_actor_options": {"num_cpus": section.num_cpus, "num_gpus": section.num_gpus},
        "max_ongoing_requests": section.max_ongoing_requests,
        **_backpressure(section.max_queued_requests, retry_after_s),
        "autoscaling_config": {"min_replicas": scaling.min_replicas, "max_replicas": scaling.max_replicas,
                               "target_ongoing_requests": scaling.target_ongoing_requests,
                               "upscale_delay_s": scaling.upscale_delay_s,
                               "downscale_delay_s": scaling.downscale_delay_s},
    }


def check_limits(config: ServeAppConfig) -> None:
    """Body caps, queue bounds and Retry-After must be usable numbers (ValueError naming the key)."""
    if not (float(config.verify_weight) >= 0.0):
        raise ValueError(f"verify_weight: must be >= 0 (0: GLEAM-C's order; inf: GLEAM-X's P(same place) alone), "
                         f"got {config.verify_weight}")
    for name in ("max_body_bytes", "max_batch_body_bytes", "max_image_bytes"):
        if int(getattr(config, name)) < 1:
            raise ValueError(f"{name}: must be at least 1 byte, got {getattr(config, name)}")
    if config.max_body_bytes < config.max_image_bytes:
        raise ValueError(f"max_body_bytes ({config.max_body_bytes}) is below max_image_bytes "
                         f"({config.max_image_bytes}): an allowed image could never be sent; raise max_body_bytes")
    queues = {"ingress_max_queued_requests": config.ingress_max_queued_requests,
              "retriever.max_queued_requests": config.retriever.max_queued_requests,
              "explainer_deployment.max_queued_requests": config.explainer_deployment.max_queued_requests}
    for name, value in queues.items():
        if value != -1 and value < 1:
            raise ValueError(f"{name}: must be at least 1, or -1 for no bound; got {value}")
    if not 0 < config.max_request_megapixels <= config.max_inflight_megapixels:
        raise ValueError(f"max_request_megapixels ({config.max_request_megapixels}) must be > 0 and at most "
                         f"max_inflight_megapixels ({config.max_inflight_megapixels}): a request over the replica's "
                         "whole budget could never run; lower the first or raise the second")
    if not config.retry_after_s >= 0:
        raise ValueError(f"retry_after_s: must be >= 0 seconds, got {config.retry_after_s}")
    if any(not isinstance(key, str) or not key.strip() for key in config.api_keys):
        raise ValueError("api_keys: every key must be a non-empty string")


def check_artifacts(config: ServeAppConfig) -> None:
    """Fail at build time, with the command that makes it, when a model or index is missing."""
    from gleam import storage

    _check_verdict_prompt(config.verdict_prompt)
    check_limits(config)
    if not storage.exists(storage.join(config.index, "index.faiss")):
        raise ValueError(f"index: no gallery index at {config.index!r}; build one with "
                         "`python jobs/build_index.py --config configs/build-index-local.yaml` or pass index=<folder>")
    if config.checkpoint:
        from gleam.core.model import resolve_checkpoint

        try:
            found = resolve_checkpoint(config.checkpoint)
        except FileNotFoundError as error:
            raise ValueError(f"checkpoint: {error}") from None
        if not storage.exists(storage.join(found, "config.json")):
            raise ValueError(f"checkpoint: no GLEAM-C checkpoint at {config.checkpoint!r} (expected config.json "
                             "and model.safetensors from jobs/train_core.py, or a name under models/)")
    if config.explainer and not storage.exists(storage.join(config.explainer, "config.json")):
        raise ValueError(f"explainer: no GLEAM-X model at {config.explainer!r}; train one with "
                         "`python jobs/train_explain.py`, or pass explainer='' to serve retrieval only")


def build_app(config: ServeAppConfig) -> Any:
    """The bound Serve application for ``config``."""
    check_artifacts(config)
    retriever = Retriever.options(**_deployment_options(config.retriever, config.retry_after_s)).bind(
        config.index, config.checkpoint, config.device, config.retriever.max_batch_size,
        config.retriever.batch_wait_timeout_s)
    explainer = None
    if config.explainer:
        section = config.explainer_deployment
        explainer = Explainer.options(**_deployment_options(section, config.retry_after_s)).bind(
            config.explainer, config.device, config.max_new_tokens, section.max_batch_size,
            section.batch_wait_timeout_s, config.verdict_prompt)
    settings = {"top_k": config.top_k, "max_top_k": config.max_top_k, "explain_top": config.explain_top,
                "verify_rerank": config.verify_rerank, "verify_weight": config.verify_weight,
                "max_image_bytes": config.max_image_bytes, "max_batch_images": config.max_batch_images,
                "max_body_bytes": config.max_body_bytes, "max_batch_body_bytes": config.max_batch_body_bytes,
                "max_request_megapixels": config.max_request_megapixels,
                "max_inflight_megapixels": config.max_inflight_megapixels, "retry_after_s": config.retry_after_s,
                # the build's own $GLEAM_API_KEYS too (`GLEAM_API_KEYS=... serve run ...`)
                "api_keys": [*config.api_keys, *keys_from_env()],
                "languages": list(config.languages)}
    return Ingress.options(num_replicas=config.ingress_replicas, ray_actor_options={"num_cpus": 0.1},
                           max_ongoing_requests=config.ingress_max_ongoing_requests,
                           **_backpressure(config.ingress_max_queued_requests, config.retry_after_s)).bind(
        retriever, explainer, settings)


def app_from_args(args: dict[str, Any]) -> Any:
    """``serve run`` arguments -> app. ``config=<yaml>`` loads a file; other keys are overrides."""
    from gleam.config import load_config

    args = dict(args or {})
    path = args.pop("config", None) or os.environ.get("GLEAM_SERVE_CONFIG") or None
    overrides = [f"{key}={_yaml_value(value)}" for key, value in _flatten(args)]
    config = load_config(ServeAppConfig, path, overrides)
    return build_app(config)


def _flatten(args: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """{"retriever": {"max_batch_size": 8}} -> [("retriever.max_batch_size", 8)]."""
    out: list[tuple[str, Any]] = []
    for key, value in args.items():
        if isinstance(value, dict):
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _yaml_value(value: Any) -> str:
    import json

    if isinstance(value, str):
        return value if value != "" else "''"
    return json.dumps(value)
