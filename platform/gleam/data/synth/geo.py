"""Local metric frame <-> WGS84 and compass vocabulary of the synthetic world.

Local coordinates are metres with x pointing east and y pointing north, relative to the
frame origin (the region centre). The conversion is the equirectangular local-tangent
approximation: exact enough (sub-metre) over the few kilometres a synthetic region spans.
Bearings are degrees clockwise from north, as on a compass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

EARTH_RADIUS_M = 6_378_137.0  # WGS84 equatorial radius

COMPASS_8 = (
    "north", "north-east", "east", "south-east",
    "south", "south-west", "west", "north-west",
)
ORIENTATIONS_4 = ("north-south", "north-east-south-west", "east-west", "north-west-south-east")


@dataclass(frozen=True)
class LocalFrame:
    """Equirectangular tangent frame around (origin_lat, origin_lon)."""

    origin_lat: float
    origin_lon: float

    def __post_init__(self) -> None:
        if not -85.0 < self.origin_lat < 85.0:
            raise ValueError(f"origin_lat must lie in (-85, 85), got {self.origin_lat}")
        if not -180.0 <= self.origin_lon <= 180.0:
            raise ValueError(f"origin_lon must lie in [-180, 180], got {self.origin_lon}")

    @property
    def metres_per_degree_lat(self) -> float:
        return math.radians(1.0) * EARTH_RADIUS_M

    @property
    def metres_per_degree_lon(self) -> float:
        return self.metres_per_degree_lat * math.cos(math.radians(self.origin_lat))

    def to_latlon(self, x: npt.ArrayLike, y: npt.ArrayLike) -> tuple:
        """Local metres (east, north) -> (lat, lon) degrees; scalars or arrays."""
        lat = self.origin_lat + np.asarray(y, dtype=np.float64) / self.metres_per_degree_lat
        lon = self.origin_lon + np.asarray(x, dtype=np.float64) / self.metres_per_degree_lon
        if np.ndim(lat) == 0:
            return float(lat), float(lon)
        return lat, lon

    def to_xy(self, lat: npt.ArrayLike, lon: npt.ArrayLike) -> tuple:
        """(lat, lon) degrees -> local metres (east, north); scalars or arrays."""
        y = (np.asarray(lat, dtype=np.float64) - self.origin_lat) * self.metres_per_degree_lat
        x = (np.asarray(lon, dtype=np.float64) - self.origin_lon) * self.metres_per_degree_lon
        if np.ndim(x) == 0:
            return float(x), float(y)
        return x, y

    def offset(self, east_m: float, north_m: float) -> "LocalFrame":
        """The frame whose origin lies east_m / north_m away from this one's origin."""
        lat, lon = self.to_latlon(east_m, north_m)
        return LocalFrame(lat, lon)


def bearing_deg(dx: npt.ArrayLike, dy: npt.ArrayLike) -> np.ndarray:
    """Compass bearing (degrees clockwise from north, in [0, 360)) of the vector (dx, dy)."""
    return np.mod(np.degrees(np.arctan2(dx, dy)), 360.0)


def compass_direction(dx: float, dy: float) -> str:
    """8-way compass name of the direction (dx east, dy north)."""
    index = int(round(float(bearing_deg(dx, dy)) / 45.0)) % 8
    return COMPASS_8[index]


def orientation_label(bearing: float) -> str:
    """4-way axis label of an undirected line with the given bearing."""
    index = int(round((bearing % 180.0) / 45.0)) % 4
    return ORIENTATIONS_4[index]
