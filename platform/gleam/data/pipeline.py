"""Ray Data pipelines over the platform's WebDataset shards.

``read_samples`` streams shards (local or ``s3://``) into a Ray Dataset of decoded, validated
samples, one row per sample:

    key, location_id, modality, split, source : str
    latitude, longitude                        : float
    heading                                    : float, None when unknown
    metadata                                   : str (JSON)
    query, satellite                           : uint8 HxWx3 arrays (``decode=True``) or the
                                                 encoded bytes (``decode=False``); ``query`` is
                                                 None for a ``satellite`` gallery tile

Why a datasource of our own rather than ``ray.data.read_webdataset``: the stock reader raises
on a truncated tar or an undecodable jpg and the whole run fails.  ``ShardDatasource`` is a
``FileBasedDatasource`` over the same tar format that parses each shard with
``gleam.data.shards.iter_shard_samples``: bad samples are skipped, and every skip is recorded in
a ``ReadLedger`` actor so the caller gets exact counts and reasons (``SampleReader.report()``).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd
import ray
from ray.data.datasource import FileBasedDatasource

from gleam import storage
from gleam.data import shards
from gleam.data.benchmark import RowSelection
from gleam.data.schema import Sample

ROWS_PER_BLOCK = 64


def sample_to_row(sample: Sample, decode: bool = True) -> dict[str, Any]:
    """One dataset row for a sample (see the module docstring for the columns).

    A sample whose source has no coordinates (``metadata.coordinates_known`` false, e.g.
    University-1652) gets NaN latitude/longitude here, so nothing downstream mistakes its
    placeholder 0/0 for a place: evaluation leaves localisation error out, GPS batches refuse.
    """
    known = not (isinstance(sample.metadata, dict) and sample.metadata.get("coordinates_known") is False)
    return {
        "key": sample.key,
        "location_id": sample.location_id,
        "modality": sample.modality,
        "split": sample.split,
        "source": sample.source,
        "latitude": float(sample.latitude) if known else float("nan"),
        "longitude": float(sample.longitude) if known else float("nan"),
        "heading": None if sample.heading is None else float(sample.heading),
        "metadata": json.dumps(sample.metadata, ensure_ascii=False),
        "query": sample.query_array() if decode else sample.query_image,
        "satellite": sample.satellite_array() if decode else sample.satellite_image,
    }


@ray.remote(num_cpus=0)
class ReadLedger:
    """Collects per-shard read results from the read tasks of one pipeline."""

    def __init__(self) -> None:
        self.samples = 0
        self.shards: set[str] = set()
        self.corrupt: list[dict[str, str]] = []

    def record(self, shard: str, samples: int, corrupt: list[dict[str, str]]) -> None:
        self.shards.add(shard)
        self.samples += samples
        self.corrupt.extend(corrupt)

    def report(self) -> dict[str, Any]:
        by_field: dict[str, int] = {}
        for item in self.corrupt:
            by_field[item["field"]] = by_field.get(item["field"], 0) + 1
        return {"shards_read": len(self.shards), "samples": self.samples,
                "corrupt": len(self.corrupt), "corrupt_by_field": by_field,
                "corrupt_samples": list(self.corrupt)}


def tile_row(sample: Sample, keep_encoded: bool = False) -> dict[str, Any]:
    """One gallery row for a sample's satellite tile: ``location_id``, ``latitude``,
    ``longitude`` (float, NaN when the source has no coordinates), ``metadata`` (JSON str),
    ``pixels`` (the decoded uint8 HxWx3 tile as raw bytes), ``height``, ``width`` (int), and with
    ``keep_encoded`` the encoded tile as ``satellite``.  The pixels are the ones validation
    decoded (``Sample.satellite_array`` keeps them), so a tile is decoded once on its way to the
    encoder.  ``SampleError`` when the tile cannot be decoded."""
    pixels = np.ascontiguousarray(sample.satellite_array())
    row = sample_to_row(sample, decode=False)
    out = {"location_id": row["location_id"], "latitude": row["latitude"], "longitude": row["longitude"],
           "metadata": row["metadata"], "pixels": pixels.tobytes(),
           "height": int(pixels.shape[0]), "width": int(pixels.shape[1])}
    if keep_encoded:
        out["satellite"] = row["satellite"]
    return out


class ShardDatasource(FileBasedDatasource):
    """Reads platform shards, skipping and reporting corrupt samples (see module docstring).

    ``tiles=True`` reads the gallery instead (``read_gallery_tiles``): one ``tile_row`` per
    location id and shard, the first valid sample of the location standing for it."""

    _FILE_EXTENSIONS = ["tar"]

    def __init__(self, paths: list[str], ledger: Any, decode: bool = True,
                 split: str | Iterable[str] | None = None, modalities: Iterable[str] | None = None,
                 tiles: bool = False, keep_encoded: bool = False, **kwargs: Any):
        super().__init__(paths, **kwargs)
        self._ledger = ledger
        self._decode = decode
        self._tiles = tiles
        self._keep_encoded = keep_encoded
        self._split = None if split is None else ({split} if isinstance(split, str) else set(split))
        self._modalities = set(modalities) if modalities is not None else None

    def _wanted(self, sample: Sample) -> bool:
        if self._split is not None and sample.split not in self._split:
            return False
        return self._modalities is None or sample.modality in self._modalities

    def _read_stream(self, f: Any, path: str) -> Iterator[pd.DataFrame]:
        corrupt: list[shards.CorruptSample] = []
        rows: list[dict[str, Any]] = []
        good = 0
        seen: set[str] = set()  # tiles: the location ids this shard has given a row
        for sample in shards.iter_shard_samples(f, path, corrupt.append, check_images=True,
                                                keep_pixels=self._tiles):
            good += 1
            if not self._wanted(sample):
                continue
            if self._tiles:
                if sample.location_id in seen:
                    continue
                seen.add(sample.location_id)
                rows.append(tile_row(sample, self._keep_encoded))
            else:
                rows.append(sample_to_row(sample, self._decode))
            if len(rows) >= ROWS_PER_BLOCK:
                yield pd.DataFrame.from_records(rows)
                rows = []
        if rows:
            yield pd.DataFrame.from_records(rows)
        ray.get(self._ledger.record.remote(path, good, [asdict(c) for c in corrupt]))


class SampleReader:
    """A Ray Dataset of samples plus the ledger that counts what was skipped."""

    def __init__(self, dataset: ray.data.Dataset, ledger: Any):
        self.dataset = dataset
        self.ledger = ledger

    def report(self) -> dict[str, Any]:
        """Counts after the dataset has been consumed: samples read, corrupt ones and why."""
        return ray.get(self.ledger.report.remote())


def _pyarrow_filesystem(url: str) -> Any:
    """A pyarrow filesystem over our fsspec one, so Ray reads S3 with the same settings."""
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, _ = storage.filesystem(url)
    return PyFileSystem(FSSpecHandler(fs))


def read_samples(source: str | list[str], *, split: str | Iterable[str] | None = None,
                 modalities: Iterable[str] | None = None, decode: bool = True,
                 override_num_blocks: int | None = None, tiles: bool = False,
                 keep_encoded: bool = False) -> SampleReader:
    """Read a dataset folder (with ``manifest.json``) or a list of shard URLs with Ray Data.

    ``split`` (one name or several) / ``modalities`` select samples (and, with a manifest, skip
    shards holding none).  ``tiles``: the gallery's rows instead (see ``read_gallery_tiles``).
    """
    if isinstance(source, str):
        urls = shards.shard_urls(source, split=split, modalities=modalities)
        if not urls:
            raise ValueError(f"{source}: the manifest lists no shard with split={split!r} "
                             f"and modalities={modalities!r}")
    else:
        urls = list(source)
        if not urls:
            raise ValueError("read_samples: no shard URLs given")
    remote = {storage.is_remote(u) for u in urls}
    if len(remote) > 1:
        raise ValueError("read_samples: mix of local and remote shard URLs; use one storage")
    kwargs: dict[str, Any] = {}
    paths = urls
    if remote.pop():
        kwargs["filesystem"] = _pyarrow_filesystem(urls[0])
        paths = [storage.filesystem(u)[1] for u in urls]
    ledger = ReadLedger.options(name=f"gleam-read-{uuid.uuid4().hex[:12]}").remote()
    datasource = ShardDatasource(paths, ledger, decode=decode, split=split, modalities=modalities,
                                 tiles=tiles, keep_encoded=keep_encoded, **kwargs)
    dataset = ray.data.read_datasource(datasource, override_num_blocks=override_num_blocks)
    return SampleReader(dataset, ledger)


def read_gallery_tiles(source: str | list[str], *, split: str | Iterable[str] | None = None,
                       keep_encoded: bool = False) -> SampleReader:
    """The satellite tiles of ``source``'s samples in ``split``, decoded in the read tasks
    (columns of ``tile_row``): every sample is validated as ``read_samples`` does (a bad one is
    counted in the report, never a row), each tile is decoded once, and each read task keeps
    the first sample per location id of its shard.  A location whose samples lie in several
    shards can still give several rows (the same tile): the consumer keeps one
    (``gleam.retrieval.embed.embed_gallery`` does, after embedding)."""
    return read_samples(source, split=split, decode=False, tiles=True, keep_encoded=keep_encoded)


def inspect_dataset(source: str | list[str]) -> dict[str, Any]:
    """Read every sample with Ray Data (validating images too) and count by split and modality."""
    reader = read_samples(source, decode=False)
    counts: dict[str, dict[str, int]] = {}
    for row in reader.dataset.select_columns(["split", "modality"]).iter_rows():
        per_split = counts.setdefault(row["split"], {})
        per_split[row["modality"]] = per_split.get(row["modality"], 0) + 1
    report = reader.report()
    examples = report.pop("corrupt_samples")[:20]
    return {"counts": counts, **report, "examples_of_corrupt": examples}


# --------------------------------------------------------------------------- training sets


def _preprocess_batch(batch: dict[str, Any], sizes: dict[str, tuple[int, int]],
                      satellite_size: tuple[int, int]) -> dict[str, Any]:
    """Decode encoded images and fit them to the encoder's input size for their modality
    (``gleam.data.transforms.fit_view``: panoramas keep their shape)."""
    from gleam.data.schema import decode_image
    from gleam.data.transforms import fit_view, resize

    query_pixels, query_shapes, satellite_pixels = [], [], []
    for key, modality, query, satellite in zip(batch["key"], batch["modality"], batch["query"], batch["satellite"]):
        satellite_array = resize(decode_image(satellite, key, "satellite_image"), satellite_size)
        satellite_pixels.append(satellite_array.tobytes())
        if query is None:
            query_pixels.append(b"")
            query_shapes.append([0, 0])
            continue
        size = sizes.get(modality, satellite_size)
        query_array = fit_view(decode_image(query, key, "query_image"), size, modality)
        query_pixels.append(query_array.tobytes())
        query_shapes.append(list(query_array.shape[:2]))
    return {
        "key": batch["key"], "location_id": batch["location_id"], "modality": batch["modality"],
        "latitude": batch["latitude"], "longitude": batch["longitude"],
        "split": batch["split"] if "split" in batch else np.array([""] * len(batch["key"]), dtype=object),
        "semi_positive_ids": np.array([_semi_positive_ids(m) for m in batch["metadata"]] if "metadata" in batch
                                      else ["[]"] * len(batch["key"]), dtype=object),
        "query_pixels": np.array(query_pixels, dtype=object),
        "query_shape": np.array(query_shapes, dtype=np.int32),
        "satellite_pixels": np.array(satellite_pixels, dtype=object),
    }


def _semi_positive_ids(metadata: str) -> str:
    """``metadata.semi_positive_location_ids`` (VIGOR) as a JSON list string ("[]" when absent)."""
    try:
        ids = json.loads(metadata).get("semi_positive_location_ids") or []
    except (TypeError, ValueError, AttributeError):
        ids = []
    return json.dumps([str(i) for i in ids])


INDEX_COLUMNS = ("key", "location_id", "modality", "latitude", "longitude", "split", "semi_positive_ids")


@ray.remote(num_cpus=0.25)
def _index_block(table: Any) -> dict[str, list[Any]]:
    return {name: table.column(name).to_pylist() for name in INDEX_COLUMNS}


class TrainingSet(RowSelection):
    """Preprocessed samples held in Ray's object store, fetchable by row number from any worker.

    Built once per run from shards (Ray Data: tolerant read -> decode -> resize per modality ->
    materialize).  The batch planner works on ``index``; workers call ``fetch(rows)`` and get
    uint8 pixels, pulling (and caching) only the blocks they need.
    """

    def __init__(self, block_refs: list[Any], columns: dict[str, list[Any]], block_of_row: np.ndarray,
                 offset_in_block: np.ndarray, satellite_size: tuple[int, int], read_report: dict[str, Any],
                 protocol: Any = None, distractors: bool = True):
        self.block_refs = block_refs
        self.keys: list[str] = columns["key"]
        self.location_ids: list[str] = columns["location_id"]
        self.modalities: list[str] = columns["modality"]
        self.splits: list[str] = columns.get("split") or [""] * len(self.keys)
        self.semi_positive_ids: list[list[str]] = [json.loads(v) if v else [] for v in
                                                   columns.get("semi_positive_ids") or [""] * len(self.keys)]
        self.protocol = protocol  # gleam.data.benchmark.EvaluationProtocol of an evaluation set, else None
        self.distractors = distractors
        self.latitudes = np.asarray(columns["latitude"], dtype=np.float64)
        self.longitudes = np.asarray(columns["longitude"], dtype=np.float64)
        self.block_of_row = block_of_row
        self.offset_in_block = offset_in_block
        self.satellite_size = satellite_size
        self.read_report = read_report
        self._cache: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state

    def read_summary(self) -> dict[str, Any]:
        """The read report without the per-sample list (for run summaries)."""
        return {k: v for k, v in self.read_report.items() if k != "corrupt_samples"}

    def reverse_query_mask(self, gallery_rows: np.ndarray) -> np.ndarray | None:
        """Which gallery tiles are satellite->query queries (``None``: all of them)."""
        if self.protocol is None or self.protocol.reverse_queries == "all_tiles":
            return None
        queried = {self.location_ids[r] for r in self.query_rows()}
        return np.array([self.location_ids[r] in queried for r in gallery_rows], dtype=bool)

    def semi_positives(self, query_rows: np.ndarray, gallery_rows: np.ndarray) -> dict[int, list[int]] | None:
        """{query position: gallery positions} of the queries' semi-positive tiles (VIGOR), or
        ``None`` when no query lists any."""
        if not any(self.semi_positive_ids[r] for r in query_rows):
            return None
        position = {self.location_ids[r]: i for i, r in enumerate(gallery_rows)}
        return {q: [position[i] for i in self.semi_positive_ids[r] if i in position]
                for q, r in enumerate(query_rows)}

    def _block(self, block: int) -> Any:
        if block not in self._cache:
            if len(self._cache) >= 64:
                self._cache.pop(next(iter(self._cache)))
            self._cache[block] = ray.get(self.block_refs[block])
        return self._cache[block]

    def fetch(self, rows: Iterable[int], query: bool = True, satellite: bool = True) -> list[dict[str, Any]]:
        """Pixels and ids of ``rows`` (uint8 HxWx3 arrays), in the order asked."""
        out = []
        for row in rows:
            table = self._block(int(self.block_of_row[row]))
            offset = int(self.offset_in_block[row])
            item: dict[str, Any] = {"row": int(row), "key": self.keys[row], "modality": self.modalities[row],
                                    "location_id": self.location_ids[row]}
            if query:
                height, width = table.column("query_shape")[offset].as_py()
                raw = table.column("query_pixels")[offset].as_py()
                item["query"] = np.frombuffer(raw, np.uint8).reshape(height, width, 3) if raw else None
            if satellite:
                raw = table.column("satellite_pixels")[offset].as_py()
                item["satellite"] = np.frombuffer(raw, np.uint8).reshape(*self.satellite_size, 3)
            out.append(item)
        return out


def build_training_set(source: str | list[str], *, split: str | None, modalities: Iterable[str] | None,
                       sizes: dict[str, tuple[int, int]], satellite_size: tuple[int, int],
                       include_distractors: bool = False, evaluation: bool = False) -> TrainingSet:
    """Read, decode, resize and materialize a split for training or evaluation.

    ``evaluation=True``: the split is an evaluation split; the protocol recorded for it in the
    dataset's manifest (``gleam.data.benchmark.protocol_for``) decides which splits are read and
    which rows are queries and gallery (``query_rows`` / ``gallery_rows`` / ``reverse_gallery_rows``).
    """
    protocol = None
    read_split: str | list[str] | None = split
    if evaluation and split is not None:
        from gleam.data.benchmark import protocol_for

        protocol = protocol_for(source, split)
        splits = protocol.splits()
        read_split = splits[0] if len(splits) == 1 else splits
    benchmark_tiles = protocol is not None and protocol.benchmark != "split"  # its gallery tiles are read always
    wanted = None if modalities is None else \
        set(modalities) | ({"satellite"} if include_distractors or benchmark_tiles else set())
    reader = read_samples(source, split=read_split, modalities=wanted, decode=False)
    dataset = reader.dataset.map_batches(_preprocess_batch, batch_size=32, batch_format="numpy",
                                         fn_kwargs={"sizes": sizes, "satellite_size": satellite_size})
    block_refs = dataset.materialize().to_arrow_refs()
    parts = ray.get([_index_block.remote(ref) for ref in block_refs])
    columns: dict[str, list[Any]] = {name: [] for name in INDEX_COLUMNS}
    block_of_row, offset_in_block = [], []
    for block, part in enumerate(parts):
        for name in columns:
            columns[name].extend(part[name])
        block_of_row.extend([block] * len(part["key"]))
        offset_in_block.extend(range(len(part["key"])))
    if not columns["key"]:
        raise ValueError(f"{source}: no samples for split={read_split!r}, modalities={sorted(wanted) if wanted else None}")
    return TrainingSet(block_refs, columns, np.asarray(block_of_row), np.asarray(offset_in_block),
                       satellite_size, reader.report(), protocol=protocol, distractors=include_distractors)
