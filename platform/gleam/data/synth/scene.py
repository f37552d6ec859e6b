"""Everything a renderer needs about one world, with fast point lookups.

``Scene`` bundles the layout rasters, the lit orthophoto, the shadow heights, the sun and
per-building / per-tree tables indexed by raster id, so renderers never loop over objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from .appearance import Sun
from .biomes import Biome
from .layout import Layout
from .raster import Grid


COARSE_BLOCK = 8  # pixels per block of the coarse height bound used to skip empty space


def _block_max(height: np.ndarray, block: int) -> np.ndarray:
    """Max height per block, dilated by one block and padded by one zero block per side."""
    n = height.shape[0]
    blocks = -(-n // block)
    padded = np.zeros((blocks * block, blocks * block), dtype=height.dtype)
    padded[:n, :n] = height
    maxima = padded.reshape(blocks, block, blocks, block).max(axis=(1, 3))
    bordered = np.pad(maxima, 2)
    dilated = bordered[1:-1, 1:-1].copy()
    for d_row in (-1, 0, 1):
        for d_col in (-1, 0, 1):
            np.maximum(dilated, bordered[1 + d_row:blocks + 3 + d_row, 1 + d_col:blocks + 3 + d_col],
                       out=dilated)
    return dilated


@dataclass
class Scene:
    """Rendering state of one world (read-only after construction)."""

    layout: Layout
    biome: Biome
    sun: Sun
    ortho: np.ndarray
    shadow: np.ndarray
    padded_flat_height: np.ndarray = field(init=False, repr=False)
    coarse_height: np.ndarray = field(init=False, repr=False)
    building_table: np.ndarray = field(init=False, repr=False)
    facade_colours: np.ndarray = field(init=False, repr=False)
    tree_table: np.ndarray = field(init=False, repr=False)
    max_height: float = field(init=False)

    def __post_init__(self) -> None:
        self.padded_flat_height = np.pad(self.layout.height, 1).reshape(-1)
        self.max_height = float(self.layout.height.max())
        self.coarse_height = _block_max(self.layout.height, COARSE_BLOCK)
        buildings = self.layout.buildings
        self.building_table = np.zeros((len(buildings) + 1, 6), dtype=np.float64)
        self.facade_colours = np.zeros((len(buildings) + 1, 3), dtype=np.float32)
        for b in buildings:
            self.building_table[b.building_id] = (b.x, b.y, b.angle, b.half_length, b.half_width,
                                                  b.eave_height)
            self.facade_colours[b.building_id] = np.array(b.facade_colour) / 255.0
        trees = self.layout.trees
        self.tree_table = np.zeros((len(trees) + 1, 3), dtype=np.float64)
        if len(trees):
            self.tree_table[1:] = np.column_stack([trees.x, trees.y, trees.colour])

    def coarse_height_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Upper bound of the height within COARSE_BLOCK pixels of each point (0 outside)."""
        grid = self.grid
        scale = 1.0 / (grid.res * COARSE_BLOCK)
        n = self.coarse_height.shape[0]
        cols = np.clip((x - grid.x_west) * scale + 1.0, 0.0, n - 1)
        rows = np.clip((grid.y_north - y) * scale + 1.0, 0.0, n - 1)
        return self.coarse_height.reshape(-1)[rows.astype(np.intp) * n + cols.astype(np.intp)]

    @property
    def grid(self) -> Grid:
        return self.layout.grid

    def pixel_index(self, x: npt.ArrayLike, y: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row and column (nearest pixel, clipped) and whether the point lies inside the grid."""
        grid = self.grid
        cols = np.floor((np.asarray(x) - grid.x_west) / grid.res).astype(np.int64)
        rows = np.floor((grid.y_north - np.asarray(y)) / grid.res).astype(np.int64)
        inside = (rows >= 0) & (rows < grid.size) & (cols >= 0) & (cols < grid.size)
        return np.clip(rows, 0, grid.size - 1), np.clip(cols, 0, grid.size - 1), inside

    def height_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Surface height (nearest pixel), 0 outside the region."""
        grid = self.grid
        scale = 1.0 / grid.res
        cols = (x - grid.x_west) * scale + 1.0
        rows = (grid.y_north - y) * scale + 1.0
        np.clip(cols, 0.0, grid.size + 1, out=cols)
        np.clip(rows, 0.0, grid.size + 1, out=rows)
        flat = rows.astype(np.intp) * (grid.size + 2) + cols.astype(np.intp)
        return self.padded_flat_height[flat]

    def lookup(self, raster: np.ndarray, x: npt.ArrayLike, y: npt.ArrayLike, fill: npt.ArrayLike
               ) -> np.ndarray:
        """Raster value at points (nearest pixel); fill outside the region."""
        rows, cols, inside = self.pixel_index(x, y)
        values = raster[rows, cols]
        mask = inside.reshape(inside.shape + (1,) * (values.ndim - inside.ndim))
        return np.where(mask, values, np.asarray(fill, dtype=values.dtype))

    def shadowed(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """True where the point (x, y, z) lies in the shadow of buildings or trees."""
        return z + 0.3 < self.lookup(self.shadow, x, y, 0.0)

    @property
    def outside_colour(self) -> np.ndarray:
        """Ground colour beyond the region's edge (uint8 RGB)."""
        return np.array(self.biome.grass if self.biome.yard_ground == "grass" else self.biome.bare,
                        dtype=np.uint8)
