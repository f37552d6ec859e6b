"""Screenshot of the served web page after one query, in headless Chromium (the README's picture).

    # after `./run.sh serve` (page at http://127.0.0.1:8000/), a test-split street map of the
    # demo's shards, written as <location_id>_streetmap.jpg so the page marks the query's place:
    python docs/screenshot_page.py --url http://127.0.0.1:8000 --from-shards data/synth --out docs/serving_page.png
    # or any image (its EXIF GPS, or a gallery id in its file name, marks the query's place):
    python docs/screenshot_page.py --url http://127.0.0.1:8000 --image q.jpg --modality streetmap

Uploads the image through the page's form (view, top-k, explanations as asked), waits for the
answer and the map's tiles, and writes a PNG of the viewport (``--full-page`` for all of it).
Needs the system Chromium (`apt-get install chromium`) and the `playwright` Python package.
Exit status 1, with the page's message, when the query fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile


def query_from_shards(source: str, split: str, modality: str, position: int, folder: str) -> str:
    """The ``position``-th ``modality`` query of ``split`` in a shard dataset, written to
    ``folder/<location_id>_<modality>.jpg``; returns the path."""
    from gleam.data.shards import iter_samples, shard_urls

    seen = 0
    for sample in iter_samples(shard_urls(source, split=split, modalities=[modality])):
        if sample.modality != modality or sample.split != split or sample.query_image is None:
            continue
        if seen == position:
            path = os.path.join(folder, f"{sample.location_id}_{modality}.jpg")
            with open(path, "wb") as handle:
                handle.write(sample.query_image)
            return path
        seen += 1
    raise SystemExit(f"--from-shards {source}: only {seen} {modality} queries in split {split!r} "
                     f"(asked for --sample {position})")


def screenshot(url: str, image: str, out: str, *, modality: str = "streetmap", top_k: int = 5,
               explain: bool = True, language: str = "en", width: int = 1280, height: int = 900,
               full_page: bool = False, timeout_s: float = 300.0) -> None:
    """Upload ``image`` on the page at ``url`` and write a PNG to ``out``."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("Chromium is not installed: `apt-get install chromium`")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url.rstrip("/") + "/")
            page.wait_for_selector("path.gallery-points[data-count]", state="attached", timeout=60_000)
            page.set_input_files("#image", image)
            page.select_option("#modality", modality)
            page.fill("#top_k", str(top_k))
            page.select_option("#language", language)
            page.set_checked("#explain", explain)
            page.click("#submit")
            page.wait_for_function("document.body.dataset.state === 'done' || "
                                   "document.querySelector('#error').textContent !== ''", timeout=timeout_s * 1000)
            error = page.text_content("#error")
            if error:
                raise SystemExit(f"the query failed: {error}")
            page.wait_for_load_state("networkidle")  # the map's tiles and the cards' images
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            page.screenshot(path=out, full_page=full_page)
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="base URL of the served page")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", help="query image to upload")
    what.add_argument("--from-shards", metavar="DATASET", help="take a query from this shard dataset (folder or s3://)")
    parser.add_argument("--split", default="test", help="with --from-shards: the split (default test)")
    parser.add_argument("--sample", type=int, default=0, help="with --from-shards: which query of the split (0 = first)")
    parser.add_argument("--modality", default="streetmap", help="the query's view (default streetmap)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--no-explain", dest="explain", action="store_false", help="retrieval only")
    parser.add_argument("--language", default="en")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--full-page", action="store_true")
    parser.add_argument("--out", default="docs/serving_page.png")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        image = args.image or query_from_shards(args.from_shards, args.split, args.modality, args.sample, folder)
        if not os.path.isfile(image):
            raise SystemExit(f"--image {image}: no such file")
        screenshot(args.url, image, args.out, modality=args.modality, top_k=args.top_k, explain=args.explain,
                   language=args.language, width=args.width, height=args.height, full_page=args.full_page)
    print(f"wrote {args.out} ({os.path.basename(image)} as {args.modality})")


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "platform"))
    main()
