"""A faiss index over gallery embeddings, with the location ids and coordinates of every row.

Similarity is the inner product of L2-normalised vectors (= cosine), as in training and
``gleam.core.evaluate``.  ``IndexConfig.kind`` picks the structure:

- ``flat``: exact search (``IndexFlatIP``);
- ``ivf``: inverted lists (``IndexIVFFlat``, k-means coarse quantizer, ``nprobe`` lists searched);
- ``hnsw``: graph search (``IndexHNSWFlat``, ``hnsw_m`` links, ``ef_search`` candidates);
- ``auto``: flat below ``exact_below`` vectors, IVF from there on.

``use_gpu`` moves flat and IVF indexes to a GPU when the installed faiss has GPU support and a
GPU is visible; otherwise (and for HNSW, which faiss only runs on CPU) it logs a warning and
stays on CPU.  Saved indexes are always CPU indexes.

On storage (local folder or ``s3://`` prefix), every file written atomically through
``gleam.storage``::

    index.faiss       faiss.serialize_index bytes
    gallery.parquet   row -> location_id, latitude, longitude
    meta.json         dim, kind, count, metric, checkpoint, created, config, sha256 of the two
                      files above; written last, so a complete meta.json means a complete index
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import io
import logging
import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np

from gleam import storage

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
GALLERY_FILE = "gallery.parquet"
META_FILE = "meta.json"
FORMAT_VERSION = 1
NORM_TOLERANCE = 1e-3


@dataclass
class IndexConfig:
    """Which faiss structure and its search/build parameters."""

    kind: Literal["auto", "flat", "ivf", "hnsw"] = "auto"
    exact_below: int = 50_000  # auto: flat below this many vectors, else IVF
    nlist: int | None = None  # IVF lists; None: 4*sqrt(N), at most N/39 (>= 39 training points per list)
    nprobe: int = 16  # IVF lists searched per query
    train_size: int | None = None  # IVF k-means training vectors; None: min(N, 256 * nlist)
    hnsw_m: int = 32  # HNSW links per node
    ef_construction: int = 80
    ef_search: int = 128  # HNSW candidates per query (64 gave recall@10 0.89 on the test set)
    use_gpu: bool = False  # faiss GPU when available (falls back to CPU with a warning)
    seed: int = 0


@dataclass
class SearchResult:
    """Top-k hits per query, best first.  Missing hits (an IVF probe found fewer than k) have
    index -1, id "", score -inf and NaN coordinates."""

    scores: np.ndarray  # [Q, k] float32
    indices: np.ndarray  # [Q, k] int64 gallery rows
    ids: np.ndarray  # [Q, k] location ids (str)
    latitudes: np.ndarray  # [Q, k] float64
    longitudes: np.ndarray  # [Q, k] float64

    def hits(self, query: int) -> list[dict[str, Any]]:
        """The hits of one query, best first, as JSON-ready dicts ``{rank, id, score, lat, lon}``
        (missing hits left out)."""
        return [{"rank": j + 1, "id": str(self.ids[query, j]), "score": float(self.scores[query, j]),
                 "lat": json_coordinate(self.latitudes[query, j]), "lon": json_coordinate(self.longitudes[query, j])}
                for j in range(self.indices.shape[1]) if self.indices[query, j] >= 0]

    def __getitem__(self, query: int) -> list[dict[str, Any]]:
        return self.hits(query)

    def __len__(self) -> int:
        return int(self.indices.shape[0])


def json_coordinate(value: float) -> float | None:
    """A JSON-ready coordinate: None for a tile whose source has no coordinates (NaN)."""
    value = float(value)
    return value if np.isfinite(value) else None


def resolve_kind(config: IndexConfig, count: int) -> str:
    if config.kind == "auto":
        return "flat" if count < config.exact_below else "ivf"
    if config.kind not in ("flat", "ivf", "hnsw"):
        raise ValueError(f"index.kind must be auto, flat, ivf or hnsw, got {config.kind!r}")
    return config.kind


def resolve_nlist(config: IndexConfig, count: int) -> int:
    if config.nlist is not None:
        if config.nlist < 1 or config.nlist > count:
            raise ValueError(f"index.nlist={config.nlist} must be in [1, {count}] (the gallery size)")
        return config.nlist
    return int(max(1, min(round(4 * math.sqrt(count)), count // 39)))


def check_embeddings(embeddings: Any, name: str = "embeddings", dim: int | None = None,
                     normalize: bool = False) -> np.ndarray:
    """A C-contiguous float32 [N, D] array of unit rows, or a ValueError saying what is wrong."""
    array = np.asarray(embeddings)
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim == 1 and dim is not None and array.shape[0] == dim:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(f"{name} must be a 2-D array [N, D], got shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"{name} have dimension {array.shape[1]}, but the index holds {dim}-d vectors "
                         "(was it built with another checkpoint?)")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    norms = np.linalg.norm(array.astype(np.float64), axis=1)
    if normalize:
        if (norms == 0).any():
            raise ValueError(f"{name} have an all-zero row, which cannot be normalised")
        return np.ascontiguousarray(array / norms[:, None].astype(np.float32))
    if len(array):
        worst = int(np.argmax(np.abs(norms - 1)))
        if abs(norms[worst] - 1) > NORM_TOLERANCE:
            raise ValueError(f"{name} must be L2-normalised (row {worst} has norm {norms[worst]:.6g}); "
                             "normalise them or pass normalize=True")
    return array


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _to_gpu(index: Any, kind: str) -> Any:
    """The index on GPU 0 when faiss and the machine allow it; else the same CPU index."""
    import faiss

    if kind == "hnsw":
        log.warning("index.use_gpu: faiss has no GPU HNSW; searching on CPU")
        return index
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        log.warning("index.use_gpu: %s; searching on CPU",
                    "this faiss build has no GPU support (install faiss-gpu instead of faiss-cpu)"
                    if not hasattr(faiss, "StandardGpuResources") else "no GPU is visible")
        return index
    try:
        resources = faiss.StandardGpuResources()
        gpu_index = faiss.index_cpu_to_gpu(resources, 0, index)
        gpu_index.gleam_resources = resources  # keep the resources alive as long as the index
        return gpu_index
    except Exception as error:  # unsupported index type on this build, out of memory, ...
        log.warning("index.use_gpu: moving the index to the GPU failed (%s); searching on CPU", error)
        return index


def _to_cpu(index: Any) -> Any:
    import faiss

    if hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(index).__name__:
        return faiss.index_gpu_to_cpu(index)
    return index


class GalleryIndex:
    """A searchable gallery: faiss index + location ids + coordinates (see module docstring)."""

    def __init__(self, index: Any, ids: Sequence[str], latitudes: Any, longitudes: Any, *,
                 kind: str, config: IndexConfig, checkpoint: str | None = None,
                 created: str | None = None, on_gpu: bool = False):
        self.index = index
        self.ids = np.asarray([str(i) for i in ids], dtype=object)
        self.latitudes = np.asarray(latitudes, dtype=np.float64)
        self.longitudes = np.asarray(longitudes, dtype=np.float64)
        self.kind = kind
        self.config = config
        self.checkpoint = checkpoint
        self.created = created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.on_gpu = on_gpu

    # ------------------------------------------------------------------ properties

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    def __len__(self) -> int:
        return self.count

    @property
    def lats(self) -> np.ndarray:
        return self.latitudes

    @property
    def lons(self) -> np.ndarray:
        return self.longitudes

    def __repr__(self) -> str:
        return (f"GalleryIndex(kind={self.kind}, count={self.count}, dim={self.dim}, "
                f"gpu={self.on_gpu}, checkpoint={self.checkpoint!r})")

    @property
    def meta(self) -> dict[str, Any]:
        """What ``meta.json`` records (without the file checksums)."""
        import faiss

        return {"format_version": FORMAT_VERSION, "dim": self.dim, "kind": self.kind, "count": self.count,
                "metric": "inner_product", "normalized": True, "checkpoint": self.checkpoint,
                "created": self.created, "faiss_version": faiss.__version__,
                "config": dataclasses.asdict(self.config)}

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, embeddings: Any, ids: Sequence[str], latitudes: Any, longitudes: Any,
              config: IndexConfig | None = None, *, checkpoint: str | None = None,
              normalize: bool = False) -> "GalleryIndex":
        """Index ``embeddings`` [N, D] (unit rows; ``normalize=True`` normalises them) whose row i is
        the satellite tile of location ``ids[i]`` at (``latitudes[i]``, ``longitudes[i]``)."""
        import faiss

        config = config or IndexConfig()
        vectors = check_embeddings(embeddings, normalize=normalize)
        count, dim = vectors.shape
        if count == 0:
            raise ValueError("the gallery is empty: nothing to index (check the source and split)")
        for name, values in (("ids", ids), ("latitudes", latitudes), ("longitudes", longitudes)):
            if len(values) != count:
                raise ValueError(f"{name} has {len(values)} entries but there are {count} embeddings")
        kind = resolve_kind(config, count)
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = config.ef_construction
        else:
            nlist = resolve_nlist(config, count)
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = config.seed
            train_size = min(count, config.train_size or 256 * nlist)
            rows = np.random.default_rng(config.seed).choice(count, train_size, replace=False) \
                if train_size < count else np.arange(count)
            index.train(vectors[np.sort(rows)])  # faiss' wrapper keeps `quantizer` alive with the index
        on_gpu = False
        if config.use_gpu:
            moved = _to_gpu(index, kind)
            on_gpu = moved is not index
            index = moved
        index.add(vectors)
        built = cls(index, ids, latitudes, longitudes, kind=kind, config=config, checkpoint=checkpoint,
                    on_gpu=on_gpu)
        built.set_search_params(config.nprobe, config.ef_search)
        return built

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """IVF ``nprobe`` / HNSW ``ef_search`` for the following searches (others: no effect)."""
        import faiss

        if nprobe is not None and self.kind == "ivf":
            self.config.nprobe = nprobe
            if self.on_gpu:
                faiss.GpuParameterSpace().set_index_parameter(self.index, "nprobe", nprobe)
            else:
                self.index.nprobe = nprobe
        if ef_search is not None and self.kind == "hnsw":
            self.config.ef_search = ef_search
            self.index.hnsw.efSearch = ef_search

    # ------------------------------------------------------------------ searching

    def search(self, queries: Any, k: int, *, normalize: bool = False) -> SearchResult:
        """Top-k gallery tiles of each query embedding ([Q, D] or one [D] vector, unit rows;
        ``normalize=True`` normalises them).  ``k`` beyond the gallery size returns it all, ranked.
        """
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        vectors = check_embeddings(queries, "query embeddings", dim=self.dim, normalize=normalize)
        k = min(int(k), self.count)
        if len(vectors) == 0:
            empty = np.zeros((0, k))
            return SearchResult(empty.astype(np.float32), empty.astype(np.int64), empty.astype(object),
                                empty.copy(), empty.copy())
        scores, indices = self.index.search(vectors, k)
        indices = indices.astype(np.int64)
        missing = indices < 0
        safe = np.where(missing, 0, indices)
        ids = self.ids[safe]
        ids[missing] = ""
        latitudes, longitudes = self.latitudes[safe], self.longitudes[safe]
        latitudes[missing] = np.nan
        longitudes[missing] = np.nan
        scores = scores.astype(np.float32)
        scores[missing] = -np.inf
        return SearchResult(scores, indices, ids, latitudes, longitudes)

    # ------------------------------------------------------------------ storage

    def save(self, url: str) -> str:
        """Write the index to folder ``url`` (local or s3://); returns ``url``."""
        import faiss
        import pyarrow as pa
        import pyarrow.parquet as pq

        index_bytes = faiss.serialize_index(_to_cpu(self.index)).tobytes()
        table = pa.table({"location_id": pa.array(self.ids.tolist(), pa.string()),
                          "latitude": pa.array(self.latitudes, pa.float64()),
                          "longitude": pa.array(self.longitudes, pa.float64())})
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        gallery_bytes = buffer.getvalue()
        storage.makedirs(url)
        storage.write_bytes(storage.join(url, INDEX_FILE), index_bytes)
        storage.write_bytes(storage.join(url, GALLERY_FILE), gallery_bytes)
        meta = self.meta
        meta["files"] = {INDEX_FILE: {"bytes": len(index_bytes), "sha256": _sha256(index_bytes)},
                         GALLERY_FILE: {"bytes": len(gallery_bytes), "sha256": _sha256(gallery_bytes)}}
        storage.write_json(storage.join(url, META_FILE), meta)
        return url

    @staticmethod
    def read_meta(url: str) -> dict[str, Any]:
        """``meta.json`` of the index at ``url``; FileNotFoundError naming the URL when absent."""
        meta_url = storage.join(url, META_FILE)
        if not storage.exists(meta_url):
            raise FileNotFoundError(f"{url}: not a gallery index (no {META_FILE}); build one with "
                                    "jobs/build_index.py")
        meta = storage.read_json(meta_url)
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{meta_url}: index format {meta.get('format_version')!r}, this code reads "
                             f"{FORMAT_VERSION}; rebuild the index")
        return meta

    @classmethod
    def load(cls, url: str, *, use_gpu: bool | None = None, nprobe: int | None = None,
             ef_search: int | None = None) -> "GalleryIndex":
        """Read an index written by ``save``; ``use_gpu``/``nprobe``/``ef_search`` override the
        saved config.  Raises FileNotFoundError naming the missing file, ValueError when the files
        do not belong together."""
        import faiss
        import pyarrow.parquet as pq

        from gleam.config import from_dict

        meta = cls.read_meta(url)
        blobs = {}
        for name in (INDEX_FILE, GALLERY_FILE):
            file_url = storage.join(url, name)
            try:
                blobs[name] = storage.read_bytes(file_url)
            except FileNotFoundError:
                raise FileNotFoundError(f"{url}: index incomplete, {file_url} is missing") from None
            expected = meta.get("files", {}).get(name, {}).get("sha256")
            if expected and _sha256(blobs[name]) != expected:
                raise ValueError(f"{file_url}: content does not match {META_FILE} (a concurrent or "
                                 "interrupted save?); rebuild the index")
        index = faiss.deserialize_index(np.frombuffer(blobs[INDEX_FILE], dtype=np.uint8))
        table = pq.read_table(io.BytesIO(blobs[GALLERY_FILE]))
        if index.d != meta["dim"] or index.ntotal != meta["count"] or table.num_rows != meta["count"]:
            raise ValueError(f"{url}: {INDEX_FILE} ({index.ntotal} x {index.d}), {GALLERY_FILE} "
                             f"({table.num_rows} rows) and {META_FILE} ({meta['count']} x {meta['dim']}) disagree")
        config = from_dict(IndexConfig, meta.get("config", {}), storage.join(url, META_FILE))
        if use_gpu is not None:
            config.use_gpu = use_gpu
        on_gpu = False
        if config.use_gpu:
            moved = _to_gpu(index, meta["kind"])
            on_gpu = moved is not index
            index = moved
        loaded = cls(index, table.column("location_id").to_pylist(), table.column("latitude").to_numpy(),
                     table.column("longitude").to_numpy(), kind=meta["kind"], config=config,
                     checkpoint=meta.get("checkpoint"), created=meta.get("created"), on_gpu=on_gpu)
        loaded.set_search_params(nprobe if nprobe is not None else config.nprobe,
                                 ef_search if ef_search is not None else config.ef_search)
        return loaded

