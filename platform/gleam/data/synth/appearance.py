"""Surface appearance: albedo (palette + procedural texture), sun shadows and the lit
orthophoto that every renderer samples for surfaces seen from above.

Shadows use a *shadow-height* raster S: a point (x, y, z) is in shadow exactly when
z < S(x, y). S is computed once per world by one sweep toward the sun
(S(p) = max(H, S)(p + step) - step * tan(elevation)), so satellite tiles, UAV views and
ground views all share the same shadows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import classes as C
from .biomes import Biome
from .landuse import CAR_COLOURS
from .layout import Layout
from .raster import value_noise

CAR_PALETTE = ((236, 236, 236), (30, 30, 34), (120, 124, 130), (180, 184, 190),
               (150, 30, 30), (40, 60, 120), (200, 200, 190), (70, 80, 70))
ROOF_UNIT = (186, 188, 190)
PATH = (186, 172, 146)
SHADOW_EPS_M = 0.3


@dataclass(frozen=True)
class Sun:
    """Sun direction: azimuth (compass degrees) and elevation above the horizon (degrees)."""

    azimuth_deg: float
    elevation_deg: float

    @property
    def vector(self) -> np.ndarray:
        """Unit vector (east, north, up) pointing toward the sun."""
        az, el = math.radians(self.azimuth_deg), math.radians(self.elevation_deg)
        return np.array([math.sin(az) * math.cos(el), math.cos(az) * math.cos(el), math.sin(el)])


def lighting(biome: Biome, sun: Sun, cos_incidence: np.ndarray, visible: np.ndarray | float
             ) -> np.ndarray:
    """Light factor (1 = flat ground in full sun) for a cosine of incidence and visibility."""
    flat = biome.ambient + biome.sun_strength * math.sin(math.radians(sun.elevation_deg))
    direct = np.maximum(cos_incidence, 0.0) * visible
    return ((biome.ambient + biome.sun_strength * direct) / flat).astype(np.float32)


def material_palette(biome: Biome) -> np.ndarray:
    """Base colour per (class, surface) in [0, 1], shape (10, 32, 3)."""
    palette = np.zeros((len(C.CLASS_NAMES), 32, 3), dtype=np.float32)
    base = {C.BARE: biome.bare, C.GRASS: biome.grass, C.PARK: biome.park, C.TREE: biome.trees[0],
            C.WATER: biome.water, C.ROAD: biome.road, C.SIDEWALK: biome.sidewalk,
            C.BUILDING: biome.roofs[0], C.PARKING: biome.parking, C.SPORTS: biome.pitch}
    for cls, colour in base.items():
        palette[cls, :] = colour
    palette[C.ROAD, C.SURFACE_MAJOR_ROAD] = biome.road_major
    palette[C.SPORTS, C.SURFACE_TRACK] = biome.track
    palette[C.SPORTS, C.SURFACE_COURT] = biome.court
    palette[C.SPORTS, C.SURFACE_PITCH_STRIPE] = np.array(biome.pitch) * 1.1
    palette[C.SIDEWALK, C.SURFACE_PATH] = PATH
    palette[C.BUILDING, C.SURFACE_ROOF_UNIT] = ROOF_UNIT
    for index in range(CAR_COLOURS):
        palette[C.PARKING, C.SURFACE_CAR + index] = CAR_PALETTE[index]
    return np.clip(palette / 255.0, 0.0, 1.0)


# texture amplitude per class: (low-frequency patches, mid-frequency, per-pixel grain)
TEXTURE = np.array([
    (0.10, 0.08, 0.05),  # bare
    (0.10, 0.10, 0.06),  # grass
    (0.08, 0.08, 0.05),  # park
    (0.05, 0.10, 0.10),  # tree
    (0.04, 0.02, 0.02),  # water
    (0.05, 0.04, 0.04),  # road
    (0.03, 0.03, 0.04),  # sidewalk
    (0.02, 0.02, 0.03),  # building
    (0.04, 0.03, 0.04),  # parking
    (0.03, 0.03, 0.03),  # sports
], dtype=np.float32)


def albedo(layout: Layout, biome: Biome, rng: np.random.Generator) -> np.ndarray:
    """Per-pixel base colour in [0, 1] as planar channels (3, H, W), textured."""
    shape = layout.class_map.shape
    cls = layout.class_map
    material = cls.astype(np.intp) * 32 + layout.surface
    palette = material_palette(biome).reshape(-1, 3)
    planes = np.empty((3,) + shape, dtype=np.float32)
    for ch in range(3):
        np.take(np.ascontiguousarray(palette[:, ch]), material, out=planes[ch])
    dry = value_noise(shape, 70.0, rng)
    dry *= C.class_lookup((C.GRASS, C.PARK))[cls]
    dry_shift = (np.array(biome.grass_dry, np.float32) - np.array(biome.grass, np.float32)) / 255.0
    for ch in range(3):
        planes[ch] += dry * dry_shift[ch]
    _paint_roofs(planes, layout)
    _paint_trees(planes, layout, biome)
    texture = _texture(cls, shape, rng)
    planes *= texture
    marking_colour = np.array(biome.marking, dtype=np.float32) / 255.0
    for ch in range(3):
        plane = planes[ch]
        plane[layout.marking] = 0.15 * plane[layout.marking] + 0.85 * marking_colour[ch]
    return planes


def _texture(cls: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Multiplicative texture: low-frequency patches, mid-frequency mottling and grain."""
    texture = np.ones(shape, dtype=np.float32)
    for octave, field in enumerate((value_noise(shape, 28.0, rng), value_noise(shape, 5.0, rng),
                                    rng.random(shape, dtype=np.float32))):
        field -= 0.5
        field *= 2 * TEXTURE[:, octave][cls]
        texture += field
    return texture


def _paint_roofs(planes: np.ndarray, layout: Layout) -> None:
    roof_lut = np.zeros((len(layout.buildings) + 1, 3), dtype=np.float32)
    for building in layout.buildings:
        roof_lut[building.building_id] = np.array(building.roof_colour) / 255.0
    roofs = (layout.class_map == C.BUILDING) & (layout.surface != C.SURFACE_ROOF_UNIT)
    ids = layout.building_id[roofs]
    brighten = np.where(_footprint_edge(layout.building_id)[roofs], 1.12, 1.0).astype(np.float32)
    for ch in range(3):
        planes[ch][roofs] = roof_lut[ids, ch] * brighten  # parapets and eaves catch light


def _footprint_edge(ids: np.ndarray) -> np.ndarray:
    edge = np.zeros(ids.shape, dtype=bool)
    edge[1:] |= ids[1:] != ids[:-1]
    edge[:-1] |= ids[:-1] != ids[1:]
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    return edge & (ids > 0)


def _paint_trees(planes: np.ndarray, layout: Layout, biome: Biome) -> None:
    trees = layout.trees
    if len(trees) == 0:
        return
    tree_palette = np.array(biome.trees, dtype=np.float32) / 255.0
    brightness = 0.9 + 0.2 * ((np.arange(len(trees)) * 0.618) % 1.0)
    lut = np.vstack([np.zeros((1, 3), np.float32), tree_palette[trees.colour] * brightness[:, None]])
    covered = layout.tree_id > 0
    ids = layout.tree_id[covered]
    for ch in range(3):
        planes[ch][covered] = lut[ids, ch]


def shadow_heights(height: np.ndarray, res: float, sun: Sun) -> np.ndarray:
    """Height below which each pixel column is in shadow (one sweep toward the sun)."""
    az = math.radians(sun.azimuth_deg)
    d_row, d_col = -math.cos(az), math.sin(az)  # pixel step toward the sun
    transpose = abs(d_col) > abs(d_row)
    view = height.T if transpose else height
    if transpose:
        d_row, d_col = d_col, d_row
    flip = d_row > 0
    if flip:
        view = view[::-1]
    heights = np.ascontiguousarray(view)
    per_row = d_col / abs(d_row)  # columns moved per row stepped toward the sun
    drop = res * math.sqrt(1 + per_row ** 2) * math.tan(math.radians(sun.elevation_deg))
    shade = np.zeros_like(heights)
    offsets = np.round(per_row * np.arange(heights.shape[0])).astype(np.int64)
    for row in range(1, heights.shape[0]):
        caster = np.maximum(heights[row - 1], shade[row - 1]) - drop
        shift = offsets[row] - offsets[row - 1]
        if shift == 0:
            shade[row] = caster
        elif shift > 0:
            shade[row, :-1] = caster[1:]
        else:
            shade[row, 1:] = caster[:-1]
        np.maximum(shade[row], 0.0, out=shade[row])
    if flip:
        shade = shade[::-1]
    if transpose:
        shade = shade.T
    return np.ascontiguousarray(shade)


def top_surface_incidence(height: np.ndarray, res: float, sun: Sun) -> np.ndarray:
    """Cosine between the sun and the normal of the top surface (roof slopes, canopies).

    Only raised pixels can slope; a height jump steeper than 2:1 is a wall edge and
    counts as flat.
    """
    sx, sy, sz = sun.vector
    incidence = np.full(height.shape, sz, dtype=np.float32)
    n = height.shape[1]
    flat_height = height.reshape(-1)
    raised = np.flatnonzero(flat_height > 0)
    rows, cols = np.divmod(raised, n)

    def neighbour(d_row: int, d_col: int) -> np.ndarray:
        r = np.clip(rows + d_row, 0, height.shape[0] - 1)
        c = np.clip(cols + d_col, 0, n - 1)
        return flat_height[r * n + c]

    dh_dx = (neighbour(0, 1) - neighbour(0, -1)) / (2 * res)
    dh_dy = (neighbour(-1, 0) - neighbour(1, 0)) / (2 * res)
    steep = (np.abs(dh_dx) > 2.0) | (np.abs(dh_dy) > 2.0)
    dh_dx[steep] = 0.0
    dh_dy[steep] = 0.0
    incidence.reshape(-1)[raised] = (sz - dh_dx * sx - dh_dy * sy) / np.sqrt(1 + dh_dx ** 2 + dh_dy ** 2)
    return incidence


def orthophoto(layout: Layout, biome: Biome, sun: Sun, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """Lit top-down colours (uint8 H x W x 3) and the shadow-height raster."""
    shade = shadow_heights(layout.height, layout.grid.res, sun)
    visible = (layout.height + SHADOW_EPS_M >= shade).astype(np.float32)
    light = lighting(biome, sun, top_surface_incidence(layout.height, layout.grid.res, sun), visible)
    planes = albedo(layout, biome, rng)
    shadow_tint = (-0.06, -0.02, 0.08)  # skylight makes shade bluish
    in_shade = 1.0 - visible
    ortho = np.empty(layout.class_map.shape + (3,), dtype=np.uint8)
    for ch in range(3):
        plane = planes[ch]
        plane *= light
        plane *= 1.0 + shadow_tint[ch] * in_shade
        np.clip(plane, 0.0, 1.0, out=plane)
        plane *= 255.0
        plane += 0.5
        ortho[..., ch] = plane
    return ortho, shade
