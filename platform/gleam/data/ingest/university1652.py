"""University-1652 (Zheng et al., 2020): drone, street and satellite views of 1652 buildings.

Layout of the release (``University-Release/``)::

    train/satellite/<class>/<class>.jpg      one tile per class (701 classes)
    train/drone/<class>/image-NN.jpeg        drone views (modality 'uav')
    train/street/<class>/*.jpg               street views (modality 'ground')
    train/google/<class>/*.jpg               noisy street views from Google (optional, 'ground')
    test/query_drone/<class>/...             701 query classes
    test/query_street/<class>/...
    test/gallery_satellite/<class>/<class>.jpg   951 classes: 701 + 250 distractors
    test/gallery_drone/<class>/..., gallery_street/<class>/...   951 classes (satellite->drone)
    test/query_satellite                     the 701 query classes' tiles again (not converted)

Every drone/street image is paired with its class's satellite tile (train: ``train/satellite``;
test: ``test/gallery_satellite``, falling back to ``test/query_satellite``).  The test gallery
tiles are written to split ``gallery`` as modality ``satellite``; the official protocol keeps the
250 distractor classes (``keep_distractors: false`` drops them, as some papers do, and the report
says so).  The location id is the class (``university1652-<class>``), shared by a class's queries
and its tile.  The release has no coordinates: latitude/longitude are 0 and
``metadata.coordinates_known`` is false.  ``query_satellite`` holds the same tiles as the
gallery, and ``gallery_drone``/``gallery_street`` serve the reverse (satellite->drone) task whose
gallery is not a satellite gallery; they are listed as not converted in the report notes.

Evaluation protocol (recorded in the manifest, ``gleam.data.benchmark``): split ``test`` is
scored as the paper does.  drone->satellite (and street->satellite): the queries of split
``test`` against the satellite tiles of splits ``test`` + ``gallery`` (951 tiles incl. the 250
distractor classes; 37,855 drone queries on the full release).  satellite->drone: the tiles of
the 701 query classes (``query_satellite``) rank ``gallery_drone`` (51,355 images: the 37,855
query images again plus 13,500 of the distractor classes), so the distractor classes' images of
``test/gallery_drone`` and ``test/gallery_street`` are written to split ``gallery`` (modality
``uav`` / ``ground``, paired with their class's tile); images of a query class already under
``query_drone``/``query_street`` (same file name) are not written twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from gleam.data.benchmark import EvaluationProtocol
from gleam.data.ingest.common import (MISMATCHED_IDS, NO_SATELLITE, NOT_AN_IMAGE, UNUSED_SATELLITE, FileTree,
                                      IngestPlan, PairRecord, Skip, is_image_name, make_key, stem)
from gleam.data.schema import SATELLITE_ONLY

NAME = "university1652"
SOURCE = "university-1652"

EXPECTED = """
<root>/                                   (University-Release)
  train/satellite/<class>/<class>.jpg
  train/drone/<class>/image-01.jpeg ...
  train/street/<class>/*.jpg
  train/google/<class>/*.jpg              (optional)
  test/query_drone/<class>/*.jpeg
  test/query_street/<class>/*.jpg
  test/gallery_satellite/<class>/<class>.jpg   (951 classes incl. 250 distractors)
"""

QUERY_VIEWS = {"drone": "uav", "street": "ground", "google": "ground"}


@dataclass
class University1652Options:
    """Options of the University-1652 converter (``university1652.*`` in the ingest config)."""

    include_google: bool = True  # train/google: noisy street views, as modality 'ground'
    keep_distractors: bool = True  # official protocol: keep the 250 distractor gallery classes
    reverse_gallery: bool = True  # test/gallery_drone, gallery_street images not under query_* -> split 'gallery'
    include_train: bool = True
    include_test: bool = True


def location_id(class_id: str) -> str:
    return make_key(NAME, class_id)


def _class_tile(tree: FileTree, folders: list[str], class_id: str, warnings: list[Skip]) -> str | None:
    """Relative path of a class's satellite tile (the first image of the first folder having one)."""
    for folder in folders:
        images = [n for n in tree.files_in(f"{folder}/{class_id}") if is_image_name(n)]
        if images:
            preferred = [n for n in images if stem(n) == class_id] or images
            if len(images) > 1:
                warnings.append(Skip("several_satellite_images", f"{folder}/{class_id}",
                                     f"{len(images)} images; using {preferred[0]}"))
            return f"{folder}/{class_id}/{preferred[0]}"
    return None


def _query_records(tree: FileTree, split: str, view: str, folder: str, tiles: dict[str, str | None],
                   plan: IngestPlan) -> int:
    """Records of every image under ``folder/<class>/``; returns how many were planned."""
    planned = 0
    for class_id in tree.subdirs(folder):
        tile = tiles.get(class_id)
        for name in tree.files_in(f"{folder}/{class_id}"):
            relative = f"{folder}/{class_id}/{name}"
            if not is_image_name(name):
                plan.skipped.append(Skip(NOT_AN_IMAGE, relative, "not an image file name"))
                continue
            if tile is None:
                reason = NO_SATELLITE if class_id in tiles else MISMATCHED_IDS
                plan.skipped.append(Skip(reason, relative, f"class {class_id} has no satellite tile"))
                continue
            plan.records.append(PairRecord(
                key=make_key(split, view, class_id, stem(name)), location_id=location_id(class_id),
                split=split, modality=QUERY_VIEWS[view], satellite=tree.url(tile), query=tree.url(relative),
                latitude=0.0, longitude=0.0,
                metadata={"class": class_id, "view": view, "noisy": view == "google", "query_file": relative,
                          "satellite_file": tile, "coordinates_known": False}))
            planned += 1
    return planned


def _train(tree: FileTree, options: University1652Options, plan: IngestPlan) -> None:
    for folder in ("train/satellite", "train/drone", "train/street"):
        tree.require_dir(NAME, folder, EXPECTED)
    classes = tree.subdirs("train/satellite")
    tiles = {c: _class_tile(tree, ["train/satellite"], c, plan.warnings) for c in classes}
    for class_id, tile in tiles.items():
        if tile is None:
            plan.skipped.append(Skip(NO_SATELLITE, f"train/satellite/{class_id}", "no image in the class folder"))
    views = ["drone", "street"]
    if options.include_google and tree.has_dir("train/google"):
        views.append("google")
    elif options.include_google:
        plan.notes.append("train/google not found: no noisy Google street views ingested")
    used: set[str] = set()
    google = 0
    for view in views:
        before = len(plan.records)
        count = _query_records(tree, "train", view, f"train/{view}", tiles, plan)
        used.update(r.metadata["class"] for r in plan.records[before:])
        google += count if view == "google" else 0
    for class_id, tile in tiles.items():
        if tile is not None and class_id not in used:
            plan.skipped.append(Skip(UNUSED_SATELLITE, tile, f"class {class_id} has no drone or street image"))
    plan.flags["google"] = {
        "value": "google" in views, "images": google,
        "note": ("train/google (noisy street views) written as modality 'ground' with metadata.noisy=true"
                 if "google" in views else "train/google not ingested")}


def _test(tree: FileTree, options: University1652Options, plan: IngestPlan) -> None:
    for folder in ("test/query_drone", "test/query_street", "test/gallery_satellite"):
        tree.require_dir(NAME, folder, EXPECTED)
    query_classes = set(tree.subdirs("test/query_drone")) | set(tree.subdirs("test/query_street"))
    gallery_classes = tree.subdirs("test/gallery_satellite")
    tile_folders = ["test/gallery_satellite", "test/query_satellite"]
    tiles = {c: _class_tile(tree, tile_folders, c, plan.warnings) for c in sorted(set(gallery_classes) | query_classes)}
    for view in ("drone", "street"):
        _query_records(tree, "test", view, f"test/query_{view}", tiles, plan)
    distractors = [c for c in gallery_classes if c not in query_classes]
    for class_id in gallery_classes:
        tile = tiles[class_id]
        if tile is None:
            plan.skipped.append(Skip(NO_SATELLITE, f"test/gallery_satellite/{class_id}", "no image in the class folder"))
            continue
        is_distractor = class_id not in query_classes
        if is_distractor and not options.keep_distractors:
            continue
        plan.records.append(PairRecord(
            key=make_key("gallery", "satellite", class_id), location_id=location_id(class_id), split="gallery",
            modality=SATELLITE_ONLY, satellite=tree.url(tile), query=None, latitude=0.0, longitude=0.0,
            metadata={"class": class_id, "distractor": is_distractor, "satellite_file": tile,
                      "coordinates_known": False}))
    kept = options.keep_distractors
    plan.flags["distractors"] = {
        "value": "kept" if kept else "dropped", "distractor_classes": len(distractors),
        "gallery_classes": len(gallery_classes) if kept else len(gallery_classes) - len(distractors),
        "note": (f"official protocol: the {len(distractors)} distractor classes of test/gallery_satellite "
                 "stay in the gallery" if kept else
                 f"compatibility mode: the {len(distractors)} distractor classes of test/gallery_satellite "
                 "were dropped (as some papers do); results are not comparable with the official protocol")}
    reverse = _reverse_gallery(tree, options, set(gallery_classes), tiles, plan) if options.reverse_gallery else {}
    plan.notes.append("test/query_satellite is not converted: it holds the gallery tiles of the query classes again")
    plan.evaluation["test"] = EvaluationProtocol(
        benchmark="university1652", split="test", query_splits=["test"], gallery_splits=["test", "gallery"],
        reverse_gallery_splits=["test", "gallery"], reverse_queries="query_locations", top1_percent_rule="round",
        official={"uav->satellite": {"queries": 37855, "gallery": 951},
                  "satellite->uav": {"queries": 701, "gallery": 51355}},
        note=("drone/street queries of split test against the satellite tiles of test + gallery "
              f"({'with' if kept else 'WITHOUT'} the distractor classes); satellite->drone: tiles of the "
              "query classes against the drone images of test + gallery "
              f"({reverse.get('uav', 0)} gallery_drone images added)")).to_json()


def _reverse_gallery(tree: FileTree, options: University1652Options, gallery_classes: set[str],
                     tiles: dict[str, str | None], plan: IngestPlan) -> dict[str, int]:
    """test/gallery_{drone,street} images not already written from query_* -> split 'gallery'."""
    added: dict[str, int] = {}
    for view in ("drone", "street"):
        folder = f"test/gallery_{view}"
        if not tree.has_dir(folder):
            plan.notes.append(f"{folder} not found: satellite->{QUERY_VIEWS[view]} ranks the query images only")
            continue
        for class_id in tree.subdirs(folder):
            if class_id not in gallery_classes:
                plan.skipped.append(Skip(MISMATCHED_IDS, f"{folder}/{class_id}",
                                         f"class {class_id} is not in test/gallery_satellite"))
                continue
            if not options.keep_distractors and class_id not in set(tree.subdirs(f"test/query_{view}")):
                continue
            known = set(tree.files_in(f"test/query_{view}/{class_id}"))
            tile = tiles.get(class_id)
            for name in tree.files_in(f"{folder}/{class_id}"):
                relative = f"{folder}/{class_id}/{name}"
                if name in known:
                    continue  # the same image as the query's: written once, under split test
                if not is_image_name(name):
                    plan.skipped.append(Skip(NOT_AN_IMAGE, relative, "not an image file name"))
                    continue
                if tile is None:
                    plan.skipped.append(Skip(NO_SATELLITE, relative, f"class {class_id} has no satellite tile"))
                    continue
                plan.records.append(PairRecord(
                    key=make_key("gallery", view, class_id, stem(name)), location_id=location_id(class_id),
                    split="gallery", modality=QUERY_VIEWS[view], satellite=tree.url(tile), query=tree.url(relative),
                    latitude=0.0, longitude=0.0,
                    metadata={"class": class_id, "view": view, "noisy": False, "query_file": relative,
                              "satellite_file": tile, "coordinates_known": False, "reverse_gallery": True}))
                added[QUERY_VIEWS[view]] = added.get(QUERY_VIEWS[view], 0) + 1
    plan.flags["reverse_gallery"] = {
        "value": options.reverse_gallery, "images": added,
        "note": "test/gallery_drone and gallery_street images not under query_* written to split 'gallery' "
                "(the satellite->drone / satellite->street galleries)"}
    return added


def plan_university1652(root: str, options: University1652Options) -> IngestPlan:
    """Validate the layout under ``root`` and plan every sample (see the module docstring)."""
    folders = []
    if options.include_train:
        folders += ["train/satellite", "train/drone", "train/street", "train/google"]
    if options.include_test:
        folders += ["test/query_drone", "test/query_street", "test/gallery_satellite", "test/query_satellite"]
        if options.reverse_gallery:
            folders += ["test/gallery_drone", "test/gallery_street"]
    tree = FileTree.scan(root, folders)
    plan = IngestPlan(dataset=NAME, source=SOURCE, root=root, records=[])
    if options.include_train:
        _train(tree, options, plan)
    if options.include_test:
        _test(tree, options, plan)
    plan.flags["coordinates"] = {"value": "unknown",
                                 "note": "University-1652 has no coordinates: latitude/longitude are 0"}
    return plan
