"""The gallery's tile images, stored beside its index so serving can show and explain them.

``tiles.parquet`` (one row per tile: ``id``, ``image`` as encoded JPEG/PNG bytes) is written
atomically through gleam.storage, so it works on local folders and s3:// alike.
"""

from __future__ import annotations

import io
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from gleam import storage

TILES_NAME = "tiles.parquet"


class TileStore:
    """id -> encoded tile image, held in memory (a 100k-tile gallery at 256 px is ~2 GB: shard it
    or serve thumbnails from object storage beyond that)."""

    def __init__(self, tiles: dict[str, bytes]):
        self._tiles = tiles

    def __len__(self) -> int:
        return len(self._tiles)

    def get(self, tile_id: str) -> bytes | None:
        return self._tiles.get(tile_id)

    @staticmethod
    def write(folder: str, ids: Iterable[str], images: Iterable[bytes]) -> str:
        ids, images = list(ids), [bytes(image) for image in images]
        if len(ids) != len(images):
            raise ValueError(f"{len(ids)} tile ids but {len(images)} images")
        if len(set(ids)) != len(ids):
            raise ValueError("tile ids must be unique")
        table = pa.table({"id": pa.array(ids, pa.string()), "image": pa.array(images, pa.binary())})
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        url = storage.join(folder, TILES_NAME)
        storage.write_bytes(url, buffer.getvalue())
        return url

    @classmethod
    def load(cls, folder: str) -> "TileStore":
        """The folder's tiles; an empty store when the index was built without them."""
        url = storage.join(folder, TILES_NAME)
        if not storage.exists(url):
            return cls({})
        table = pq.read_table(io.BytesIO(storage.read_bytes(url)))
        return cls(dict(zip(table.column("id").to_pylist(), table.column("image").to_pylist())))
