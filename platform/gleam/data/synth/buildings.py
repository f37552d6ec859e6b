"""Buildings: rectangular footprints on a lot grid, heights, roof shapes and colours.

Footprints are rotated rectangles aligned with their block. Heights follow a log-normal
number of floors, boosted near the downtown centre; small buildings often get gable roofs
(the ridge runs along the long side). Large flat roofs carry small rooftop units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import classes as C
from .biomes import Biome
from .blocks import Lot
from .canvas import Canvas
from .raster import rotated_rect_mask

FLOOR_HEIGHT_M = 3.2
SETBACK_M = 1.5


@dataclass(frozen=True)
class Building:
    """One building; ``angle`` is the long axis direction (radians from east, counter-clockwise)."""

    building_id: int
    x: float
    y: float
    angle: float
    half_length: float
    half_width: float
    height: float
    eave_height: float
    floors: int
    roof: str
    roof_colour: tuple[int, int, int]
    facade_colour: tuple[int, int, int]

    @property
    def footprint(self) -> tuple[tuple[float, float], ...]:
        """Corner points (x, y), counter-clockwise."""
        cos_a, sin_a = math.cos(self.angle), math.sin(self.angle)
        corners = []
        for a, b in ((1, 1), (-1, 1), (-1, -1), (1, -1)):
            along, across = a * self.half_length, b * self.half_width
            corners.append((round(self.x + along * cos_a - across * sin_a, 2),
                            round(self.y + along * sin_a + across * cos_a, 2)))
        return tuple(corners)

    @property
    def area_m2(self) -> float:
        return 4.0 * self.half_length * self.half_width


def _tint(colour: tuple[int, int, int], rng: np.random.Generator, spread: float = 0.1
          ) -> tuple[int, int, int]:
    factor = rng.uniform(1 - spread, 1 + spread)
    return tuple(min(255, max(0, int(round(channel * factor)))) for channel in colour)


class BuildingPlacer:
    """Places buildings lot by lot; keeps the list and stamps footprints on the canvas."""

    def __init__(self, biome: Biome, rng: np.random.Generator) -> None:
        self.biome = biome
        self.rng = rng
        self.buildings: list[Building] = []
        self.yard_trees: list[np.ndarray] = []

    def furnish(self, canvas: Canvas, lot: Lot) -> None:
        """Fill a lot with a grid of building plots; yard tree spots go to ``yard_trees``."""
        (s0, s1), (t0, t1) = lot.interior()
        width, height = lot.size_m
        block_scale = (width / max(lot.s_range[1] - lot.s_range[0], 1e-6),
                       height / max(lot.t_range[1] - lot.t_range[0], 1e-6))
        plot = self.rng.uniform(*self.biome.lot_size_m) * (1.0 + 0.6 * lot.downtown)
        n_s = max(1, int(round((s1 - s0) * block_scale[0] / plot)))
        n_t = max(1, int(round((t1 - t0) * block_scale[1] / plot)))
        for i in range(n_s):
            for j in range(n_t):
                inner = 0 < i < n_s - 1 and 0 < j < n_t - 1
                chance = self.biome.build_prob * (0.45 if inner and lot.downtown < 0.5 else 1.0)
                cell = (s0 + (s1 - s0) * i / n_s, s0 + (s1 - s0) * (i + 1) / n_s,
                        t0 + (t1 - t0) * j / n_t, t0 + (t1 - t0) * (j + 1) / n_t)
                if self.rng.random() < chance:
                    self._place(canvas, lot, cell, block_scale)
                n_trees = self.rng.poisson(self.biome.yard_trees_per_lot)
                if n_trees:
                    s = self.rng.uniform(cell[0], cell[1], n_trees)
                    t = self.rng.uniform(cell[2], cell[3], n_trees)
                    self.yard_trees.append(lot.point(s, t))

    def _place(self, canvas: Canvas, lot: Lot, cell: tuple[float, float, float, float],
               block_scale: tuple[float, float]) -> None:
        s_lo, s_hi, t_lo, t_hi = cell
        cell_w = (s_hi - s_lo) * block_scale[0]
        cell_h = (t_hi - t_lo) * block_scale[1]
        fill = (0.75, 0.92) if lot.downtown > 0.5 else (0.5, 0.85)
        half_s = cell_w * self.rng.uniform(*fill) / 2 - SETBACK_M / 2
        half_t = cell_h * self.rng.uniform(*fill) / 2 - SETBACK_M / 2
        if min(half_s, half_t) < 3.0:
            return
        jitter_s = self.rng.uniform(-1, 1) * max(0.0, cell_w / 2 - half_s - SETBACK_M) / block_scale[0]
        jitter_t = self.rng.uniform(-1, 1) * max(0.0, cell_h / 2 - half_t - SETBACK_M) / block_scale[1]
        s_mid, t_mid = (s_lo + s_hi) / 2 + jitter_s, (t_lo + t_hi) / 2 + jitter_t
        x, y = lot.point(s_mid, t_mid)
        angle = lot.axis_angle(t_mid) + self.rng.normal(0.0, 0.02)
        if half_t > half_s:  # keep angle on the long axis
            angle, half_s, half_t = angle + math.pi / 2, half_t, half_s
        for shrink in (1.0, 0.75):
            if self._try_stamp(canvas, float(x), float(y), angle, half_s * shrink, half_t * shrink, lot):
                return

    def _try_stamp(self, canvas: Canvas, x: float, y: float, angle: float, half_l: float,
                   half_w: float, lot: Lot) -> bool:
        rows, cols, xs, ys = canvas.window(x, y, math.hypot(half_l, half_w) + SETBACK_M + 1)
        _, along, across = rotated_rect_mask(xs, ys, x, y, angle, half_l, half_w)
        abs_along, abs_across = np.abs(along), np.abs(across)
        clearance = (abs_along <= half_l + SETBACK_M) & (abs_across <= half_w + SETBACK_M)
        if not canvas.is_open(rows, cols, clearance):
            return False
        inside = (abs_along <= half_l) & (abs_across <= half_w)
        building = self._new_building(x, y, angle, half_l, half_w, lot)
        window = (rows, cols)
        canvas.class_map[window][inside] = C.BUILDING
        canvas.building_id[window][inside] = building.building_id
        canvas.feature_id[window][inside] = 0
        canvas.height[window][inside] = self._roof_heights(building, abs_across[inside])
        if building.roof == "flat" and building.area_m2 > 900:
            self._rooftop_units(canvas, rows, cols, xs, ys, building, inside)
        self.buildings.append(building)
        return True

    def _new_building(self, x: float, y: float, angle: float, half_l: float, half_w: float,
                      lot: Lot) -> Building:
        biome = self.biome
        median = biome.floors_median * (1.0 + (biome.downtown_boost - 1.0) * lot.downtown)
        floors = int(np.clip(round(self.rng.lognormal(math.log(median), biome.floors_sigma)), 1, 40))
        gable = floors <= 3 and half_w <= 11.0 and self.rng.random() < biome.gable_prob
        eave = floors * FLOOR_HEIGHT_M
        height = eave + min(6.0, half_w * 0.7) if gable else eave + 0.6
        roof_colour = biome.roofs[self.rng.integers(len(biome.roofs))]
        facade_colour = biome.facades[self.rng.integers(len(biome.facades))]
        return Building(len(self.buildings) + 1, round(x, 2), round(y, 2), angle, round(half_l, 2),
                        round(half_w, 2), round(height, 2), round(eave, 2), floors,
                        "gable" if gable else "flat", _tint(roof_colour, self.rng),
                        _tint(facade_colour, self.rng, 0.06))

    @staticmethod
    def _roof_heights(building: Building, abs_across: np.ndarray) -> np.ndarray:
        """Roof height at footprint pixels (gable ridge along the long axis)."""
        if building.roof == "gable":
            rise = building.height - building.eave_height
            slope = np.clip(1.0 - abs_across / building.half_width, 0.0, 1.0)
            return (building.eave_height + rise * slope).astype(np.float32)
        return np.full(abs_across.shape, building.height, dtype=np.float32)

    def _rooftop_units(self, canvas: Canvas, rows: slice, cols: slice, xs: np.ndarray, ys: np.ndarray,
                       building: Building, inside: np.ndarray) -> None:
        for _ in range(self.rng.integers(1, 4)):
            along = self.rng.uniform(-0.6, 0.6) * building.half_length
            across = self.rng.uniform(-0.5, 0.5) * building.half_width
            cos_a, sin_a = math.cos(building.angle), math.sin(building.angle)
            ux = building.x + along * cos_a - across * sin_a
            uy = building.y + along * sin_a + across * cos_a
            unit, _, _ = rotated_rect_mask(xs, ys, ux, uy, building.angle,
                                           self.rng.uniform(1.5, 3.5), self.rng.uniform(1.5, 3.0))
            unit &= inside
            canvas.height[rows, cols][unit] = building.height + self.rng.uniform(1.2, 2.5)
            canvas.surface[rows, cols][unit] = C.SURFACE_ROOF_UNIT
