"""VIGOR (Zhu et al., 2021): street panoramas and aerial tiles of four US cities.

Layout::

    <root>/splits/<City>/same_area_balanced_train.txt
    <root>/splits/<City>/same_area_balanced_test.txt
    <root>/splits/<City>/pano_label_balanced.txt
    <root>/<City>/panorama/<pano_id>,<lat>,<lon>,.jpg      2:1 panoramas
    <root>/<City>/satellite/satellite_<lat>_<lon>.png

Each label line: ``pano_name pos dy dx semi1 dy dx semi2 dy dx semi3 dy dx``, the pixel offsets of
the panorama's position inside each tile.  Protocols: *same-area* reads the ``same_area_balanced``
train/test files of every city; *cross-area* trains on every panorama of the train cities
(NewYork, Seattle) and tests on every panorama of the test cities (SanFrancisco, Chicago), from
``pano_label_balanced.txt``.  Coordinates come from the file names.

Samples: a panorama (modality ``panorama``) with its positive tile; the location id is the
positive tile's id (``vigor-<City>-<tile>``).  ``metadata.positive`` holds the positive's offset
and ``metadata.semi_positives`` the three semi-positive tiles with their location ids, offsets and
coordinates (``metadata.semi_positive_location_ids`` for the evaluation's hit rate).  Tiles of the
evaluation cities that are no test positive go to split ``gallery`` (modality ``satellite``), so
test + gallery is the full VIGOR gallery.

Evaluation protocol (recorded in the manifest, ``gleam.data.benchmark``): the panoramas of split
``test`` against every tile of splits ``test`` + ``gallery`` (same-area: all tiles of the four
cities, 52,605 queries against 90,618 tiles on the full release; cross-area: the test cities'
panoramas, 53,694, against their tiles), with hit rate from the semi-positives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from gleam import storage
from gleam.data.benchmark import EvaluationProtocol
from gleam.data.ingest.common import (BAD_COORDINATES, BAD_FILE_NAME, BAD_LINE, MISSING_FILE, FileTree, IngestPlan,
                                      LayoutError, PairRecord, Skip, coordinate_problem, make_key)
from gleam.data.schema import SATELLITE_ONLY

NAME = "vigor"
SOURCE = "vigor"
CITIES = ["NewYork", "Seattle", "SanFrancisco", "Chicago"]
SAME_AREA_FILES = {"train": "same_area_balanced_train.txt", "test": "same_area_balanced_test.txt"}
CROSS_AREA_FILE = "pano_label_balanced.txt"
PANORAMA_ASPECT = 2.0

EXPECTED = """
<root>/
  splits/<City>/same_area_balanced_train.txt   (same-area protocol)
  splits/<City>/same_area_balanced_test.txt    (same-area protocol)
  splits/<City>/pano_label_balanced.txt        (cross-area protocol)
  <City>/panorama/<pano_id>,<lat>,<lon>,.jpg
  <City>/satellite/satellite_<lat>_<lon>.png
with <City> one of NewYork, Seattle, SanFrancisco, Chicago
"""


@dataclass
class VigorOptions:
    """Options of the VIGOR converter (``vigor.*`` in the ingest config)."""

    protocol: Literal["same_area", "cross_area"] = "same_area"
    cities: list[str] = field(default_factory=lambda: list(CITIES))  # same-area
    train_cities: list[str] = field(default_factory=lambda: ["NewYork", "Seattle"])  # cross-area
    test_cities: list[str] = field(default_factory=lambda: ["SanFrancisco", "Chicago"])  # cross-area
    gallery: bool = True  # write the evaluation cities' other tiles as split 'gallery'


def parse_panorama_name(name: str) -> tuple[str, float, float]:
    """``"<id>,<lat>,<lon>,.jpg"`` -> (id, lat, lon); ``ValueError`` when it does not parse."""
    fields = name.split(",")
    if len(fields) < 4:
        raise ValueError(f"{name!r} is not '<pano_id>,<lat>,<lon>,.jpg'")
    return ",".join(fields[:-3]), float(fields[-3]), float(fields[-2])


def parse_satellite_name(name: str) -> tuple[float, float]:
    """``"satellite_<lat>_<lon>.png"`` -> (lat, lon); ``ValueError`` when it does not parse."""
    stem = name.rsplit(".", 1)[0]
    fields = stem.split("_")
    if len(fields) != 3 or fields[0] != "satellite":
        raise ValueError(f"{name!r} is not 'satellite_<lat>_<lon>.png'")
    return float(fields[1]), float(fields[2])


def tile_location_id(city: str, tile: str) -> str:
    return make_key(NAME, city, tile.rsplit(".", 1)[0])


def _tile_info(city: str, tile: str, dy: str, dx: str) -> dict[str, Any]:
    latitude, longitude = parse_satellite_name(tile)
    return {"tile": tile, "location_id": tile_location_id(city, tile), "dy": float(dy), "dx": float(dx),
            "latitude": latitude, "longitude": longitude}


def _label_files(options: VigorOptions) -> list[tuple[str, str, str]]:
    """(city, split, label file name) in a fixed order."""
    if options.protocol == "same_area":
        return [(city, split, SAME_AREA_FILES[split]) for split in ("train", "test") for city in options.cities]
    return ([(city, "train", CROSS_AREA_FILE) for city in options.train_cities]
            + [(city, "test", CROSS_AREA_FILE) for city in options.test_cities])


def _check_cities(options: VigorOptions) -> None:
    chosen = options.cities if options.protocol == "same_area" else options.train_cities + options.test_cities
    unknown = [c for c in chosen if c not in CITIES]
    if unknown:
        raise ValueError(f"vigor: unknown cities {unknown}; VIGOR has {CITIES}")
    if options.protocol == "cross_area" and set(options.train_cities) & set(options.test_cities):
        raise ValueError(f"vigor: cross-area train and test cities overlap: "
                         f"{sorted(set(options.train_cities) & set(options.test_cities))}")


def _parse_line(line: str, city: str) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    fields = line.split()
    if len(fields) != 13:
        raise ValueError(f"expected 13 fields (pano, then 4 x tile dy dx), got {len(fields)}")
    tiles = [_tile_info(city, fields[i], fields[i + 1], fields[i + 2]) for i in (1, 4, 7, 10)]
    return fields[0], tiles[0], tiles[1:]


def plan_vigor(root: str, options: VigorOptions) -> IngestPlan:
    """Validate the layout under ``root`` and plan every sample (see the module docstring)."""
    _check_cities(options)
    files = _label_files(options)
    cities = list(dict.fromkeys(city for city, _, _ in files))
    label_urls = {}
    for city, _, label in files:
        url = storage.join(root, "splits", city, label)
        if not storage.exists(url):
            raise LayoutError(NAME, f"split file 'splits/{city}/{label}' ({options.protocol} protocol)", url, EXPECTED)
        label_urls[(city, label)] = url
    tree = FileTree.scan(root, [f"{city}/{kind}" for city in cities for kind in ("panorama", "satellite")])
    for city in cities:
        for kind in ("panorama", "satellite"):
            tree.require_dir(NAME, f"{city}/{kind}", EXPECTED)
    plan = IngestPlan(dataset=NAME, source=SOURCE, root=root, records=[])
    test_positives: set[tuple[str, str]] = set()
    for city, split, label in files:
        text = storage.read_text(label_urls[(city, label)])
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"splits/{city}/{label}:{number}"
            record = _plan_line(tree, city, split, line, where, plan)
            if record is not None:
                plan.records.append(record)
                if split == "test":
                    test_positives.add((city, record.metadata["positive"]["tile"]))
    evaluation_cities = options.cities if options.protocol == "same_area" else options.test_cities
    if options.gallery:
        _plan_gallery(tree, evaluation_cities, test_positives, plan)
    plan.flags["protocol"] = {"value": options.protocol, "cities": cities,
                              "evaluation_cities": list(evaluation_cities),
                              "note": f"VIGOR {options.protocol.replace('_', '-')} protocol"}
    official = ({"panorama->satellite": {"queries": 52605, "gallery": 90618}} if options.protocol == "same_area"
                else {"panorama->satellite": {"queries": 53694}})
    plan.evaluation["test"] = EvaluationProtocol(
        benchmark=f"vigor-{options.protocol.replace('_', '-')}", split="test", query_splits=["test"],
        gallery_splits=["test", "gallery"] if options.gallery else ["test"], reverse_gallery_splits=["test"],
        reverse_queries="query_locations", semi_positives=True, top1_percent_rule="round", official=official,
        note=(f"panoramas of split test against the tiles of the evaluation cities {list(evaluation_cities)}"
              + (" (test positives + split gallery)" if options.gallery else
                 " that are test positives only: vigor.gallery=false, not the benchmark's gallery"))).to_json()
    plan.flags["gallery"] = {"value": options.gallery,
                             "note": "tiles of the evaluation cities that are no test positive are in split "
                                     "'gallery'" if options.gallery else "no extra gallery tiles written"}
    return plan


def _plan_line(tree: FileTree, city: str, split: str, line: str, where: str, plan: IngestPlan) -> PairRecord | None:
    try:
        pano, positive, semis = _parse_line(line, city)
    except ValueError as error:
        plan.skipped.append(Skip(BAD_LINE, where, str(error)))
        return None
    try:
        pano_id, latitude, longitude = parse_panorama_name(pano)
    except ValueError as error:
        plan.skipped.append(Skip(BAD_FILE_NAME, f"{city}/panorama/{pano}", f"{where}: {error}"))
        return None
    problem = coordinate_problem(latitude, longitude)
    if problem:
        plan.skipped.append(Skip(BAD_COORDINATES, f"{city}/panorama/{pano}", problem))
        return None
    pano_path, tile_path = f"{city}/panorama/{pano}", f"{city}/satellite/{positive['tile']}"
    for path, what in ((pano_path, "panorama"), (tile_path, "positive tile")):
        if not tree.has_file(path):
            plan.skipped.append(Skip(MISSING_FILE, path, f"{what} named in {where} does not exist"))
            return None
    for semi in semis:
        if not tree.has_file(f"{city}/satellite/{semi['tile']}"):
            plan.warnings.append(Skip("missing_semi_positive", f"{city}/satellite/{semi['tile']}",
                                      f"semi-positive named in {where} does not exist"))
    return PairRecord(
        key=make_key(split, city, pano_id), location_id=positive["location_id"], split=split, modality="panorama",
        satellite=tree.url(tile_path), query=tree.url(pano_path), latitude=latitude, longitude=longitude,
        query_aspect=PANORAMA_ASPECT,
        metadata={"city": city, "pano_id": pano_id, "positive": positive, "semi_positives": semis,
                  "semi_positive_location_ids": [s["location_id"] for s in semis],
                  "query_file": pano_path, "satellite_file": tile_path, "label_line": where})


def _plan_gallery(tree: FileTree, cities: list[str], test_positives: set[tuple[str, str]], plan: IngestPlan) -> None:
    for city in cities:
        for tile in tree.files_in(f"{city}/satellite"):
            if (city, tile) in test_positives:
                continue
            path = f"{city}/satellite/{tile}"
            try:
                latitude, longitude = parse_satellite_name(tile)
            except ValueError as error:
                plan.skipped.append(Skip(BAD_FILE_NAME, path, str(error)))
                continue
            problem = coordinate_problem(latitude, longitude)
            if problem:
                plan.skipped.append(Skip(BAD_COORDINATES, path, problem))
                continue
            plan.records.append(PairRecord(
                key=make_key("gallery", city, tile.rsplit(".", 1)[0]), location_id=tile_location_id(city, tile),
                split="gallery", modality=SATELLITE_ONLY, satellite=tree.url(path), query=None,
                latitude=latitude, longitude=longitude,
                metadata={"city": city, "tile": tile, "satellite_file": path}))
