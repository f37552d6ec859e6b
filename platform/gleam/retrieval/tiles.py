"""The gallery's tile images, stored beside its index so serving can show and explain them.

``tiles.parquet`` (one row per tile: ``id``, ``image`` as encoded JPEG/PNG bytes and, when the
samples say it, the tile's ground footprint ``lat_min, lon_min, lat_max, lon_max`` in degrees, NaN
when unknown) is written atomically through gleam.storage, so it works on local folders and s3://
alike.  The web page draws each tile over its footprint as the map's basemap.
"""

from __future__ import annotations

import io
import math
from typing import Any, Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from gleam import storage
from gleam.core.evaluate import EARTH_RADIUS_M  # IUGG mean radius, for the metre -> degree conversion

TILES_NAME = "tiles.parquet"
BOUNDS_COLUMNS = ("lat_min", "lon_min", "lat_max", "lon_max")
NO_BOUNDS = (math.nan, math.nan, math.nan, math.nan)

Bounds = tuple[float, float, float, float]


def tile_bounds(metadata: Any, latitude: float, longitude: float) -> Bounds:
    """A tile's footprint ``(lat_min, lon_min, lat_max, lon_max)`` in degrees from its sample's
    metadata: ``tile_bounds_latlon`` as given (the synthetic world writes it), else a square of
    ``tile_size_m`` metres centred on (``latitude``, ``longitude``) by the local equirectangular
    approximation (1 degree of latitude = pi R / 180 m, of longitude that times cos(latitude));
    all NaN when neither is known or the values are not finite numbers."""
    if not isinstance(metadata, dict):
        return NO_BOUNDS
    given = metadata.get("tile_bounds_latlon")
    try:
        if isinstance(given, (list, tuple)) and len(given) == 4:
            bounds = tuple(float(v) for v in given)
            if all(math.isfinite(v) for v in bounds) and bounds[0] < bounds[2] and bounds[1] < bounds[3]:
                return bounds  # type: ignore[return-value]
        size = float(metadata.get("tile_size_m", math.nan))
    except (TypeError, ValueError):
        return NO_BOUNDS
    latitude, longitude = float(latitude), float(longitude)
    if not (math.isfinite(size) and size > 0 and math.isfinite(latitude) and math.isfinite(longitude)
            and abs(latitude) < 89.0):
        return NO_BOUNDS
    half_lat = math.degrees(size / 2 / EARTH_RADIUS_M)
    half_lon = half_lat / math.cos(math.radians(latitude))
    return (latitude - half_lat, longitude - half_lon, latitude + half_lat, longitude + half_lon)


class TileStore:
    """id -> encoded tile image, held in memory (a 100k-tile gallery at 256 px is ~2 GB: shard it
    or serve thumbnails from object storage beyond that)."""

    def __init__(self, tiles: dict[str, bytes], bounds: dict[str, Bounds] | None = None):
        self._tiles = tiles
        self._bounds = bounds or {}

    def __len__(self) -> int:
        return len(self._tiles)

    def get(self, tile_id: str) -> bytes | None:
        return self._tiles.get(tile_id)

    def bounds(self, tile_id: str) -> Bounds | None:
        """The tile's footprint ``(lat_min, lon_min, lat_max, lon_max)``; None when unknown."""
        return self._bounds.get(tile_id)

    @staticmethod
    def write(folder: Any, ids: Iterable[str], images: Iterable[bytes],
              bounds: Sequence[Sequence[float]] | None = None) -> str:
        """Write ``tiles.parquet`` into a folder URL or a build's staging folder
        (``gleam.retrieval.folder.BuildWriter``); ``bounds`` [N, 4] (``tile_bounds``, NaN rows when
        unknown)."""
        ids, images = list(ids), [bytes(image) for image in images]
        if len(ids) != len(images):
            raise ValueError(f"{len(ids)} tile ids but {len(images)} images")
        if len(set(ids)) != len(ids):
            raise ValueError("tile ids must be unique")
        columns = {"id": pa.array(ids, pa.string()), "image": pa.array(images, pa.binary())}
        if bounds is not None:
            rows = [tuple(float(v) for v in row) for row in bounds]
            if len(rows) != len(ids) or any(len(row) != 4 for row in rows):
                raise ValueError(f"bounds must be {len(ids)} rows of (lat_min, lon_min, lat_max, lon_max), "
                                 f"got {len(rows)} rows")
            for position, name in enumerate(BOUNDS_COLUMNS):
                columns[name] = pa.array([row[position] for row in rows], pa.float64())
        table = pa.table(columns)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        if hasattr(folder, "write_bytes"):  # a BuildWriter: the file joins the build's manifest
            folder.write_bytes(TILES_NAME, buffer.getvalue())
            return folder.path(TILES_NAME)
        url = storage.join(folder, TILES_NAME)
        storage.write_bytes(url, buffer.getvalue())
        return url

    @classmethod
    def load(cls, folder: Any) -> "TileStore":
        """The tiles of an index folder (a URL: its manifest is checked, or an opened
        ``IndexFolder``), checked against the build's manifest; an empty store when the build has
        none.  A plain folder without a manifest (``write`` to a URL) is read as it is."""
        from gleam.retrieval.folder import MANIFEST_FILE, IndexFolder

        if isinstance(folder, str) and storage.exists(storage.join(folder, MANIFEST_FILE)):
            folder = IndexFolder.open(folder)
        if isinstance(folder, IndexFolder):
            if not folder.has(TILES_NAME):
                return cls({})
            data = folder.read_bytes(TILES_NAME)
        else:
            url = storage.join(folder, TILES_NAME)
            if not storage.exists(url):
                return cls({})
            data = storage.read_bytes(url)
        table = pq.read_table(io.BytesIO(data))
        ids = table.column("id").to_pylist()
        bounds: dict[str, Bounds] = {}
        if all(name in table.column_names for name in BOUNDS_COLUMNS):  # older stores have none
            columns = [table.column(name).to_pylist() for name in BOUNDS_COLUMNS]
            for tile_id, *row in zip(ids, *columns):
                if all(v is not None and math.isfinite(v) for v in row):
                    bounds[tile_id] = tuple(row)  # type: ignore[assignment]
        return cls(dict(zip(ids, table.column("image").to_pylist())), bounds)
