"""City blocks between road lines, their split into lots, and a land use per lot.

Every pixel gets block-local coordinates (u, v) in [0, 1]: u runs west->east between the two
north-south lines bounding it, v south->north between the two east-west lines. A block may be
split in two lots along u or v; lots get a land use drawn from the biome's mix (more
buildings near the downtown centre).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .biomes import Biome
from .raster import Grid
from .roads import SIDEWALK_WIDTH_M, RoadLine, RoadNetwork

LANDUSES: tuple[str, ...] = ("buildings", "park", "parking", "sports", "lake", "woodland")
SMALL_LOT_M2 = 3000.0


@dataclass(frozen=True)
class Lot:
    """A lot: a block (or half a block) in block coordinates (s, t) with one land use."""

    lot_index: int
    corners: tuple[tuple[float, float], ...]  # block corners SW, SE, NW, NE
    s_range: tuple[float, float]
    t_range: tuple[float, float]
    insets_m: tuple[float, float, float, float]  # usable interior starts this far from W, E, S, N
    landuse: str
    downtown: float  # 1 at the downtown centre, falling to 0

    def point(self, s: npt.ArrayLike, t: npt.ArrayLike) -> np.ndarray:
        """Bilinear block map: (s, t) in block units -> (..., 2) x/y metres."""
        if np.ndim(s) == 0 and np.ndim(t) == 0:
            return np.array(self._scalar_point(float(s), float(t)))
        sw, se, nw, ne = (np.asarray(c) for c in self.corners)
        s = np.asarray(s, dtype=np.float64)[..., None]
        t = np.asarray(t, dtype=np.float64)[..., None]
        return (1 - s) * (1 - t) * sw + s * (1 - t) * se + (1 - s) * t * nw + s * t * ne

    def _scalar_point(self, s: float, t: float) -> tuple[float, float]:
        (x0, y0), (x1, y1), (x2, y2), (x3, y3) = self.corners
        w0, w1, w2, w3 = (1 - s) * (1 - t), s * (1 - t), (1 - s) * t, s * t
        return (w0 * x0 + w1 * x1 + w2 * x2 + w3 * x3, w0 * y0 + w1 * y1 + w2 * y2 + w3 * y3)

    def axis_angle(self, t: float) -> float:
        """Angle (radians from east, counter-clockwise) of the block's s-axis at height t."""
        (xa, ya), (xb, yb) = self._scalar_point(0.0, t), self._scalar_point(1.0, t)
        return math.atan2(yb - ya, xb - xa)

    @property
    def size_m(self) -> tuple[float, float]:
        """Approximate (width along s, height along t) of the lot in metres."""
        sw, se, nw, ne = (np.asarray(c) for c in self.corners)
        width = 0.5 * (np.linalg.norm(se - sw) + np.linalg.norm(ne - nw))
        height = 0.5 * (np.linalg.norm(nw - sw) + np.linalg.norm(ne - se))
        return (width * (self.s_range[1] - self.s_range[0]), height * (self.t_range[1] - self.t_range[0]))

    def interior(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """(s0, s1), (t0, t1) of the usable interior after insets (block units)."""
        sw, se, nw, ne = (np.asarray(c) for c in self.corners)
        block_w = 0.5 * (np.linalg.norm(se - sw) + np.linalg.norm(ne - nw))
        block_h = 0.5 * (np.linalg.norm(nw - sw) + np.linalg.norm(ne - se))
        west, east, south, north = self.insets_m
        s0 = self.s_range[0] + west / block_w
        s1 = self.s_range[1] - east / block_w
        t0 = self.t_range[0] + south / block_h
        t1 = self.t_range[1] - north / block_h
        return (s0, max(s0, s1)), (t0, max(t0, t1))


@dataclass
class BlockPartition:
    """Per-pixel lot index and the lots."""

    lot_raster: np.ndarray  # int32, index into lots
    lots: list[Lot]


def _family_positions(lines: list[RoadLine], coords: np.ndarray) -> np.ndarray:
    """(len(coords), len(lines)) cross positions of every line at every along-coordinate."""
    return np.stack([line.perp(coords) for line in lines], axis=1).astype(np.float32)


def _block_coordinates(positions: np.ndarray, cross: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Block index (number of real lines below) and fraction within the block, per pixel.

    positions: (n_along, n_lines) cross positions of the lines (virtual borders first and
    last) at each along-coordinate; cross: (n_cross,) pixel cross-coordinates.
    """
    n_lines = positions.shape[1]
    index = np.empty((positions.shape[0], cross.size), dtype=np.int16)
    fraction = np.empty((positions.shape[0], cross.size), dtype=np.float32)
    for along, line_positions in enumerate(positions):
        block = np.searchsorted(line_positions[1:-1], cross, side="left")
        low, high = line_positions[block], line_positions[block + 1]
        index[along] = block
        fraction[along] = (cross - low) / np.maximum(high - low, 1e-3)
    return index, fraction


def _boundary_inset(line: RoadLine, yard_m: float) -> float:
    return 1.0 if line.virtual else line.width / 2 + SIDEWALK_WIDTH_M + yard_m


def _choose_landuse(biome: Biome, area_m2: float, downtown: float, rng: np.random.Generator) -> str:
    weights = np.array([biome.landuse_weights.get(name, 0.0) for name in LANDUSES])
    weights[0] *= 1.0 + 3.0 * downtown
    if area_m2 < SMALL_LOT_M2:
        weights[2:] = 0.0
    return str(rng.choice(LANDUSES, p=weights / weights.sum()))


def _block_parts(insets: tuple[float, float, float, float], splittable: bool,
                 rng: np.random.Generator) -> tuple[int, float, list]:
    """Split mode (0 none, 1 along u, 2 along v), cut position and the parts' ranges/insets."""
    mode = int(rng.choice(3, p=[0.45, 0.275, 0.275])) if splittable else 0
    cut = float(rng.uniform(0.35, 0.65))
    west, east, south, north = insets
    if mode == 1:
        return mode, cut, [((0.0, cut), (0.0, 1.0), (west, 2.0, south, north)),
                           ((cut, 1.0), (0.0, 1.0), (2.0, east, south, north))]
    if mode == 2:
        return mode, cut, [((0.0, 1.0), (0.0, cut), (west, east, south, 2.0)),
                           ((0.0, 1.0), (cut, 1.0), (west, east, 2.0, north))]
    return mode, cut, [((0.0, 1.0), (0.0, 1.0), insets)]


def _block_lots(network: RoadNetwork, bc: int, br: int, block: int, biome: Biome,
                downtown_xy: np.ndarray, rng: np.random.Generator) -> tuple[int, float, list[Lot]]:
    """Lots of block (bc, br); lot index = 2 * block + part, a missing second part is "none"."""
    ns, ew = network.ns_lines, network.ew_lines
    corners = tuple((float(network.corner_x[i, j]), float(network.corner_y[i, j]))
                    for i, j in ((bc, br), (bc + 1, br), (bc, br + 1), (bc + 1, br + 1)))
    centre = np.mean(corners, axis=0)
    downtown = float(np.exp(-np.sum((centre - downtown_xy) ** 2) / (2 * 320.0 ** 2)))
    yard = rng.uniform(1.5, 5.0)
    insets = (_boundary_inset(ns[bc], yard), _boundary_inset(ns[bc + 1], yard),
              _boundary_inset(ew[br], yard), _boundary_inset(ew[br + 1], yard))
    width, height = Lot(0, corners, (0.0, 1.0), (0.0, 1.0), insets, "none", downtown).size_m
    mode, cut, parts = _block_parts(insets, width * height > 2.5 * SMALL_LOT_M2, rng)
    lots = []
    for part, (s_range, t_range, part_insets) in enumerate(parts):
        area = Lot(0, corners, s_range, t_range, part_insets, "none", downtown).size_m
        landuse = _choose_landuse(biome, area[0] * area[1], downtown, rng)
        lots.append(Lot(2 * block + part, corners, s_range, t_range, part_insets, landuse, downtown))
    if len(lots) == 1:
        lots.append(Lot(2 * block + 1, corners, (0.0, 0.0), (0.0, 0.0), insets, "none", downtown))
    return mode, cut, lots


def partition(network: RoadNetwork, grid: Grid, biome: Biome, rng: np.random.Generator) -> BlockPartition:
    """Lot index of every pixel and the list of lots (index = 2 * block + part)."""
    n_cols_blocks = len(network.ns_lines) - 1
    n_rows_blocks = len(network.ew_lines) - 1
    half = grid.extent_m / 2
    downtown_xy = rng.uniform(-0.3 * half, 0.3 * half, size=2)
    lots: list[Lot] = []
    split_mode = np.zeros(n_cols_blocks * n_rows_blocks, dtype=np.int8)
    split_cut = np.zeros(n_cols_blocks * n_rows_blocks, dtype=np.float32)
    for br in range(n_rows_blocks):
        for bc in range(n_cols_blocks):
            block = br * n_cols_blocks + bc
            split_mode[block], split_cut[block], block_lots = _block_lots(
                network, bc, br, block, biome, downtown_xy, rng)
            lots.extend(block_lots)
    lot_raster = _lot_raster(network, grid, n_cols_blocks, split_mode, split_cut)
    return BlockPartition(lot_raster, lots)


def _lot_raster(network: RoadNetwork, grid: Grid, n_cols_blocks: int, split_mode: np.ndarray,
                split_cut: np.ndarray) -> np.ndarray:
    xs = grid.x_of_col(np.arange(grid.size)).astype(np.float32)
    ys = grid.y_of_row(np.arange(grid.size)).astype(np.float32)
    ns_pos = _family_positions(network.ns_lines, ys)            # (rows, lines)
    ew_pos = _family_positions(network.ew_lines, xs)            # (cols, lines)
    bc, u = _block_coordinates(ns_pos, xs)
    br_t, v_t = _block_coordinates(ew_pos, ys)
    block = np.ascontiguousarray(br_t.T).astype(np.int32)
    block *= n_cols_blocks
    block += bc
    mode = split_mode[block]
    cut = split_cut[block]
    part = ((mode == 1) & (u >= cut)) | ((mode == 2) & (np.ascontiguousarray(v_t.T) >= cut))
    block *= 2
    block += part
    return block
