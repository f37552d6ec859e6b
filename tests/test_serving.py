"""Serving end to end: a real `ray start --head` cluster, the gallery index built by a job
submitted with `ray job submit`, the app started with `serve run`, real HTTP clients (httpx,
concurrent requests that must batch) and the web page driven in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import yaml

from conftest import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def launch_chromium(playwright):
    """The system Chromium, headless, with no background traffic (the page tests' browser)."""
    return playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"])

pytestmark = pytest.mark.slow
STRICT_KEY = "k3y-for-the-strict-app"


def bomb_png() -> bytes:
    """A 20,000 x 20,000 PNG (400 Mpixel) in about 50 KB: a decompression bomb."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg(seed: int, size: tuple[int, int] = (48, 48)) -> bytes:
    from gleam.data.schema import encode_jpeg

    rng = np.random.default_rng(seed)
    return encode_jpeg(rng.integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def served(tmp_path_factory, head_cluster):
    """Gallery shards + an (untrained) GLEAM-C checkpoint + the tiny GLEAM-X model, an index
    built by `ray job submit`, and `serve run` of a serve config on a free port."""
    import httpx
    import torch

    from gleam.config import ShardConfig
    from gleam.core.model import GleamEncoder, ModelConfig
    from gleam.data.shards import write_manifest, write_part
    from ray_cluster import cluster_env, tool
    from samples import make_sample

    root = tmp_path_factory.mktemp("serving")
    torch.manual_seed(0)
    checkpoint = str(root / "gleam-c")
    GleamEncoder(ModelConfig(embedding_dim=32, image_size=48, panorama_size=[48, 96])).save_pretrained(checkpoint)
    samples = [make_sample(i, modality="uav", split="test", size=48) for i in range(16)]
    samples += [make_sample(100 + i, modality="satellite", split="test", size=48) for i in range(8)]
    for sample in samples[16:]:  # these tiles say their footprint (the map draws the others 256 m wide)
        sample.metadata["tile_size_m"] = 100.0
    data = str(root / "data")
    write_manifest(data, [write_part(data, "test", lambda: samples, ShardConfig(max_samples=10))], dataset="tiny")
    explainer = quick_explainer(root, samples)
    from gleam.core.calibration import Calibrator
    calibration = str(root / "calibration.json")  # a fitted calibrator, as jobs/evaluate_core.py writes it
    with open(calibration, "w") as handle:
        json.dump(Calibrator(method="platt", weights=[4.0, 8.0, -2.0]).to_json(), handle)

    cluster = head_cluster
    serve_process = None
    try:
        index = str(root / "index")
        submit = cluster.submit([sys.executable, os.path.join(ROOT, "jobs", "build_index.py"),
                                 "--config", os.path.join(ROOT, "configs", "build-index-local.yaml"),
                                 f"checkpoint={checkpoint}", f"source={data}", "split=test", f"output={index}",
                                 "ray.cpus_per_worker=0.5", f"calibration={calibration}"])
        assert submit.returncode == 0 and "succeeded" in submit.stdout.lower(), \
            submit.stdout[-4000:] + submit.stderr[-2000:]
        port = free_port()
        config = yaml.safe_load(open(os.path.join(ROOT, "configs", "serve-local.yaml")))
        config["http_options"]["port"] = port
        application = config["applications"][0]
        application["args"] = {"index": index, "checkpoint": checkpoint, "explainer": explainer, "device": "cpu",
                               "max_new_tokens": 24, "explain_top": 2, "max_image_bytes": 200_000,
                               "retriever": {"max_batch_size": 8, "batch_wait_timeout_s": 0.2}}
        # a second app on the same cluster and proxy: API keys, small body caps, and a Retriever that
        # is easy to saturate (one request at a time, each held by a 1 s batch wait, a queue of one)
        config["applications"].append({
            "name": "strict", "import_path": application["import_path"], "route_prefix": "/strict",
            "args": {"index": index, "checkpoint": checkpoint, "explainer": "", "device": "cpu",
                     "max_image_bytes": 200_000, "max_body_bytes": 300_000, "max_batch_body_bytes": 400_000,
                     "api_keys": [STRICT_KEY, "second-key"], "retry_after_s": 3,
                     "max_request_megapixels": 2.0, "max_inflight_megapixels": 3.0,
                     "retriever": {"num_cpus": 0.1, "max_batch_size": 4, "batch_wait_timeout_s": 1.0,
                                   "max_ongoing_requests": 1, "max_queued_requests": 1,
                                   "autoscaling": {"min_replicas": 1, "max_replicas": 1}}}})
        serve_config = root / "serve.yaml"
        serve_config.write_text(yaml.safe_dump(config))
        log = open(root / "serve.log", "w")
        serve_process = subprocess.Popen([tool("serve"), "run", f"--address={cluster.address}", str(serve_config)],
                                         env=cluster_env(), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                         start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 240
        while True:
            try:
                if all(httpx.get(url + path, timeout=5).status_code == 200 for path in ("/healthz", "/strict/healthz")):
                    break
            except httpx.HTTPError:
                pass
            if serve_process.poll() is not None or time.time() > deadline:
                raise AssertionError("serve run did not come up:\n" + (root / "serve.log").read_text()[-5000:])
            time.sleep(1)
        yield {"url": url, "samples": samples, "checkpoint": checkpoint, "index": index, "root": root,
               "explainer": explainer, "address": cluster.address, "port": port}
    finally:
        cluster.shutdown_serve(serve_process)


ANSWERS = {"en": "Both images show a roundabout to the north. Verdict: match",
           "zh": "两张图的北侧都有环形交叉口。结论：匹配"}


def quick_explainer(root, samples) -> str:
    """The tiny GLEAM-X, fitted for a few steps to answer in the asked language (so the test can
    check language and verdict end to end), merged and saved like jobs/train_explain.py does. Its
    explanations end "match" while its answer to the verdict-only question is "no match", so the
    test can tell which one the endpoint reports as the verdict."""
    import numpy as np
    import torch

    from gleam import storage
    from gleam.explain.model import LoraSettings, build_tiny_vlm, collate, load_vlm, merge_and_save
    from gleam.explain.prompts import VERDICT_LINES, instruction, verdict_instruction
    from gleam.explain.train import EXPLAIN_META
    from types import SimpleNamespace

    asks = {lang: verdict_instruction(lang, "uav", np.random.default_rng(0)) for lang in ANSWERS}
    base = build_tiny_vlm(str(root / "tiny-base"), list(ANSWERS.values()) * 20 + [
        instruction(language, "uav", np.random.default_rng(0)) for language in ANSWERS] * 20
        + [VERDICT_LINES[lang][False] for lang in ANSWERS] * 20 + list(asks.values()) * 20)
    torch.manual_seed(0)
    model, processor = load_vlm(base, LoraSettings(r=8, alpha=16, dropout=0.0, train_projector=True,
                                                   modules_to_save=["embed_tokens", "lm_head"]))
    examples = [SimpleNamespace(query_image=s.query_image, satellite_image=s.satellite_image, answer=ANSWERS[lang],
                                instruction=instruction(lang, "uav", np.random.default_rng(0)))
                for s in samples[:3] for lang in ANSWERS]
    examples += [SimpleNamespace(query_image=s.query_image, satellite_image=s.satellite_image,
                                 answer=VERDICT_LINES[lang][False], instruction=asks[lang])
                 for s in samples[:3] for lang in ANSWERS]
    batch = collate(examples, processor, 56, 256)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(30):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    folder = merge_and_save(model, processor, str(root / "gleam-x"))
    storage.write_json(os.path.join(folder, EXPLAIN_META), {"gleam_image_size": 56})
    return folder


def direct_top_k(served, image_bytes: bytes, modality: str, k: int) -> list[dict]:
    """What the endpoint must answer: the same encoder and index, called in this process."""
    from gleam.data.schema import decode_image
    from gleam.retrieval.embed import Embedder
    from gleam.retrieval.index import GalleryIndex

    embedder = Embedder(served["checkpoint"], device="cpu")
    index = GalleryIndex.load(served["index"])
    return index.search(embedder.embed([decode_image(image_bytes)], modality), k)[0]


def test_unknown_verdict_prompt_is_refused_before_anything_starts():
    from gleam.serving.app import check_artifacts
    from gleam.serving.config import ServeAppConfig

    with pytest.raises(ValueError, match=r"verdict_prompt: 'both' unknown; use one of \['verdict_only', 'explanation'\]"):
        check_artifacts(ServeAppConfig(verdict_prompt="both", index="/nonexistent"))


def test_healthz_and_gallery(served):
    import httpx

    health = httpx.get(served["url"] + "/healthz", timeout=30).json()
    assert health["status"] == "ok" and health["retriever"]["gallery"] == 24
    assert health["explainer"] is not None and health["languages"] == ["en", "zh"]
    gallery = httpx.get(served["url"] + "/v1/gallery", timeout=30).json()
    assert gallery["count"] == 24 and len(gallery["lat"]) == 24
    # tile footprints from the samples' metadata (tile_size_m: a 100 m square), None where unknown
    bounds = dict(zip(gallery["ids"], gallery["bounds"]))
    for sample in served["samples"]:
        if sample.modality != "satellite":
            assert bounds[sample.location_id] is None
            continue
        lat_min, lon_min, lat_max, lon_max = bounds[sample.location_id]
        assert abs((lat_min + lat_max) / 2 - sample.latitude) < 1e-9 and abs((lon_min + lon_max) / 2 - sample.longitude) < 1e-9
        assert (lat_max - lat_min) * math.pi / 180 * 6_371_008.8 == pytest.approx(100.0, rel=1e-6)
        assert (lon_max - lon_min) * math.pi / 180 * 6_371_008.8 * math.cos(math.radians(sample.latitude)) \
            == pytest.approx(100.0, rel=1e-6)


def test_localize_finds_a_gallery_tile_and_matches_direct_search(served):
    import httpx

    sample = served["samples"][5]
    response = httpx.post(served["url"] + "/v1/localize", files={"image": ("tile.jpg", sample.satellite_image)},
                          data={"modality": "satellite", "top_k": "3"}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [c["rank"] for c in body["candidates"]] == [1, 2, 3]
    top = body["candidates"][0]
    assert top["id"] == sample.location_id and top["score"] > 0.999
    assert abs(top["lat"] - sample.latitude) < 1e-9 and abs(top["lon"] - sample.longitude) < 1e-9
    tile = httpx.get(served["url"] + f"/v1/tiles/{top['id']}", timeout=30)
    assert tile.status_code == 200 and tile.content == sample.satellite_image

    query = served["samples"][2].query_image
    body = httpx.post(served["url"] + "/v1/localize", timeout=60,
                      json={"image": base64.b64encode(query).decode(), "modality": "uav", "top_k": 5}).json()
    expected = direct_top_k(served, query, "uav", 5)
    assert [c["id"] for c in body["candidates"]] == [h["id"] for h in expected]
    np.testing.assert_allclose([c["score"] for c in body["candidates"]], [h["score"] for h in expected], atol=1e-5)


def test_localize_with_explanations_in_both_languages(served):
    import httpx

    query = served["samples"][1].query_image
    for language in ("en", "zh"):
        response = httpx.post(served["url"] + "/v1/localize", timeout=120,
                              files={"image": ("q.jpg", query)},
                              data={"modality": "uav", "top_k": "4", "explain": "true", "language": language})
        assert response.status_code == 200, response.text
        candidates = response.json()["candidates"]
        explained = [c for c in candidates if "explanation" in c]
        assert len(explained) == 2
        for candidate in explained:  # the fitted tiny model answers in the asked language, with a verdict
            assert candidate["language"] == language and candidate["explanation_verdict"] == "match", candidate
            assert candidate["explanation"].endswith(ANSWERS[language].split()[-1]), candidate
            # verify, then explain: the verdict is the answer to the verdict-only question
            assert candidate["verdict"] == "no match" and candidate["verdict_source"] == "verdict_only", candidate
            assert candidate["agrees"] is False, candidate
    tile_id = served["samples"][1].location_id
    response = httpx.post(served["url"] + "/v1/explain", timeout=120,
                          json={"query": base64.b64encode(query).decode(), "tile_id": tile_id,
                                "modality": "uav", "language": "zh"})
    assert response.status_code == 200, response.text
    assert response.json()["language"] == "zh" and "结论" in response.json()["explanation"]


def test_batch_endpoint_keeps_bad_images_as_errors(served):
    import httpx

    images = [{"id": f"q{i}", "image": base64.b64encode(served["samples"][i].query_image).decode()} for i in range(4)]
    images.insert(2, {"id": "broken", "image": base64.b64encode(b"not an image at all").decode()})
    response = httpx.post(served["url"] + "/v1/localize/batch", timeout=120,
                          json={"images": images, "modality": "uav", "top_k": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 5 and body["errors"] == 1
    assert body["results"][2]["error"]["status"] == 415 and "images[2]" in body["results"][2]["error"]["field"]
    for position, sample_index in ((0, 0), (1, 1), (3, 2), (4, 3)):
        result = body["results"][position]
        expected = direct_top_k(served, served["samples"][sample_index].query_image, "uav", 2)
        assert [c["id"] for c in result["candidates"]] == [h["id"] for h in expected]


def test_concurrent_requests_are_batched(served):
    import httpx

    before = httpx.get(served["url"] + "/healthz", timeout=30).json()["retriever"]["batching"]

    def one(i: int) -> int:
        sample = served["samples"][i % 16]
        return httpx.post(served["url"] + "/v1/localize", files={"image": ("q.jpg", sample.query_image)},
                          data={"modality": "uav", "top_k": "1"}, timeout=120).status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(one, range(32)))
    assert codes == [200] * 32
    after = httpx.get(served["url"] + "/healthz", timeout=30).json()["retriever"]["batching"]
    batches, requests = after["batches"] - before["batches"], after["requests"] - before["requests"]
    assert requests == 32
    assert after["max_batch"] > 1 and batches < requests  # concurrent requests shared forward passes


@pytest.mark.parametrize("request_kwargs, status, field", [
    ({"files": {"image": ("x.txt", b"plain text, not pixels")}}, 415, "image"),
    ({"files": {"image": ("big.jpg", b"\xff" * 300_000)}}, 413, "image"),
    ({"files": {"image": ("bomb.png", bomb_png())}}, 413, "image"),
    ({"files": {"image": ("q.jpg", jpeg(1))}, "data": {"language": "fr"}}, 422, "language"),
    ({"files": {"image": ("q.jpg", jpeg(1))}, "data": {"modality": "thermal"}}, 422, "modality"),
    ({"files": {"image": ("q.jpg", jpeg(1))}, "data": {"top_k": "0"}}, 422, "top_k"),
    ({"files": {"image": ("q.jpg", jpeg(1))}, "data": {"colour": "red"}}, 422, "colour"),
    ({"data": {"modality": "uav"}}, 415, "content-type"),  # URL-encoded: no file can ride in it
    ({"files": {"image": ("q.jpg", jpeg(1))}, "data": {"modality": "uav"}, "params": {}}, 200, None),
    ({"json": {"image": "%%% not base64"}}, 422, "image"),
    ({"content": b"raw", "headers": {"content-type": "text/plain"}}, 415, "content-type"),
])
def test_bad_requests_get_clear_4xx_and_the_server_stays_healthy(served, request_kwargs, status, field):
    import httpx

    response = httpx.post(served["url"] + "/v1/localize", timeout=60, **request_kwargs)
    assert response.status_code == status, response.text
    if status == 200:  # the control: the same kind of request, well formed
        assert response.json()["candidates"]
        return
    error = response.json()["error"]
    assert error["field"] == field and len(error["message"]) > 10
    assert httpx.get(served["url"] + "/healthz", timeout=30).status_code == 200


def test_api_bodies_as_clients_send_them(served):
    """Media types compared case-insensitively with parameters; JSON sent as a form (curl -d) or
    unlabelled gets a 415 saying what to send; no error repeats the body back."""
    import base64

    import httpx

    url = served["url"] + "/v1/localize"
    body = json.dumps({"image": base64.b64encode(served["samples"][0].query_image).decode(), "top_k": 2})
    ok = httpx.post(url, content=body, headers={"content-type": "Application/JSON; charset=UTF-8"}, timeout=60)
    assert ok.status_code == 200 and len(ok.json()["candidates"]) == 2
    for headers in ({"content-type": "application/x-www-form-urlencoded"}, {"content-type": "text/plain"}, {}):
        refused = httpx.post(url, content=body, headers=headers, timeout=60)
        assert refused.status_code == 415, (headers, refused.text)
        error = refused.json()["error"]
        assert error["field"] == "content-type" and "the body is JSON" in error["message"]
        assert "application/json" in error["message"] and "curl" in error["message"]
        assert len(refused.text) < 600 and body[20:60] not in refused.text  # the payload is not echoed
    form = httpx.post(url, data={"modality": "uav"}, timeout=60)  # a URL-encoded form: no file can ride in it
    assert form.status_code == 415 and "cannot carry an image file" in form.json()["error"]["message"]
    long_name = "x" * 5000
    unknown = httpx.post(url, json={"image": base64.b64encode(jpeg(1)).decode(), long_name: 1}, timeout=60)
    assert unknown.status_code == 422 and len(unknown.text) < 600 and "(5000 chars)" in unknown.text
    assert unknown.json()["error"]["field"] == "body"
    form = httpx.post(url, files={"image": ("q.jpg", jpeg(1))}, data={long_name: "1"}, timeout=60)
    assert form.status_code in (400, 422) and len(form.text) < 600 and form.json()["error"]
    bad = httpx.post(url, json={"image": base64.b64encode(jpeg(1)).decode(), "modality": "m" * 10_000}, timeout=60)
    assert bad.status_code == 422 and len(bad.text) < 600


def big_png(side: int) -> bytes:
    """A side x side RGB PNG of one colour: a few KB that decode to side**2 pixels."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (90, 120, 60)).save(buffer, "PNG")
    return buffer.getvalue()


def test_pixel_budgets_hold_per_request_and_in_flight(served):
    """The strict app allows 2 megapixels per request and 3 in flight: small files that decode
    large are refused from their header (413), and a second large request while one is held gets
    503 with Retry-After; the replica's budget comes back afterwards."""
    import base64

    import httpx

    headers = {"X-API-Key": STRICT_KEY}
    url = strict(served, "/v1/localize")
    huge = big_png(1500)  # 2.25 megapixels in a few KB
    assert len(huge) < 50_000
    too_big = httpx.post(url, files={"image": ("a.png", huge)}, headers=headers, timeout=60)
    assert too_big.status_code == 413 and "megapixels per request" in too_big.json()["error"]["message"]
    half = base64.b64encode(big_png(1100)).decode()  # 1.21 megapixels each: the second passes 2
    batch = httpx.post(strict(served, "/v1/localize/batch"), json={"images": [{"image": half}, {"image": half}]},
                       headers=headers, timeout=60)
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert "candidates" in results[0] and results[1]["error"]["status"] == 413
    large = big_png(1300)  # 1.69 megapixels: one fits, two at once pass the 3 in flight

    def one(delay: float):
        time.sleep(delay)
        return httpx.post(url, files={"image": ("b.png", large)}, headers=headers, timeout=60)

    with ThreadPoolExecutor(2) as pool:
        first, second = list(pool.map(one, (0.0, 0.4)))
    assert first.status_code == 200, first.text
    assert second.status_code == 503 and second.headers["retry-after"] == "3", second.text
    assert "megapixels in flight" in second.json()["error"]["message"]
    assert one(0.0).status_code == 200  # released: the budget is whole again


def test_web_page_upload_shows_top_k_on_the_map(served, tmp_path):
    if CHROMIUM is None:
        pytest.fail("Chromium is not installed: `apt-get install chromium` (./run.sh test does it as root)")
    from playwright.sync_api import sync_playwright

    sample = served["samples"][7]
    upload = tmp_path / "tile.jpg"
    upload.write_bytes(sample.satellite_image)
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page()
            page.goto(served["url"] + "/")
            page.wait_for_selector("path.gallery-points[data-count='24']", state="attached", timeout=30_000)
            page.set_input_files("#image", str(upload))
            page.select_option("#modality", "satellite")
            page.fill("#top_k", "4")
            page.uncheck("#explain")
            page.click("#submit")
            page.wait_for_selector("body[data-state=done]", timeout=60_000)
            cards = page.locator("#results .card")
            assert cards.count() == 4
            assert cards.nth(0).get_attribute("data-id") == sample.location_id
            assert page.locator("circle.hit").count() == 4
            assert "P(top-1 correct)" in page.text_content("#status")
            assert page.locator("circle.hit[data-rank='1']").get_attribute("data-id") == sample.location_id
            # the tile image of the best candidate really loaded
            page.wait_for_function(  # images load after the cards appear
                "() => { const img = document.querySelector('#results .card img');"
                " return img.complete && img.naturalWidth > 0; }", timeout=30_000)
            page.screenshot(path=str(served["root"] / "page.png"))
            # a non-image upload shows the server's message, not a crash
            bad = tmp_path / "notes.jpg"
            bad.write_bytes(b"just text")
            page.set_input_files("#image", str(bad))
            page.click("#submit")
            page.wait_for_function("document.querySelector('#error').textContent.includes('415')", timeout=30_000)
            # with explanations: the verdict (verdict-only question) and, as it differs, what the
            # explanation concludes
            page.set_input_files("#image", str(upload))
            page.select_option("#modality", "uav")
            page.check("#explain")
            page.click("#submit")
            page.wait_for_selector("body[data-state=done]", timeout=120_000)
            assert page.locator("#results .card .verdict-no").count() == 2
            assert page.locator("#results .card .disagree").first.text_content().endswith('"match"')
        finally:
            browser.close()


# --------------------------------------------------------------------------- isolation and bounds


def test_retriever_batch_isolates_failing_and_non_finite_items(served):
    """In process (no Ray): one item that cannot be embedded and one whose embedding comes out
    NaN become error entries; the items batched with them get the same top-k as alone."""
    from gleam.data.schema import decode_image
    from gleam.serving.app import RetrieverImpl

    impl = RetrieverImpl(served["index"], served["checkpoint"])
    images = [decode_image(served["samples"][i].query_image) for i in range(4)]
    alone = [impl.localize_many([(image, "uav", 3)])[0] for image in images]
    real_embed = impl.embedder.embed

    def embed_with_a_fault(batch, modality):  # the encoder misbehaves on one image (e.g. fp16 overflow)
        vectors = real_embed(batch, modality)
        for row, image in enumerate(batch):
            if image is images[1]:
                vectors[row] = np.nan
        return vectors

    impl.embedder.embed = embed_with_a_fault
    wrong_dtype = images[3].astype(np.float32)  # an item the encoder refuses (raises for its group)
    results = impl.localize_many([(images[0], "uav", 3), (images[1], "uav", 3), (wrong_dtype, "uav", 3),
                                  (images[2], "uav", 2), (images[3], "satellite", 3)])
    ids = lambda result: [c["id"] for c in result["candidates"]]  # noqa: E731
    assert ids(results[0]) == ids(alone[0])
    assert results[1]["error"]["status"] == 500 and "non-finite" in results[1]["error"]["message"]
    assert results[2]["error"]["status"] == 500 and "must be uint8" in results[2]["error"]["message"]
    assert ids(results[3]) == ids(alone[2])[:2]
    assert len(results[4]["candidates"]) == 3  # another modality, its own pass
    assert impl.stats["item_errors"] == 2


def test_explainer_batch_isolates_a_failing_pair(served):
    from gleam.serving.app import ExplainerImpl

    impl = ExplainerImpl(served["explainer"], max_new_tokens=8)
    sample = served["samples"][0]
    good = (sample.query_image, sample.satellite_image, "uav", "en")
    results = impl.explain_many([good, (b"not an image", sample.satellite_image, "uav", "en"), good])
    assert "error" in results[1] and results[1]["error"]["field"] == "explanation", results[1]
    assert results[0]["language"] == "en" and results[0]["explanation"] == results[2]["explanation"]
    assert results[0] == impl.explain_many([good])[0]  # same answer as when asked alone
    assert impl.stats["item_errors"] == 1


ISOLATION_SCRIPT = r"""
import json, sys
import numpy as np
import ray
from ray import serve
from gleam.data.schema import decode_image

ray.init(address=sys.argv[1], logging_level="ERROR")
handle = serve.get_deployment_handle("Retriever", app_name="gleam")
images = [decode_image(open(path, "rb").read()) for path in sys.argv[2:]]
items = [(images[0], "uav", 3), (np.zeros((16, 16, 3), np.float32), "uav", 3), (images[1], "uav", 3)]
responses = [handle.localize.remote(item) for item in items]  # sent together: one @serve.batch call
print("RESULTS " + json.dumps([r.result(timeout_s=60) for r in responses]))
ray.shutdown()
"""


def test_requests_batched_with_a_failing_item_are_answered(served, tmp_path):
    """Through the deployed Retriever's @serve.batch: the bad item's caller gets its error, the
    callers batched with it their top-k (the batch counter shows they shared one call)."""
    import httpx

    from ray_cluster import cluster_env

    paths = []
    for i in (0, 1):
        paths.append(str(tmp_path / f"q{i}.jpg"))
        open(paths[-1], "wb").write(served["samples"][i].query_image)
    before = httpx.get(served["url"] + "/healthz", timeout=30).json()["retriever"]["batching"]
    run = subprocess.run([sys.executable, "-c", ISOLATION_SCRIPT, served["address"], *paths], env=cluster_env(),
                         capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(run.stdout.split("RESULTS ", 1)[1].splitlines()[0])
    assert results[1]["error"]["status"] == 500 and "uint8" in results[1]["error"]["message"]
    for position, sample in ((0, 0), (2, 1)):
        expected = direct_top_k(served, served["samples"][sample].query_image, "uav", 3)
        assert [c["id"] for c in results[position]["candidates"]] == [h["id"] for h in expected]
    after = httpx.get(served["url"] + "/healthz", timeout=30).json()["retriever"]["batching"]
    assert after["requests"] - before["requests"] == 3 and after["item_errors"] - before["item_errors"] == 1
    assert after["batches"] - before["batches"] < 3  # the three calls did not each run alone


def strict(served, path: str) -> str:
    return served["url"] + "/strict" + path


def test_api_keys_guard_v1_and_leave_page_and_health_open(served):
    import httpx

    assert httpx.get(strict(served, "/healthz"), timeout=30).status_code == 200
    assert httpx.get(strict(served, "/"), timeout=30).status_code == 200
    for headers, params in (({}, {}), ({"Authorization": "Bearer wrong"}, {}), ({"X-API-Key": STRICT_KEY + "x"}, {}),
                            ({}, {"key": ""})):
        response = httpx.get(strict(served, "/v1/gallery"), headers=headers, params=params, timeout=30)
        assert response.status_code == 401, (headers, params, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["error"]["field"] == "api_key"
    posted = httpx.post(strict(served, "/v1/localize"), files={"image": ("q.jpg", jpeg(3))}, timeout=30)
    assert posted.status_code == 401
    for headers, params in (({"Authorization": f"Bearer {STRICT_KEY}"}, {}), ({"X-API-Key": "second-key"}, {}),
                            ({}, {"key": STRICT_KEY})):
        response = httpx.get(strict(served, "/v1/gallery"), headers=headers, params=params, timeout=30)
        assert response.status_code == 200 and response.json()["count"] == 24
    # the main app has no keys configured: open
    assert httpx.get(served["url"] + "/v1/gallery", timeout=30).status_code == 200


def raw_http(port: int, head: str, body_chunks=(), read_timeout: float = 20.0, pace_s: float = 0.0) -> tuple[str, int]:
    """Send a request head and then body chunks on a raw socket, stopping as soon as the server
    answers; -> (the response text, body bytes sent before the answer came)."""
    import select
    import socket

    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(head.encode())
        answer = b""
        for chunk in body_chunks:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            time.sleep(pace_s)
        def receive() -> bytes:
            # A server that closes with body bytes of ours still unread sends RST, not FIN
            # (RFC 1122, 4.2.2.13): after the response it has sent, that is the end of the stream.
            try:
                return sock.recv(65536)
            except ConnectionResetError:
                return b""

        deadline = time.time() + read_timeout
        while time.time() < deadline and b"\r\n\r\n" not in answer:
            if select.select([sock], [], [], 1)[0]:
                data = receive()
                if not data:
                    break
                answer += data
        while select.select([sock], [], [], 0.2)[0]:
            data = receive()
            if not data:
                break
            answer += data
    return answer.decode("latin-1"), sent


def test_oversized_bodies_get_413_before_they_are_read(served):
    """A 40 MiB Content-Length is refused without sending the body; a chunked body without a
    length is refused once it passes the cap, while the client is still streaming."""
    import httpx

    key = f"Authorization: Bearer {STRICT_KEY}\r\n"
    started = time.perf_counter()
    answer, _ = raw_http(served["port"], f"POST /strict/v1/localize HTTP/1.1\r\nHost: x\r\n{key}"
                                         f"Content-Type: application/json\r\nContent-Length: {40 * 2**20}\r\n\r\n")
    assert answer.startswith("HTTP/1.1 413"), answer[:300]
    assert '"field": "body"' in answer and "300000 bytes" in answer and time.perf_counter() - started < 10

    chunk = b"x" * 65536  # 64 KiB every 5 ms: 16 MiB would take 1.3 s
    framed = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(256))
    answer, sent = raw_http(served["port"], f"POST /strict/v1/localize HTTP/1.1\r\nHost: x\r\n{key}"
                                            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                            framed, pace_s=0.005)
    assert answer.startswith("HTTP/1.1 413"), answer[:300]
    read = int(re.search(r"refused after reading (\d+) bytes", answer).group(1))
    assert 300_000 < read <= 2 * 300_000, read  # the ingress stopped a chunk or so past the cap
    assert sent < 8 * 2**20, sent  # answered while the client was still streaming

    # the batch endpoint has its own, larger cap; an ordinary JSON body over the single cap
    big = {"image": "A" * 350_000}
    response = httpx.post(strict(served, "/v1/localize"), json=big, headers={"X-API-Key": STRICT_KEY}, timeout=30)
    assert response.status_code == 413 and response.json()["error"]["field"] == "body"
    response = httpx.post(strict(served, "/v1/localize/batch"), json={"images": [big]},
                          headers={"X-API-Key": STRICT_KEY}, timeout=30)
    assert response.status_code == 200 and response.json()["results"][0]["error"]["status"] == 413  # image cap
    assert httpx.get(strict(served, "/healthz"), timeout=30).status_code == 200


def test_saturated_retriever_answers_503_with_retry_after(served):
    """One request at a time, a queue of one: a burst of 8 gets some answers and, at once, 503
    with Retry-After (retry_after_s=3) for the rest, instead of waiting without bound."""
    import httpx

    def one(i: int):
        started = time.perf_counter()
        response = httpx.post(strict(served, "/v1/localize"), files={"image": ("q.jpg", served["samples"][i].query_image)},
                              data={"top_k": "2"}, headers={"X-API-Key": STRICT_KEY}, timeout=60)
        return response, time.perf_counter() - started

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(8)))
    codes = sorted(r.status_code for r, _ in answers)
    assert set(codes) == {200, 503} and codes.count(200) >= 1 and codes.count(503) >= 4, codes
    for response, seconds in answers:
        if response.status_code == 503:
            assert response.headers["retry-after"] == "3" and seconds < 1.0, (response.headers, seconds)
        else:
            assert len(response.json()["candidates"]) == 2
    # after the burst the service answers again
    ok = httpx.post(strict(served, "/v1/localize"), files={"image": ("q.jpg", served["samples"][0].query_image)},
                    headers={"X-API-Key": STRICT_KEY}, timeout=60)
    assert ok.status_code == 200


def test_web_page_sends_the_api_key(served, tmp_path):
    """The page under a route prefix with keys on: ?key= is kept (and dropped from the address),
    the gallery, the upload and the tile images all carry it; without a key the page says 401."""
    if CHROMIUM is None:
        pytest.fail("Chromium is not installed: `apt-get install chromium` (./run.sh test does it as root)")
    from playwright.sync_api import sync_playwright

    sample = served["samples"][7]
    upload = tmp_path / "tile.jpg"
    upload.write_bytes(sample.satellite_image)
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_context().new_page()
            page.goto(strict(served, "/"))
            page.wait_for_function("document.querySelector('#error').textContent.includes('401')", timeout=30_000)
            page = browser.new_context().new_page()
            page.goto(strict(served, f"/?key={STRICT_KEY}"))
            page.wait_for_selector("path.gallery-points[data-count='24']", state="attached", timeout=30_000)
            assert "key=" not in page.url and page.input_value("#api_key") == STRICT_KEY
            page.set_input_files("#image", str(upload))
            page.select_option("#modality", "satellite")
            page.uncheck("#explain")
            page.click("#submit")
            page.wait_for_selector("body[data-state=done]", timeout=60_000)
            assert page.locator("#results .card").first.get_attribute("data-id") == sample.location_id
            page.wait_for_function(
                "() => { const img = document.querySelector('#results .card img');"
                " return img.complete && img.naturalWidth > 0; }", timeout=30_000)
        finally:
            browser.close()


def test_confidence_and_several_photos_of_one_place(served):
    """/v1/localize returns the stored calibrator's P(top-1 correct); /v1/localize/place fuses
    several photos (mean embedding, or the best score of any photo) into one ranking."""
    import httpx

    from gleam.data.schema import decode_image
    from gleam.retrieval.embed import Embedder
    from gleam.retrieval.index import GalleryIndex

    photos = [served["samples"][i].query_image for i in (2, 3, 9)]
    body = httpx.post(served["url"] + "/v1/localize", timeout=60,
                      json={"image": base64.b64encode(photos[0]).decode(), "modality": "uav", "top_k": 1}).json()
    top2 = direct_top_k(served, photos[0], "uav", 2)
    s1, s2 = top2[0]["score"], top2[1]["score"]
    assert body["confidence"] == pytest.approx(1 / (1 + np.exp(-(4 * s1 + 8 * (s1 - s2) - 2))), abs=1e-4)
    vectors = Embedder(served["checkpoint"], device="cpu").embed([decode_image(p) for p in photos], "uav")
    index = GalleryIndex.load(served["index"])
    encoded = [base64.b64encode(p).decode() for p in photos]
    mean = httpx.post(served["url"] + "/v1/localize/place", timeout=60,
                      json={"images": encoded, "modality": "uav", "top_k": 4}).json()
    fused = vectors.sum(0, keepdims=True)
    assert mean["fusion"] == "mean" and mean["images"] == 3
    assert [c["id"] for c in mean["candidates"]] == [h["id"] for h in index.search(fused / np.linalg.norm(fused), 4)[0]]
    best = httpx.post(served["url"] + "/v1/localize/place", timeout=60,
                      json={"images": encoded, "modality": "uav", "top_k": 4, "fusion": "max"}).json()
    scores = (vectors @ np.stack([index.index.reconstruct(i) for i in range(index.count)]).T).max(0)
    assert [c["id"] for c in best["candidates"]] == [index.ids[i] for i in np.argsort(-scores, kind="stable")[:4]]
    np.testing.assert_allclose([c["score"] for c in best["candidates"]], np.sort(scores)[::-1][:4], atol=1e-5)
    refused = httpx.post(served["url"] + "/v1/localize/place", timeout=60, json={"images": encoded, "fusion": "median"})
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "fusion"


MERCATOR_R = 6378137.0  # EPSG:3857 sphere radius: the page's map plane, recomputed here independently


def mercator(lat: float, lon: float) -> tuple[float, float]:
    """Web Mercator metres, y pointing south (as the page's SVG)."""
    return MERCATOR_R * math.radians(lon), -MERCATOR_R * math.log(math.tan(math.pi / 4 + math.radians(lat) / 2))


def gps_jpeg(lat: float, lon: float) -> bytes:
    """A small JPEG whose EXIF GPS block says (lat, lon) (north / east)."""
    from PIL import Image

    def dms(value: float) -> tuple[float, float, float]:
        minutes = (value % 1) * 60
        return float(int(value)), float(int(minutes)), round((minutes % 1) * 60, 4)

    exif = Image.Exif()
    exif.get_ifd(0x8825).update({1: "N", 2: dms(lat), 3: "E", 4: dms(lon)})
    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), (90, 120, 150)).save(buffer, "JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def test_web_page_map_draws_tiles_where_they_are_and_zooms(served, tmp_path):
    """The map: the gallery's own tiles at their Web Mercator footprints (checked against an
    independent projection and on screen), wheel / button / drag zoom and pan, regions, the
    top-k and the query's place from the file name and from EXIF GPS."""
    if CHROMIUM is None:
        pytest.fail("Chromium is not installed: `apt-get install chromium` (./run.sh test does it as root)")
    from playwright.sync_api import sync_playwright

    samples = {s.location_id: s for s in served["samples"]}
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(served["url"] + "/")
            page.wait_for_selector("image.tile", state="attached", timeout=30_000)
            # two regions (the 16 UAV places and the 8 satellite-only tiles, 11 km apart); the
            # view starts on the larger one, whose 16 tiles are all drawn
            regions = page.locator("#map-region option").all_text_contents()
            assert len(regions) == 4 and regions[-1] == "whole gallery", regions
            assert "16 tiles" in regions[1] + regions[2] and "8 tiles" in regions[1] + regions[2], regions

            def tiles() -> dict[str, dict]:
                return {t["id"]: t for t in page.evaluate(
                    """() => [...document.querySelectorAll('#map image.tile')].map(i => {
                         const r = i.getBoundingClientRect();
                         return {id: i.dataset.id, href: i.getAttribute('href'), x: +i.getAttribute('x'),
                                 y: +i.getAttribute('y'), w: +i.getAttribute('width'), h: +i.getAttribute('height'),
                                 sx: r.x, sy: r.y, sw: r.width, sh: r.height}; })""")}

            shown = tiles()
            assert sorted(shown) == sorted(f"loc{i:05d}" for i in range(16))
            # every tile where its coordinates say: centre differences = Web Mercator differences
            # (an equal-aspect plane), sizes = ground footprint (256 m default here) / cos(lat)
            first = shown["loc00000"]
            for tile_id, tile in shown.items():
                sample = samples[tile_id]
                assert tile["href"].endswith("v1/tiles/" + tile_id)
                expected = np.subtract(mercator(sample.latitude, sample.longitude),
                                       mercator(samples["loc00000"].latitude, samples["loc00000"].longitude))
                centre = (tile["x"] + tile["w"] / 2 - first["x"] - first["w"] / 2,
                          tile["y"] + tile["h"] / 2 - first["y"] - first["h"] / 2)
                np.testing.assert_allclose(centre, expected, atol=0.05)
                assert tile["w"] == pytest.approx(256 / math.cos(math.radians(sample.latitude)), rel=1e-9)
                assert tile["h"] == pytest.approx(tile["w"], rel=1e-9)
                # on screen: square, and a place further east / north is further right / up
                assert tile["sw"] == pytest.approx(tile["sh"], abs=0.5) and tile["sw"] > 20
                assert (tile["sx"] - first["sx"]) * (sample.longitude - samples["loc00000"].longitude) >= 0
                assert (tile["sy"] - first["sy"]) * (sample.latitude - samples["loc00000"].latitude) <= 0
            # the page's own exported projection agrees with the drawn tiles
            centre = page.evaluate("gleamMap.project(%r, %r)" % (samples["loc00007"].latitude, samples["loc00007"].longitude))
            assert centre == pytest.approx([shown["loc00007"]["x"] + shown["loc00007"]["w"] / 2,
                                            shown["loc00007"]["y"] + shown["loc00007"]["h"] / 2], abs=1e-6)

            def view() -> list[float]:
                return [float(v) for v in page.get_attribute("#map", "viewBox").split()]

            def under(px: float, py: float) -> tuple[float, float]:  # user point under a screen point
                box, (x, y, w, h) = page.locator("#map").bounding_box(), view()
                return x + (px - box["x"]) / box["width"] * w, y + (py - box["y"]) / box["height"] * h

            # wheel: zooms in around the cursor (the point under it stays), tiles grow on screen
            before = view()
            box = page.locator("#map").bounding_box()
            cx, cy = box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.6
            anchor = under(cx, cy)
            page.mouse.move(cx, cy)
            page.mouse.wheel(0, -400)
            page.wait_for_function(f"+document.querySelector('#map').getAttribute('viewBox').split(' ')[2] < {before[2] * 0.8}")
            page.wait_for_timeout(100)  # the next animation frame redraws the tiles
            assert view()[2] < before[2] * 0.8 and under(cx, cy) == pytest.approx(anchor, abs=1e-3 * before[2])
            zoomed = tiles()
            assert zoomed and all(zoomed[i]["sw"] > 1.5 * shown[i]["sw"] for i in zoomed)  # e^0.8 = 2.2 times
            # buttons: − doubles the viewBox, + halves it
            width = view()[2]
            page.click("#map-zoom-out")
            assert view()[2] == pytest.approx(2 * width, rel=1e-6)
            page.click("#map-zoom-in")
            assert view()[2] == pytest.approx(width, rel=1e-6)
            # drag: the map follows the mouse (a tile moves by the drag on screen)
            page.wait_for_timeout(100)
            tile_id, start = min(tiles().items(), key=lambda item: math.hypot(  # the one nearest the centre
                item[1]["sx"] + item[1]["sw"] / 2 - box["x"] - box["width"] / 2,
                item[1]["sy"] + item[1]["sh"] / 2 - box["y"] - box["height"] / 2))
            page.mouse.move(cx, cy)
            page.mouse.down()
            page.mouse.move(cx + 120, cy + 40, steps=4)
            page.mouse.up()
            page.wait_for_timeout(100)
            moved = tiles()[tile_id]
            assert (moved["sx"] - start["sx"], moved["sy"] - start["sy"]) == pytest.approx((120, 40), abs=1.0)
            # the region menu goes to the other region and draws its tiles (100 m footprints)
            other = next(i for i, text in enumerate(regions) if "8 tiles" in text)
            page.select_option("#map-region", str(other - 1))
            page.wait_for_selector("#map image.tile[data-id='loc00100']", state="attached", timeout=10_000)
            import httpx

            bounds = dict(zip(*(lambda g: (g["ids"], g["bounds"]))(httpx.get(served["url"] + "/v1/gallery").json())))
            satellite, (lat_min, lon_min, lat_max, lon_max) = tiles()["loc00103"], bounds["loc00103"]
            # drawn over its stored footprint: the Mercator images of its corners
            np.testing.assert_allclose([satellite["w"], satellite["h"]], np.subtract(
                mercator(lat_min, lon_max), mercator(lat_max, lon_min)), rtol=1e-9)
            assert satellite["h"] == pytest.approx(satellite["w"], rel=1e-6)  # 100 m x 100 m

            # the query's place: from EXIF GPS, then from a file name naming a gallery tile
            photo = tmp_path / "photo.jpg"
            photo.write_bytes(gps_jpeg(47.0051, 8.4952))
            page.set_input_files("#image", str(photo))
            page.wait_for_function("document.querySelector('#place-note').textContent.includes('EXIF')", timeout=10_000)
            assert float(page.input_value("#place-lat")) == pytest.approx(47.0051, abs=1e-6)
            assert float(page.input_value("#place-lon")) == pytest.approx(8.4952, abs=1e-6)
            query = samples["loc00003"]
            named = tmp_path / "loc00003_uav.jpg"
            named.write_bytes(query.query_image)
            page.set_input_files("#image", str(named))
            page.wait_for_function("document.querySelector('#place-note').textContent.includes('loc00003')",
                                   timeout=10_000)
            page.select_option("#modality", "uav")
            page.fill("#top_k", "3")
            page.uncheck("#explain")
            page.click("#submit")
            page.wait_for_selector("body[data-state=done]", timeout=60_000)
            page.wait_for_timeout(100)
            ranks = page.evaluate("[...document.querySelectorAll('#map circle.hit')].map(c => [c.dataset.rank, c.dataset.id])")
            ids = page.evaluate("[...document.querySelectorAll('#results .card')].map(c => c.dataset.id)")
            assert sorted(ranks) == [[str(i + 1), tile] for i, tile in enumerate(ids)] and len(ids) == 3
            # the view is on the best candidate's region, the query's place marked where it is
            top = samples[ids[0]]
            tx, ty = page.evaluate("gleamMap.project(%r, %r)" % (top.latitude, top.longitude))
            x, y, w, h = view()
            assert x < tx < x + w and y < ty < y + h
            mark = page.get_attribute("#map .query-mark", "transform")
            px, py = (float(v) for v in mark.split("translate(")[1].split(")")[0].split())
            assert (px, py) == pytest.approx(page.evaluate("gleamMap.project(%r, %r)" % (query.latitude, query.longitude)),
                                             abs=1e-6)
            assert page.locator("#map line.query-link").count() == 1
            assert "top-1 is" in page.text_content("#place-note")
            assert errors == []
            page.screenshot(path=str(served["root"] / "map.png"))
        finally:
            browser.close()
