"""A faiss index over gallery embeddings, with the location ids and coordinates of every row.

Similarity is the inner product of L2-normalised vectors (= cosine), as in training and
``gleam.core.evaluate``.  ``IndexConfig.kind`` picks the structure:

- ``flat``: exact search (``IndexFlatIP``);
- ``ivf``: inverted lists (``IndexIVFFlat``, k-means coarse quantizer, ``nprobe`` lists searched);
- ``hnsw``: graph search (``IndexHNSWFlat``, ``hnsw_m`` links, ``ef_search`` candidates);
- ``ivfpq``: inverted lists of product-quantized codes (``IndexIVFPQ``, ``pq_m`` sub-vectors of
  ``pq_nbits`` bits: ``pq_m`` must divide the dimension);
- ``auto``: flat below ``exact_below`` vectors, IVF from there on.

``use_gpu`` moves flat and IVF indexes to a GPU when the installed faiss has GPU support and a
GPU is visible; otherwise (and for HNSW, which faiss only runs on CPU) it logs a warning and
stays on CPU.  Saved indexes are always CPU indexes.

Every setting is checked before any work (``IndexConfig.check``: the key, the value, the limit
and the fix), and whatever faiss still refuses is re-raised as ``IndexSettingsError`` naming the
step, never a bare C++ ``RuntimeError``.

On storage (local folder or ``s3://`` prefix) an index is one build (``gleam.retrieval.folder``:
staging folder, ``manifest.json`` with every file's sha256, published in one step)::

    index.faiss       faiss.serialize_index bytes
    gallery.parquet   row -> location_id, latitude, longitude
    meta.json         dim, kind, count, metric, checkpoint, created, config
    manifest.json     build id, every file of the build with its bytes and sha256
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
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

    kind: Literal["auto", "flat", "ivf", "hnsw", "ivfpq"] = "auto"
    exact_below: int = 50_000  # auto: flat below this many vectors, else IVF
    nlist: int | None = None  # IVF lists; None: 4*sqrt(N), at most N/39 (>= 39 training points per list)
    nprobe: int | None = None  # IVF lists searched per query; None: min(16, nlist)
    train_size: int | None = None  # IVF k-means training vectors; None: min(N, 256 * nlist)
    hnsw_m: int = 32  # HNSW links per node
    ef_construction: int = 80
    ef_search: int = 128  # HNSW candidates per query (64 gave recall@10 0.89 on the test set)
    pq_m: int = 8  # ivfpq: sub-vectors per code (must divide the embedding dimension)
    pq_nbits: int = 8  # ivfpq: bits per sub-vector code (1..16; training needs >= 2**pq_nbits vectors)
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


class IndexSettingsError(ValueError):
    """An index setting that cannot work, or a faiss step that refused: says the key, the value,
    the limit and the fix."""


KINDS = ("auto", "flat", "ivf", "hnsw", "ivfpq")


def _refuse(key: str, value: Any, limit: str, fix: str) -> IndexSettingsError:
    return IndexSettingsError(f"{key}={value!r}: {limit}; {fix}")


def _check_int(key: str, value: Any, minimum: int, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise _refuse(key, value, f"must be an integer >= {minimum}", fix)


def resolve_kind(config: IndexConfig, count: int) -> str:
    if config.kind not in KINDS:
        raise _refuse("index.kind", config.kind, f"must be one of {', '.join(KINDS)}", "set index.kind=flat "
                      "(exact, small galleries), ivf or hnsw (large ones), or auto")
    if config.kind == "auto":
        return "flat" if count < config.exact_below else "ivf"
    return config.kind


def resolve_nlist(config: IndexConfig, count: int) -> int:
    if config.nlist is not None:
        return int(config.nlist)
    return int(max(1, min(round(4 * math.sqrt(count)), count // 39)))


def resolve_nprobe(config: IndexConfig, nlist: int) -> int:
    return int(config.nprobe) if config.nprobe is not None else min(16, nlist)


def train_sample_size(config: IndexConfig, count: int, nlist: int) -> int:
    """Vectors the IVF k-means (and PQ codebooks) are trained on."""
    wanted = config.train_size if config.train_size is not None else 256 * nlist
    if config.kind == "ivfpq" or resolve_kind(config, count) == "ivfpq":
        wanted = max(wanted, 256 * 2 ** int(config.pq_nbits)) if config.train_size is None else wanted
    return int(min(count, wanted))


def check_settings(config: IndexConfig, count: int | None = None, dim: int | None = None) -> None:
    """Refuse settings that cannot work (``IndexSettingsError`` with the key, the value, the limit
    and the fix), before any work: the count-free rules always, the gallery-size rules with
    ``count`` (the gallery's size, or an upper bound of it), the dimension rules with ``dim``."""
    resolve_kind(config, count or 1)
    _check_int("index.exact_below", config.exact_below, 1, "set index.exact_below=50000 (flat below it, IVF above)")
    if config.nlist is not None:
        _check_int("index.nlist", config.nlist, 1, "set index.nlist to a positive number of IVF lists, or leave it "
                   "unset (auto: 4*sqrt(N), at most N/39)")
    if config.nprobe is not None:
        _check_int("index.nprobe", config.nprobe, 1, "set index.nprobe>=1 IVF lists to search per query (16 is usual)")
    if config.nlist is not None and config.nprobe is not None and config.nprobe > config.nlist:
        raise _refuse("index.nprobe", config.nprobe, f"must be at most index.nlist={config.nlist} (there are no "
                      "more lists to search)", f"set index.nprobe<={config.nlist}, or raise index.nlist")
    if config.train_size is not None:
        _check_int("index.train_size", config.train_size, 1, "set index.train_size to a positive number of "
                   "training vectors, or leave it unset (256 per list)")
    _check_int("index.hnsw_m", config.hnsw_m, 2, "set index.hnsw_m between 2 and 64 links per node (32 is usual)")
    _check_int("index.ef_construction", config.ef_construction, 1, "set index.ef_construction>=1 (80 is usual)")
    _check_int("index.ef_search", config.ef_search, 1, "set index.ef_search>=1 candidates per query (128 is usual)")
    _check_int("index.pq_m", config.pq_m, 1, "set index.pq_m to a divisor of the embedding dimension")
    if isinstance(config.pq_nbits, bool) or not isinstance(config.pq_nbits, (int, np.integer)) \
            or not 1 <= config.pq_nbits <= 16:
        raise _refuse("index.pq_nbits", config.pq_nbits, "must be an integer in [1, 16]", "set index.pq_nbits=8")
    if not isinstance(config.use_gpu, bool):
        raise _refuse("index.use_gpu", config.use_gpu, "must be true or false", "set index.use_gpu=false or true")
    if dim is not None and config.kind == "ivfpq" and dim % config.pq_m:
        divisors = [d for d in range(1, min(dim, 64) + 1) if dim % d == 0]
        raise _refuse("index.pq_m", config.pq_m, f"must divide the embedding dimension {dim}",
                      f"set index.pq_m to one of {divisors}")
    if count is None:
        return
    if count < 1:
        raise IndexSettingsError("the gallery is empty: nothing to index (check the source and split)")
    kind = resolve_kind(config, count)
    if kind not in ("ivf", "ivfpq"):
        return
    nlist = resolve_nlist(config, count)
    if nlist > count:
        raise _refuse("index.nlist", nlist, f"must be at most the gallery size ({count} tiles): each list needs "
                      "vectors", f"set index.nlist<={max(1, count // 39)} (about 39 tiles per list or more), leave "
                      "it unset, or use index.kind=flat for a gallery this small")
    sample = train_sample_size(config, count, nlist)
    if sample < nlist:
        raise _refuse("index.nlist", nlist, f"must be at most the k-means training sample ({sample} vectors: "
                      f"index.train_size={config.train_size})", f"raise index.train_size to >= {nlist} "
                      f"(ideally {39 * nlist}), or set index.nlist<={sample}")
    nprobe = resolve_nprobe(config, nlist)
    if nprobe > nlist:
        raise _refuse("index.nprobe", nprobe, f"must be at most the number of IVF lists ({nlist})",
                      f"set index.nprobe<={nlist}")
    if kind == "ivfpq" and sample < 2 ** config.pq_nbits:
        raise _refuse("index.pq_nbits", config.pq_nbits, f"needs at least 2**{config.pq_nbits} = "
                      f"{2 ** config.pq_nbits} training vectors for its codebooks, the sample has {sample}",
                      f"set index.pq_nbits<={max(1, int(math.log2(sample)))}, or use index.kind=ivf or flat")


def faiss_step(step: str, call: Any, *args: Any) -> Any:
    """Run one faiss call; a RuntimeError (faiss' C++ exceptions) becomes an IndexSettingsError."""
    try:
        return call(*args)
    except RuntimeError as error:
        text = str(error).strip().splitlines()
        detail = next((line for line in text if "Error" in line or "error" in line), text[-1] if text else "")
        raise IndexSettingsError(f"faiss refused to {step} ({detail.strip()[:300]}); check the index.* settings "
                                 "(kind, nlist, nprobe, hnsw_m, pq_m, pq_nbits) or rebuild the index") from None


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
        self.build_id = ""  # the build this index was loaded from (``load``)

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
        check_settings(config, count, dim)
        kind = resolve_kind(config, count)
        nprobe = None
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss_step("create the HNSW index", faiss.IndexHNSWFlat, dim, int(config.hnsw_m),
                               faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = int(config.ef_construction)
        else:
            nlist = resolve_nlist(config, count)
            nprobe = resolve_nprobe(config, nlist)
            quantizer = faiss.IndexFlatIP(dim)
            if kind == "ivfpq":
                index = faiss_step("create the IVF-PQ index", faiss.IndexIVFPQ, quantizer, dim, nlist,
                                   int(config.pq_m), int(config.pq_nbits), faiss.METRIC_INNER_PRODUCT)
            else:
                index = faiss_step("create the IVF index", faiss.IndexIVFFlat, quantizer, dim, nlist,
                                   faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = config.seed
            train_size = train_sample_size(config, count, nlist)
            rows = np.random.default_rng(config.seed).choice(count, train_size, replace=False) \
                if train_size < count else np.arange(count)
            # faiss' wrapper keeps `quantizer` alive with the index
            faiss_step(f"train {nlist} IVF lists on {train_size} vectors", index.train, vectors[np.sort(rows)])
        on_gpu = False
        if config.use_gpu:
            moved = _to_gpu(index, kind)
            on_gpu = moved is not index
            index = moved
        faiss_step(f"add {count} vectors to the {kind} index", index.add, vectors)
        built = cls(index, ids, latitudes, longitudes, kind=kind, config=config, checkpoint=checkpoint,
                    on_gpu=on_gpu)
        built.set_search_params(nprobe, config.ef_search)
        return built

    @property
    def nlist(self) -> int | None:
        return int(self.index.nlist) if self.kind in ("ivf", "ivfpq") and hasattr(self.index, "nlist") else None

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """IVF ``nprobe`` (1..nlist) / HNSW ``ef_search`` (>= 1) for the following searches (other
        kinds: no effect); IndexSettingsError outside those limits."""
        import faiss

        if nprobe is not None and self.kind in ("ivf", "ivfpq"):
            nlist = self.nlist or int(nprobe)
            if isinstance(nprobe, bool) or not isinstance(nprobe, (int, np.integer)) or not 1 <= nprobe <= nlist:
                raise _refuse("index.nprobe", nprobe, f"must be an integer in [1, {nlist}] (the index has {nlist} "
                              "IVF lists)", f"set nprobe between 1 and {nlist}")
            self.config.nprobe = int(nprobe)
            if self.on_gpu:
                faiss.GpuParameterSpace().set_index_parameter(self.index, "nprobe", int(nprobe))
            else:
                self.index.nprobe = int(nprobe)
        if ef_search is not None and self.kind == "hnsw":
            _check_int("index.ef_search", ef_search, 1, "set ef_search>=1 candidates per query (128 is usual)")
            self.config.ef_search = int(ef_search)
            self.index.hnsw.efSearch = int(ef_search)

    # ------------------------------------------------------------------ searching

    def search(self, queries: Any, k: int, *, normalize: bool = False) -> SearchResult:
        """Top-k gallery tiles of each query embedding ([Q, D] or one [D] vector, unit rows;
        ``normalize=True`` normalises them).  ``k`` beyond the gallery size returns it all, ranked.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) < 1:
            raise ValueError(f"k must be an integer of at least 1, got {k!r}")
        vectors = check_embeddings(queries, "query embeddings", dim=self.dim, normalize=normalize)
        k = min(int(k), self.count)
        if len(vectors) == 0:
            empty = np.zeros((0, k))
            return SearchResult(empty.astype(np.float32), empty.astype(np.int64), empty.astype(object),
                                empty.copy(), empty.copy())
        scores, indices = faiss_step(f"search the {self.kind} index (k={k})", self.index.search, vectors, k)
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

    def write_files(self, build: Any) -> None:
        """Write index.faiss, gallery.parquet and meta.json into a ``folder.BuildWriter``."""
        import faiss
        import pyarrow as pa
        import pyarrow.parquet as pq

        build.write_bytes(INDEX_FILE, faiss.serialize_index(_to_cpu(self.index)).tobytes())
        table = pa.table({"location_id": pa.array(self.ids.tolist(), pa.string()),
                          "latitude": pa.array(self.latitudes, pa.float64()),
                          "longitude": pa.array(self.longitudes, pa.float64())})
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        build.write_bytes(GALLERY_FILE, buffer.getvalue())
        build.write_json(META_FILE, self.meta)

    def save(self, url: str) -> str:
        """Write the index alone as one build in folder ``url`` (local or s3://), replacing what was
        there (``gleam.retrieval.folder``); returns ``url``."""
        from gleam.retrieval.folder import BuildWriter

        with BuildWriter(url) as build:
            self.write_files(build)
        return url

    @staticmethod
    def read_meta(url: Any) -> dict[str, Any]:
        """``meta.json`` of the index at ``url`` (or an opened ``IndexFolder``), checked against the
        build's manifest; FileNotFoundError naming the URL when there is no index."""
        from gleam.retrieval.folder import open_folder

        folder = open_folder(url)
        if not folder.has(META_FILE):
            raise FileNotFoundError(f"{folder.url}: build {folder.build_id} holds no gallery index ({META_FILE}); "
                                    f"build one with jobs/build_index.py output={folder.url}")
        meta = folder.read_json(META_FILE)
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{storage.join(folder.url, META_FILE)}: index format {meta.get('format_version')!r}, "
                             f"this code reads {FORMAT_VERSION}; rebuild the index")
        return meta

    @classmethod
    def load(cls, url: Any, *, use_gpu: bool | None = None, nprobe: int | None = None,
             ef_search: int | None = None) -> "GalleryIndex":
        """Read an index written by ``save`` or ``jobs/build_index.py`` (a URL or an opened
        ``IndexFolder``); ``use_gpu``/``nprobe``/``ef_search`` override the saved config.  Raises
        FileNotFoundError naming the missing file, ValueError (``IndexFolderError``) when the files
        do not belong together."""
        import faiss
        import pyarrow.parquet as pq

        from gleam.config import from_dict
        from gleam.retrieval.folder import open_folder

        folder = open_folder(url)
        meta = cls.read_meta(folder)
        blobs = {name: folder.read_bytes(name) for name in (INDEX_FILE, GALLERY_FILE)}
        index = faiss_step(f"read {storage.join(folder.url, INDEX_FILE)}", faiss.deserialize_index,
                           np.frombuffer(blobs[INDEX_FILE], dtype=np.uint8))
        table = pq.read_table(io.BytesIO(blobs[GALLERY_FILE]))
        if index.d != meta["dim"] or index.ntotal != meta["count"] or table.num_rows != meta["count"]:
            raise ValueError(f"{folder.url}: {INDEX_FILE} ({index.ntotal} x {index.d}), {GALLERY_FILE} "
                             f"({table.num_rows} rows) and {META_FILE} ({meta['count']} x {meta['dim']}) disagree")
        config = from_dict(IndexConfig, meta.get("config", {}), storage.join(folder.url, META_FILE))
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
        loaded.build_id = folder.build_id
        loaded.set_search_params(nprobe if nprobe is not None else config.nprobe,
                                 ef_search if ef_search is not None else config.ef_search)
        return loaded
