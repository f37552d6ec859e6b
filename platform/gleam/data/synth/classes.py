"""Semantic codes of the world rasters: land-cover classes and surface variants.

``CLASS_*`` values fill the class map (what covers the ground when seen from above);
``SURFACE_*`` values refine the look of a class (major road, running track, ...)
without changing its meaning for scene facts.
"""

from __future__ import annotations

import functools

import numpy as np

BARE = 0
GRASS = 1
PARK = 2
TREE = 3
WATER = 4
ROAD = 5
SIDEWALK = 6
BUILDING = 7
PARKING = 8
SPORTS = 9

CLASS_NAMES: tuple[str, ...] = (
    "bare", "grass", "park", "tree", "water", "road", "sidewalk", "building", "parking", "sports",
)
GREEN_CLASSES: tuple[int, ...] = (GRASS, PARK, TREE)
OPEN_GROUND: tuple[int, ...] = (BARE, GRASS, PARK)  # where buildings, trees and pitches may go

SURFACE_PLAIN = 0
SURFACE_MAJOR_ROAD = 1
SURFACE_TRACK = 2
SURFACE_COURT = 3
SURFACE_PATH = 4
SURFACE_ROOF_UNIT = 5
SURFACE_CAR = 16  # 16 + car colour index (8 colours)
SURFACE_PITCH_STRIPE = 7


@functools.lru_cache(maxsize=64)
def class_lookup(codes: tuple[int, ...]) -> np.ndarray:
    """Boolean table t with t[code] True for the given class codes (fast membership test)."""
    table = np.zeros(256, dtype=bool)
    table[list(codes)] = True
    table.flags.writeable = False
    return table
