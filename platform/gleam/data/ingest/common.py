"""Shared machinery of the dataset converters: layout checks, pair records, parallel writing.

A converter (``university1652``, ``vigor``, ``cvusa``, ``cvact``, ``manifest``) reads nothing but
file listings and small index files (split CSVs, label text files, a .mat file) and returns an
``IngestPlan``: a deterministic list of lightweight ``PairRecord``s (image URLs and fields, no
image bytes), the problems it found on the way (``Skip``: file, reason) and the flags it used.
``run_plan`` turns the plan into shards:

1. optional content de-duplication: every distinct image file is hashed (sha256) by Ray tasks,
   a record whose query *and* satellite contents equal an earlier record's is dropped and listed
   under ``duplicates`` (hashes are cached under ``_ingest/`` so a resumed run does not re-read);
2. records are grouped by (split, modality) into parts of ``records_per_part``; each part is one
   Ray task that reads and verifies the images (decoded with ``gleam.data.images.decode_image``,
   the decoder every reader uses: JPEG and PNG bytes are kept as they are, other formats are
   re-encoded losslessly as PNG, images larger than ``max_side`` downscaled as JPEG) and writes
   them with ``gleam.data.shards.write_part`` (resumable, byte-reproducible).  An unreadable or
   missing image skips its sample with a reason, recorded in ``_ingest/<part>.skips.json`` before
   the part record is published, so a resumed run still reports it;
3. ``ingest_report.json`` (counts per split and modality, every skipped file with its reason,
   duplicates, flags, timings) and then ``manifest.json`` are written next to the shards.

Layout problems found before any work starts raise ``LayoutError`` with what is missing, where,
and the expected tree.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import posixpath
import re
import textwrap
import time
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator

from PIL import Image

from gleam import storage
from gleam.config import ShardConfig
from gleam.data import shards
from gleam.data.images import ImageError, ImageTooLarge, decode_image
from gleam.data.schema import SPLITS, Sample, SampleError, validate

log = logging.getLogger(__name__)

REPORT_NAME = "ingest_report.json"
WORK_DIR = "_ingest"  # per-part skip lists and hash caches, under the output folder
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
KEEP_FORMATS = ("JPEG", "PNG")
ASPECT_TOLERANCE = 0.02

# Skip reasons (the report counts skips by these codes)
MISSING_FILE = "missing_file"
UNREADABLE_IMAGE = "unreadable_image"
TOO_MANY_PIXELS = "too_many_pixels"
NOT_AN_IMAGE = "not_an_image"
NO_SATELLITE = "no_satellite"
MISMATCHED_IDS = "mismatched_ids"
BAD_LINE = "bad_line"
BAD_FILE_NAME = "bad_file_name"
BAD_COORDINATES = "bad_coordinates"
BAD_VALUE = "bad_value"
INVALID_SAMPLE = "invalid_sample"
UNUSED_SATELLITE = "satellite_without_queries"
COORDINATES_IN_RADIANS = "coordinates_in_radians"  # a warning: every coordinate within [-pi/2, pi/2] x [-pi, pi]
IMAGE_DEPTH = "image_depth"  # a warning: deep or low-dynamic-range data scaled (gleam.data.images rule 4)


class LayoutError(ValueError):
    """The dataset folder does not have the expected layout: names what is missing and where."""

    def __init__(self, dataset: str, missing: str, where: str, expected: str, hint: str = ""):
        self.dataset, self.missing, self.where, self.expected = dataset, missing, where, expected
        message = (f"{dataset}: {missing} not found (looked at {where}).\n"
                   f"Expected layout:\n{textwrap.indent(textwrap.dedent(expected).strip(), '    ')}")
        if hint:
            message += f"\n{hint}"
        super().__init__(message)


# --------------------------------------------------------------------------- records


@dataclass
class PairRecord:
    """One sample to write: where its images are and every other field (no image bytes)."""

    key: str
    location_id: str
    split: str
    modality: str
    satellite: str  # URL of the satellite image
    query: str | None  # URL of the query image; None for a gallery-only satellite tile
    latitude: float
    longitude: float
    heading: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    query_aspect: float | None = None  # the benchmark's query width / height (VIGOR 2.0, CVUSA 5.5): warn otherwise


@dataclass
class Skip:
    """Something not written, and why (``reason`` is one of the codes above)."""

    reason: str
    file: str
    detail: str = ""
    key: str = ""


@dataclass
class IngestPlan:
    """What a converter found: the records to write, what it skipped, the flags it used."""

    dataset: str  # converter name (the manifest's dataset)
    source: str  # Sample.source
    root: str
    records: list[PairRecord]
    skipped: list[Skip] = field(default_factory=list)
    warnings: list[Skip] = field(default_factory=list)  # written, but worth knowing
    flags: dict[str, Any] = field(default_factory=dict)  # name -> {"value": ..., "note": sentence}
    notes: list[str] = field(default_factory=list)
    dedupe: bool = False  # default for this dataset (IngestConfig.dedupe overrides)
    # what the benchmark scores, by evaluation split (gleam.data.benchmark.EvaluationProtocol as JSON)
    evaluation: dict[str, dict[str, Any]] = field(default_factory=dict)


_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


def make_key(*parts: str) -> str:
    """A schema-safe key (letters, digits, '_' and '-') from ``parts`` joined by '-'.

    Characters outside that set become '_' and a short hash of the original is appended, so two
    different originals never map to the same key.
    """
    raw = "-".join(str(p) for p in parts)
    clean = _UNSAFE.sub("_", raw)
    if clean != raw or not clean:
        clean = f"{clean}-{hashlib.sha1(raw.encode('utf-8')).hexdigest()[:8]}"
    return clean


def make_keys_unique(records: list[PairRecord]) -> None:
    """Suffix ``-2``, ``-3``... to repeated keys, in record order (deterministic)."""
    seen: Counter[str] = Counter(r.key for r in records)
    if all(n == 1 for n in seen.values()):
        return
    used = set(seen)
    count: Counter[str] = Counter()
    for record in records:
        if seen[record.key] == 1:
            continue
        count[record.key] += 1
        if count[record.key] > 1:
            base, n = record.key, count[record.key]
            while f"{base}-{n}" in used:
                n += 1
            record.key = f"{base}-{n}"
            used.add(record.key)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def stem(name: str) -> str:
    base = posixpath.basename(name)
    return base.rsplit(".", 1)[0] if "." in base else base


# --------------------------------------------------------------------------- file listings


class FileTree:
    """The files (relative POSIX paths) under some folders of a dataset root, listed once."""

    def __init__(self, root: str, files: Iterable[str] = (), dirs: Iterable[str] = ()):
        self.root = root
        self.files: set[str] = set(files)
        self.dirs: set[str] = set(dirs)
        for path in self.files | set(self.dirs):
            parent = posixpath.dirname(path)
            while parent and parent not in self.dirs:
                self.dirs.add(parent)
                parent = posixpath.dirname(parent)
        self._children: dict[str, tuple[list[str], list[str]]] | None = None

    @classmethod
    def scan(cls, root: str, folders: Iterable[str]) -> "FileTree":
        """List every file under each of ``folders`` (relative to ``root``; absent ones are skipped).

        Hidden entries (names starting with '.') are ignored.
        """
        fs, base = storage.filesystem(root)
        base = base.rstrip("/") or "/"
        files, dirs = [], []
        for folder in folders:
            path = posixpath.join(base, folder) if folder else base
            entries = _walk_local(path) if not storage.is_remote(root) else _walk_remote(fs, path)
            for name, is_dir in entries:
                relative = name[len(base):].strip("/")
                if not relative or any(part.startswith(".") for part in relative.split("/")):
                    continue
                (dirs if is_dir else files).append(relative)
        return cls(root, files, dirs)

    def url(self, relative: str) -> str:
        return storage.join(self.root, relative)

    def has_dir(self, relative: str) -> bool:
        return relative.strip("/") in self.dirs

    def has_file(self, relative: str) -> bool:
        return relative in self.files

    def _index(self) -> dict[str, tuple[list[str], list[str]]]:
        if self._children is None:
            children: dict[str, tuple[list[str], list[str]]] = {}
            for path in self.dirs:
                children.setdefault(posixpath.dirname(path), ([], []))[0].append(posixpath.basename(path))
            for path in self.files:
                children.setdefault(posixpath.dirname(path), ([], []))[1].append(posixpath.basename(path))
            for subdirs, names in children.values():
                subdirs.sort()
                names.sort()
            self._children = children
        return self._children

    def subdirs(self, relative: str) -> list[str]:
        return list(self._index().get(relative.strip("/"), ([], []))[0])

    def files_in(self, relative: str) -> list[str]:
        return list(self._index().get(relative.strip("/"), ([], []))[1])

    def require_dir(self, dataset: str, relative: str, expected: str, hint: str = "") -> None:
        if not self.has_dir(relative):
            raise LayoutError(dataset, f"folder '{relative}/'", self.url(relative), expected, hint)


def _walk_local(path: str) -> Iterator[tuple[str, bool]]:
    """(path, is folder) under a local folder, following symbolic links (datasets often are links)."""
    seen: set[str] = set()
    for folder, subdirs, names in os.walk(path, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link cycle
            subdirs[:] = []
            continue
        seen.add(real)
        yield folder, True
        for name in names:
            yield os.path.join(folder, name), False


def _walk_remote(fs: Any, path: str) -> Iterator[tuple[str, bool]]:
    fs.invalidate_cache(path)
    try:
        entries = fs.find(path, withdirs=True, detail=True)
    except FileNotFoundError:
        return
    for name, info in entries.items():
        yield name.rstrip("/"), info.get("type") == "directory"


def require_file(dataset: str, root: str, relative: str, expected: str, hint: str = "") -> str:
    """The URL of ``relative`` under ``root``; ``LayoutError`` naming it when absent."""
    url = relative if "://" in relative or os.path.isabs(relative) else storage.join(root, relative)
    if not storage.exists(url):
        raise LayoutError(dataset, f"file '{relative}'", url, expected, hint)
    return url


def existing_files(urls: Iterable[str]) -> set[str]:
    """Those of ``urls`` that exist, listing each parent folder once (not one request per file)."""
    by_parent: dict[str, list[str]] = {}
    for url in urls:
        by_parent.setdefault(posixpath.dirname(url) if "://" in url else os.path.dirname(url), []).append(url)
    found = set()
    for parent, members in by_parent.items():
        listed = {u.rstrip("/").rsplit("/", 1)[-1] for u in storage.list_files(parent)} if parent else set()
        found.update(u for u in members if u.rstrip("/").rsplit("/", 1)[-1] in listed)
    return found


SWAPPED_MARK = "valid when swapped"


def coordinate_problem(latitude: float, longitude: float) -> str | None:
    """Why (``latitude``, ``longitude``) in degrees is not a place on Earth, or None.  The message
    says when the pair is valid the other way round (latitude and longitude columns swapped)."""
    if not (-90.0 <= latitude <= 90.0) or not (-180.0 <= longitude <= 180.0):
        swapped = -90.0 <= longitude <= 90.0 and -180.0 <= latitude <= 180.0
        return (f"latitude {latitude}, longitude {longitude} out of range"
                + (f" ({SWAPPED_MARK}: latitude {longitude}, longitude {latitude})" if swapped else ""))
    return None


def coordinate_warnings(records: list[PairRecord]) -> list[Skip]:
    """Kept coordinates that are valid degrees but look like something else: every one within
    [-pi/2, pi/2] x [-pi, pi] (radians read as degrees put the whole dataset within 200 km of
    (0, 0)).  One warning for the dataset, with an example."""
    points = [(r.latitude, r.longitude) for r in records]
    if len(points) >= 2 and all(abs(a) <= math.pi / 2 and abs(b) <= math.pi for a, b in points) and \
            len(set(points)) > 1:
        example = records[0]
        return [Skip(COORDINATES_IN_RADIANS, example.key, (
            f"all {len(points)} coordinates lie within [-pi/2, pi/2] x [-pi, pi] (e.g. latitude {example.latitude}, "
            f"longitude {example.longitude}): they look like radians; give degrees (multiply by 180/pi) or, if the "
            "dataset really lies around (0, 0), ignore this warning"), example.key)]
    return []


def rejected_rows(skipped: list[dict[str, Any]]) -> int:
    """Rows (samples) the skips stand for: skips of one sample key count once."""
    return len({s.get("key") or f"file:{s.get('file')}" for s in skipped
                if s.get("reason") not in (UNUSED_SATELLITE,)})


def rejection_groups(skipped: list[dict[str, Any]]) -> dict[str, Any]:
    """``skipped`` grouped by reason (``gleam.rejections.group_rejections``) with a hint where the
    rows share a recognisable cause (columns swapped, a file list from another folder)."""
    from gleam.rejections import group_rejections

    groups = group_rejections({"reason": s.get("reason"), "where": s.get("file", ""), "error": s.get("detail", "")}
                              for s in skipped if s.get("reason") not in (UNUSED_SATELLITE,))
    coordinates = [s for s in skipped if s.get("reason") == BAD_COORDINATES]
    if coordinates:
        swapped = sum(SWAPPED_MARK in str(s.get("detail", "")) for s in coordinates)
        if swapped * 2 >= len(coordinates):
            groups[BAD_COORDINATES]["hint"] = (
                f"{swapped} of {len(coordinates)} rejected coordinates are valid with latitude and longitude "
                "swapped: the columns are probably the other way round (latitude first, longitude second, "
                "degrees); swap them in the source")
    missing = groups.get(MISSING_FILE)
    if missing and missing["count"] == len(skipped):
        missing["hint"] = ("every listed image is missing: is root the folder the file names are relative to "
                           "(check one example path above)?")
    return groups


# --------------------------------------------------------------------------- images


class ImageProblem(Exception):
    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(detail)


@dataclass
class PreparedImage:
    """Bytes to store and the image as viewed: ``width``/``height`` after EXIF orientation;
    ``decoding``: ``gleam.data.images.DecodeInfo.notes()`` (empty for a plain 8-bit decode)."""

    data: bytes
    width: int
    height: int
    reencoded: bool
    decoding: dict[str, Any] = field(default_factory=dict)


def prepare_image(data: bytes, max_side: int | None = None, jpeg_quality: int = 90) -> PreparedImage:
    """Decode ``data`` with the platform's one decoder (``gleam.data.images.decode_image``) and
    choose the bytes to store.

    JPEG and PNG bytes are kept as they are (every reader decodes them with the same function,
    so EXIF orientation, 16-bit scaling and alpha are applied identically there); other formats
    (GIF, TIFF, BMP, WebP...) are re-encoded losslessly as PNG from the decoded pixels; an image
    larger than ``max_side`` is downscaled (Lanczos) and stored as JPEG at ``jpeg_quality``.
    Raises ``ImageProblem``: ``too_many_pixels`` for a decompression bomb, ``unreadable_image``
    (detail names the ``ImageError`` class) for anything else the decoder refuses.
    """
    try:
        decoded = decode_image(data)
    except ImageTooLarge as error:
        raise ImageProblem(TOO_MANY_PIXELS, f"cannot decode (ImageTooLarge: {error.detail})") from None
    except ImageError as error:
        raise ImageProblem(UNREADABLE_IMAGE, f"cannot decode ({type(error).__name__}: {error.detail})") from None
    pixels, notes = decoded.pixels, decoded.info.notes()
    height, width = pixels.shape[:2]
    if max_side and max(width, height) > max_side:
        scale = max_side / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        converted, image_format = Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS), "JPEG"
    elif decoded.info.format in KEEP_FORMATS:
        return PreparedImage(data, width, height, False, notes)
    else:
        converted, image_format = Image.fromarray(pixels), "PNG"
    buffer = io.BytesIO()
    if image_format == "JPEG":
        converted.save(buffer, format="JPEG", quality=jpeg_quality)
    else:
        converted.save(buffer, format="PNG")
    return PreparedImage(buffer.getvalue(), converted.size[0], converted.size[1], True, notes)


def _load_image(url: str, max_side: int | None, jpeg_quality: int) -> PreparedImage:
    try:
        data = storage.read_bytes(url)
    except FileNotFoundError:
        raise ImageProblem(MISSING_FILE, "file not found") from None
    except IsADirectoryError:
        raise ImageProblem(NOT_AN_IMAGE, "is a folder") from None
    return prepare_image(data, max_side, jpeg_quality)


def relative_name(url: str, root: str) -> str:
    """``url`` relative to ``root`` when under it (reports and metadata stay location-free)."""
    prefix = root.rstrip("/") + "/"
    return url[len(prefix):] if url.startswith(prefix) else url


def part_samples(records: list[PairRecord], source: str, root: str, max_side: int | None,
                 jpeg_quality: int, skipped: list[dict[str, Any]],
                 warnings: list[dict[str, Any]]) -> Iterator[Sample]:
    """Read, verify and yield the samples of ``records``; problems are appended to ``skipped``."""
    satellites: OrderedDict[str, PreparedImage | ImageProblem] = OrderedDict()

    def satellite(url: str) -> PreparedImage | ImageProblem:
        if url not in satellites:
            try:
                satellites[url] = _load_image(url, max_side, jpeg_quality)
            except ImageProblem as problem:
                satellites[url] = problem
            if len(satellites) > 32:
                satellites.popitem(last=False)
        satellites.move_to_end(url)
        return satellites[url]

    def skip(record: PairRecord, reason: str, url: str, detail: str) -> None:
        skipped.append(asdict(Skip(reason, relative_name(url, root), detail, record.key)))

    warned: set[str] = set()

    def depth_warning(record: PairRecord, url: str, image: PreparedImage, role: str) -> None:
        """A decode that scaled low-dynamic-range or deep-colour data is worth one warning per file."""
        if image.decoding.get("warning") and url not in warned:
            warned.add(url)
            warnings.append(asdict(Skip(IMAGE_DEPTH, relative_name(url, root),
                                        f"{role} image: {image.decoding['warning']}", record.key)))

    for record in records:
        tile = satellite(record.satellite)
        if isinstance(tile, ImageProblem):
            skip(record, tile.reason, record.satellite, f"satellite image: {tile.detail}")
            continue
        query = None
        metadata = dict(record.metadata)
        metadata["satellite_size"] = [tile.width, tile.height]
        if tile.decoding:
            metadata["satellite_decoding"] = tile.decoding
            depth_warning(record, record.satellite, tile, "satellite")
        if record.query is not None:
            try:
                query = _load_image(record.query, max_side, jpeg_quality)
            except ImageProblem as problem:
                skip(record, problem.reason, record.query, f"query image: {problem.detail}")
                continue
            metadata["query_size"] = [query.width, query.height]
            if query.decoding:
                metadata["query_decoding"] = query.decoding
                depth_warning(record, record.query, query, "query")
            if record.modality == "panorama":
                metadata["panorama_aspect"] = round(query.width / query.height, 3)
            if record.query_aspect and abs(query.width / query.height - record.query_aspect) > \
                    ASPECT_TOLERANCE * record.query_aspect:
                warnings.append(asdict(Skip("aspect_ratio", relative_name(record.query, root),
                                            f"{query.width}x{query.height} ({query.width / query.height:.3g}:1) "
                                            f"is not the benchmark's {record.query_aspect:g}:1; kept in shape "
                                            "(gleam.data.transforms.fit_panorama)", record.key)))
        if (query is not None and query.reencoded) or tile.reencoded:
            metadata["reencoded"] = True
        sample = Sample(key=record.key, location_id=record.location_id, modality=record.modality,
                        satellite_image=tile.data, query_image=None if query is None else query.data,
                        latitude=record.latitude, longitude=record.longitude, heading=record.heading,
                        split=record.split, source=source, metadata=metadata)
        try:
            validate(sample)
        except SampleError as error:
            skip(record, INVALID_SAMPLE, record.query or record.satellite, str(error))
            continue
        yield sample


# --------------------------------------------------------------------------- parts


@dataclass
class IngestPart:
    name: str
    split: str
    modality: str
    records: list[PairRecord]


def plan_parts(records: list[PairRecord], records_per_part: int) -> list[IngestPart]:
    """Group by (split, modality) in schema split order, then cut into chunks; names are stable."""
    groups: dict[tuple[str, str], list[PairRecord]] = {}
    for record in records:
        groups.setdefault((record.split, record.modality), []).append(record)
    order = {split: i for i, split in enumerate(SPLITS)}
    step = max(1, records_per_part)
    parts = []
    for (split, modality) in sorted(groups, key=lambda g: (order.get(g[0], len(order)), g[0], g[1])):
        members = groups[(split, modality)]
        for chunk, start in enumerate(range(0, len(members), step)):
            parts.append(IngestPart(f"{split}-{modality}-{chunk:04d}", split, modality,
                                    members[start:start + step]))
    return parts


def image_scaling(metadata: dict[str, Any]) -> Counter[str]:
    """``{"query:inferred_bits": 1, ...}``: how a sample's images were scaled to 8 bits (images
    decoded plainly count as ``none``)."""
    out: Counter[str] = Counter()
    for role in ("query", "satellite"):
        if f"{role}_size" in metadata:
            out[f"{role}:{metadata.get(f'{role}_decoding', {}).get('scaling', 'none')}"] += 1
    return out


def _skips_url(output: str, part: str) -> str:
    return storage.join(output, WORK_DIR, f"{part}.skips.json")


def write_part_task(output: str, part: IngestPart, source: str, root: str, shard_config: ShardConfig,
                    resume: bool, max_side: int | None) -> dict[str, Any]:
    """One Ray task: write a part (or find it complete) and return its record and skip lists."""
    problems: dict[str, Any] = {"skipped": [], "warnings": [], "panorama_aspects": {}, "scaling": {}}

    def make_samples() -> Iterator[Sample]:
        aspects: Counter[str] = Counter()
        scaling: Counter[str] = Counter()
        for sample in part_samples(part.records, source, root, max_side, shard_config.jpeg_quality,
                                   problems["skipped"], problems["warnings"]):
            if "panorama_aspect" in sample.metadata:
                aspects[f"{sample.metadata['panorama_aspect']:g}"] += 1
            scaling.update(image_scaling(sample.metadata))
            yield sample
        problems["panorama_aspects"] = dict(sorted(aspects.items()))
        problems["scaling"] = dict(sorted(scaling.items()))
        # published before write_part writes the part record: a complete part always has its list
        storage.write_json(_skips_url(output, part.name), problems)

    record = shards.write_part(output, part.name, make_samples, shard_config, resume=resume)
    if record.skipped:
        try:
            problems = storage.read_json(_skips_url(output, part.name))
        except (FileNotFoundError, storage.StorageError):
            problems = {"skipped": [], "warnings": [asdict(Skip(
                "skip_list_unavailable", part.name,
                "part was complete from an earlier run whose skip list is missing"))]}
    return {"part": part.name, "split": part.split, "modality": part.modality, "resumed": record.skipped,
            "panorama_aspects": problems.get("panorama_aspects", {}), "scaling": problems.get("scaling", {}),
            "samples": record.samples, "seconds": record.seconds, "record": record.to_json(),
            "skipped": problems["skipped"], "warnings": problems["warnings"]}


def hash_files_task(urls: list[str]) -> list[str | None]:
    """sha256 of each file (None when it does not exist)."""
    digests: list[str | None] = []
    for url in urls:
        try:
            digests.append(hashlib.sha256(storage.read_bytes(url)).hexdigest())
        except (FileNotFoundError, IsADirectoryError):
            digests.append(None)
    return digests


def _run_tasks(function: Callable[..., Any], argument_lists: list[tuple], describe: Callable[[int, Any], str],
               names: list[str] | None = None) -> list[Any]:
    """Run ``function`` once per argument tuple as Ray tasks; results in argument order.
    A failing task does not stop the others: ``shards.PartsFailed`` lists the failures at the end."""
    names = names or [f"task-{i:04d}" for i in range(len(argument_lists))]
    return shards.run_part_tasks(function, argument_lists, names, describe)


def content_hashes(records: list[PairRecord], output: str, chunk_files: int, resume: bool) -> dict[str, str | None]:
    """sha256 of every distinct image file of ``records``, computed by Ray tasks, cached per chunk."""
    urls = list(dict.fromkeys(u for r in records for u in (r.query, r.satellite) if u is not None))
    chunks = [urls[i:i + chunk_files] for i in range(0, len(urls), max(1, chunk_files))]
    cache_urls = [storage.join(output, WORK_DIR, f"hashes-{i:04d}.json") for i in range(len(chunks))]
    known: dict[int, list[str | None]] = {}
    if resume:
        for i, url in enumerate(cache_urls):
            try:
                cached = storage.read_json(url)
            except (FileNotFoundError, storage.StorageError):
                continue
            if cached.get("files") == chunks[i]:
                known[i] = cached["sha256"]
    todo = [i for i in range(len(chunks)) if i not in known]
    results = _run_tasks(hash_files_task, [(chunks[i],) for i in todo],
                         lambda n, r: f"hashed {len(r)} files", [f"hashes-{i:04d}" for i in todo])
    for i, digests in zip(todo, results):
        storage.write_json(cache_urls[i], {"files": chunks[i], "sha256": digests}, indent=None)
        known[i] = digests
    return {url: digest for i, chunk in enumerate(chunks) for url, digest in zip(chunk, known[i])}


def drop_duplicates(records: list[PairRecord], hashes: dict[str, str | None],
                    root: str) -> tuple[list[PairRecord], list[dict[str, Any]], list[dict[str, Any]]]:
    """Keep the first of records with identical query and satellite contents.

    Returns the kept records, the dropped duplicates and the *conflicts*: records whose query
    content equals an earlier record's but whose satellite differs (kept, reported).
    """
    kept, duplicates, conflicts = [], [], []
    by_pair: dict[tuple[str | None, str | None], PairRecord] = {}
    by_query: dict[str, PairRecord] = {}
    for record in records:
        query_hash = hashes.get(record.query) if record.query else None
        satellite_hash = hashes.get(record.satellite)
        if satellite_hash is None or (record.query is not None and query_hash is None):
            kept.append(record)  # a missing file: the writing pass skips and reports it
            continue
        first = by_pair.get((query_hash, satellite_hash))
        if first is not None:
            duplicates.append({"key": record.key, "duplicate_of": first.key,
                               "query_file": relative_name(record.query, root) if record.query else None,
                               "satellite_file": relative_name(record.satellite, root),
                               "split": record.split})
            continue
        by_pair[(query_hash, satellite_hash)] = record
        if query_hash is not None:
            earlier = by_query.setdefault(query_hash, record)
            if earlier is not record:
                conflicts.append({"key": record.key, "same_query_as": earlier.key,
                                  "query_file": relative_name(record.query, root),
                                  "reason": "identical query image paired with a different satellite image"})
        kept.append(record)
    return kept, duplicates, conflicts


# --------------------------------------------------------------------------- running a plan


def run_plan(plan: IngestPlan, output: str, shard_config: ShardConfig, *, resume: bool = True,
             records_per_part: int = 512, max_side: int | None = None, dedupe: bool | None = None,
             extra_report: dict[str, Any] | None = None, max_rejected_fraction: float = 0.5) -> dict[str, Any]:
    """Write ``plan`` as shards under ``output`` with Ray; returns the ingest report.

    Ray must be initialised.  Writes ``ingest_report.json`` and then ``manifest.json`` (the step
    that publishes the dataset).  A run that keeps no sample, or rejects more than
    ``max_rejected_fraction`` of its rows, raises ``gleam.rejections.RejectedRunError`` (the
    rejected rows grouped by reason, with examples and hints) and publishes nothing: before any
    image is read when planning already kept nothing, else with the report written and no
    manifest (a previous run's manifest in ``output`` is removed: it no longer describes the
    folder).
    """
    from gleam.rejections import check_fraction, check_kept

    check_fraction("max_rejected_fraction", max_rejected_fraction)
    started = time.perf_counter()
    plan.warnings.extend(coordinate_warnings(plan.records))
    if not plan.records:
        skipped = [asdict(s) for s in plan.skipped]
        _unpublish(output)
        check_kept(f"{plan.dataset} at {plan.root}", 0, rejected_rows(skipped), max_rejected_fraction,
                   rejection_groups(skipped), "max_rejected_fraction")
    records = list(plan.records)
    make_keys_unique(records)
    storage.makedirs(output)
    dedupe = plan.dedupe if dedupe is None else dedupe
    duplicates: list[dict[str, Any]] = []
    conflicts: list[dict[str, Any]] = []
    if dedupe:
        hashes = content_hashes(records, output, max(1, records_per_part) * 2, resume)
        records, duplicates, conflicts = drop_duplicates(records, hashes, plan.root)
    parts = plan_parts(records, records_per_part)
    arguments = [(output, part, plan.source, plan.root, shard_config, resume, max_side) for part in parts]
    results = _run_tasks(write_part_task, arguments, lambda i, r: (
        f"part {r['part']}: " + ("complete from an earlier run" if r["resumed"] else f"wrote in {r['seconds']:.1f}s")
        + f", {r['samples']} samples, {len(r['skipped'])} skipped"), [part.name for part in parts])
    records_by_part = [shards.PartRecord.from_json(r["record"]) for r in results]
    manifest_extra: dict[str, Any] = {"ingest": {"source": plan.source, "flags": plan.flags}}
    if plan.evaluation:
        manifest_extra["evaluation"] = plan.evaluation
    report = build_report(plan, output, results, duplicates, conflicts, dedupe, records_per_part, max_side)
    report["seconds"] = round(time.perf_counter() - started, 2)
    off_aspect = report["warnings_by_reason"].get("aspect_ratio", 0)
    if off_aspect:
        log.warning("%s: %d queries are not the benchmark's aspect (panoramas written per aspect: %s); they "
                    "keep their shape in training and serving (padded or cropped, never stretched): see "
                    "'warnings' in %s", plan.dataset, off_aspect, report["panorama_aspects"], REPORT_NAME)
    report.update(extra_report or {})
    kept, rejected = report["samples"], rejected_rows(report["skipped"])
    report["rejected_rows"] = rejected
    report["rejected_by_reason"] = rejection_groups(report["skipped"])
    report["max_rejected_fraction"] = max_rejected_fraction
    storage.write_json(storage.join(output, REPORT_NAME), report)
    if not kept or (rejected and rejected / (kept + rejected) > max_rejected_fraction):
        _unpublish(output)
        check_kept(f"{plan.dataset} at {plan.root} (report: {storage.join(output, REPORT_NAME)})", kept, rejected,
                   max_rejected_fraction, report["rejected_by_reason"], "max_rejected_fraction", report)
    manifest = shards.write_manifest(output, records_by_part, dataset=plan.dataset, extra=manifest_extra)
    report["num_samples"], report["num_shards"] = manifest["num_samples"], manifest["num_shards"]
    return report


def _unpublish(output: str) -> None:
    """Remove a previous run's ``manifest.json`` from ``output``: a failed run leaves no dataset."""
    url = storage.join(output, shards.MANIFEST_NAME)
    if storage.exists(url):
        log.warning("%s: removing the previous manifest (this run failed; the folder holds no complete dataset)", url)
        storage.remove(url)


def panorama_aspects(results: list[dict[str, Any]]) -> dict[str, int]:
    """Panoramas written per width/height aspect (``"5.5"``: 1232x224 CVUSA, ``"2"``: VIGOR)."""
    counts: Counter[str] = Counter()
    for result in results:
        counts.update(result.get("panorama_aspects", {}))
    return dict(sorted(counts.items()))


def build_report(plan: IngestPlan, output: str, results: list[dict[str, Any]], duplicates: list[dict[str, Any]],
                 conflicts: list[dict[str, Any]], dedupe: bool, records_per_part: int,
                 max_side: int | None) -> dict[str, Any]:
    counts: dict[str, dict[str, int]] = {}
    for result in results:
        split_counts = counts.setdefault(result["split"], {})
        split_counts[result["modality"]] = split_counts.get(result["modality"], 0) + result["samples"]
    skipped = [asdict(s) for s in plan.skipped] + [s for r in results for s in r["skipped"]]
    warnings = [asdict(w) for w in plan.warnings] + [w for r in results for w in r["warnings"]]
    written = [r for r in results if not r["resumed"]]
    return {
        "dataset": plan.dataset,
        "source": plan.source,
        "root": plan.root,
        "output": output,
        "records_planned": len(plan.records),
        "samples": sum(r["samples"] for r in results),
        "counts": {split: dict(sorted(counts[split].items()))
                   for split in sorted(counts, key=lambda s: (SPLITS.index(s) if s in SPLITS else len(SPLITS), s))},
        "skipped_count": len(skipped),
        "skipped_by_reason": dict(sorted(Counter(s["reason"] for s in skipped).items())),
        "skipped": skipped,
        "duplicates_removed": len(duplicates),
        "duplicates": duplicates,
        "conflicts": conflicts,
        "warnings_by_reason": dict(sorted(Counter(w["reason"] for w in warnings).items())),
        "panorama_aspects": panorama_aspects(results),
        # images by how their samples became 8-bit (gleam.data.images rule 4): "query:inferred_bits"...
        "scaling": dict(sorted(sum((Counter(r.get("scaling", {})) for r in results), Counter()).items())),
        "warnings": warnings,
        "flags": {**plan.flags, "dedupe": dedupe, "max_side": max_side, "records_per_part": records_per_part},
        "notes": plan.notes,
        "evaluation": plan.evaluation,
        "parts": len(results),
        "parts_written": len(written),
        "parts_skipped": len(results) - len(written),
    }
