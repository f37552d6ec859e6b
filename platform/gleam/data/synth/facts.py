"""Scene facts: structured, JSON-serialisable truths about a location's satellite tile.

Facts are measured on the same rasters the renderers draw (the tile's nearest-pixel class,
building and feature rasters), so "water covers 12% of the tile" is exactly what the street
map shows. Directions are 8-way compass names from the location (the tile centre), or
"center" when a thing's centroid lies within ``CENTER_RADIUS_M``; distances are metres from
the location to the nearest visible pixel (0 when the location is on it).

Query helpers: ``features(facts, ...)``, ``has(facts, type, direction=...)`` and
``nearest_junction_type(facts)``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from . import classes as C
from .geo import COMPASS_8, compass_direction, orientation_label
from .roads import JUNCTION_TYPES

if TYPE_CHECKING:
    from .world import Location, World

CENTER_RADIUS_M = 10.0
MIN_FEATURE_PIXELS = 40
MIN_BUILDING_PIXELS = 10
DIRECTIONS: tuple[str, ...] = COMPASS_8 + ("center",)
FEATURE_TYPES: tuple[str, ...] = ("building", "park", "water", "parking", "sports_field", "tree_cluster")


def _direction(dx: float, dy: float) -> str:
    return "center" if math.hypot(dx, dy) < CENTER_RADIUS_M else compass_direction(dx, dy)


def _tile_coordinates(world: "World", loc: "Location") -> tuple[np.ndarray, np.ndarray]:
    extent = world.config.tile_size_m
    n = int(round(extent / world.layout.grid.res))
    offsets = (np.arange(n) + 0.5) * extent / n
    return loc.x - extent / 2 + offsets, loc.y + extent / 2 - offsets


def _pixel_summary(mask: np.ndarray, xs: np.ndarray, ys: np.ndarray, loc: "Location") -> dict:
    rows, cols = np.nonzero(mask)
    px, py = xs[cols], ys[rows]
    cx, cy = float(px.mean()), float(py.mean())
    return {"direction": _direction(cx - loc.x, cy - loc.y),
            "distance_m": round(float(np.hypot(px - loc.x, py - loc.y).min()), 1),
            "centroid_offset_m": [round(cx - loc.x, 1), round(cy - loc.y, 1)],
            "fraction": round(float(mask.mean()), 4)}


def _land_features(world: "World", loc: "Location", layers: dict, xs: np.ndarray, ys: np.ndarray
                   ) -> list[dict]:
    ids, counts = np.unique(layers["feature_id"], return_counts=True)
    found = []
    for feature_id, count in zip(ids, counts):
        if feature_id == 0 or count < MIN_FEATURE_PIXELS:
            continue
        feature = world.layout.features[int(feature_id) - 1]
        summary = _pixel_summary(layers["feature_id"] == feature_id, xs, ys, loc)
        found.append({"type": feature.type, "kind": feature.kind, "feature_id": int(feature_id), **summary})
    return found


def _tree_clusters(world: "World", loc: "Location") -> list[dict]:
    trees = world.layout.trees
    half = world.config.tile_size_m / 2
    inside = (np.abs(trees.x - loc.x) <= half) & (np.abs(trees.y - loc.y) <= half) & (trees.cluster >= 0)
    found = []
    for cluster in np.unique(trees.cluster[inside]):
        members = inside & (trees.cluster == cluster)
        if members.sum() < 3:
            continue
        tx, ty = trees.x[members], trees.y[members]
        cx, cy = float(tx.mean()), float(ty.mean())
        gap = np.hypot(tx - loc.x, ty - loc.y) - trees.radius[members]
        found.append({"type": "tree_cluster", "kind": world.layout.tree_clusters[int(cluster)].setting,
                      "cluster_id": int(cluster), "direction": _direction(cx - loc.x, cy - loc.y),
                      "distance_m": round(max(0.0, float(gap.min())), 1),
                      "centroid_offset_m": [round(cx - loc.x, 1), round(cy - loc.y, 1)],
                      "n_trees": int(members.sum())})
    return found


def _buildings(world: "World", loc: "Location", layers: dict, xs: np.ndarray, ys: np.ndarray
               ) -> tuple[dict, list[dict]]:
    ids, counts = np.unique(layers["building_id"], return_counts=True)
    visible = [int(i) for i, c in zip(ids, counts) if i > 0 and c >= MIN_BUILDING_PIXELS]
    if not visible:
        return {"count": 0, "height_min_m": None, "height_mean_m": None, "height_max_m": None,
                "tallest": None, "by_direction": {}}, []
    buildings = [world.layout.buildings[i - 1] for i in visible]
    heights = np.array([b.height for b in buildings])
    tallest = buildings[int(np.argmax(heights))]
    by_direction: dict[str, int] = {}
    for b in buildings:
        key = _direction(b.x - loc.x, b.y - loc.y)
        by_direction[key] = by_direction.get(key, 0) + 1
    nearest_mask = layers["building_id"] > 0
    summary = {
        "count": len(visible),
        "height_min_m": round(float(heights.min()), 1),
        "height_mean_m": round(float(heights.mean()), 1),
        "height_max_m": round(float(heights.max()), 1),
        "tallest": {"building_id": tallest.building_id, "height_m": tallest.height, "floors": tallest.floors,
                    "direction": _direction(tallest.x - loc.x, tallest.y - loc.y),
                    "distance_m": round(math.hypot(tallest.x - loc.x, tallest.y - loc.y), 1)},
        "by_direction": dict(sorted(by_direction.items())),
        "fraction": round(float(nearest_mask.mean()), 4),
    }
    nearest = {"type": "building", "kind": "nearest", **_pixel_summary(
        layers["building_id"] == _nearest_id(layers["building_id"], xs, ys, loc), xs, ys, loc)}
    return summary, [nearest]


def _nearest_id(ids: np.ndarray, xs: np.ndarray, ys: np.ndarray, loc: "Location") -> int:
    rows, cols = np.nonzero(ids)
    nearest = int(np.argmin(np.hypot(xs[cols] - loc.x, ys[rows] - loc.y)))
    return int(ids[rows[nearest], cols[nearest]])


def _junctions(world: "World", loc: "Location") -> list[dict]:
    half = world.config.tile_size_m / 2
    found = []
    for junction in world.layout.junctions:
        dx, dy = junction.x - loc.x, junction.y - loc.y
        if abs(dx) <= half and abs(dy) <= half:
            found.append({"type": junction.type, "junction_id": junction.junction_id,
                          "direction": _direction(dx, dy), "distance_m": round(math.hypot(dx, dy), 1),
                          "degree": junction.degree})
    return sorted(found, key=lambda j: (j["distance_m"], j["junction_id"]))


def _roads(world: "World", loc: "Location", layers: dict) -> dict:
    half = world.config.tile_size_m / 2
    orientations, count, major = set(), 0, False
    for road in world.layout.roads:
        points = np.array(road.points)
        inside = (np.abs(points[:, 0] - loc.x) <= half) & (np.abs(points[:, 1] - loc.y) <= half)
        if inside.sum() < 2:
            continue
        first, last = points[inside][0], points[inside][-1]
        bearing = math.degrees(math.atan2(last[0] - first[0], last[1] - first[1]))
        orientations.add(orientation_label(bearing))
        count += 1
        major |= road.major
    n = layers["class"].shape[0]
    centre_class = int(layers["class"][n // 2, n // 2])
    return {"count": count, "orientations": sorted(orientations), "major_road": major,
            "on_road": centre_class == C.ROAD,
            "fraction": round(float((layers["class"] == C.ROAD).mean()), 4)}


def scene_facts(world: "World", loc: "Location") -> dict:
    """All facts about the tile centred on ``loc`` (see module docstring)."""
    layers = world.tile_layers(loc)
    xs, ys = _tile_coordinates(world, loc)
    cls = layers["class"]
    land_cover = {name: round(float((cls == code).mean()), 4) for code, name in enumerate(C.CLASS_NAMES)}
    building_summary, building_features = _buildings(world, loc, layers, xs, ys)
    features = building_features + _land_features(world, loc, layers, xs, ys) + _tree_clusters(world, loc)
    junctions = _junctions(world, loc)
    water_kinds = sorted({f["kind"] for f in features if f["type"] == "water"})
    return {
        "location": {"location_id": loc.location_id, "lat": loc.lat, "lon": loc.lon, "x": loc.x,
                     "y": loc.y, "kind": loc.kind},
        "world": {"world_id": world.world_id, "biome": world.biome.name,
                  "sun_azimuth_deg": world.sun.azimuth_deg, "sun_elevation_deg": world.sun.elevation_deg},
        "tile": {"size_m": world.config.tile_size_m, "bounds_latlon": list(world.tile_bounds_latlon(loc))},
        "nearest_junction": junctions[0] if junctions else {"type": "none", "direction": None,
                                                             "distance_m": None},
        "junctions": junctions,
        "features": features,
        "buildings": building_summary,
        "water": {"present": bool(water_kinds), "kinds": water_kinds, "fraction": land_cover["water"]},
        "green_fraction": round(sum(land_cover[C.CLASS_NAMES[c]] for c in C.GREEN_CLASSES), 4),
        "land_cover": land_cover,
        "roads": _roads(world, loc, layers),
    }


# ------------------------------------------------------------------------------ queries

def features(facts: dict, feature_type: str | None = None, direction: str | None = None,
             kind: str | None = None, within_m: float | None = None) -> list[dict]:
    """Features (and junctions, typed by junction type) matching every given condition."""
    _check(feature_type, direction)
    junctions = [{**j, "kind": j["type"], "type": "junction"} for j in facts["junctions"]]
    candidates = facts["features"] + junctions
    found = []
    for item in candidates:
        if feature_type is not None and feature_type not in (item["type"], item.get("kind")):
            continue
        if kind is not None and item.get("kind") != kind:
            continue
        if direction is not None and item["direction"] != direction:
            continue
        if within_m is not None and item["distance_m"] > within_m:
            continue
        found.append(item)
    return found


def has(facts: dict, feature_type: str, direction: str | None = None, kind: str | None = None,
        within_m: float | None = None) -> bool:
    """True if the tile holds such a feature; buildings count per direction of their centres."""
    _check(feature_type, direction)
    if feature_type == "building" and direction is not None and within_m is None and kind is None:
        return facts["buildings"]["by_direction"].get(direction, 0) > 0
    if feature_type == "building" and direction is None and within_m is None and kind is None:
        return facts["buildings"]["count"] > 0
    return bool(features(facts, feature_type, direction, kind, within_m))


def nearest_junction_type(facts: dict) -> str:
    """crossroad, T-junction, roundabout or none."""
    return facts["nearest_junction"]["type"]


def _check(feature_type: str | None, direction: str | None) -> None:
    allowed = FEATURE_TYPES + JUNCTION_TYPES + ("junction",)
    if feature_type is not None and feature_type not in allowed:
        raise ValueError(f"unknown feature type {feature_type!r}; allowed: {', '.join(allowed)}")
    if direction is not None and direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; allowed: {', '.join(DIRECTIONS)}")
