"""The serving application's configuration (``kind: serve``).

``serve run serve_apps.gleam:app`` builds the app from these defaults; arguments
(``serve run serve_apps.gleam:app index=runs/index top_k=10``) or a serve config file's
``args:`` override them, and ``config=<file.yaml>`` loads a whole file first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gleam.config import InputPath, ModelPath

from gleam.explain.prompts import LANGUAGES


@dataclass
class AutoscalingSection:
    """Ray Serve autoscaling of one deployment (replicas follow ongoing requests)."""

    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 4.0
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 60.0


@dataclass
class DeploymentSection:
    """Resources, batching and autoscaling of one model deployment."""

    num_cpus: float = 0.5
    num_gpus: float = 0.0  # > 0 puts the replicas on GPU nodes (the autoscaler adds them)
    max_batch_size: int = 16  # 1 turns batching off
    # how long a batch waits to fill after its first request: 50 ms measured 1.73x the unbatched
    # requests/s at 96 px (1.53x at 224 px) with 16 clients, against 1.45x (1.27x) at 10 ms
    # (benchmarks/README.md);
    # a request arriving alone waits this long
    batch_wait_timeout_s: float = 0.05
    max_ongoing_requests: int = 32
    # requests waiting for a free replica slot beyond this many get 503 + Retry-After at once
    # (Serve's max_queued_requests, counted per caller; -1 = wait without bound)
    max_queued_requests: int = 64
    autoscaling: AutoscalingSection = field(default_factory=AutoscalingSection)


VERDICT_PROMPTS = ("verdict_only", "explanation")


@dataclass
class ServeAppConfig:
    """Root config of ``serve_apps.gleam:app``."""

    kind: str = "serve"
    index: InputPath = "runs/index-local"  # folder written by jobs/build_index.py (local or s3://)
    checkpoint: ModelPath = ""  # GLEAM-C checkpoint; "" = the one recorded in the index
    explainer: InputPath = "runs/gleam-x-local/final"  # GLEAM-X model folder; "" = no explanations
    device: str = "cpu"  # "cuda" on GPU nodes
    top_k: int = 5
    max_top_k: int = 100
    explain_top: int = 3  # how many of the top-k candidates GLEAM-X verifies
    # reorder the verified candidates by GLEAM-C's score + verify_weight x logit(GLEAM-X's P(same
    # place)) (serving.app.fused_score); each says why it moved. The weight is the one chosen on
    # validation queries by benchmarks/bench_explain.py (rerank.chosen_weight); 0 keeps GLEAM-C's order
    verify_rerank: bool = True
    verify_weight: float = 0.0
    max_new_tokens: int = 96
    # where a candidate's verdict comes from: "verdict_only" asks GLEAM-X the verdict-only question
    # first (a few tokens; the measured-accurate answer of a label-only-trained model) and falls back
    # to the explanation's own verdict line when that answer does not parse; "explanation" uses the
    # explanation's verdict line alone
    verdict_prompt: str = "verdict_only"  # one of VERDICT_PROMPTS
    max_image_bytes: int = 8 * 2**20
    max_batch_images: int = 64
    # request bodies: refused with 413 from Content-Length, or as soon as the streamed bytes pass
    # the cap, before the body is held (an 8 MiB image is ~10.7 MiB as base64 JSON)
    max_body_bytes: int = 12 * 2**20
    max_batch_body_bytes: int = 64 * 2**20  # POST /v1/localize/batch
    # decoded pixels (uint8 RGB: 3 bytes each): per request, and held at once by one ingress
    # replica's requests in flight; checked from each image's header before it is decoded (413 past
    # the request's budget, 503 + Retry-After when the replica is full). A 2 KB PNG can decode to
    # 40 megapixels (120 MB), and 64 such images fit the byte caps
    max_request_megapixels: float = 64.0
    max_inflight_megapixels: float = 256.0
    # keys for /v1/* (Authorization: Bearer <key>, X-API-Key: <key> or ?key=<key>); empty and no
    # GLEAM_API_KEYS in the environment (comma-separated) = open. GET / and /healthz stay open.
    api_keys: list[str] = field(default_factory=list)
    # seconds a 503 (queue full) tells the client to wait, as Retry-After
    retry_after_s: float = 2.0
    languages: list[str] = field(default_factory=lambda: list(LANGUAGES))
    retriever: DeploymentSection = field(default_factory=DeploymentSection)
    explainer_deployment: DeploymentSection = field(
        default_factory=lambda: DeploymentSection(max_batch_size=4, batch_wait_timeout_s=0.05))
    ingress_replicas: int = 1
    # Serve's default (5) would cap the requests in flight, and so the Retriever's batches, at 5
    ingress_max_ongoing_requests: int = 128
    # HTTP requests waiting for an ingress slot beyond this many get 503 + Retry-After
    ingress_max_queued_requests: int = 256
