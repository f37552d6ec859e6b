"""The mutable rasters a layout is painted on while a world is generated."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import classes as C
from .raster import Grid


@dataclass
class Canvas:
    """Class map, surface variant, paint marks, feature/building/tree ids and heights."""

    grid: Grid
    class_map: np.ndarray
    surface: np.ndarray
    marking: np.ndarray
    feature_id: np.ndarray
    building_id: np.ndarray
    tree_id: np.ndarray
    height: np.ndarray

    @classmethod
    def empty(cls, grid: Grid) -> "Canvas":
        shape = (grid.size, grid.size)
        return cls(grid=grid,
                   class_map=np.full(shape, C.BARE, dtype=np.uint8),
                   surface=np.zeros(shape, dtype=np.uint8),
                   marking=np.zeros(shape, dtype=bool),
                   feature_id=np.zeros(shape, dtype=np.int32),
                   building_id=np.zeros(shape, dtype=np.int32),
                   tree_id=np.zeros(shape, dtype=np.int32),
                   height=np.zeros(shape, dtype=np.float32))

    def window(self, x: float, y: float, radius_m: float
               ) -> tuple[slice, slice, np.ndarray, np.ndarray]:
        """(rows, cols) slices and pixel-centre coordinates (xs, ys) around (x, y)."""
        rows, cols = self.grid.pixel_window(x, y, radius_m)
        xs, ys = self.grid.window_coords(rows, cols)
        return rows, cols, xs, ys

    def is_open(self, rows: slice, cols: slice, mask: np.ndarray,
                allowed: tuple[int, ...] = C.OPEN_GROUND) -> bool:
        """True if every masked pixel of the window is open ground without a building."""
        cls = self.class_map[rows, cols][mask]
        if cls.size == 0:
            return False
        return bool(C.class_lookup(allowed)[cls].all() and not self.building_id[rows, cols][mask].any())
