"""Trees: single trees and clusters (park groves, woodland), stamped as rounded canopies.

Every tree is a disc of canopy with a dome-shaped height; where canopies overlap the taller
one wins, and the tree id raster remembers which tree is on top (for colour and shading).
Canopies only cover open ground and sidewalks, never roads, water or buildings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import classes as C
from .biomes import Biome
from .canvas import Canvas
from .raster import nearest_index

CANOPY_CLASSES = (C.BARE, C.GRASS, C.PARK, C.SIDEWALK, C.TREE)


@dataclass(frozen=True)
class TreeCluster:
    """A group of trees planted together (a grove in a park or a patch of woodland)."""

    cluster_id: int
    setting: str
    x: float
    y: float
    radius: float
    n_trees: int


@dataclass(frozen=True)
class Trees:
    """All trees as arrays (index i has tree id i + 1 in the tree id raster)."""

    x: np.ndarray
    y: np.ndarray
    radius: np.ndarray
    height: np.ndarray
    cluster: np.ndarray
    colour: np.ndarray

    def __len__(self) -> int:
        return int(self.x.size)


class TreePlanter:
    """Collects tree positions, checks their ground and stamps them on a canvas."""

    def __init__(self, biome: Biome, rng: np.random.Generator) -> None:
        self.biome = biome
        self.rng = rng
        self.parts: list[np.ndarray] = []
        self.clusters: list[TreeCluster] = []

    def plant(self, canvas: Canvas, xy: np.ndarray, cluster: int = -1,
              allowed: tuple[int, ...] = C.OPEN_GROUND) -> int:
        """Plant trees at xy (n, 2) where the ground allows; returns how many were planted."""
        if len(xy) == 0:
            return 0
        flat, inside, _ = nearest_index(canvas.grid, xy[:, 0], xy[:, 1])
        cls = canvas.class_map.reshape(-1)[flat]
        ok = inside & C.class_lookup(allowed)[cls] & (canvas.building_id.reshape(-1)[flat] == 0)
        xy = xy[ok]
        n = len(xy)
        radius = self.rng.uniform(*self.biome.tree_radius_m, size=n)
        height = self.rng.uniform(*self.biome.tree_height_m, size=n) * (0.7 + 0.3 * radius
                                                                         / self.biome.tree_radius_m[1])
        colour = self.rng.integers(0, len(self.biome.trees), size=n)
        self.parts.append(np.column_stack([xy, radius, height, np.full(n, cluster), colour]))
        return n

    def plant_cluster(self, canvas: Canvas, setting: str, xy: np.ndarray) -> None:
        """Plant a cluster; it is recorded only if at least 3 trees took root."""
        cluster_id = len(self.clusters)
        n = self.plant(canvas, xy, cluster=cluster_id)
        if n >= 3:
            planted = self.parts[-1][:, :2]
            centre = planted.mean(axis=0)
            radius = float(np.max(np.hypot(*(planted - centre).T)))
            self.clusters.append(TreeCluster(cluster_id, setting, float(centre[0]), float(centre[1]),
                                             round(radius, 1), n))
        elif n:
            self.parts[-1][:, 4] = -1

    def grove_points(self, x: float, y: float, radius: float, count: int) -> np.ndarray:
        """Random points in a disc (a grove)."""
        angle = self.rng.uniform(0, 2 * np.pi, count)
        dist = radius * np.sqrt(self.rng.random(count))
        return np.column_stack([x + dist * np.cos(angle), y + dist * np.sin(angle)])

    def finish(self) -> Trees:
        table = np.concatenate(self.parts) if self.parts else np.zeros((0, 6))
        return Trees(x=table[:, 0], y=table[:, 1], radius=table[:, 2].astype(np.float32),
                     height=table[:, 3].astype(np.float32), cluster=table[:, 4].astype(np.int32),
                     colour=table[:, 5].astype(np.int32))


def stamp_trees(canvas: Canvas, trees: Trees, chunk: int = 4096) -> None:
    """Dome canopies: height and top-most tree id per pixel (vectorised, order independent)."""
    if len(trees) == 0:
        return
    grid = canvas.grid
    top = np.zeros(grid.size * grid.size, dtype=np.int64)
    reach = int(np.ceil(trees.radius.max() / grid.res)) + 1
    for start in range(0, len(trees), chunk):
        _stamp_chunk(canvas, trees, np.arange(start, min(start + chunk, len(trees))), reach, top)
    covered = np.flatnonzero(top)
    flat_height = canvas.height.reshape(-1)
    flat_height[covered] = np.maximum(flat_height[covered], (top[covered] >> 24).astype(np.float32) / 100)
    canvas.tree_id.reshape(-1)[covered] = (top[covered] & ((1 << 24) - 1)).astype(np.int32) + 1
    canvas.class_map.reshape(-1)[covered] = C.TREE
    canvas.surface.reshape(-1)[covered] = C.SURFACE_PLAIN
    canvas.marking.reshape(-1)[covered] = False


def _stamp_chunk(canvas: Canvas, trees: Trees, index: np.ndarray, reach: int, top: np.ndarray) -> None:
    """Pack (canopy height in cm, tree index) per covered pixel into ``top`` with a maximum."""
    grid = canvas.grid
    offsets = np.arange(-reach, reach + 1)
    x, y = trees.x[index], trees.y[index]
    centre_rows = np.floor(grid.row_of_y(y) + 0.5).astype(np.int64)
    centre_cols = np.floor(grid.col_of_x(x) + 0.5).astype(np.int64)
    rows = centre_rows[:, None, None] + offsets[None, :, None]
    cols = centre_cols[:, None, None] + offsets[None, None, :]
    dx = (grid.x_of_col(cols) - x[:, None, None]).astype(np.float32)
    dy = (grid.y_of_row(rows) - y[:, None, None]).astype(np.float32)
    rel2 = (dx * dx + dy * dy) / (trees.radius[index, None, None] ** 2)
    inside = (rel2 < 1.0) & (rows >= 0) & (rows < grid.size) & (cols >= 0) & (cols < grid.size)
    flat = (rows * grid.size + cols)[inside]
    canopy = trees.height[index, None, None] * (0.55 + 0.45 * np.sqrt(np.maximum(1 - rel2, 0)))
    owner = np.broadcast_to(index[:, None, None], inside.shape)[inside]
    heights = canopy[inside]
    allowed = C.class_lookup(CANOPY_CLASSES)[canvas.class_map.reshape(-1)[flat]]
    packed = (np.round(heights[allowed] * 100).astype(np.int64) << 24) | owner[allowed].astype(np.int64)
    np.maximum.at(top, flat[allowed], packed)
