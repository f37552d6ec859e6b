"""CVUSA (Workman et al. 2015; the Zhai et al. 2017 subset): panoramas and Bing tiles.

Layout (the "19zl" subset every paper uses)::

    <root>/splits/train-19zl.csv      bingmap/19/<id>.jpg,streetview/panos/<id>.jpg,<annotation>.png
    <root>/splits/val-19zl.csv
    <root>/bingmap/19/<id>.jpg
    <root>/streetview/panos/<id>.jpg

The validation list is the evaluation set of the literature: it is written to split ``test`` by
default (``cvusa.val_split: val`` keeps it as ``val``).  The subset has no coordinates; an
optional location CSV (``cvusa.locations``: rows ``lat,lon,sat path,pano path``, e.g. the full
release's ``all.csv``) supplies them, matched by panorama path, then by id.  Without one,
latitude/longitude are 0 and ``metadata.coordinates_known`` is false.  Panoramas are
north-aligned (heading 0) and 1232x224 (5.5:1; another aspect is warned about in the report,
``aspect_ratio``); their shape is kept in training and serving (``gleam.data.transforms.fit_panorama``),
not stretched to ``model.panorama_size``.  Content de-duplication is on by default: a pair whose panorama and
tile bytes equal an earlier pair's is reported and written once.

Evaluation protocol (recorded in the manifest): the validation panoramas against the validation
tiles, 8,884 pairs on the full release, R@top1% with k = floor(G / 100) (88), as Sample4Geo.
"""

from __future__ import annotations

import csv
import io
import posixpath
from dataclasses import dataclass
from typing import Literal

from gleam import storage
from gleam.data.benchmark import EvaluationProtocol
from gleam.data.ingest.common import (BAD_COORDINATES, BAD_LINE, MISMATCHED_IDS, MISSING_FILE, FileTree, IngestPlan,
                                      PairRecord, Skip, coordinate_problem, make_key, require_file, stem)

NAME = "cvusa"
PANORAMA_ASPECT = 1232 / 224  # 5.5:1, the release's panoramas (about 65 degrees of elevation)
SOURCE = "cvusa"

EXPECTED = """
<root>/
  splits/train-19zl.csv     lines: bingmap/19/<id>.jpg,streetview/panos/<id>.jpg,<annotation>.png
  splits/val-19zl.csv
  bingmap/19/<id>.jpg
  streetview/panos/<id>.jpg
"""


@dataclass
class CvusaOptions:
    """Options of the CVUSA converter (``cvusa.*`` in the ingest config)."""

    train_csv: str = "splits/train-19zl.csv"
    val_csv: str = "splits/val-19zl.csv"
    val_split: Literal["val", "test"] = "test"  # the 19zl validation list is the papers' test set
    locations: str | None = None  # CSV of lat,lon,sat path,pano path (relative to root, absolute or s3://)


def _normal(path: str) -> str:
    """A split CSV path as a clean relative POSIX path ("./a//b.jpg" -> "a/b.jpg")."""
    path = path.strip()
    while path.startswith("./"):
        path = path[2:]
    return posixpath.normpath(path) if path else ""


def read_locations(url: str) -> tuple[dict[str, tuple[float, float]], dict[str, tuple[float, float]], list[Skip]]:
    """Location CSV -> (by panorama path, by panorama id, bad rows)."""
    by_path: dict[str, tuple[float, float]] = {}
    by_id: dict[str, tuple[float, float]] = {}
    problems = []
    for number, row in enumerate(csv.reader(io.StringIO(storage.read_text(url))), 1):
        if not row or not "".join(row).strip():
            continue
        try:
            latitude, longitude = float(row[0]), float(row[1])
            pano = _normal(row[3]) if len(row) > 3 else ""
        except (ValueError, IndexError) as error:
            if number > 1:  # the first row may be a header
                problems.append(Skip(BAD_LINE, f"{url}:{number}", f"not lat,lon,sat,pano ({error})"))
            continue
        if not pano:
            problems.append(Skip(BAD_LINE, f"{url}:{number}", "no panorama path"))
            continue
        by_path[pano] = by_id[stem(pano)] = (latitude, longitude)
    return by_path, by_id, problems


def _read_split(root: str, relative: str, split: str, plan: IngestPlan) -> list[tuple[str, str, str, str]]:
    """(split, satellite path, panorama path, annotation path) per good line of a split CSV."""
    url = require_file(NAME, root, relative, EXPECTED,
                       "The 19zl split CSVs come with the CVUSA subset (splits/train-19zl.csv, val-19zl.csv).")
    rows = []
    for number, row in enumerate(csv.reader(io.StringIO(storage.read_text(url))), 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            plan.skipped.append(Skip(BAD_LINE, f"{relative}:{number}", f"expected sat,pano[,annotation], got {row}"))
            continue
        rows.append((split, _normal(row[0]), _normal(row[1]), _normal(row[2]) if len(row) > 2 else ""))
    return rows


def plan_cvusa(root: str, options: CvusaOptions) -> IngestPlan:
    """Validate the layout under ``root`` and plan every sample (see the module docstring)."""
    plan = IngestPlan(dataset=NAME, source=SOURCE, root=root, records=[], dedupe=True)
    rows = (_read_split(root, options.train_csv, "train", plan)
            + _read_split(root, options.val_csv, options.val_split, plan))
    folders = sorted({posixpath.dirname(p) for _, sat, pano, _ in rows for p in (sat, pano)})
    tree = FileTree.scan(root, folders)
    for folder in folders:
        tree.require_dir(NAME, folder, EXPECTED, "The split CSVs name files in this folder.")
    by_path: dict[str, tuple[float, float]] = {}
    by_id: dict[str, tuple[float, float]] = {}
    if options.locations:
        url = require_file(NAME, root, options.locations, "a CSV with rows lat,lon,sat path,pano path")
        by_path, by_id, problems = read_locations(url)
        plan.skipped.extend(problems)
    unlocated = 0
    for split, sat, pano, annotation in rows:
        missing = [p for p in (pano, sat) if not tree.has_file(p)]
        if missing:
            plan.skipped.extend(Skip(MISSING_FILE, p, f"named in the {split} split CSV") for p in missing)
            continue
        if stem(sat) != stem(pano):
            plan.skipped.append(Skip(MISMATCHED_IDS, pano, f"paired with {sat}: ids {stem(pano)} != {stem(sat)}"))
            continue
        location = by_path.get(pano) or by_id.get(stem(pano))
        if options.locations and location is None:
            unlocated += 1
        latitude, longitude = location or (0.0, 0.0)
        problem = coordinate_problem(latitude, longitude)
        if problem:
            plan.skipped.append(Skip(BAD_COORDINATES, pano, problem))
            continue
        plan.records.append(PairRecord(
            key=make_key(split, stem(pano)), location_id=make_key(NAME, stem(pano)), split=split,
            modality="panorama", satellite=tree.url(sat), query=tree.url(pano), latitude=latitude,
            longitude=longitude, heading=0.0, query_aspect=PANORAMA_ASPECT,
            metadata={"id": stem(pano), "query_file": pano, "satellite_file": sat, "annotation_file": annotation,
                      "coordinates_known": location is not None}))
    if unlocated:
        plan.warnings.append(Skip("no_coordinates", options.locations or "",
                                  f"{unlocated} pairs are not in the location CSV: latitude/longitude 0"))
    plan.evaluation[options.val_split] = EvaluationProtocol(
        benchmark="cvusa", split=options.val_split, query_splits=[options.val_split],
        gallery_splits=[options.val_split], reverse_gallery_splits=[options.val_split],
        reverse_queries="query_locations", top1_percent_rule="floor",
        official={"panorama->satellite": {"queries": 8884, "gallery": 8884}},
        note=f"{options.val_csv} pairs: each panorama against the tiles of all of them").to_json()
    plan.flags["val_split"] = {"value": options.val_split,
                               "note": f"{options.val_csv} written to split '{options.val_split}'"}
    plan.flags["coordinates"] = {
        "value": "location CSV" if options.locations else "unknown",
        "note": (f"coordinates from {options.locations}" if options.locations else
                 "no location CSV given: latitude/longitude are 0 (metadata.coordinates_known=false)")}
    return plan
