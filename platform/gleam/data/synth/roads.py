"""Road network: two families of (optionally curved) road lines, dropped segments,
junction typing (crossroad, T-junction, roundabout) and rasterisation.

A road line of axis "ns" runs north-south as x = offset + amplitude * sin(2 pi y / wavelength
+ phase); an "ew" line runs east-west as y = f(x). Lines of one family never cross, so the
network is a (warped) grid whose segments between junctions can be dropped, which turns
crossroads into T-junctions. Border "lines" of the region are virtual (no road), they only
close the outermost blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from . import classes as C
from .biomes import Biome
from .geo import bearing_deg
from .raster import Grid

SIDEWALK_WIDTH_M = 2.5
JUNCTION_TYPES: tuple[str, ...] = ("crossroad", "T-junction", "roundabout")


@dataclass(frozen=True)
class RoadLine:
    """One line of a family; ``t`` runs along it (y for "ns", x for "ew")."""

    axis: str
    offset: float
    amplitude: float
    wavelength: float
    phase: float
    width: float
    major: bool
    virtual: bool = False

    def perp(self, t: npt.ArrayLike) -> np.ndarray:
        """Cross coordinate (x for "ns", y for "ew") of the centre line at t."""
        return self.offset + self.amplitude * np.sin(2 * np.pi * np.asarray(t) / self.wavelength + self.phase)

    def slope(self, t: npt.ArrayLike) -> np.ndarray:
        return self.amplitude * 2 * np.pi / self.wavelength * np.cos(
            2 * np.pi * np.asarray(t) / self.wavelength + self.phase)

    def points(self, t: npt.ArrayLike) -> np.ndarray:
        """(len(t), 2) x/y points of the centre line at positions t."""
        t = np.asarray(t, dtype=np.float64)
        p = self.perp(t)
        return np.stack([p, t], axis=1) if self.axis == "ns" else np.stack([t, p], axis=1)


@dataclass(frozen=True)
class Road:
    """A road segment between two junctions (or a junction and the region border)."""

    road_id: int
    axis: str
    line_index: int
    t_start: float
    t_end: float
    width: float
    major: bool
    points: tuple[tuple[float, float], ...]

    @property
    def bearing(self) -> float:
        (x0, y0), (x1, y1) = self.points[0], self.points[-1]
        return float(bearing_deg(x1 - x0, y1 - y0))


@dataclass(frozen=True)
class Junction:
    """A junction of degree 3 or 4; ``arms`` are the compass bearings of its roads."""

    junction_id: int
    x: float
    y: float
    type: str
    degree: int
    ring_radius: float
    arms: tuple[float, ...]


@dataclass
class RoadNetwork:
    """Lines of both families (virtual borders included), junction grid and present segments."""

    ns_lines: list[RoadLine]   # index 0 and -1 are the virtual west/east borders
    ew_lines: list[RoadLine]   # index 0 and -1 are the virtual south/north borders
    corner_x: np.ndarray       # (len(ns), len(ew)) intersection x of ns line i and ew line j
    corner_y: np.ndarray
    ns_present: np.ndarray     # (n_real_ns, n_real_ew + 1) segment s lies between junctions s-1 and s
    ew_present: np.ndarray     # (n_real_ew, n_real_ns + 1)
    roundabout: np.ndarray     # (n_real_ns, n_real_ew) bool
    ring_radius: np.ndarray    # (n_real_ns, n_real_ew) metres

    @property
    def real_ns(self) -> list[RoadLine]:
        return self.ns_lines[1:-1]

    @property
    def real_ew(self) -> list[RoadLine]:
        return self.ew_lines[1:-1]

    def degrees(self) -> np.ndarray:
        return _degrees(self.ns_present, self.ew_present)


def _family(axis: str, extent: float, biome: Biome, rng: np.random.Generator) -> list[RoadLine]:
    half = extent / 2.0
    offsets: list[float] = []
    position = -half + rng.uniform(0.3, 0.8) * biome.block_spacing_m[0]
    while position < half - 40.0:
        offsets.append(position)
        position += rng.uniform(*biome.block_spacing_m)
    bounds = [-half - 200.0] + offsets + [half + 200.0]
    lines = [RoadLine(axis, -half, 0.0, 1.0, 0.0, 0.0, False, virtual=True)]
    for index, offset in enumerate(offsets):
        gap = min(bounds[index + 1] - bounds[index], bounds[index + 2] - bounds[index + 1])
        max_amplitude = max(0.0, min(45.0, (gap - 75.0) / 2.0))
        curved = rng.random() < biome.curved_fraction
        major = rng.random() < 0.22
        lines.append(RoadLine(
            axis=axis, offset=offset,
            amplitude=rng.uniform(0.45, 1.0) * max_amplitude if curved else 0.0,
            wavelength=rng.uniform(520.0, 1100.0), phase=rng.uniform(0, 2 * np.pi),
            width=rng.uniform(12.0, 15.0) if major else rng.uniform(6.5, 8.5), major=major,
        ))
    lines.append(RoadLine(axis, half, 0.0, 1.0, 0.0, 0.0, False, virtual=True))
    return lines


def _intersections(ns_lines: list[RoadLine], ew_lines: list[RoadLine]) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-point solve of x = f_i(y), y = g_j(x) for all line pairs (contractive: slopes < 0.5)."""
    x = np.array([line.offset for line in ns_lines])[:, None] * np.ones((1, len(ew_lines)))
    y = np.array([line.offset for line in ew_lines])[None, :] * np.ones((len(ns_lines), 1))
    for _ in range(30):
        x = np.stack([line.perp(y[i]) for i, line in enumerate(ns_lines)])
        y = np.stack([line.perp(x[:, j]) for j, line in enumerate(ew_lines)], axis=1)
    return x, y


def _degrees(ns_present: np.ndarray, ew_present: np.ndarray) -> np.ndarray:
    vertical = ns_present[:, :-1].astype(int) + ns_present[:, 1:]
    horizontal = (ew_present[:, :-1].astype(int) + ew_present[:, 1:]).T
    return vertical + horizontal


def _drop_segments(ns_lines: list[RoadLine], ew_lines: list[RoadLine], biome: Biome,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n_ns, n_ew = len(ns_lines) - 2, len(ew_lines) - 2
    ns_major = np.array([line.major for line in ns_lines[1:-1]], dtype=bool)[:, None]
    ew_major = np.array([line.major for line in ew_lines[1:-1]], dtype=bool)[:, None]
    ns_present = (rng.random((n_ns, n_ew + 1)) >= biome.segment_drop) | ns_major
    ew_present = (rng.random((n_ew, n_ns + 1)) >= biome.segment_drop) | ew_major
    while True:  # remove dead ends: a junction of degree 1 loses its last segment
        dangling = _degrees(ns_present, ew_present) == 1
        if not dangling.any():
            return ns_present, ew_present
        i_idx, j_idx = np.nonzero(dangling)
        ns_present[i_idx, j_idx] = False
        ns_present[i_idx, j_idx + 1] = False
        ew_present[j_idx, i_idx] = False
        ew_present[j_idx, i_idx + 1] = False


def generate_network(extent: float, biome: Biome, rng: np.random.Generator) -> RoadNetwork:
    """Lines, junction grid, dropped segments and roundabout choice for one region."""
    ns_lines = _family("ns", extent, biome, rng)
    ew_lines = _family("ew", extent, biome, rng)
    corner_x, corner_y = _intersections(ns_lines, ew_lines)
    ns_present, ew_present = _drop_segments(ns_lines, ew_lines, biome, rng)
    degrees = _degrees(ns_present, ew_present)
    roundabout = (degrees == 4) & (rng.random(degrees.shape) < biome.roundabout_prob)
    widths = np.maximum(np.array([l.width for l in ns_lines[1:-1]])[:, None],
                        np.array([l.width for l in ew_lines[1:-1]])[None, :])
    ring_radius = widths * 0.5 + rng.uniform(8.0, 13.0, size=degrees.shape)
    return RoadNetwork(ns_lines, ew_lines, corner_x, corner_y, ns_present, ew_present,
                       roundabout, ring_radius)


def _junction_arms(network: RoadNetwork, i: int, j: int) -> tuple[float, ...]:
    """Bearings of the present segments leaving junction (real ns i, real ew j)."""
    x, y = network.corner_x[i + 1, j + 1], network.corner_y[i + 1, j + 1]
    ns_line, ew_line = network.ns_lines[i + 1], network.ew_lines[j + 1]
    arms = []
    for present, line, t0, sign in (
        (network.ns_present[i, j], ns_line, y, -1.0), (network.ns_present[i, j + 1], ns_line, y, 1.0),
        (network.ew_present[j, i], ew_line, x, -1.0), (network.ew_present[j, i + 1], ew_line, x, 1.0),
    ):
        if present:
            px, py = line.points([t0 + sign * 20.0])[0]
            arms.append(round(float(bearing_deg(px - x, py - y)), 1))
    return tuple(sorted(arms))


def junctions(network: RoadNetwork, extent: float) -> list[Junction]:
    """Junctions of degree 3 and 4 inside the region, typed."""
    degrees = network.degrees()
    half = extent / 2.0
    found: list[Junction] = []
    for i, j in zip(*np.nonzero(degrees >= 3)):
        x, y = float(network.corner_x[i + 1, j + 1]), float(network.corner_y[i + 1, j + 1])
        if abs(x) > half or abs(y) > half:
            continue
        if network.roundabout[i, j]:
            kind, radius = "roundabout", float(network.ring_radius[i, j])
        else:
            kind, radius = ("crossroad" if degrees[i, j] == 4 else "T-junction"), 0.0
        found.append(Junction(len(found), x, y, kind, int(degrees[i, j]), radius,
                              _junction_arms(network, int(i), int(j))))
    return found


def _segment_limits(network: RoadNetwork, family: str, index: int) -> np.ndarray:
    """Junction t positions along real line ``index`` of a family, with +-inf borders."""
    if family == "ns":
        ts = network.corner_y[index + 1, 1:-1]
    else:
        ts = network.corner_x[1:-1, index + 1]
    return np.concatenate([[-np.inf], ts, [np.inf]])


def roads(network: RoadNetwork, extent: float, step_m: float = 5.0) -> list[Road]:
    """Present segments as polylines clipped to the region."""
    half = extent / 2.0
    found: list[Road] = []
    for family, lines, present in (("ns", network.real_ns, network.ns_present),
                                   ("ew", network.real_ew, network.ew_present)):
        for index, line in enumerate(lines):
            limits = np.clip(_segment_limits(network, family, index), -half, half)
            for seg in np.nonzero(present[index])[0]:
                t0, t1 = float(limits[seg]), float(limits[seg + 1])
                if t1 - t0 < 1.0:
                    continue
                ts = np.linspace(t0, t1, max(2, int(math.ceil((t1 - t0) / step_m)) + 1))
                pts = tuple(map(tuple, np.round(line.points(ts), 2).tolist()))
                found.append(Road(len(found), family, index, t0, t1, line.width, line.major, pts))
    return found


def line_band(grid: Grid, line: RoadLine, half_width_m: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixels near a line: (rows, cols, signed distance m, t along, valid) arrays of shape (n, k)."""
    n = grid.size
    along = np.arange(n)
    if line.axis == "ns":
        t = grid.y_of_row(along)
        centre_px = grid.col_of_x(line.perp(t))
        coord_of_px = grid.x_of_col
    else:
        t = grid.x_of_col(along)
        centre_px = grid.row_of_y(line.perp(t))
        coord_of_px = grid.y_of_row
    slope = line.slope(t)
    cos_factor = 1.0 / np.sqrt(1.0 + slope * slope)
    reach = int(math.ceil(half_width_m / grid.res / cos_factor.min())) + 1
    cross = np.floor(centre_px + 0.5).astype(np.int64)[:, None] + np.arange(-reach, reach + 1)[None, :]
    signed = (coord_of_px(cross) - line.perp(t)[:, None]) * cos_factor[:, None]
    # sign: positive east of an "ns" line, north of an "ew" line
    valid = (cross >= 0) & (cross < n)
    along2d = np.broadcast_to(along[:, None], cross.shape)
    rows, cols = (along2d, cross) if line.axis == "ns" else (cross, along2d)
    return rows, cols, signed, np.broadcast_to(t[:, None], cross.shape), valid


def _present_along(network: RoadNetwork, family: str, index: int, t: np.ndarray) -> np.ndarray:
    limits = _segment_limits(network, family, index)
    segment = np.searchsorted(limits, t, side="right") - 1
    present = network.ns_present[index] if family == "ns" else network.ew_present[index]
    return present[np.clip(segment, 0, len(present) - 1)]


def stamp_roads(network: RoadNetwork, grid: Grid, class_map: np.ndarray, surface: np.ndarray,
                marking: np.ndarray) -> None:
    """Paint sidewalks, then carriageways with centre dashes on major roads, then roundabouts."""
    bands = []
    for family, lines in (("ns", network.real_ns), ("ew", network.real_ew)):
        for index, line in enumerate(lines):
            rows, cols, signed, t, valid = line_band(grid, line, line.width / 2 + SIDEWALK_WIDTH_M)
            valid = valid & _present_along(network, family, index, t)
            bands.append((line, rows, cols, signed, t, valid))
    for line, rows, cols, signed, t, valid in bands:
        side = valid & (np.abs(signed) <= line.width / 2 + SIDEWALK_WIDTH_M)
        class_map[rows[side], cols[side]] = C.SIDEWALK
        surface[rows[side], cols[side]] = C.SURFACE_PLAIN
    for line, rows, cols, signed, t, valid in bands:
        carriage = valid & (np.abs(signed) <= line.width / 2)
        r, c = rows[carriage], cols[carriage]
        class_map[r, c] = C.ROAD
        surface[r, c] = C.SURFACE_MAJOR_ROAD if line.major else C.SURFACE_PLAIN
        dash = (np.abs(signed[carriage]) < 0.5) & (np.mod(t[carriage], 10.0) < 5.0) & line.major
        marking[r, c] = dash
    _stamp_roundabouts(network, grid, class_map, surface, marking)


def _stamp_roundabouts(network: RoadNetwork, grid: Grid, class_map: np.ndarray, surface: np.ndarray,
                       marking: np.ndarray) -> None:
    for i, j in zip(*np.nonzero(network.roundabout)):
        x, y = network.corner_x[i + 1, j + 1], network.corner_y[i + 1, j + 1]
        ring = network.ring_radius[i, j]
        width = min(network.real_ns[i].width, network.real_ew[j].width, 9.0)
        outer = ring + width / 2
        rows, cols = grid.pixel_window(x, y, outer + SIDEWALK_WIDTH_M + 1)
        xs, ys = grid.window_coords(rows, cols)
        dist = np.hypot(xs - x, ys - y)
        cls = class_map[rows, cols]
        srf = surface[rows, cols]
        mrk = marking[rows, cols]
        cls[(dist <= outer + SIDEWALK_WIDTH_M) & (cls != C.ROAD)] = C.SIDEWALK
        carriage = dist <= outer
        cls[carriage] = C.ROAD
        srf[carriage] = C.SURFACE_PLAIN
        mrk[carriage] = False
        island = dist <= ring - width / 2
        cls[island] = C.GRASS
        mrk[carriage & ~island & (np.abs(dist - (ring - width / 2)) < 0.6)] = True
