"""Land-use features: parks (paths, groves, ponds), lakes, rivers, parking lots with cars,
sports fields (football pitch, running track, tennis courts) and woodland.

Each feature gets an id in the feature raster (its visible pixels), so that scene facts
(where is the park, how much water) are measured on the very pixels the renderers draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import classes as C
from .biomes import Biome
from .blocks import BlockPartition, Lot
from .canvas import Canvas
from .raster import polyline_distance, rotated_rect_mask
from .trees import TreePlanter

CAR_COLOURS = 8
RIVER_BANK_M = 6.0


@dataclass(frozen=True)
class Feature:
    """A land-use feature; centroid and area are measured on its pixels once painted."""

    feature_id: int
    type: str
    kind: str | None
    x: float = 0.0
    y: float = 0.0
    area_m2: float = 0.0


class FeatureRegistry:
    """Hands out feature ids (1-based, 0 means none)."""

    def __init__(self) -> None:
        self.features: list[Feature] = []

    def add(self, type_: str, kind: str | None = None) -> int:
        self.features.append(Feature(len(self.features) + 1, type_, kind))
        return len(self.features)


LOT_GROUND = {"buildings": None, "park": C.PARK, "lake": C.PARK, "parking": C.PARKING,
              "sports": C.GRASS, "woodland": C.GRASS, "none": C.BARE}
LOT_FEATURE = {"park": ("park", None), "lake": ("park", None), "parking": ("parking", None)}


def paint_lot_grounds(canvas: Canvas, partition: BlockPartition, biome: Biome,
                      registry: FeatureRegistry) -> None:
    """Ground class and feature id of every lot, by lookup on the lot raster."""
    yard = C.GRASS if biome.yard_ground == "grass" else C.BARE
    ground = np.array([LOT_GROUND[lot.landuse] if LOT_GROUND[lot.landuse] is not None else yard
                       for lot in partition.lots], dtype=np.uint8)
    feature = np.zeros(len(partition.lots), dtype=np.int32)
    for lot in partition.lots:
        if lot.landuse in LOT_FEATURE:
            feature[lot.lot_index] = registry.add(*LOT_FEATURE[lot.landuse])
    canvas.class_map[:] = ground[partition.lot_raster]
    canvas.feature_id[:] = feature[partition.lot_raster]


def river_polyline(extent: float, rng: np.random.Generator, step_m: float = 20.0) -> np.ndarray:
    """A meandering centre line entering on one side of the region and leaving on another."""
    half = extent / 2.0
    side = rng.integers(4)
    start_angle = side * np.pi / 2  # direction of travel: east, north, west, south
    along = rng.uniform(-0.6 * half, 0.6 * half)
    start = -half - 50.0
    normal = np.array([np.cos(start_angle), np.sin(start_angle)])
    tangent = np.array([-normal[1], normal[0]])
    point = normal * start + tangent * along
    heading = start_angle + rng.uniform(-0.4, 0.4)
    turn = 0.0
    points = [point]
    while np.max(np.abs(point)) <= half + 60.0 or len(points) < 3:
        turn = 0.85 * turn + rng.normal(0.0, 0.06)
        heading += turn
        heading = start_angle + np.clip(heading - start_angle, -0.9, 0.9)
        point = point + step_m * np.array([np.cos(heading), np.sin(heading)])
        points.append(point)
    return np.array(points)


def paint_river(canvas: Canvas, extent: float, registry: FeatureRegistry,
                rng: np.random.Generator) -> None:
    """River water and grassy banks over the lot grounds."""
    points = river_polyline(extent, rng)
    half_width = rng.uniform(9.0, 20.0)
    rows, cols, distance = polyline_distance(canvas.grid, points, half_width + RIVER_BANK_M + 1)
    river_id = registry.add("water", "river")
    cls = canvas.class_map[rows, cols]
    fid = canvas.feature_id[rows, cols]
    bank = distance <= half_width + RIVER_BANK_M
    cls[bank] = C.GRASS
    fid[bank] = 0
    water = distance <= half_width
    cls[water] = C.WATER
    fid[water] = river_id


def _lot_frame(lot: Lot) -> tuple[np.ndarray, float, float, float]:
    """Centre, axis angle and inner width/height (metres) of a lot's usable interior."""
    (s0, s1), (t0, t1) = lot.interior()
    centre = lot.point((s0 + s1) / 2, (t0 + t1) / 2)
    angle = lot.axis_angle((t0 + t1) / 2)
    width = float(np.linalg.norm(lot.point(s1, (t0 + t1) / 2) - lot.point(s0, (t0 + t1) / 2)))
    height = float(np.linalg.norm(lot.point((s0 + s1) / 2, t1) - lot.point((s0 + s1) / 2, t0)))
    return centre, angle, width, height


def paint_lake(canvas: Canvas, centre: np.ndarray, angle: float, radii: tuple[float, float],
               registry: FeatureRegistry, rng: np.random.Generator) -> None:
    """An irregular lake (wobbly ellipse) on open ground."""
    rows, cols, xs, ys = canvas.window(centre[0], centre[1], max(radii) * 1.3)
    _, along, across = rotated_rect_mask(xs, ys, centre[0], centre[1], angle, 1, 1)
    a, b = radii
    rho = np.hypot(along / a, across / b)
    theta = np.arctan2(across / b, along / a)
    phases = rng.uniform(0, 2 * np.pi, size=2)
    wobble = 1.0 + 0.12 * np.sin(3 * theta + phases[0]) + 0.08 * np.sin(5 * theta + phases[1])
    cls = canvas.class_map[rows, cols]
    water = (rho < wobble) & C.class_lookup(C.OPEN_GROUND)[cls]
    if water.sum() < 50:
        return
    lake_id = registry.add("water", "lake")
    cls[water] = C.WATER
    canvas.feature_id[rows, cols][water] = lake_id


def _paint_path(canvas: Canvas, lot: Lot, rng: np.random.Generator) -> None:
    """A curved gravel path across a park, from one side of the lot to another."""
    (s0, s1), (t0, t1) = lot.s_range, lot.t_range
    ends = rng.permutation(4)[:2]
    side_points = {0: (s0, rng.uniform(t0, t1)), 1: (s1, rng.uniform(t0, t1)),
                   2: (rng.uniform(s0, s1), t0), 3: (rng.uniform(s0, s1), t1)}
    p0, p2 = np.array(side_points[ends[0]]), np.array(side_points[ends[1]])
    p1 = np.array([rng.uniform(s0, s1), rng.uniform(t0, t1)])
    k = np.linspace(0, 1, 24)[:, None]
    st = (1 - k) ** 2 * p0 + 2 * k * (1 - k) * p1 + k * k * p2
    points = lot.point(st[:, 0], st[:, 1])
    rows, cols, distance = polyline_distance(canvas.grid, points, 2.5)
    cls = canvas.class_map[rows, cols]
    path = (distance <= 1.6) & (cls == C.PARK)
    cls[path] = C.SIDEWALK
    canvas.surface[rows, cols][path] = C.SURFACE_PATH


def _lot_points(lot: Lot, count: int, rng: np.random.Generator) -> np.ndarray:
    (s0, s1), (t0, t1) = lot.interior()
    return lot.point(rng.uniform(s0, s1, count), rng.uniform(t0, t1, count))


def furnish_park(canvas: Canvas, lot: Lot, biome: Biome, registry: FeatureRegistry,
                 planter: TreePlanter, rng: np.random.Generator, with_lake: bool) -> None:
    """Paths, maybe a lake or pond, and groves of trees."""
    centre, angle, width, height = _lot_frame(lot)
    if width < 10 or height < 10:
        return
    for _ in range(rng.integers(1, 3)):
        _paint_path(canvas, lot, rng)
    if with_lake or rng.random() < 0.2:
        scale = rng.uniform(0.3, 0.42) if with_lake else rng.uniform(0.15, 0.25)
        paint_lake(canvas, centre, angle, (width * scale, height * scale), registry, rng)
    area = width * height
    n_groves = rng.poisson(max(0.5, area * biome.park_tree_density / 10.0))
    for _ in range(n_groves):
        gx, gy = _lot_points(lot, 1, rng)[0]
        radius = rng.uniform(8.0, 22.0)
        count = max(3, int(np.pi * radius ** 2 * biome.park_tree_density * 3))
        planter.plant_cluster(canvas, "park", planter.grove_points(gx, gy, radius, count))


def furnish_woodland(canvas: Canvas, lot: Lot, biome: Biome, planter: TreePlanter,
                     rng: np.random.Generator) -> None:
    """Dense trees over the whole lot interior."""
    _, _, width, height = _lot_frame(lot)
    count = int(width * height * biome.park_tree_density * 2.5)
    planter.plant_cluster(canvas, "woodland", _lot_points(lot, count, rng))


def furnish_parking(canvas: Canvas, lot: Lot, rng: np.random.Generator) -> list[np.ndarray]:
    """Stall markings in rows with aisles; returns parked cars as (x, y, angle, colour) rows."""
    centre, angle, width, height = _lot_frame(lot)
    rows, cols, xs, ys = canvas.window(centre[0], centre[1], max(width, height) / 2 + 2)
    inside, along, across = rotated_rect_mask(xs, ys, centre[0], centre[1], angle,
                                              width / 2 - 1, height / 2 - 1)
    inside &= canvas.class_map[rows, cols] == C.PARKING
    band = np.mod(across + height / 2, 16.0)
    in_stall_row = (band < 5.0) | (band >= 11.0)
    stall_line = np.abs(np.mod(along + width / 2, 3.0) - 1.5) >= 1.0
    canvas.marking[rows, cols][inside & in_stall_row & stall_line] = True
    return _parked_cars(centre, angle, width, height, rng)


def _parked_cars(centre: np.ndarray, angle: float, width: float, height: float,
                 rng: np.random.Generator) -> list[np.ndarray]:
    slots_along = np.arange(-width / 2 + 3.0, width / 2 - 1.5, 3.0)
    row_centres = []
    for start in np.arange(0.0, height - 4.0, 16.0):
        row_centres += [start + 2.5, start + 13.5]
    row_centres = [c - height / 2 for c in row_centres if c < height - 2.5]
    cars = []
    cos_a, sin_a = np.cos(angle), np.sin(angle)
    for across in row_centres:
        for along in slots_along:
            if rng.random() < 0.55:
                x = centre[0] + along * cos_a - across * sin_a
                y = centre[1] + along * sin_a + across * cos_a
                cars.append(np.array([x, y, angle + np.pi / 2, rng.integers(CAR_COLOURS)]))
    return cars


def stamp_cars(canvas: Canvas, cars: list[np.ndarray]) -> None:
    """Cars as 4.4 x 1.9 m boxes, 1.5 m high, on parking ground."""
    if not cars:
        return
    table = np.array(cars)
    grid = canvas.grid
    offsets = np.arange(-3, 4)
    centre_rows = np.floor(grid.row_of_y(table[:, 1]) + 0.5).astype(np.int64)
    centre_cols = np.floor(grid.col_of_x(table[:, 0]) + 0.5).astype(np.int64)
    rows, cols = np.broadcast_arrays(
        np.clip(centre_rows[:, None, None] + offsets[None, :, None], 0, grid.size - 1),
        np.clip(centre_cols[:, None, None] + offsets[None, None, :], 0, grid.size - 1))
    dx = grid.x_of_col(cols) - table[:, 0, None, None]
    dy = grid.y_of_row(rows) - table[:, 1, None, None]
    cos_a, sin_a = np.cos(table[:, 2])[:, None, None], np.sin(table[:, 2])[:, None, None]
    along = dx * cos_a + dy * sin_a
    across = -dx * sin_a + dy * cos_a
    body = (np.abs(along) <= 2.2) & (np.abs(across) <= 0.95)
    body &= canvas.class_map[rows, cols] == C.PARKING
    colour = np.broadcast_to(table[:, 3, None, None], body.shape)[body].astype(np.uint8)
    r, c = rows[body], cols[body]
    canvas.surface[r, c] = C.SURFACE_CAR + colour
    canvas.marking[r, c] = False
    canvas.height[r, c] = 1.5


# kind: (minimum lot length, minimum lot breadth, maximum facility length) in metres
SPORTS_KINDS = {"running_track": (110.0, 65.0, 175.0), "football": (50.0, 32.0, 105.0),
                "tennis": (28.0, 15.0, 80.0)}


def furnish_sports(canvas: Canvas, lot: Lot, registry: FeatureRegistry, rng: np.random.Generator) -> None:
    """One sports facility sized to the lot: running track, football pitch or tennis courts."""
    centre, angle, width, height = _lot_frame(lot)
    if height > width:
        angle, width, height = angle + np.pi / 2, height, width
    feasible = [kind for kind, (w, h, _) in SPORTS_KINDS.items() if width >= w and height >= h]
    if not feasible:
        return
    kind = str(rng.choice(feasible))
    rows, cols, xs, ys = canvas.window(centre[0], centre[1], max(width, height) / 2 + 2)
    _, along, across = rotated_rect_mask(xs, ys, centre[0], centre[1], angle, 1, 1)
    length, breadth = min(width * 0.9, SPORTS_KINDS[kind][2]), height * 0.85
    painter = {"running_track": _running_track, "football": _football, "tennis": _tennis}[kind]
    area, surface, marks = painter(along, across, length, breadth)
    area &= C.class_lookup(C.OPEN_GROUND)[canvas.class_map[rows, cols]]
    if area.sum() < 200:
        return
    feature_id = registry.add("sports_field", kind)
    canvas.class_map[rows, cols][area] = C.SPORTS
    canvas.feature_id[rows, cols][area] = feature_id
    canvas.surface[rows, cols][area] = surface[area]
    canvas.marking[rows, cols][area & marks] = True


def _pitch_surface(along: np.ndarray, length: float) -> np.ndarray:
    stripes = np.floor((along + length / 2) / (length / 12)).astype(np.int64) % 2 == 1
    return np.where(stripes, C.SURFACE_PITCH_STRIPE, C.SURFACE_PLAIN).astype(np.uint8)


def _outline(along: np.ndarray, across: np.ndarray, half_l: float, half_w: float,
             thickness: float = 0.6) -> np.ndarray:
    inside = (np.abs(along) <= half_l) & (np.abs(across) <= half_w)
    edge = (np.abs(np.abs(along) - half_l) < thickness) | (np.abs(np.abs(across) - half_w) < thickness)
    return inside & edge


Painted = tuple[np.ndarray, np.ndarray, np.ndarray]  # area mask, surface codes, line marks


def _football(along: np.ndarray, across: np.ndarray, length: float, breadth: float) -> Painted:
    breadth = min(breadth, length * 0.68)
    half_l, half_w = length / 2, breadth / 2
    area = (np.abs(along) <= half_l + 3) & (np.abs(across) <= half_w + 3)
    marks = _outline(along, across, half_l, half_w)
    marks |= (np.abs(along) < 0.5) & (np.abs(across) <= half_w)
    marks |= np.abs(np.hypot(along, across) - 0.087 * length) < 0.5
    box_l, box_w = 0.157 * length, 0.6 * half_w
    marks |= _outline(np.abs(along) - (half_l - box_l / 2), across, box_l / 2, box_w)
    return area, _pitch_surface(along, length), marks


def _running_track(along: np.ndarray, across: np.ndarray, length: float, breadth: float) -> Painted:
    radius = breadth / 2
    straight = max(0.0, length - breadth)
    stadium = np.hypot(np.maximum(np.abs(along) - straight / 2, 0.0), across)
    area = stadium <= radius
    track = stadium > radius - 7.0
    surface = np.where(track, C.SURFACE_TRACK, _pitch_surface(along, length)).astype(np.uint8)
    marks = (np.abs(stadium - (radius - 7.0)) < 0.5) | (np.abs(stadium - (radius - 3.5)) < 0.3)
    inner_l, inner_w = straight / 2, min(radius - 9.0, straight * 0.34)
    marks |= _outline(along, across, inner_l, inner_w) | ((np.abs(along) < 0.5) & (np.abs(across) < inner_w))
    return area, surface, marks


def _tennis(along: np.ndarray, across: np.ndarray, length: float, breadth: float) -> Painted:
    court_l, court_w, pitch = 23.8, 11.0, 17.0
    count = max(1, min(4, int(length // pitch)))
    centres = (np.arange(count) - (count - 1) / 2) * pitch
    nearest = centres[np.argmin(np.abs(along[..., None] - centres), axis=-1)]
    local_l = across  # courts run across the lot axis, side by side along it
    local_w = along - nearest
    area = (np.abs(along) <= count * pitch / 2) & (np.abs(across) <= min(breadth, court_l + 8) / 2)
    marks = _outline(local_l, local_w, court_l / 2, court_w / 2, 0.4)
    marks |= (np.abs(local_l) < 0.4) & (np.abs(local_w) <= court_w / 2)
    marks |= (np.abs(np.abs(local_l) - 6.4) < 0.4) & (np.abs(local_w) <= court_w / 2 - 1.4)
    surface = np.full(along.shape, C.SURFACE_COURT, dtype=np.uint8)
    return area, surface, marks
