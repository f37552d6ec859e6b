"""The synthetic world: configuration, generation, locations, splits and view rendering.

``generate_world(WorldConfig(...))`` builds a geo-referenced region (layout, lit orthophoto,
shadows) in about two seconds; ``World`` then renders any view of any location on demand.
Every rendered view is a pure function of (world seed, location id, modality, view index),
so views can be rendered independently, in any order, in parallel tasks. A ``World`` pickles
as its config and is rebuilt (and cached) in the receiving process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import numpy.typing as npt

from . import classes as C
from .appearance import Sun, orthophoto
from .biomes import BIOME_NAMES, Biome, get_biome
from .camera import PinholeCamera, level_perspective, panorama_azimuths, panorama_elevations, uav_camera
from .geo import LocalFrame
from .layout import Layout, build_layout
from .photometric import apply_jitter, draw_jitter
from .render import (render_ground_level, render_satellite, render_streetmap, render_uav,
                     tile_layers, view_conditions)
from .scene import Scene
from .seeding import derived_seed, stream

MODALITIES: tuple[str, ...] = ("uav", "streetmap", "panorama", "ground")
VIEWS: tuple[str, ...] = ("satellite",) + MODALITIES
SPLITS: tuple[str, ...] = ("train", "val", "test")
LOCATION_KINDS: tuple[str, ...] = ("road", "junction", "building")
CLEARANCE_M = 3.0  # no tree or building this close to a location
SPLIT_PITCH_M = 100_000.0   # splits lie 100 km apart (north-south)
REGION_PITCH_M = 25_000.0   # regions of one split lie 25 km apart (east-west)
REGIONS_PER_ROW = 64        # a split's first 64 regions form one row; later rows lie south


@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines a world (and so every view and fact rendered from it)."""

    seed: int = 0
    origin_lat: float = 47.37
    origin_lon: float = 8.54
    size_m: float = 2000.0
    resolution_m: float = 1.0
    biome: str | None = None
    tile_size_m: float = 256.0
    location_margin_m: float = 250.0
    location_spacing_m: float = 60.0
    uav_headings: int = 4
    uav_distance_m: tuple[float, float] = (150.0, 250.0)
    uav_pitch_deg: tuple[float, float] = (30.0, 60.0)
    uav_fov_deg: float = 60.0
    eye_height_m: float = 2.0
    ground_fov_deg: float = 90.0
    panorama_heading: str = "north"
    query_jitter: float = 1.0
    satellite_jitter: float = 0.8
    split: str | None = None
    name: str | None = None
    # a real city instead of a generated one: an OSM extract name (``osm.OSM_EXTRACTS``) or a
    # .osm.pbf path, read around (origin_lat, origin_lon); see ``osm_world_config``
    osm: str | None = None

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")
        if not 200.0 <= self.size_m <= 20_000.0:
            raise ValueError(f"size_m must lie in [200, 20000], got {self.size_m}")
        if self.resolution_m not in (0.5, 1.0, 2.0):
            raise ValueError(f"resolution_m must be 0.5, 1.0 or 2.0, got {self.resolution_m}")
        if self.biome is not None:
            get_biome(self.biome)
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; allowed: {', '.join(SPLITS)}")
        if self.panorama_heading not in ("north", "random"):
            raise ValueError(f"panorama_heading must be 'north' or 'random', got {self.panorama_heading!r}")
        if self.size_m - 2 * self.location_margin_m < self.location_spacing_m:
            raise ValueError("size_m leaves no room for locations: lower location_margin_m")
        if self.uav_headings < 1:
            raise ValueError(f"uav_headings must be >= 1, got {self.uav_headings}")
        LocalFrame(self.origin_lat, self.origin_lon)

    def to_dict(self) -> dict:
        """The config as a dict; ``osm`` only when set, so a generated world keeps the id
        (``world_id``: a digest of this dict) it had before the field existed."""
        settings = asdict(self)
        if settings["osm"] is None:
            del settings["osm"]
        return settings


@dataclass(frozen=True)
class Location:
    """A place to look at: the satellite tile is centred on it, ground views stand on it."""

    location_id: str
    x: float
    y: float
    lat: float
    lon: float
    kind: str
    role: str = "query"
    index: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _PointStream:
    """Poisson-disc sampling of locations; point i is a distractor when i % 3 == 2.

    Sequential and deterministic: asking for more points extends the same sequence, so
    ``locations(50)`` is a prefix of ``locations(100)`` whatever the call order.
    """

    rng: np.random.Generator
    points: list[tuple[float, float, str]] = field(default_factory=list)
    buckets: dict[tuple[int, int], list[int]] = field(default_factory=dict)
    attempts: int = 0


def _role(index: int) -> str:
    return "distractor" if index % 3 == 2 else "query"


class World:
    """A generated region with renderers for every view and scene facts per location."""

    def __init__(self, config: WorldConfig) -> None:
        self.config = config
        self.biome: Biome = get_biome(config.biome or _default_biome(config.seed))
        self.frame = LocalFrame(config.origin_lat, config.origin_lon)
        sun_rng = stream(config.seed, "sun")
        # daylight sun, somewhere in the southern half of the sky
        self.sun = Sun(round(float(sun_rng.uniform(100.0, 260.0)), 2),
                       round(float(sun_rng.uniform(*self.biome.sun_elevation_deg)), 2))
        if config.osm:
            from .osm import build_osm_layout

            self.layout: Layout = build_osm_layout(config.size_m, config.resolution_m, self.biome, config.seed,
                                                   config.osm, config.origin_lat, config.origin_lon)
        else:
            self.layout = build_layout(config.size_m, config.resolution_m, self.biome, config.seed)
        ortho, shadow = orthophoto(self.layout, self.biome, self.sun, stream(config.seed, "albedo"))
        self.scene = Scene(self.layout, self.biome, self.sun, ortho, shadow)
        self._points = _PointStream(stream(config.seed, "locations"))
        self._candidates = self._candidate_pixels()

    def __reduce__(self) -> tuple:
        return (load_world, (self.config,))

    # ------------------------------------------------------------------ identity and bounds
    @property
    def world_id(self) -> str:
        """``config.name`` if given, else seed plus a digest of the whole config (unique)."""
        if self.config.name:
            return self.config.name
        digest = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode()).hexdigest()
        prefix = f"{self.config.split}-" if self.config.split else ""
        return f"{prefix}s{self.config.seed}-{digest[:8]}"

    @property
    def bounds_latlon(self) -> tuple[float, float, float, float]:
        """(lat_min, lon_min, lat_max, lon_max) of the whole region."""
        return region_bounds_latlon(self.config)

    def tile_bounds_latlon(self, loc: Location) -> tuple[float, float, float, float]:
        """(lat_min, lon_min, lat_max, lon_max) of the satellite tile of a location."""
        half = self.config.tile_size_m / 2
        lat0, lon0 = self.frame.to_latlon(loc.x - half, loc.y - half)
        lat1, lon1 = self.frame.to_latlon(loc.x + half, loc.y + half)
        return (lat0, lon0, lat1, lon1)

    def describe(self) -> dict:
        """JSON-serialisable summary of the world."""
        return {"world_id": self.world_id, "config": self.config.to_dict(), "biome": self.biome.name,
                "sun": {"azimuth_deg": self.sun.azimuth_deg, "elevation_deg": self.sun.elevation_deg},
                "bounds_latlon": list(self.bounds_latlon),
                "counts": {"buildings": len(self.layout.buildings), "junctions": len(self.layout.junctions),
                           "roads": len(self.layout.roads), "trees": len(self.layout.trees),
                           "features": len(self.layout.features)}}

    # -------------------------------------------------------------------------- locations
    def location_at(self, x: float, y: float, location_id: str, kind: str = "road",
                    role: str = "query", index: int = 0) -> Location:
        x, y = round(float(x), 3), round(float(y), 3)
        lat, lon = self.frame.to_latlon(x, y)
        return Location(location_id, x, y, lat, lon, kind, role, index)

    def locations(self, n: int) -> list[Location]:
        """The first n query locations (deterministic; a prefix of any longer request)."""
        return self._take("query", n)

    def capacity(self, limit: int, role: str = "query") -> int:
        """How many locations of ``role`` ("query" or "distractor") this region can hold, up to
        ``limit`` (the sampler's spacing and clearance rules; distractors take every third point)."""
        try:
            return len(self._take(role, limit))
        except ValueError:  # filled up: count the points of that role placed before that
            return sum(1 for i in range(len(self._points.points)) if _role(i) == role)

    def distractor_tiles(self, n: int) -> list[Location]:
        """n gallery-only tile centres: spaced from every query location like queries are."""
        return self._take("distractor", n)

    def _take(self, role: str, n: int) -> list[Location]:
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        letter = "L" if role == "query" else "D"
        found: list[Location] = []
        index = 0
        while len(found) < n:
            while index >= len(self._points.points):
                self._extend_points()
            if _role(index) == role:
                x, y, kind = self._points.points[index]
                found.append(self.location_at(x, y, f"{self.world_id}-{letter}{len(found):05d}",
                                              kind, role, len(found)))
            index += 1
        return found

    def _candidate_pixels(self) -> np.ndarray:
        grid = self.layout.grid
        inner = grid.extent_m / 2 - self.config.location_margin_m
        coords = grid.x_of_col(np.arange(grid.size))
        inside = np.abs(coords) <= inner
        mask = (self.layout.class_map == C.ROAD) & inside[None, :] & inside[:, None]
        return np.flatnonzero(mask)

    def _extend_points(self) -> None:
        stream_ = self._points
        spacing = self.config.location_spacing_m
        budget = 1000 + 100 * len(stream_.points)
        while stream_.attempts < budget:
            stream_.attempts += 1
            candidate = self._candidate(stream_.rng)
            if candidate is None:
                continue
            x, y, kind = candidate
            cell = (int(math.floor(x / spacing)), int(math.floor(y / spacing)))
            neighbours = [i for dx in (-1, 0, 1) for dy in (-1, 0, 1)
                          for i in stream_.buckets.get((cell[0] + dx, cell[1] + dy), [])]
            if any(math.hypot(stream_.points[i][0] - x, stream_.points[i][1] - y) < spacing
                   for i in neighbours):
                continue
            stream_.buckets.setdefault(cell, []).append(len(stream_.points))
            stream_.points.append((x, y, kind))
            return
        raise ValueError(f"could not place more than {len(stream_.points)} locations (queries and "
                         "distractors): lower location_spacing_m or use a larger size_m")

    def _candidate(self, rng: np.random.Generator) -> tuple[float, float, str] | None:
        kind = LOCATION_KINDS[int(rng.choice(3, p=[0.6, 0.2, 0.2]))]
        inner = self.layout.grid.extent_m / 2 - self.config.location_margin_m
        if kind == "junction":
            point = self._junction_point(rng, inner)
        elif kind == "building":
            point = self._building_front(rng, inner)
        else:
            point = self._road_point(rng)
        if point is None or max(abs(point[0]), abs(point[1])) > inner:
            return None
        cls = self.scene.lookup(self.layout.class_map, np.array([point[0]]), np.array([point[1]]), C.BARE)[0]
        if cls not in (C.ROAD, C.SIDEWALK):
            return None
        rows, cols = self.layout.grid.pixel_window(point[0], point[1], CLEARANCE_M)
        if C.class_lookup((C.TREE, C.BUILDING))[self.layout.class_map[rows, cols]].any():
            return None  # the eye would stand inside a canopy or against a wall
        return float(point[0]), float(point[1]), kind

    def _road_point(self, rng: np.random.Generator) -> tuple[float, float] | None:
        if self._candidates.size == 0:
            return None
        flat = int(self._candidates[rng.integers(self._candidates.size)])
        grid = self.layout.grid
        row, col = divmod(flat, grid.size)
        return (float(grid.x_of_col(col)) + rng.uniform(-0.4, 0.4) * grid.res,
                float(grid.y_of_row(row)) + rng.uniform(-0.4, 0.4) * grid.res)

    def _junction_point(self, rng: np.random.Generator, inner: float) -> tuple[float, float] | None:
        junctions = [j for j in self.layout.junctions if max(abs(j.x), abs(j.y)) <= inner]
        if not junctions:
            return None
        junction = junctions[int(rng.integers(len(junctions)))]
        if junction.type != "roundabout":
            return junction.x, junction.y
        bearing = math.radians(junction.arms[int(rng.integers(len(junction.arms)))] + 22.5)
        return (junction.x + junction.ring_radius * math.sin(bearing),
                junction.y + junction.ring_radius * math.cos(bearing))

    def _building_front(self, rng: np.random.Generator, inner: float) -> tuple[float, float] | None:
        buildings = self.layout.buildings
        if not buildings:
            return None
        building = buildings[int(rng.integers(len(buildings)))]
        if max(abs(building.x), abs(building.y)) > inner:
            return None
        rows, cols = self.layout.grid.pixel_window(building.x, building.y, 60.0)
        road_rows, road_cols = np.nonzero(self.layout.class_map[rows, cols] == C.ROAD)
        if road_rows.size == 0:
            return None
        xs = self.layout.grid.x_of_col(road_cols + cols.start)
        ys = self.layout.grid.y_of_row(road_rows + rows.start)
        nearest = int(np.argmin(np.hypot(xs - building.x, ys - building.y)))
        return float(xs[nearest]), float(ys[nearest])

    # ----------------------------------------------------------------------------- views
    def _view_rng(self, loc: Location, view: str, view_index: int, purpose: str) -> np.random.Generator:
        return stream(self.config.seed, "view", loc.location_id, view, view_index, purpose)

    def photometric_parameters(self, loc: Location, view: str, view_index: int = 0,
                               strength: float | None = None) -> dict:
        """Exposure / white balance / ... jitter of a view (config strength by default)."""
        if strength is None:
            strength = self.config.satellite_jitter if view == "satellite" else self.config.query_jitter
        return draw_jitter(self._view_rng(loc, view, view_index, "jitter"), strength)

    def _finish(self, image: np.ndarray, loc: Location, view: str, view_index: int,
                jitter: bool) -> np.ndarray:
        params = self.photometric_parameters(loc, view, view_index, None if jitter else 0.0)
        return apply_jitter(image, params, self._view_rng(loc, view, view_index, "noise"))

    def render_satellite(self, loc: Location, size: int = 256, jitter: bool = True) -> np.ndarray:
        """North-up orthophoto tile (tile_size_m square) centred on the location, uint8."""
        _check_size(size)
        image = render_satellite(self.scene, loc.x, loc.y, self.config.tile_size_m, size)
        return self._finish(image, loc, "satellite", 0, jitter)

    def render_streetmap(self, loc: Location, size: int = 256, shift_m: tuple[float, float] = (0.0, 0.0),
                         rotation_deg: float = 0.0) -> np.ndarray:
        """Cartographic tile of the same extent as the satellite tile, uint8.  ``shift_m`` (east,
        north metres) and ``rotation_deg`` (clockwise) misregister it against the imagery the
        way real map data is (``misregistration``); zero: pixel-aligned with the satellite tile."""
        _check_size(size)
        return render_streetmap(self.scene, loc.x + float(shift_m[0]), loc.y + float(shift_m[1]),
                                self.config.tile_size_m, size, rotation_deg=float(rotation_deg))

    def misregistration(self, loc: Location, max_shift_m: float, max_rotation_deg: float,
                        view_index: int = 0) -> dict:
        """A deterministic map-to-imagery error for one street map: a shift drawn uniformly in the
        disc of radius ``max_shift_m`` and a rotation uniform in ``[-max_rotation_deg,
        max_rotation_deg]``.  OpenStreetMap against orthophotos is typically a few metres and
        up to a few degrees off (it is traced from several imagery sources)."""
        if max_shift_m < 0 or max_rotation_deg < 0:
            raise ValueError(f"misregistration limits must be non-negative, got shift {max_shift_m} m, "
                             f"rotation {max_rotation_deg} deg")
        rng = self._view_rng(loc, "streetmap", view_index, "registration")
        radius = max_shift_m * float(np.sqrt(rng.uniform()))
        angle = rng.uniform(0.0, 2 * np.pi)
        return {"dx_m": round(radius * float(np.cos(angle)), 3), "dy_m": round(radius * float(np.sin(angle)), 3),
                "rotation_deg": round(float(rng.uniform(-max_rotation_deg, max_rotation_deg)), 3)}

    def uav_camera(self, loc: Location, heading_deg: float, size: int = 256, distance_m: float = 200.0,
                   pitch_deg: float = 45.0, fov_deg: float | None = None) -> PinholeCamera:
        """The drone camera of ``render_uav`` (for projecting world points into the image)."""
        return uav_camera(loc.x, loc.y, heading_deg, distance_m, pitch_deg,
                          fov_deg or self.config.uav_fov_deg, size)

    def render_uav(self, loc: Location, heading_deg: float, size: int = 256, distance_m: float = 200.0,
                   pitch_deg: float = 45.0, fov_deg: float | None = None, view_index: int = 0,
                   jitter: bool = True, with_layers: bool = False) -> np.ndarray | tuple[np.ndarray, dict]:
        """Oblique drone view looking at the location toward heading_deg, uint8."""
        _check_size(size)
        camera = self.uav_camera(loc, heading_deg, size, distance_m, pitch_deg, fov_deg)
        conditions = view_conditions(self._view_rng(loc, "uav", view_index, "conditions"))
        image, layers = render_uav(self.scene, camera, conditions)
        out = self._finish(image, loc, "uav", view_index, jitter)
        return (out, layers) if with_layers else out

    def render_panorama(self, loc: Location, heading_deg: float = 0.0, width: int = 512,
                        height: int = 256, view_index: int = 0, jitter: bool = True,
                        with_layers: bool = False) -> np.ndarray | tuple[np.ndarray, dict]:
        """360-degree equirectangular view at eye height; column 0's left edge faces heading_deg."""
        _check_size(width)
        _check_size(height)
        azimuths = panorama_azimuths(heading_deg, width)
        elevations = np.clip(panorama_elevations(height), -89.9, 89.9)
        tan_elevation = np.broadcast_to(np.tan(np.radians(elevations))[:, None], (height, width))
        return self._ground_view(loc, "panorama", azimuths, tan_elevation, view_index, jitter, with_layers)

    def render_ground(self, loc: Location, heading_deg: float, fov_deg: float | None = None,
                      size: int = 256, view_index: int = 0, jitter: bool = True,
                      with_layers: bool = False) -> np.ndarray | tuple[np.ndarray, dict]:
        """Level perspective photo at eye height; heading_deg is the azimuth of the image centre."""
        _check_size(size)
        fov = fov_deg or self.config.ground_fov_deg
        if not 10.0 <= fov <= 150.0:
            raise ValueError(f"fov_deg must lie in [10, 150], got {fov}")
        azimuths, tan_elevation = level_perspective(heading_deg, fov, size, size)
        return self._ground_view(loc, "ground", azimuths, tan_elevation, view_index, jitter, with_layers)

    def _ground_view(self, loc: Location, view: str, azimuths: np.ndarray, tan_elevation: np.ndarray,
                     view_index: int, jitter: bool, with_layers: bool
                     ) -> np.ndarray | tuple[np.ndarray, dict]:
        conditions = view_conditions(self._view_rng(loc, view, view_index, "conditions"))
        image, layers = render_ground_level(self.scene, loc.x, loc.y, self.config.eye_height_m,
                                            azimuths, np.ascontiguousarray(tan_elevation), conditions)
        out = self._finish(image, loc, view, view_index, jitter)
        return (out, layers) if with_layers else out

    def query_parameters(self, loc: Location, modality: str, view_index: int = 0) -> dict:
        """Camera parameters of query view ``view_index`` (deterministic)."""
        _check_modality(modality, MODALITIES)
        if view_index < 0:
            raise ValueError(f"view_index must be non-negative, got {view_index}")
        rng = self._view_rng(loc, modality, view_index, "camera")
        if modality == "uav":
            base = stream(self.config.seed, "uav-base", loc.location_id).uniform(0.0, 360.0)
            step = 360.0 / self.config.uav_headings
            heading = (base + view_index * step + rng.uniform(-0.25, 0.25) * step) % 360.0
            return {"heading": round(float(heading), 3), "heading_reference": "image_centre",
                    "distance_m": round(float(rng.uniform(*self.config.uav_distance_m)), 2),
                    "pitch_deg": round(float(rng.uniform(*self.config.uav_pitch_deg)), 2),
                    "fov_deg": self.config.uav_fov_deg}
        if modality == "panorama":
            heading = 0.0 if self.config.panorama_heading == "north" else float(rng.uniform(0, 360))
            return {"heading": round(heading, 3), "heading_reference": "left_edge"}
        if modality == "ground":
            return {"heading": round(float(rng.uniform(0.0, 360.0)), 3), "heading_reference": "image_centre",
                    "fov_deg": self.config.ground_fov_deg}
        return {"heading": None, "heading_reference": None}

    def render_query(self, loc: Location, modality: str, view_index: int = 0,
                     size: int | None = None, misregistration: tuple[float, float] | None = None
                     ) -> tuple[np.ndarray, dict]:
        """Query image of one modality and its metadata (camera and photometric parameters).

        ``size`` overrides the default image size (panoramas: the width; height = width / 2).
        ``misregistration`` ``(max shift m, max rotation deg)``: street maps are drawn off the
        imagery by a per-location error (``misregistration``), recorded as ``meta["registration"]``.
        """
        params = self.query_parameters(loc, modality, view_index)
        if modality == "uav":
            image = self.render_uav(loc, params["heading"], size=size or 256, distance_m=params["distance_m"],
                                    pitch_deg=params["pitch_deg"], view_index=view_index)
        elif modality == "panorama":
            width = size or 512
            image = self.render_panorama(loc, params["heading"], width=width, height=width // 2,
                                         view_index=view_index)
        elif modality == "ground":
            image = self.render_ground(loc, params["heading"], size=size or 256, view_index=view_index)
        else:
            shift, rotation = (0.0, 0.0), 0.0
            if misregistration:
                error = self.misregistration(loc, *misregistration, view_index=view_index)
                params = {**params, "registration": error}
                shift, rotation = (error["dx_m"], error["dy_m"]), error["rotation_deg"]
            image = self.render_streetmap(loc, size=size or 256, shift_m=shift, rotation_deg=rotation)
        meta = {"modality": modality, "view_index": view_index, "location_id": loc.location_id,
                "world_id": self.world_id, **params}
        if modality != "streetmap":
            meta["photometric"] = self.photometric_parameters(loc, modality, view_index)
        return image, meta

    def render_view(self, loc: Location, view: str, view_index: int = 0) -> tuple[np.ndarray, dict]:
        """Any of VIEWS: the satellite tile or a query modality."""
        _check_modality(view, VIEWS)
        if view == "satellite":
            return self.render_satellite(loc), {"modality": "satellite", "location_id": loc.location_id,
                                                "world_id": self.world_id, "heading": None,
                                                "photometric": self.photometric_parameters(loc, view)}
        return self.render_query(loc, view, view_index)

    # ----------------------------------------------------------------------------- facts
    def tile_layers(self, loc: Location) -> dict[str, np.ndarray]:
        """Nearest-pixel class / building / feature / tree rasters of the location's tile."""
        return tile_layers(self.scene, loc.x, loc.y, self.config.tile_size_m)

    def tile_pixel(self, loc: Location, x: npt.ArrayLike, y: npt.ArrayLike, size: int = 256
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Continuous (col, row) of world points in a tile image of the given size."""
        scale = size / self.config.tile_size_m
        col = (np.asarray(x) - (loc.x - self.config.tile_size_m / 2)) * scale - 0.5
        row = ((loc.y + self.config.tile_size_m / 2) - np.asarray(y)) * scale - 0.5
        return col, row

    def scene_facts(self, loc: Location) -> dict:
        """Structured, JSON-serialisable facts about the location's tile (see ``facts``)."""
        from .facts import scene_facts

        return scene_facts(self, loc)


def region_bounds_latlon(config: WorldConfig) -> tuple[float, float, float, float]:
    """(lat_min, lon_min, lat_max, lon_max) of a config's region, without generating it."""
    frame = LocalFrame(config.origin_lat, config.origin_lon)
    half = config.size_m / 2
    lat0, lon0 = frame.to_latlon(-half, -half)
    lat1, lon1 = frame.to_latlon(half, half)
    return (lat0, lon0, lat1, lon1)


def _check_size(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or not 16 <= size <= 4096:
        raise ValueError(f"image sizes must be integers in [16, 4096], got {size!r}")


def _check_modality(modality: str, allowed: tuple[str, ...]) -> None:
    if modality not in allowed:
        raise ValueError(f"unknown modality {modality!r}; allowed: {', '.join(allowed)}")


def _default_biome(seed: int) -> str:
    return BIOME_NAMES[int(stream(seed, "biome").integers(len(BIOME_NAMES)))]


def osm_world_config(source: str = "helsinki", size_m: float | None = None, biome: str = "temperate",
                     seed: int = 0, **overrides) -> WorldConfig:
    """A world whose layout is the OSM extract ``source`` (``osm.py``): centred on the extract,
    ``size_m`` (default: the largest square its roads cover, to 10 m) on a side, the tiles'
    margin half a tile (a tile never leaves the data) and 45 m between locations (a city centre
    of about 1 km^2 then holds some 200 locations and distractor tiles).  ``biome`` gives colours
    and the floors of unmapped buildings.  Raises ``ValueError`` / ``ImportError`` from
    ``osm.extract_path`` with the fix."""
    from .osm import extract_centre, extract_extent_m

    lat, lon = extract_centre(source)
    if size_m is None:
        size_m = math.floor(min(extract_extent_m(source)) / 10.0) * 10.0
    name = overrides.pop("name", None) or f"osm-{os.path.basename(source).split('.')[0].lower()}-s{seed}"
    settings = {"tile_size_m": 256.0, "location_spacing_m": 45.0, **overrides}
    settings.setdefault("location_margin_m", settings["tile_size_m"] / 2 + 2.0)
    return WorldConfig(seed=seed, origin_lat=round(lat, 6), origin_lon=round(lon, 6), size_m=size_m, biome=biome,
                       osm=source, name=name, **settings)


def generate_world(config: WorldConfig | None = None, **overrides) -> World:
    """Generate a world from a config (or from WorldConfig keyword arguments)."""
    if config is None:
        config = WorldConfig(**overrides)
    elif overrides:
        config = WorldConfig(**{**config.to_dict(), **overrides})
    return World(config)


@functools.lru_cache(maxsize=2)
def load_world(config: WorldConfig) -> World:
    """Cached ``generate_world``: how a pickled World is rebuilt in a worker process."""
    return World(config)


def split_config(seed: int, split: str, size_m: float = 2000.0, origin_lat: float = 47.37,
                 origin_lon: float = 8.54, region_index: int = 0, biome: str | None = None,
                 **overrides) -> WorldConfig:
    """Config of region ``region_index`` of a split; splits and regions never overlap.

    Regions lie on a lattice of REGION_PITCH_M (25 km). Region r sits in column r % 64
    (REGION_PITCH_M * column east of the origin) and row r // 64: row 0 of split s lies
    SPLIT_PITCH_M * s north of the origin (the first 64 regions: splits 100 km apart); later
    rows lie south of the origin, the three splits' rows interleaved (row k >= 1 of split s at
    ((k - 1) * 3 + s + 1) * REGION_PITCH_M south), so 100,000 locations (~1,600 regions a
    split) stay within about 2,500 km.  Each region gets its own derived seed (and biome).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    if region_index < 0:
        raise ValueError(f"region_index must be non-negative, got {region_index}")
    if size_m > REGION_PITCH_M - 1000.0:
        raise ValueError(f"size_m must stay below {REGION_PITCH_M - 1000.0} for splits to stay disjoint")
    split_index = SPLITS.index(split)
    column, row = region_index % REGIONS_PER_ROW, region_index // REGIONS_PER_ROW
    north = (split_index * SPLIT_PITCH_M if row == 0
             else -((row - 1) * len(SPLITS) + split_index + 1) * REGION_PITCH_M)
    centre = LocalFrame(origin_lat, origin_lon).offset(column * REGION_PITCH_M, north)
    return WorldConfig(seed=derived_seed(seed, split, region_index), origin_lat=centre.origin_lat,
                       origin_lon=centre.origin_lon, size_m=size_m, biome=biome, split=split, **overrides)


def generate_split_world(seed: int, split: str, size_m: float = 2000.0, origin_lat: float = 47.37,
                         origin_lon: float = 8.54, region_index: int = 0, biome: str | None = None,
                         **overrides) -> World:
    """World of one split (train / val / test) in its own, disjoint area."""
    return World(split_config(seed, split, size_m, origin_lat, origin_lon, region_index, biome, **overrides))
