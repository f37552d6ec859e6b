"""Renderers of every view, all reading the same scene (so they agree on the ground truth).

- top-down tiles: ``render_satellite`` (the lit orthophoto) and ``render_streetmap``
  (a flat cartographic style: cased roads, outlined buildings, blue water, green parks);
- ``render_uav``: per-pixel ray marching of the height field from a pinhole camera;
- ``render_ground_level``: panoramas and ground photos; one ray march per image column
  (columns of a level camera are vertical planes), and every pixel of the column finds its
  first hit by a binary search on the running maximum of the obstacle elevation angle.

Renderers return float images in [0, 1] (photometric jitter is applied by the caller) plus
per-pixel *layers* (semantic class, depth, building id) used by tests and debugging.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from . import classes as C
from .appearance import lighting, material_palette
from .camera import PinholeCamera
from .raster import hash_noise, lattice_noise, sample_bilinear
from .scene import COARSE_BLOCK, Scene

SKY = 255  # class value of sky pixels in layers
HIT_TOLERANCE_M = 0.02  # a ray sample this close above a surface counts as a hit (float32 slack)
FLOOR_M, WINDOW_PITCH_M = 3.2, 3.0
GLASS = np.array([0.16, 0.2, 0.25], dtype=np.float32)

STREETMAP = {
    C.BARE: (242, 239, 233), C.GRASS: (226, 236, 214), C.PARK: (200, 250, 204),
    C.TREE: (173, 209, 158), C.WATER: (170, 211, 223), C.ROAD: (255, 255, 255),
    C.SIDEWALK: (236, 232, 226), C.BUILDING: (217, 208, 201), C.PARKING: (238, 238, 238),
    C.SPORTS: (136, 224, 190),
}
STREETMAP_MAJOR_ROAD = (252, 214, 164)
STREETMAP_PATH = (236, 150, 130)
STREETMAP_CASING = (188, 180, 170)
STREETMAP_MAJOR_CASING = (206, 150, 96)
STREETMAP_BUILDING_OUTLINE = (188, 174, 162)
STREETMAP_SPORTS_OUTLINE = (112, 196, 164)


def _tile_axes(scene: Scene, x: float, y: float, extent_m: float, margin: int = 0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nearest raster rows / cols (and in-region masks) of a north-up tile's pixel centres."""
    grid = scene.grid
    n = int(round(extent_m / grid.res))
    offsets = (np.arange(-margin, n + margin) + 0.5) * (extent_m / n)
    xs = x - extent_m / 2 + offsets
    ys = y + extent_m / 2 - offsets
    cols = np.floor((xs - grid.x_west) / grid.res).astype(np.int64)
    rows = np.floor((grid.y_north - ys) / grid.res).astype(np.int64)
    in_cols = (cols >= 0) & (cols < grid.size)
    in_rows = (rows >= 0) & (rows < grid.size)
    return (np.clip(rows, 0, grid.size - 1), np.clip(cols, 0, grid.size - 1),
            in_rows[:, None] & in_cols[None, :], xs, ys)


def _rotated_axes(scene: Scene, x: float, y: float, extent_m: float, margin: int, rotation_deg: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest raster rows / cols (2-D) and in-region mask of a tile whose content is turned
    ``rotation_deg`` clockwise about (x, y): pixel offset p (east, north) shows the world at R(θ) p."""
    n = int(round(extent_m / scene.grid.res))
    offsets = (np.arange(-margin, n + margin) + 0.5) * (extent_m / n) - extent_m / 2
    east, north = np.meshgrid(offsets, -offsets)
    theta = np.deg2rad(rotation_deg)
    return scene.pixel_index(x + np.cos(theta) * east - np.sin(theta) * north,
                             y + np.sin(theta) * east + np.cos(theta) * north)


def tile_layers(scene: Scene, x: float, y: float, extent_m: float, margin: int = 0,
                rotation_deg: float = 0.0) -> dict[str, np.ndarray]:
    """Class, surface, building, feature and tree ids of a tile (nearest pixel, north-up; content
    turned ``rotation_deg`` clockwise when non-zero)."""
    if rotation_deg:
        rows, cols, inside = _rotated_axes(scene, x, y, extent_m, margin, rotation_deg)
        pick = (rows, cols)
    else:
        rows, cols, inside, _, _ = _tile_axes(scene, x, y, extent_m, margin)
        pick = np.ix_(rows, cols)
    layout = scene.layout
    return {
        "class": np.where(inside, layout.class_map[pick], C.BARE).astype(np.uint8),
        "surface": np.where(inside, layout.surface[pick], 0).astype(np.uint8),
        "building_id": np.where(inside, layout.building_id[pick], 0),
        "feature_id": np.where(inside, layout.feature_id[pick], 0),
        "tree_id": np.where(inside, layout.tree_id[pick], 0),
    }


def _resize(image: np.ndarray, size: int, resample: Image.Resampling) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), resample))


def render_satellite(scene: Scene, x: float, y: float, extent_m: float, size: int) -> np.ndarray:
    """North-up orthophoto tile centred on (x, y), float in [0, 1]."""
    _, _, _, xs, ys = _tile_axes(scene, x, y, extent_m)
    grid_x, grid_y = np.meshgrid(xs, ys)
    colour = sample_bilinear(scene.ortho, scene.grid, grid_x, grid_y, scene.outside_colour)
    tile = (colour + 0.5).astype(np.uint8)
    return _resize(tile, size, Image.Resampling.LANCZOS).astype(np.float32) / 255.0


def _edges(values: np.ndarray) -> np.ndarray:
    """Pixels whose 4-neighbourhood holds a different value (input has a 1-pixel margin)."""
    centre = values[1:-1, 1:-1]
    return ((values[:-2, 1:-1] != centre) | (values[2:, 1:-1] != centre)
            | (values[1:-1, :-2] != centre) | (values[1:-1, 2:] != centre))


def render_streetmap(scene: Scene, x: float, y: float, extent_m: float, size: int,
                     rotation_deg: float = 0.0) -> np.ndarray:
    """Cartographic tile (uint8): flat fills, cased roads, outlined buildings and pitches;
    ``rotation_deg``: the map content turned clockwise about the centre (misregistration)."""
    layers = tile_layers(scene, x, y, extent_m, margin=1, rotation_deg=rotation_deg)
    cls_m = layers["class"]
    cls = cls_m[1:-1, 1:-1]
    surface = layers["surface"][1:-1, 1:-1]
    palette = np.zeros((256, 3), dtype=np.uint8)
    for code, colour in STREETMAP.items():
        palette[code] = colour
    image = palette[cls]
    major = (cls == C.ROAD) & (surface == C.SURFACE_MAJOR_ROAD)
    image[major] = STREETMAP_MAJOR_ROAD
    image[(cls == C.SIDEWALK) & (surface == C.SURFACE_PATH)] = STREETMAP_PATH
    road_edge = (cls == C.ROAD) & _edges(cls_m == C.ROAD)
    image[road_edge] = STREETMAP_CASING
    image[road_edge & major] = STREETMAP_MAJOR_CASING
    image[(cls == C.BUILDING) & _edges(layers["building_id"])] = STREETMAP_BUILDING_OUTLINE
    image[(cls == C.SPORTS) & _edges(cls_m == C.SPORTS)] = STREETMAP_SPORTS_OUTLINE
    return _resize(image, size, Image.Resampling.NEAREST)


# ----------------------------------------------------------------------------- sky and haze

def sky_colour(scene: Scene, directions: np.ndarray, view: dict) -> np.ndarray:
    """Sky gradient, sun glow and clouds for unit directions (n, 3)."""
    biome = scene.biome
    zenith = np.array(biome.sky_zenith, dtype=np.float32) / 255.0
    horizon = np.array(biome.sky_horizon, dtype=np.float32) / 255.0
    up = np.clip(directions[:, 2], 0.0, 1.0)
    colour = horizon + (zenith - horizon) * np.sqrt(up)[:, None]
    cos_sun = np.clip(directions @ scene.sun.vector, -1.0, 1.0)
    glow = 0.25 * np.exp((cos_sun - 1.0) / 0.03) + 0.6 * np.exp((cos_sun - 1.0) / 0.0006)
    colour = colour + glow[:, None].astype(np.float32) * np.array([1.0, 0.96, 0.86], dtype=np.float32)
    lift = np.maximum(directions[:, 2], 0.04)
    u = directions[:, 0] / lift * 2.0 + view["cloud_offset"][0]
    v = directions[:, 1] / lift * 2.0 + view["cloud_offset"][1]
    density = 0.65 * lattice_noise(u, v, salt=view["cloud_salt"]) + 0.35 * lattice_noise(
        u * 3.1, v * 3.1, salt=view["cloud_salt"] + 1)
    cover = np.clip((density - (1.0 - view["cloud_cover"])) / 0.18, 0.0, 1.0)
    cover *= np.clip(directions[:, 2] / 0.05, 0.0, 1.0)
    cloud = (0.82 + 0.18 * density)[:, None] * np.array([1.0, 1.0, 1.0])
    return (colour * (1 - cover[:, None]) + cloud * cover[:, None]).astype(np.float32)


def add_haze(scene: Scene, colour: np.ndarray, distance: np.ndarray, view: dict) -> np.ndarray:
    """Blend toward the horizon colour with distance (aerial perspective)."""
    haze = np.array(scene.biome.sky_horizon, dtype=np.float32) / 255.0
    weight = (1.0 - np.exp(-distance / view["visibility_m"]))[:, None].astype(np.float32)
    return colour * (1 - weight) + haze * weight


# ------------------------------------------------------------------------------ hit shading

def _shade_facades(scene: Scene, px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> np.ndarray:
    ids = scene.lookup(scene.layout.building_id, px, py, 0)
    bx, by, angle, half_l, half_w, eave = scene.building_table[ids].T
    cos_a, sin_a = np.cos(angle), np.sin(angle)
    along = (px - bx) * cos_a + (py - by) * sin_a
    across = -(px - bx) * sin_a + (py - by) * cos_a
    long_side = np.abs(across) / np.maximum(half_w, 1e-3) > np.abs(along) / np.maximum(half_l, 1e-3)
    sign = np.where(long_side, np.sign(across), np.sign(along))
    nx = np.where(long_side, -sin_a, cos_a) * sign
    ny = np.where(long_side, cos_a, sin_a) * sign
    wall_u = np.where(long_side, along, across)
    wall_half = np.where(long_side, half_l, half_w)
    floor_frac = np.mod(pz / FLOOR_M, 1.0)
    column_frac = np.mod(wall_u / WINDOW_PITCH_M + 0.5, 1.0)
    window = ((floor_frac > 0.3) & (floor_frac < 0.78) & (column_frac > 0.22) & (column_frac < 0.78)
              & (pz < eave - 0.4) & (np.abs(wall_u) < wall_half - 1.0))
    colour = scene.facade_colours[ids]
    sky_tint = np.array(scene.biome.sky_horizon, dtype=np.float32) / 255.0
    colour = np.where(window[:, None], GLASS * 0.75 + 0.25 * sky_tint, colour)
    sun = scene.sun.vector
    visible = ~scene.shadowed(px + nx * 1.2, py + ny * 1.2, pz)
    light = lighting(scene.biome, scene.sun, nx * sun[0] + ny * sun[1], visible)
    occlusion = 0.8 + 0.2 * np.clip(pz / 3.0, 0.0, 1.0)
    return colour * (light * occlusion)[:, None]


def _shade_canopies(scene: Scene, px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> np.ndarray:
    ids = scene.lookup(scene.layout.tree_id, px, py, 0)
    tx, ty, palette_index = scene.tree_table[ids].T
    rx, ry = px - tx, py - ty
    norm = np.maximum(np.hypot(rx, ry), 1e-3)
    nx, ny, nz = 0.75 * rx / norm, 0.75 * ry / norm, 0.66
    leaves = np.array(scene.biome.trees, dtype=np.float32)[palette_index.astype(np.int64)] / 255.0
    fine = hash_noise(np.floor(px / 0.3), np.floor(py / 0.3), np.floor(pz / 0.3), salt=7)
    coarse = lattice_noise((px + py) / 1.1, pz / 1.1, salt=8)
    grain = 0.55 * fine + 0.45 * coarse
    sun = scene.sun.vector
    visible = ~scene.shadowed(px + rx / norm, py + ry / norm, pz)
    light = lighting(scene.biome, scene.sun, nx * sun[0] + ny * sun[1] + nz * sun[2], visible)
    return leaves * ((0.75 + 0.45 * grain) * light)[:, None]


def _ground_detail(px: np.ndarray, py: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Fine grain (12 cm) on surfaces seen from close by, fading out by 40 m."""
    grain = hash_noise(np.floor(px / 0.12), np.floor(py / 0.12), salt=3) - 0.5
    return (1.0 + 0.16 * grain * np.clip(1.0 - distance / 40.0, 0.0, 1.0)).astype(np.float32)


def shade_hits(scene: Scene, px: np.ndarray, py: np.ndarray, pz: np.ndarray, wall: np.ndarray,
               distance: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Colour (n, 3), class and building id of surface points seen from ``distance`` metres;
    ``wall`` marks side hits."""
    cls = scene.lookup(scene.layout.class_map, px, py, C.BARE)
    colour = np.empty((px.size, 3), dtype=np.float32)
    top = ~wall
    colour[top] = sample_bilinear(scene.ortho, scene.grid, px[top], py[top], scene.outside_colour) / 255.0
    near = top & (distance < 40.0)
    colour[near] *= _ground_detail(px[near], py[near], distance[near])[:, None]
    facade = wall & (cls == C.BUILDING)
    canopy = wall & (cls == C.TREE)
    other = wall & ~facade & ~canopy
    colour[facade] = _shade_facades(scene, px[facade], py[facade], pz[facade])
    colour[canopy] = _shade_canopies(scene, px[canopy], py[canopy], pz[canopy])
    surface = scene.lookup(scene.layout.surface, px[other], py[other], 0)
    colour[other] = material_palette(scene.biome)[cls[other], surface] * 0.8
    building = scene.lookup(scene.layout.building_id, px, py, 0)
    return colour, cls, building


# ------------------------------------------------------------------------------------ UAV

def march_rays(scene: Scene, origin: np.ndarray, directions: np.ndarray, t_max: float,
               step_m: float = 1.5, max_steps: int = 256, refine: int = 6
               ) -> tuple[np.ndarray, np.ndarray]:
    """First intersection distance of rays with the height field (inf where none).

    Rays are sampled between where they descend below the tallest object and where they
    reach the ground: first coarsely against a block-maximum bound (to skip empty space),
    then about every ``step_m`` metres horizontally; the hit is refined by bisection.
    Returns the distances and the remaining uncertainty per ray.
    """
    oz = origin[2]
    dz = directions[:, 2]
    top = scene.max_height + 0.5
    descending = dz < -1e-6
    with np.errstate(divide="ignore", invalid="ignore"):
        t_start = np.where(descending, np.maximum(0.0, (oz - top) / -dz), 0.0 if oz < top else np.inf)
        t_end = np.minimum(np.where(descending, oz / -dz, np.inf), t_max)
    coarse_step = COARSE_BLOCK * scene.grid.res
    skip = descending & (t_start < t_end)
    t_start[skip] = _march(scene, origin, directions, t_start, t_end, coarse_step, skip,
                           scene.coarse_height_at, restart=True)[skip]
    active = t_start < t_end
    first_t = _march(scene, origin, directions, t_start, t_end, step_m, active, scene.height_at,
                     max_steps=max_steps)
    span = np.where(active, t_end - t_start, 0.0)
    step = span / _step_count(span, directions, step_m, max_steps)
    return _refine_hits(scene, origin, directions, first_t, step, refine)


def _step_count(span: np.ndarray, directions: np.ndarray, step_m: float, max_steps: int) -> np.ndarray:
    horizontal = np.hypot(directions[:, 0], directions[:, 1])
    return np.clip(np.ceil(span * horizontal / step_m), 1, max_steps)


def _march(scene: Scene, origin: np.ndarray, directions: np.ndarray, t_start: np.ndarray,
           t_end: np.ndarray, step_m: float, active: np.ndarray, surface, max_steps: int = 4096,
           restart: bool = False) -> np.ndarray:
    """Distance of the first sample at or below ``surface`` (inf if none) on each active ray.

    With ``restart`` the distance of the sample *before* the first hit is returned instead
    (the last point known to be free), and rays without a hit get inf.
    """
    ox, oy, oz = (float(v) for v in origin)
    span = np.where(active, t_end - t_start, 0.0)
    n_steps = _step_count(span, directions, step_m, max_steps)
    step = span / n_steps
    found = np.full(span.size, np.inf)
    alive = np.flatnonzero(active)
    # per-ray state of the rays still marching, compacted as they finish (float32 for speed)
    t0, dt = t_start[alive].astype(np.float32), step[alive].astype(np.float32)
    d = directions[alive].astype(np.float32)
    last = n_steps[alive]
    chunk, k0 = 8, 0
    while alive.size:
        ks = np.minimum(np.arange(k0, k0 + chunk, dtype=np.float32)[None, :], last[:, None])
        t = t0[:, None] + ks * dt[:, None]
        hit = oz + t * d[:, 2:3] <= surface(ox + t * d[:, 0:1], oy + t * d[:, 1:2]) + HIT_TOLERANCE_M
        any_hit = hit.any(axis=1)
        first = ks[any_hit, np.argmax(hit[any_hit], axis=1)].astype(np.float64)
        if restart:
            first = np.maximum(first - 1, 0)
        found[alive[any_hit]] = t_start[alive[any_hit]] + first * step[alive[any_hit]]
        keep = ~any_hit & (k0 + chunk <= last)
        alive, t0, dt, d, last = alive[keep], t0[keep], dt[keep], d[keep], last[keep]
        k0 += chunk
    return found


def _refine_hits(scene: Scene, origin: np.ndarray, directions: np.ndarray, first_t: np.ndarray,
                 step: np.ndarray, refine: int) -> tuple[np.ndarray, np.ndarray]:
    """Bisect between the last free sample and the first hit of every ray that hit."""
    hit_rays = np.flatnonzero(np.isfinite(first_t))
    t_hit = np.full(first_t.size, np.inf)
    high = first_t[hit_rays]
    low = np.maximum(high - step[hit_rays], 0.0)
    ox, oy, oz = origin
    d = directions[hit_rays]
    for _ in range(refine):
        mid = 0.5 * (low + high)
        inside = oz + mid * d[:, 2] <= scene.height_at(ox + mid * d[:, 0], oy + mid * d[:, 1]) + 1e-6
        high = np.where(inside, mid, high)
        low = np.where(inside, low, mid)
    t_hit[hit_rays] = high
    return t_hit, step / (2 ** refine)


def render_uav(scene: Scene, camera: PinholeCamera, view: dict) -> tuple[np.ndarray, dict]:
    """Oblique drone view (float image) and its layers."""
    directions = camera.ray_directions().reshape(-1, 3)
    origin = np.array([camera.x, camera.y, camera.z])
    t_hit, t_resolution = march_rays(scene, origin, directions, t_max=4000.0)
    hit = np.isfinite(t_hit)
    colour = sky_colour(scene, directions, view)
    points = origin + t_hit[hit, None] * directions[hit]
    px, py, pz = points.T
    # deeper than a roof-slope riser of the 1 m height raster: the ray entered through a wall
    tolerance = 1.0 + np.abs(directions[hit, 2]) * t_resolution[hit] * 2
    wall = scene.height_at(px, py) - pz > tolerance
    hit_colour, hit_class, hit_building = shade_hits(scene, px, py, pz, wall, t_hit[hit])
    colour[hit] = add_haze(scene, hit_colour, t_hit[hit], view)
    layers = _layers(camera.height, camera.width, hit, hit_class, hit_building, t_hit)
    return colour.reshape(camera.height, camera.width, 3), layers


def _layers(height: int, width: int, hit: np.ndarray, hit_class: np.ndarray, hit_building: np.ndarray,
            depth: np.ndarray) -> dict[str, np.ndarray]:
    cls = np.full(hit.size, SKY, dtype=np.uint8)
    cls[hit] = hit_class
    building = np.zeros(hit.size, dtype=np.int32)
    building[hit] = hit_building
    depth = np.where(hit, depth, np.inf).astype(np.float32)
    return {"class": cls.reshape(height, width), "building_id": building.reshape(height, width),
            "depth": depth.reshape(height, width)}


# ----------------------------------------------------------------------------- ground level

def ground_distances(near_m: float = 0.25, far_m: float = 900.0, steps: int = 320) -> np.ndarray:
    """Geometric sampling distances of the column march (fine near the eye)."""
    return near_m * (far_m / near_m) ** (np.arange(steps) / (steps - 1))


def render_ground_level(scene: Scene, x: float, y: float, eye_height: float,
                        azimuths_deg: np.ndarray, tan_elevation: np.ndarray, view: dict
                        ) -> tuple[np.ndarray, dict]:
    """Level view from (x, y, eye_height): column azimuths (W,) and pixel tan(elevation) (H, W)."""
    height, width = tan_elevation.shape
    distances = ground_distances()
    az = np.radians(azimuths_deg)
    sin_az, cos_az = np.sin(az), np.cos(az)
    sample_x = x + distances[None, :] * sin_az[:, None]
    sample_y = y + distances[None, :] * cos_az[:, None]
    obstacle = scene.height_at(sample_x, sample_y)                     # (W, K)
    horizon = np.maximum.accumulate((obstacle - eye_height) / distances[None, :], axis=1)
    step = _first_above(horizon, tan_elevation)                       # (H, W)
    hit = step < distances.size
    col = np.broadcast_to(np.arange(width)[None, :], step.shape)[hit]
    k = step[hit]
    t = tan_elevation[hit]
    surface_h = obstacle[col, k]
    wall = surface_h > eye_height - 0.05
    previous = np.where(k > 0, distances[np.maximum(k - 1, 0)], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        exact = np.clip((eye_height - surface_h) / -t, previous, distances[k])
    distance = np.where(wall, distances[k], exact)
    px = x + distance * sin_az[col]
    py = y + distance * cos_az[col]
    pz = np.where(wall, eye_height + distance * t, surface_h)
    hit_colour, hit_class, hit_building = shade_hits(scene, px, py, pz, wall, distance)
    directions = _level_directions(sin_az, cos_az, tan_elevation)
    colour = sky_colour(scene, directions, view)
    below = (~hit.reshape(-1)) & (directions[:, 2] < 0)
    colour[below] = np.array(scene.biome.sky_horizon, dtype=np.float32) / 255.0
    colour[hit.reshape(-1)] = add_haze(scene, hit_colour, np.hypot(distance, pz - eye_height), view)
    depth = np.full(hit.shape, np.inf)
    depth[hit] = distance
    layers = _layers(height, width, hit.reshape(-1), hit_class, hit_building, depth.reshape(-1))
    return colour.reshape(height, width, 3), layers


def _first_above(horizon: np.ndarray, tan_elevation: np.ndarray) -> np.ndarray:
    """Per pixel, the first march step whose running obstacle angle exceeds the pixel's."""
    width, steps = horizon.shape
    limit = 1e3
    stride = 2 * limit + 1
    offsets = np.arange(width) * stride
    keys = (np.clip(horizon, -limit, limit) + offsets[:, None]).reshape(-1)
    queries = np.clip(tan_elevation, -limit, limit) + offsets[None, :]
    return np.searchsorted(keys, queries, side="right") - (np.arange(width) * steps)[None, :]


def _level_directions(sin_az: np.ndarray, cos_az: np.ndarray, tan_elevation: np.ndarray) -> np.ndarray:
    norm = np.sqrt(1.0 + tan_elevation ** 2)
    dx = np.broadcast_to(sin_az[None, :], tan_elevation.shape) / norm
    dy = np.broadcast_to(cos_az[None, :], tan_elevation.shape) / norm
    return np.stack([dx, dy, tan_elevation / norm], axis=-1).reshape(-1, 3)


def view_conditions(rng: np.random.Generator) -> dict:
    """Per-view weather: cloud cover, cloud pattern and visibility."""
    return {"cloud_cover": float(rng.uniform(0.0, 0.65)),
            "cloud_offset": (float(rng.uniform(0, 1000)), float(rng.uniform(0, 1000))),
            "cloud_salt": int(rng.integers(1, 1 << 30)),
            "visibility_m": float(rng.uniform(1500.0, 6000.0))}
