"""A generic CSV or Parquet manifest: street-map pairs, ground photos and anything else.

One row per sample.  Columns (aliases in brackets)::

    query       [query_path]            query image; empty for a gallery-only 'satellite' tile
    satellite   [satellite_path, sat]   satellite tile
    modality                            uav, streetmap, panorama, ground, satellite, or a registered one
    latitude    [lat]   longitude [lon, lng]
    split                               train, val, test or gallery
    heading                             optional, degrees clockwise from north, empty when unknown
    location_id                         optional; default: derived from the satellite path
    key                                 optional; default: <split>-<modality>-<row number>

Paths are relative to the manifest's folder, absolute, or URLs (``s3://...``).  ``root`` is the
manifest file itself or a folder holding ``manifest.csv`` / ``manifest.parquet`` (or the file
named by ``manifest.file``).  A bad row is skipped and reported with its row number and reason.

Evaluation protocol (recorded in the dataset manifest, ``gleam.data.benchmark``): each of splits
``val`` / ``test`` is scored with its own queries against its own satellite tiles plus every tile
of split ``gallery`` (distractor tiles belong to every evaluation's gallery).
"""

from __future__ import annotations

import csv
import io
import math
import os
import posixpath
from dataclasses import dataclass
from typing import Any

from gleam import storage
from gleam.data.benchmark import EvaluationProtocol
from gleam.data.ingest.common import (BAD_COORDINATES, BAD_VALUE, MISSING_FILE, IngestPlan, LayoutError, PairRecord,
                                      Skip, coordinate_problem, existing_files, make_key, relative_name)
from gleam.data.schema import SATELLITE_ONLY, SPLITS, modalities

NAME = "manifest"
DEFAULT_FILES = ("manifest.csv", "manifest.parquet")
COLUMNS = {
    "query": ("query", "query_path"),
    "satellite": ("satellite", "satellite_path", "sat", "sat_path"),
    "modality": ("modality",),
    "latitude": ("latitude", "lat"),
    "longitude": ("longitude", "lon", "lng"),
    "split": ("split",),
    "heading": ("heading",),
    "location_id": ("location_id",),
    "key": ("key",),
}
REQUIRED = ("query", "satellite", "modality", "latitude", "longitude", "split")

EXPECTED = """
<root>/manifest.csv (or .parquet), one row per sample:
  query,satellite,modality,latitude,longitude,heading,split
  photos/a.jpg,tiles/a.png,ground,47.37,8.54,90,train
  ,tiles/b.png,satellite,47.38,8.55,,gallery
paths relative to the manifest, absolute, or s3://
"""


@dataclass
class ManifestOptions:
    """Options of the generic manifest converter (``manifest.*`` in the ingest config)."""

    file: str = ""  # manifest file name under root; empty: root itself, or manifest.csv/.parquet in it
    source: str = "manifest"  # the samples' ``source`` field (name your dataset)


def find_manifest(root: str, options: ManifestOptions) -> str:
    if options.file:
        url = options.file if "://" in options.file or os.path.isabs(options.file) else storage.join(root, options.file)
        if not storage.exists(url):
            raise LayoutError(NAME, f"manifest file '{options.file}'", url, EXPECTED)
        return url
    if root.lower().endswith((".csv", ".parquet")):
        if not storage.exists(root):
            raise LayoutError(NAME, "manifest file", root, EXPECTED)
        return root
    for name in DEFAULT_FILES:
        if storage.exists(storage.join(root, name)):
            return storage.join(root, name)
    raise LayoutError(NAME, "manifest.csv or manifest.parquet", root, EXPECTED,
                      "Point root at the manifest file, or set manifest.file=<name>.")


def read_rows(url: str) -> list[dict[str, Any]]:
    if url.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(storage.read_bytes(url))).to_pylist()
    return list(csv.DictReader(io.StringIO(storage.read_text(url).lstrip("\ufeff"))))


def _column_map(header: list[str], url: str) -> dict[str, str]:
    lower = {h.strip().lower(): h for h in header if h is not None}
    mapping = {}
    for column, aliases in COLUMNS.items():
        found = next((lower[a] for a in aliases if a in lower), None)
        if found is not None:
            mapping[column] = found
    missing = [c for c in REQUIRED if c not in mapping]
    if missing:
        raise LayoutError(NAME, f"column(s) {missing}", f"{url} (header: {header})", EXPECTED)
    return mapping


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _resolve(path: str, folder: str) -> str:
    if "://" in path or os.path.isabs(path):
        return path
    return storage.join(folder, path)


class _BadRow(ValueError):
    def __init__(self, reason: str, detail: str):
        self.reason = reason
        super().__init__(detail)


def _row_record(row: dict[str, Any], columns: dict[str, str], number: int, folder: str, source: str) -> PairRecord:
    value = {c: _text(row.get(name)) for c, name in columns.items()}
    modality, split = value["modality"], value["split"]
    if modality not in modalities():
        raise _BadRow(BAD_VALUE, f"modality {modality!r} is not one of {list(modalities())}")
    if split not in SPLITS:
        raise _BadRow(BAD_VALUE, f"split {split!r} is not one of {list(SPLITS)}")
    if not value["satellite"]:
        raise _BadRow(BAD_VALUE, "no satellite path")
    if modality == SATELLITE_ONLY and value["query"]:
        raise _BadRow(BAD_VALUE, "a 'satellite' gallery tile has no query image")
    if modality != SATELLITE_ONLY and not value["query"]:
        raise _BadRow(BAD_VALUE, f"no query path for modality {modality!r}")
    try:
        latitude, longitude = float(value["latitude"]), float(value["longitude"])
        heading = float(value["heading"]) if value.get("heading") else None
    except ValueError as error:
        raise _BadRow(BAD_COORDINATES, f"not a number ({error})") from None
    problem = coordinate_problem(latitude, longitude) if math.isfinite(latitude + longitude) else "not finite"
    if problem:
        raise _BadRow(BAD_COORDINATES, problem)
    if heading is not None and not (math.isfinite(heading) and 0.0 <= heading < 360.0):
        raise _BadRow(BAD_VALUE, f"heading {heading} is not in [0, 360)")
    satellite_id = posixpath.splitext(value["satellite"].split("://", 1)[-1].lstrip("/"))[0].replace("/", "-")
    return PairRecord(
        key=make_key(value["key"]) if value.get("key") else make_key(split, modality, f"{number:06d}"),
        location_id=value.get("location_id") or make_key(source, satellite_id), split=split, modality=modality,
        satellite=_resolve(value["satellite"], folder), query=_resolve(value["query"], folder) if value["query"] else None,
        latitude=latitude, longitude=longitude, heading=heading,
        metadata={"row": number, "query_file": value["query"] or None, "satellite_file": value["satellite"]})


def record_protocols(plan: IngestPlan) -> None:
    """Each evaluation split (val, test) against its own tiles plus every tile of split 'gallery'."""
    splits = {r.split for r in plan.records}
    extra = ["gallery"] if "gallery" in splits else []
    for split in ("val", "test"):
        if split in splits:
            plan.evaluation[split] = EvaluationProtocol(
                benchmark="manifest", split=split, query_splits=[split], gallery_splits=[split, *extra],
                reverse_gallery_splits=[split], reverse_queries="all_tiles",
                note=f"queries of split {split} against the tiles of {' + '.join([split, *extra])}").to_json()


def plan_manifest(root: str, options: ManifestOptions) -> IngestPlan:
    """Read and check the manifest, then plan every row (see the module docstring)."""
    url = find_manifest(root, options)
    folder = url.rsplit("/", 1)[0] if "/" in url else "."
    rows = read_rows(url)
    plan = IngestPlan(dataset=NAME, source=options.source, root=folder, records=[])
    if not rows:
        plan.notes.append(f"{url}: the manifest has no rows")
        return plan
    columns = _column_map(list(rows[0].keys()), url)
    name = relative_name(url, folder)
    for number, row in enumerate(rows, 1):
        try:
            plan.records.append(_row_record(row, columns, number, folder, options.source))
        except _BadRow as problem:
            plan.skipped.append(Skip(problem.reason, f"{name}:row {number}", str(problem)))
    present = existing_files(u for r in plan.records for u in (r.query, r.satellite) if u)
    kept = []
    for record in plan.records:
        missing = [u for u in (record.query, record.satellite) if u and u not in present]
        if missing:
            plan.skipped.extend(Skip(MISSING_FILE, relative_name(u, folder), f"{name}:row {record.metadata['row']}")
                                for u in missing)
            continue
        kept.append(record)
    plan.records = kept
    record_protocols(plan)
    plan.flags["manifest"] = {"value": name, "rows": len(rows), "note": f"generic manifest {name}"}
    return plan
