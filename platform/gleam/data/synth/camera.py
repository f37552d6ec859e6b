"""Camera models of the query views and their conventions.

Angles: a *heading* or *azimuth* is a compass bearing in degrees (0 = north, 90 = east);
*pitch* is the angle below the horizon the optical axis points to; elevation is positive up.

- UAV (``PinholeCamera``): an ordinary pinhole camera. ``uav_camera`` puts it ``distance_m``
  (slant range) away from the target, on the side opposite to ``heading_deg``, looking at the
  target with the given pitch, so the target ground point projects to the image centre.
- Ground photo: a level pinhole camera (pitch 0) at eye height; its heading is the azimuth
  at the image centre. Image columns are vertical planes through the eye.
- Panorama: equirectangular, 360 x 180 degrees. Column c (centre at c + 0.5) looks at
  azimuth ``heading_deg + 360 * (c + 0.5) / width``: the *left edge* of column 0 faces
  ``heading_deg`` (default 0: north at the left edge, east a quarter of the way across).
  Row r looks at elevation ``90 - 180 * (r + 0.5) / height`` (horizon at the middle row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class PinholeCamera:
    """Pinhole camera in world metres; pixel (col, row) with row 0 at the top."""

    x: float
    y: float
    z: float
    heading_deg: float
    pitch_deg: float
    fov_deg: float
    width: int
    height: int

    @property
    def focal_px(self) -> float:
        return (self.width / 2.0) / math.tan(math.radians(self.fov_deg) / 2.0)

    def basis(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Forward, right and up unit vectors (east, north, up components)."""
        h, p = math.radians(self.heading_deg), math.radians(self.pitch_deg)
        forward = np.array([math.cos(p) * math.sin(h), math.cos(p) * math.cos(h), -math.sin(p)])
        right = np.array([math.cos(h), -math.sin(h), 0.0])
        up = np.cross(right, forward)
        return forward, right, up

    def ray_directions(self) -> np.ndarray:
        """Unit ray direction of every pixel centre, shape (height, width, 3)."""
        forward, right, up = self.basis()
        cols = (np.arange(self.width) + 0.5 - self.width / 2.0) / self.focal_px
        rows = (self.height / 2.0 - (np.arange(self.height) + 0.5)) / self.focal_px
        rays = forward + cols[None, :, None] * right + rows[:, None, None] * up
        return rays / np.linalg.norm(rays, axis=-1, keepdims=True)

    def project(self, points: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World points (n, 3) -> continuous pixel (col, row) and depth along the axis."""
        forward, right, up = self.basis()
        rel = np.asarray(points, dtype=np.float64) - np.array([self.x, self.y, self.z])
        depth = rel @ forward
        col = self.width / 2.0 + self.focal_px * (rel @ right) / depth - 0.5
        row = self.height / 2.0 - self.focal_px * (rel @ up) / depth - 0.5
        return col, row, depth


def uav_camera(target_x: float, target_y: float, heading_deg: float, distance_m: float,
               pitch_deg: float, fov_deg: float, size: int) -> PinholeCamera:
    """Drone camera looking at ground point (target_x, target_y) toward heading_deg."""
    if not 5.0 <= pitch_deg <= 90.0:
        raise ValueError(f"pitch_deg must lie in [5, 90], got {pitch_deg}")
    if distance_m <= 0:
        raise ValueError(f"distance_m must be positive, got {distance_m}")
    h, p = math.radians(heading_deg), math.radians(pitch_deg)
    horizontal = distance_m * math.cos(p)
    return PinholeCamera(target_x - horizontal * math.sin(h), target_y - horizontal * math.cos(h),
                         distance_m * math.sin(p), heading_deg % 360.0, pitch_deg, fov_deg, size, size)


def panorama_azimuths(heading_deg: float, width: int) -> np.ndarray:
    """Compass azimuth (degrees) of every panorama column centre."""
    return np.mod(heading_deg + 360.0 * (np.arange(width) + 0.5) / width, 360.0)


def panorama_column(azimuth_deg: float, heading_deg: float, width: int) -> float:
    """Continuous column (centre of column c is c) that looks at azimuth_deg."""
    return float(np.mod(azimuth_deg - heading_deg, 360.0) / 360.0 * width - 0.5)


def panorama_elevations(height: int) -> np.ndarray:
    """Elevation (degrees) of every panorama row centre."""
    return 90.0 - 180.0 * (np.arange(height) + 0.5) / height


def panorama_row(elevation_deg: float, height: int) -> float:
    """Continuous row that looks at elevation_deg."""
    return float((90.0 - elevation_deg) / 180.0 * height - 0.5)


def level_perspective(heading_deg: float, fov_deg: float, width: int, height: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Column azimuths (degrees, (width,)) and pixel tan(elevation) ((height, width)) of a
    level pinhole camera."""
    focal = (width / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    u = (np.arange(width) + 0.5 - width / 2.0) / focal
    v = (height / 2.0 - (np.arange(height) + 0.5)) / focal
    azimuths = np.mod(heading_deg + np.degrees(np.arctan(u)), 360.0)
    tan_elevation = v[:, None] / np.sqrt(1.0 + u[None, :] ** 2)
    return azimuths, tan_elevation
