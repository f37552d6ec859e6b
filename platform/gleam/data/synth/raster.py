"""The world's pixel grid and vectorised raster helpers (sampling, stamping, noise).

Grid convention: row 0 is the northern edge, column 0 the western edge; a pixel index
(row, col) has its centre at x = x_west + (col + 0.5) * res, y = y_north - (row + 0.5) * res.
Continuous pixel coordinates put integer values on pixel centres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Grid:
    """A square raster of ``size`` x ``size`` pixels of ``res`` metres centred on (0, 0)."""

    size: int
    res: float

    @property
    def extent_m(self) -> float:
        return self.size * self.res

    @property
    def x_west(self) -> float:
        return -self.extent_m / 2.0

    @property
    def y_north(self) -> float:
        return self.extent_m / 2.0

    def col_of_x(self, x: npt.ArrayLike) -> np.ndarray:
        return (np.asarray(x) - self.x_west) / self.res - 0.5

    def row_of_y(self, y: npt.ArrayLike) -> np.ndarray:
        return (self.y_north - np.asarray(y)) / self.res - 0.5

    def x_of_col(self, col: npt.ArrayLike) -> np.ndarray:
        return self.x_west + (np.asarray(col) + 0.5) * self.res

    def y_of_row(self, row: npt.ArrayLike) -> np.ndarray:
        return self.y_north - (np.asarray(row) + 0.5) * self.res

    def pixel_window(self, x: float, y: float, radius_m: float) -> tuple[slice, slice]:
        """Row and column slices of the pixels within radius_m (square) of (x, y), clipped."""
        r0, r1 = self.row_of_y(y + radius_m), self.row_of_y(y - radius_m)
        c0, c1 = self.col_of_x(x - radius_m), self.col_of_x(x + radius_m)
        rows = slice(max(0, int(math.floor(r0))), min(self.size, int(math.ceil(r1)) + 1))
        cols = slice(max(0, int(math.floor(c0))), min(self.size, int(math.ceil(c1)) + 1))
        return rows, cols

    def window_coords(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """x (1, w) and y (h, 1) of the pixel centres of a window, broadcastable."""
        xs = self.x_of_col(np.arange(cols.start, cols.stop))[None, :]
        ys = self.y_of_row(np.arange(rows.start, rows.stop))[:, None]
        return xs, ys


def nearest_index(grid: Grid, x: npt.ArrayLike, y: npt.ArrayLike
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat pixel indices of the pixels containing points (x, y) and an in-bounds mask."""
    cols = np.floor(grid.col_of_x(x) + 0.5).astype(np.int64)
    rows = np.floor(grid.row_of_y(y) + 0.5).astype(np.int64)
    inside = (rows >= 0) & (rows < grid.size) & (cols >= 0) & (cols < grid.size)
    flat = np.clip(rows, 0, grid.size - 1) * grid.size + np.clip(cols, 0, grid.size - 1)
    return flat, inside, rows


def sample_bilinear(raster: np.ndarray, grid: Grid, x: npt.ArrayLike, y: npt.ArrayLike,
                    fill: npt.ArrayLike) -> np.ndarray:
    """Bilinearly interpolated (H, W, C) raster at points (x, y) as float32; fill outside."""
    cols = grid.col_of_x(x)
    rows = grid.row_of_y(y)
    c0 = np.floor(cols)
    r0 = np.floor(rows)
    fc = (cols - c0).astype(np.float32)[..., None]
    fr = (rows - r0).astype(np.float32)[..., None]
    c0 = c0.astype(np.int64)
    r0 = r0.astype(np.int64)
    inside = (rows >= -0.5) & (rows <= grid.size - 0.5) & (cols >= -0.5) & (cols <= grid.size - 0.5)
    flat_raster = raster.reshape(grid.size * grid.size, -1)
    n = grid.size

    def corner(dr: int, dc: int) -> np.ndarray:
        rr = np.clip(r0 + dr, 0, n - 1)
        cc = np.clip(c0 + dc, 0, n - 1)
        return flat_raster[rr * n + cc].astype(np.float32)

    top = corner(0, 0) * (1 - fc) + corner(0, 1) * fc
    bottom = corner(1, 0) * (1 - fc) + corner(1, 1) * fc
    values = top * (1 - fr) + bottom * fr
    return np.where(inside[..., None], values, np.asarray(fill, dtype=np.float32))


def rotated_rect_mask(xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, angle: float,
                      half_length: float, half_width: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mask of points inside a rectangle rotated by angle (radians from east, counter-clockwise)
    plus the points' local coordinates (along the length axis, along the width axis)."""
    dx = xs - cx
    dy = ys - cy
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    along = dx * cos_a + dy * sin_a
    across = -dx * sin_a + dy * cos_a
    inside = (np.abs(along) <= half_length) & (np.abs(across) <= half_width)
    return inside, along, across


def _smooth_axis_weights(n: int, cell: float, offset: float) -> tuple[np.ndarray, np.ndarray]:
    position = (np.arange(n) + 0.5) / cell + offset
    index = np.floor(position).astype(np.int64)
    frac = position - index
    return index, (frac * frac * (3.0 - 2.0 * frac)).astype(np.float32)


def value_noise(shape: tuple[int, int], cell_px: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth value noise in [0, 1] with features about cell_px pixels wide (float32)."""
    height, width = shape
    grid_h = int(math.ceil(height / cell_px)) + 3
    grid_w = int(math.ceil(width / cell_px)) + 3
    lattice = rng.random((grid_h, grid_w), dtype=np.float32)
    rows, row_w = _smooth_axis_weights(height, cell_px, rng.random())
    cols, col_w = _smooth_axis_weights(width, cell_px, rng.random())
    along_rows = lattice[rows] * (1 - row_w)[:, None] + lattice[rows + 1] * row_w[:, None]
    return along_rows[:, cols] * (1 - col_w) + along_rows[:, cols + 1] * col_w


def hash_noise(*coords: np.ndarray, salt: int = 0) -> np.ndarray:
    """Deterministic pseudo-random values in [0, 1) from integer coordinates (no state)."""
    value = np.uint64(salt * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF)
    acc = np.full(np.broadcast(*coords).shape, value, dtype=np.uint64)
    for axis, coord in enumerate(coords):
        c = np.asarray(coord).astype(np.int64).astype(np.uint64)
        acc = acc ^ (c * np.uint64(0xBF58476D1CE4E5B9 + 2 * axis))
        acc = acc ^ (acc >> np.uint64(31))
        acc = acc * np.uint64(0x94D049BB133111EB)
        acc = acc ^ (acc >> np.uint64(29))
    return (acc >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def segment_distance(xs: np.ndarray, ys: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of points (xs, ys) (broadcastable) to the segment a-b."""
    ab = b - a
    length2 = max(float(ab @ ab), 1e-9)
    t = np.clip(((xs - a[0]) * ab[0] + (ys - a[1]) * ab[1]) / length2, 0.0, 1.0)
    return np.hypot(xs - (a[0] + t * ab[0]), ys - (a[1] + t * ab[1]))


def polyline_distance(grid: Grid, points: np.ndarray, radius_m: float
                      ) -> tuple[slice, slice, np.ndarray]:
    """Distance to a polyline for the pixels of its bounding window (inf beyond radius_m)."""
    lo = points.min(axis=0) - radius_m
    hi = points.max(axis=0) + radius_m
    rows, cols = grid.pixel_window((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2,
                                   float(max(hi - lo)) / 2)
    distance = np.full((rows.stop - rows.start, cols.stop - cols.start), np.inf, dtype=np.float32)
    for a, b in zip(points[:-1], points[1:]):
        seg_rows, seg_cols = grid.pixel_window((a[0] + b[0]) / 2, (a[1] + b[1]) / 2,
                                               float(np.max(np.abs(b - a))) / 2 + radius_m)
        seg_rows = slice(max(seg_rows.start, rows.start), min(seg_rows.stop, rows.stop))
        seg_cols = slice(max(seg_cols.start, cols.start), min(seg_cols.stop, cols.stop))
        if seg_rows.start >= seg_rows.stop or seg_cols.start >= seg_cols.stop:
            continue
        xs, ys = grid.window_coords(seg_rows, seg_cols)
        local = (slice(seg_rows.start - rows.start, seg_rows.stop - rows.start),
                 slice(seg_cols.start - cols.start, seg_cols.stop - cols.start))
        np.minimum(distance[local], segment_distance(xs, ys, a, b), out=distance[local])
    return rows, cols, distance


def lattice_noise(u: np.ndarray, v: np.ndarray, salt: int = 0) -> np.ndarray:
    """Smooth noise in [0, 1] at continuous coordinates (u, v) (one feature per unit)."""
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = u - u0, v - v0
    fu = fu * fu * (3 - 2 * fu)
    fv = fv * fv * (3 - 2 * fv)
    iu, iv = u0.astype(np.int64) + (1 << 20), v0.astype(np.int64) + (1 << 20)
    c00 = hash_noise(iu, iv, salt=salt)
    c10 = hash_noise(iu + 1, iv, salt=salt)
    c01 = hash_noise(iu, iv + 1, salt=salt)
    c11 = hash_noise(iu + 1, iv + 1, salt=salt)
    return (c00 * (1 - fu) + c10 * fu) * (1 - fv) + (c01 * (1 - fu) + c11 * fu) * fv
