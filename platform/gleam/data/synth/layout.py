"""Assemble a world layout: roads, lots, land use, water, buildings, cars and trees.

``build_layout`` paints everything on one ``Canvas`` in a fixed order (lot grounds, river,
roads, lot contents, buildings, cars, trees) and returns the rasters with the vector lists.
Each stage draws from its own named random stream, so the world is a pure function of its
seed, biome and size.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from . import classes as C
from .biomes import Biome
from .blocks import Lot, partition
from .buildings import Building, BuildingPlacer
from .canvas import Canvas
from .landuse import (Feature, FeatureRegistry, furnish_parking, furnish_park, furnish_sports,
                      furnish_woodland, paint_lot_grounds, paint_river, stamp_cars)
from .raster import Grid
from .roads import (SIDEWALK_WIDTH_M, Junction, Road, RoadNetwork, generate_network, junctions,
                    roads, stamp_roads)
from .seeding import stream
from .trees import TreeCluster, TreePlanter, Trees, stamp_trees


@dataclass
class Layout(Canvas):
    """The finished canvas rasters (row 0 = north) plus the vector lists of one region
    (``network``: the generator's road lines; None for a layout read from OSM, ``osm.py``)."""

    network: RoadNetwork | None
    roads: list[Road]
    junctions: list[Junction]
    buildings: list[Building]
    features: list[Feature]
    tree_clusters: list[TreeCluster]
    trees: Trees


def _furnish_lots(canvas: Canvas, lots: list[Lot], biome: Biome, registry: FeatureRegistry,
                  planter: TreePlanter, placer: BuildingPlacer, seed: int) -> list[np.ndarray]:
    cars: list[np.ndarray] = []
    for lot in lots:
        rng = stream(seed, "lot", lot.lot_index)
        if lot.landuse == "buildings":
            placer.furnish(canvas, lot)
        elif lot.landuse in ("park", "lake"):
            furnish_park(canvas, lot, biome, registry, planter, rng, with_lake=lot.landuse == "lake")
        elif lot.landuse == "parking":
            cars.extend(furnish_parking(canvas, lot, rng))
        elif lot.landuse == "sports":
            furnish_sports(canvas, lot, registry, rng)
        elif lot.landuse == "woodland":
            furnish_woodland(canvas, lot, biome, planter, rng)
    return cars


def _plant_street_trees(canvas: Canvas, network: RoadNetwork, road_list: list[Road], biome: Biome,
                        planter: TreePlanter, rng: np.random.Generator) -> None:
    """Rows of trees just behind the sidewalks of some road segments."""
    for road in road_list:
        if rng.random() >= biome.street_tree_prob or road.t_end - road.t_start < 40:
            continue
        line = (network.real_ns if road.axis == "ns" else network.real_ew)[road.line_index]
        t = np.arange(road.t_start + 14.0, road.t_end - 14.0, rng.uniform(9.0, 13.0))
        offset = (line.width / 2 + SIDEWALK_WIDTH_M + 1.2) * np.sqrt(1 + line.slope(t) ** 2)
        for side in (-1.0, 1.0):
            cross = line.perp(t) + side * offset
            xy = np.column_stack([cross, t]) if road.axis == "ns" else np.column_stack([t, cross])
            planter.plant(canvas, xy)


def _measure_features(canvas: Canvas, features: list[Feature]) -> list[Feature]:
    """Centroid and area of each feature from its pixels in the feature raster."""
    grid = canvas.grid
    ids = canvas.feature_id.reshape(-1)
    n = len(features) + 1
    counts = np.bincount(ids, minlength=n)
    xs = np.broadcast_to(grid.x_of_col(np.arange(grid.size))[None, :], canvas.feature_id.shape)
    ys = np.broadcast_to(grid.y_of_row(np.arange(grid.size))[:, None], canvas.feature_id.shape)
    sum_x = np.bincount(ids, weights=xs.reshape(-1), minlength=n)
    sum_y = np.bincount(ids, weights=ys.reshape(-1), minlength=n)
    measured = []
    for feature in features:
        k = feature.feature_id
        count = max(int(counts[k]), 1)
        measured.append(replace(feature, x=round(float(sum_x[k] / count), 2),
                                y=round(float(sum_y[k] / count), 2),
                                area_m2=round(float(counts[k]) * grid.res ** 2, 1)))
    return measured


def build_layout(extent_m: float, resolution_m: float, biome: Biome, seed: int) -> Layout:
    """Generate the full layout of a square region of extent_m metres."""
    grid = Grid(size=int(round(extent_m / resolution_m)), res=resolution_m)
    canvas = Canvas.empty(grid)
    network = generate_network(grid.extent_m, biome, stream(seed, "roads"))
    lots = partition(network, grid, biome, stream(seed, "blocks"))
    registry = FeatureRegistry()
    paint_lot_grounds(canvas, lots, biome, registry)
    river_rng = stream(seed, "river")
    if river_rng.random() < biome.river_prob:
        paint_river(canvas, grid.extent_m, registry, river_rng)
    stamp_roads(network, grid, canvas.class_map, canvas.surface, canvas.marking)
    canvas.feature_id[C.class_lookup((C.ROAD, C.SIDEWALK))[canvas.class_map]] = 0
    planter = TreePlanter(biome, stream(seed, "trees"))
    placer = BuildingPlacer(biome, stream(seed, "buildings"))
    cars = _furnish_lots(canvas, lots.lots, biome, registry, planter, placer, seed)
    stamp_cars(canvas, cars)
    if placer.yard_trees:
        planter.plant(canvas, np.concatenate(placer.yard_trees))
    road_list = roads(network, grid.extent_m)
    _plant_street_trees(canvas, network, road_list, biome, planter, stream(seed, "street-trees"))
    trees = planter.finish()
    stamp_trees(canvas, trees)
    return Layout(**vars(canvas), network=network, roads=road_list, junctions=junctions(network, grid.extent_m),
                  buildings=placer.buildings, features=_measure_features(canvas, registry.features),
                  tree_clusters=planter.clusters, trees=trees)
