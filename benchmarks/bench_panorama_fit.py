"""Panorama shape: stretching a CVUSA-shaped panorama to a 2:1 input vs keeping its aspect
(``gleam.data.transforms.fit_panorama``: full width, centred, padded), measured on synthetic
panoramas rendered here (no downloads, no model).

Per location of a synthetic world, two north-aligned 2:1 equirectangular panoramas are rendered
(views 0 and 1: different light and haze).  The gallery is view 0 as VIGOR stores it (2:1, all
elevations); the query is view 1 as CVUSA stores it: the horizon band of aspect 5.5:1 (1232x224
in the release).  Both are prepared for a 2:1 model input (``--input`` rows x 2 rows) with

- ``stretch``: the old plain resize (the band fills the input: x2.75 vertically);
- ``fit``: ``fit_panorama`` (the band keeps its aspect, padded above and below).

Reported: the vertical scale of the query relative to the gallery (1.0 = same geometry), the
mean absolute pixel difference between a location's prepared query and prepared gallery image
over the query's content rows, and a model-free retrieval check: R@1 of the query among all
gallery panoramas with a raw-pixel descriptor (gray, 16x32 thumbnail, standardised, cosine).

    python benchmarks/bench_panorama_fit.py          # writes benchmarks/results/panorama_fit.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "panorama_fit.json"
CVUSA_ASPECT = 1232 / 224


def descriptor(image: np.ndarray) -> np.ndarray:
    from gleam.data.transforms import resize

    gray = resize(image, (16, 32)).astype(np.float64).mean(axis=2).ravel()
    gray -= gray.mean()
    return gray / (np.linalg.norm(gray) + 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--locations", type=int, default=40)
    parser.add_argument("--width", type=int, default=256, help="rendered panorama width (height = width / 2)")
    parser.add_argument("--input", type=int, default=64, help="model input height (width = 2 x height)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    from gleam.data.synth import generate_split_world
    from gleam.data.transforms import fit_panorama, resize

    started = time.perf_counter()
    world = generate_split_world(7, "test")
    size = (args.input, 2 * args.input)
    band_rows = round(args.width / CVUSA_ASPECT)
    top = (args.width // 2 - band_rows) // 2
    gallery, queries, references = [], [], []
    for location in world.locations(args.locations):
        full, _ = world.render_query(location, "panorama", 0, size=args.width)
        other, _ = world.render_query(location, "panorama", 1, size=args.width)
        gallery.append(resize(full, size))
        queries.append(other[top:top + band_rows])  # the CVUSA-shaped horizon band
        references.append(resize(other, size))  # the same view as VIGOR would store it (2:1)
    rendered = time.perf_counter() - started

    scaled_rows = round(band_rows * size[1] / args.width)  # fit: rows the band occupies
    content = slice((size[0] - scaled_rows) // 2, (size[0] - scaled_rows) // 2 + scaled_rows)
    gallery_descriptors = np.stack([descriptor(g) for g in gallery])
    results = {}
    for name, prepare, rows in (("stretch", lambda q: resize(q, size), slice(0, size[0])),
                                ("fit", lambda q: fit_panorama(q, size), content)):
        prepared = [prepare(q) for q in queries]
        vertical = (prepared[0][rows].shape[0] / band_rows) / (size[1] / args.width)
        mae = float(np.mean([np.abs(p[rows].astype(np.float64) - g[content if name == "fit" else rows]).mean()
                             for p, g in zip(prepared, gallery)]))
        scores = np.stack([descriptor(p) for p in prepared]) @ gallery_descriptors.T
        recall = float(np.mean(scores.argmax(axis=1) == np.arange(len(prepared))))
        results[name] = {"vertical_scale_vs_gallery": round(vertical, 3), "mae_vs_gallery_rows": round(mae, 2),
                         "r_at_1": round(recall, 4)}
    reference_scores = np.stack([descriptor(r) for r in references]) @ gallery_descriptors.T
    results["reference_full_2to1_query"] = {
        "mae_vs_gallery_rows": round(float(np.mean([np.abs(r[content].astype(np.float64) - g[content]).mean()
                                                    for r, g in zip(references, gallery)])), 2),
        "r_at_1": round(float(np.mean(reference_scores.argmax(axis=1) == np.arange(len(references)))), 4)}
    report = {
        "benchmark": "panorama_fit",
        "setup": {"locations": args.locations, "rendered": f"{args.width}x{args.width // 2} (2:1)",
                  "query_band": f"{args.width}x{band_rows} ({args.width / band_rows:.2f}:1, CVUSA 5.5:1)",
                  "model_input": f"{size[1]}x{size[0]}", "descriptor": "gray 16x32 thumbnail, cosine"},
        "results": results,
        "chance_r_at_1": round(1 / args.locations, 4),
        "notes": ("mae_vs_gallery_rows: mean |query - gallery| over the rows holding query content (stretch: all; "
                  "fit and reference: the horizon band); reference: the whole 2:1 panorama of the query view, "
                  "the best a band can be expected to do"),
        "seconds_rendering": round(rendered, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
