"""Tests of the synthetic world: determinism, cross-view alignment, facts, splits, shortcuts."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest

from gleam.data.synth import (MODALITIES, SPLITS, WorldConfig, facts, generate_split_world,
                              generate_world)
from gleam.data.synth import classes as C
from gleam.data.synth.baseline import histogram_retrieval
from gleam.data.synth.camera import panorama_column, panorama_row
from gleam.data.synth.render import SKY, STREETMAP
from gleam.data.synth.world import region_bounds_latlon, split_config


@pytest.fixture(scope="module")
def world():
    return generate_world(WorldConfig(seed=11, size_m=1600, biome="temperate", location_margin_m=200))


@pytest.fixture(scope="module")
def locations(world):
    return world.locations(50)


def _views(world, loc):
    views = {"satellite": world.render_satellite(loc)}
    for modality in MODALITIES:
        views[modality] = world.render_query(loc, modality, view_index=1)[0]
    return views


# ------------------------------------------------------------------------------ determinism

def test_same_seed_gives_identical_bytes_in_any_order():
    config = WorldConfig(seed=3, size_m=800, location_margin_m=150, biome="arid")
    first, second = generate_world(config), generate_world(config)
    loc_first = first.locations(3)[2]
    loc_second = second.locations(3)[2]
    assert loc_first == loc_second
    views_first = _views(first, loc_first)
    reversed_second = {}
    for modality in reversed(MODALITIES):
        reversed_second[modality] = second.render_query(loc_second, modality, view_index=1)[0]
    reversed_second["satellite"] = second.render_satellite(loc_second)
    for name, image in views_first.items():
        assert image.dtype == np.uint8
        assert image.tobytes() == reversed_second[name].tobytes(), name
    assert json.dumps(first.scene_facts(loc_first)) == json.dumps(second.scene_facts(loc_second))


def test_different_seed_or_view_differs():
    a = generate_world(WorldConfig(seed=3, size_m=800, location_margin_m=150, biome="arid"))
    b = generate_world(WorldConfig(seed=4, size_m=800, location_margin_m=150, biome="arid"))
    assert a.world_id != b.world_id
    assert a.render_satellite(a.locations(1)[0]).tobytes() != b.render_satellite(b.locations(1)[0]).tobytes()
    loc = a.locations(1)[0]
    assert a.render_query(loc, "uav", 0)[0].tobytes() != a.render_query(loc, "uav", 1)[0].tobytes()


def test_world_pickles_as_its_config(world, locations):
    payload = pickle.dumps(world)
    assert len(payload) < 10_000
    restored = pickle.loads(payload)
    assert restored.render_streetmap(locations[0]).tobytes() == world.render_streetmap(locations[0]).tobytes()


# ------------------------------------------------------------------------------- locations

def test_locations_are_deterministic_prefixes_on_streets(world, locations):
    assert world.locations(10) == locations[:10]
    assert len({loc.location_id for loc in locations}) == len(locations)
    inner = world.config.size_m / 2 - world.config.location_margin_m
    for loc in locations:
        assert max(abs(loc.x), abs(loc.y)) <= inner
        assert _class_at(world, loc.x, loc.y)[0] in (C.ROAD, C.SIDEWALK)
        lat, lon = world.frame.to_latlon(loc.x, loc.y)
        assert (lat, lon) == (loc.lat, loc.lon)
        assert world.frame.to_xy(lat, lon) == pytest.approx((loc.x, loc.y), abs=1e-6)
    assert {loc.kind for loc in locations} == {"road", "junction", "building"}


def test_distractors_are_not_query_locations(world, locations):
    distractors = world.distractor_tiles(20)
    assert not {d.location_id for d in distractors} & {q.location_id for q in locations}
    spacing = world.config.location_spacing_m
    for d in distractors:
        assert d.role == "distractor"
        nearest = min(math.hypot(d.x - q.x, d.y - q.y) for q in locations)
        assert nearest >= spacing - 1e-6


def test_splits_are_disjoint():
    boxes = {split: region_bounds_latlon(split_config(0, split, size_m=4000)) for split in SPLITS}
    boxes["train-r1"] = region_bounds_latlon(split_config(0, "train", size_m=4000, region_index=1))
    names = list(boxes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            (lat0, lon0, lat1, lon1), (mlat0, mlon0, mlat1, mlon1) = boxes[a], boxes[b]
            overlap = lat0 < mlat1 and mlat0 < lat1 and lon0 < mlon1 and mlon0 < lon1
            assert not overlap, (a, b)
    test_world = generate_split_world(0, "test", size_m=600, location_margin_m=120, location_spacing_m=40)
    assert test_world.config.split == "test" and test_world.world_id.startswith("test-")
    assert test_world.bounds_latlon == boxes_for(test_world)
    with pytest.raises(ValueError, match="train, val, test"):
        split_config(0, "holdout")


def boxes_for(world):
    return region_bounds_latlon(world.config)


# ------------------------------------------------------------------------------- alignment

def _class_at(world, x, y):
    return world.scene.lookup(world.layout.class_map, np.atleast_1d(x), np.atleast_1d(y), 0)


def _building_in_tile(world, loc, min_half=5.0):
    half = world.config.tile_size_m / 2 - 10
    for building in sorted(world.layout.buildings, key=lambda b: math.hypot(b.x - loc.x, b.y - loc.y)):
        inside = abs(building.x - loc.x) < half and abs(building.y - loc.y) < half
        if inside and building.half_width >= min_half:
            return building
    raise AssertionError("no building in tile")


def test_satellite_and_streetmap_place_buildings_where_geometry_says(world, locations):
    fill, outline = np.array(STREETMAP[C.BUILDING]), np.array((188, 174, 162))
    for loc in locations[:8]:
        building = _building_in_tile(world, loc)
        col, row = world.tile_pixel(loc, building.x, building.y, size=256)
        col, row = int(round(float(col))), int(round(float(row)))
        street = world.render_streetmap(loc)
        assert tuple(street[row, col]) in (tuple(fill), tuple(outline))
        satellite = world.render_satellite(loc, jitter=False).astype(float)
        patch = satellite[row - 2:row + 3, col - 2:col + 3].reshape(-1, 3)
        roof = np.array(building.roof_colour, dtype=float)
        chroma = np.median(patch / patch.sum(axis=1, keepdims=True), axis=0)
        assert np.abs(chroma - roof / roof.sum()).max() < 0.05


def test_panorama_columns_follow_azimuth_and_occlusion(world, locations):
    loc = locations[4]
    width, height = 512, 256
    image, layers = world.render_panorama(loc, 0.0, width, height, with_layers=True)
    eye = world.config.eye_height_m
    distances = np.arange(0.25, 900.0, 0.25)
    for col in range(0, width, 16):
        azimuth = math.radians(360.0 * (col + 0.5) / width)
        heights = world.scene.height_at(loc.x + distances * math.sin(azimuth),
                                        loc.y + distances * math.cos(azimuth))
        horizon = math.degrees(math.atan(np.max((heights - eye) / distances)))
        column = layers["class"][:, col]
        clear_row = int(math.floor(panorama_row(horizon + 2.0, height)))
        assert np.all(column[:clear_row] == SKY), col
        if horizon > 3.0:  # something stands above eye level: it is drawn, not sky
            blocked_row = int(math.ceil(panorama_row(horizon - 2.0, height)))
            assert column[blocked_row] != SKY, col
    assert image.shape == (height, width, 3)


def test_panorama_shows_nearest_visible_building_at_its_azimuth(world, locations):
    eye = world.config.eye_height_m
    checked = 0
    for loc in locations[:12]:
        building = _building_in_tile(world, loc, min_half=4.0)
        dx, dy = building.x - loc.x, building.y - loc.y
        distance = math.hypot(dx, dy)
        steps = np.arange(0.5, distance, 0.25)
        ids = world.scene.lookup(world.layout.building_id, loc.x + dx * steps / distance,
                                 loc.y + dy * steps / distance, 0)
        heights = world.scene.height_at(loc.x + dx * steps / distance, loc.y + dy * steps / distance)
        blockers = heights > eye
        if not blockers.any() or ids[np.argmax(blockers)] != building.building_id:
            continue  # occluded by something else: not a fair check
        hit_distance = steps[np.argmax(blockers)]
        heading = float(np.random.default_rng(checked).uniform(0, 360))
        _, layers = world.render_panorama(loc, heading, 512, 256, with_layers=True)
        azimuth = math.degrees(math.atan2(dx, dy))
        col = int(round(panorama_column(azimuth, heading, 512)))
        elevation = math.degrees(math.atan((min(building.eave_height, 8.0) - eye) / hit_distance)) / 2
        row = int(round(panorama_row(elevation, 256)))
        assert layers["building_id"][row, col] == building.building_id
        checked += 1
    assert checked >= 3


def test_panorama_heading_rolls_columns_and_ground_photo_agrees(world, locations):
    loc = locations[6]
    _, north = world.render_panorama(loc, 0.0, 512, 256, with_layers=True)
    _, east = world.render_panorama(loc, 90.0, 512, 256, with_layers=True)
    assert np.mean(np.roll(north["class"], -128, axis=1) == east["class"]) > 0.99
    _, photo = world.render_ground(loc, 90.0, fov_deg=90.0, size=256, with_layers=True)
    focal = 128.0
    rows = np.arange(40, 216)
    elevations = np.degrees(np.arctan((128.0 - (rows + 0.5)) / focal))
    pano_rows = np.round([panorama_row(e, 256) for e in elevations]).astype(int)
    centre = int(round(panorama_column(90.0, 0.0, 512)))
    agree = np.mean(photo["class"][rows, 128] == north["class"][pano_rows, centre])
    assert agree > 0.9


def test_uav_projects_buildings_where_the_camera_model_says(world, locations):
    hits, total = 0, 0
    for loc in locations[:6]:
        heading = 40.0 + 60.0 * total
        image, layers = world.render_uav(loc, heading, size=256, distance_m=200.0, pitch_deg=45.0,
                                         with_layers=True)
        camera = world.uav_camera(loc, heading, 256, 200.0, 45.0)
        col, row, depth = camera.project(np.array([[loc.x, loc.y, 0.0]]))
        assert col[0] == pytest.approx(127.5) and row[0] == pytest.approx(127.5)
        near = [b for b in world.layout.buildings if math.hypot(b.x - loc.x, b.y - loc.y) < 70]
        for building in near:
            roof = np.array([[building.x, building.y, building.height]])
            col, row, depth = camera.project(roof)
            c, r = int(round(col[0])), int(round(row[0]))
            if not (0 <= c < 256 and 0 <= r < 256):
                continue
            total += 1
            if layers["building_id"][r, c] == building.building_id:
                hits += 1
                eye_to_roof = np.linalg.norm(roof[0] - np.array([camera.x, camera.y, camera.z]))
                assert layers["depth"][r, c] == pytest.approx(eye_to_roof, abs=4.0)
    assert total >= 10 and hits / total >= 0.8


# ----------------------------------------------------------------------------------- facts

def _water_location(world, locations):
    for loc in locations:
        scene_facts = world.scene_facts(loc)
        if scene_facts["water"]["fraction"] > 0.01:
            return loc, scene_facts
    pytest.skip("no location with water")


def test_water_fraction_equals_blue_pixels_in_streetmap(world, locations):
    loc, scene_facts = _water_location(world, locations)
    street = world.render_streetmap(loc)
    blue = np.all(street == np.array(STREETMAP[C.WATER]), axis=-1).mean()
    assert blue == pytest.approx(scene_facts["water"]["fraction"], abs=1e-4)
    assert scene_facts["water"]["present"] and scene_facts["water"]["kinds"]
    assert facts.has(scene_facts, "water")


def test_building_count_matches_tile_raster(world, locations):
    for loc in locations[:5]:
        scene_facts = world.scene_facts(loc)
        ids, counts = np.unique(world.tile_layers(loc)["building_id"], return_counts=True)
        visible = {int(i) for i, c in zip(ids, counts) if i and c >= 10}
        assert scene_facts["buildings"]["count"] == len(visible)
        half = world.config.tile_size_m / 2 - 1
        inside = {b.building_id for b in world.layout.buildings
                  if all(abs(x - loc.x) < half and abs(y - loc.y) < half for x, y in b.footprint)}
        assert inside <= visible
        heights = [world.layout.buildings[i - 1].height for i in visible]
        assert scene_facts["buildings"]["height_max_m"] == pytest.approx(max(heights), abs=0.05)
        assert sum(scene_facts["buildings"]["by_direction"].values()) == len(visible)


def _road_runs_on_circle(world, x, y, radius):
    angles = np.radians(np.arange(0, 360, 1.0))
    road = _class_at(world, x + radius * np.sin(angles), y + radius * np.cos(angles)) == C.ROAD
    for _ in range(2):  # close gaps of one or two samples left by pixel jaggies at road edges
        road = road | (np.roll(road, 1) & np.roll(road, -1)) | (np.roll(road, 1) & np.roll(road, -2))
    return int(np.sum(road & ~np.roll(road, 1))), road


def test_junction_types_match_road_raster(world):
    half = world.config.size_m / 2 - 60
    checked = 0
    for junction in world.layout.junctions:
        if max(abs(junction.x), abs(junction.y)) > half:
            continue
        if junction.type == "roundabout":
            assert _class_at(world, junction.x, junction.y)[0] == C.GRASS
            _, ring = _road_runs_on_circle(world, junction.x, junction.y, junction.ring_radius)
            assert ring.mean() > 0.9
            runs, _ = _road_runs_on_circle(world, junction.x, junction.y, junction.ring_radius + 14)
            assert runs == junction.degree == 4
        else:
            runs, _ = _road_runs_on_circle(world, junction.x, junction.y, 20.0)
            assert runs == junction.degree == {"crossroad": 4, "T-junction": 3}[junction.type]
        checked += 1
    assert checked >= 10
    assert {j.type for j in world.layout.junctions} == {"crossroad", "T-junction", "roundabout"}


def test_facts_are_json_and_queryable(world, locations):
    for loc in locations[:10]:
        scene_facts = world.scene_facts(loc)
        assert json.loads(json.dumps(scene_facts)) == scene_facts
        nearest = scene_facts["nearest_junction"]
        assert facts.nearest_junction_type(scene_facts) in ("crossroad", "T-junction", "roundabout", "none")
        if nearest["type"] != "none":
            assert facts.has(scene_facts, nearest["type"], direction=nearest["direction"])
            assert nearest["distance_m"] <= world.config.tile_size_m / 2 * math.sqrt(2)
        for feature in scene_facts["features"]:
            assert facts.has(scene_facts, feature["type"], direction=feature["direction"])
        assert facts.has(scene_facts, "building") == (scene_facts["buildings"]["count"] > 0)
        cover = scene_facts["land_cover"]
        assert sum(cover.values()) == pytest.approx(1.0, abs=1e-3)
        green = cover["grass"] + cover["park"] + cover["tree"]
        assert scene_facts["green_fraction"] == pytest.approx(green, abs=1e-3)
    with pytest.raises(ValueError, match="allowed"):
        facts.has(scene_facts, "volcano")
    with pytest.raises(ValueError, match="north-east"):
        facts.features(scene_facts, direction="up")


# ------------------------------------------------------------------------------ interface

def test_render_query_interface_and_errors(world, locations):
    loc = locations[0]
    for modality in MODALITIES:
        image, meta = world.render_query(loc, modality, view_index=2)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert meta["modality"] == modality and meta["location_id"] == loc.location_id
        assert (meta["heading"] is None) == (modality == "streetmap")
        json.dumps(meta)
    assert world.render_query(loc, "panorama")[0].shape == (256, 512, 3)
    headings = {world.query_parameters(loc, "uav", i)["heading"] // 90 for i in range(4)}
    assert len(headings) >= 3
    with pytest.raises(ValueError, match="uav, streetmap, panorama, ground"):
        world.render_query(loc, "satellite")
    with pytest.raises(ValueError, match="biome"):
        WorldConfig(biome="lunar")
    with pytest.raises(ValueError, match="size"):
        world.render_satellite(loc, size=3)


# -------------------------------------------------------------------------------- shortcut

def test_colour_histogram_baseline_is_near_chance(world, locations):
    satellites = [world.render_satellite(loc) for loc in locations]
    for modality, size in (("uav", 128), ("panorama", 256), ("ground", 128)):
        queries = [world.render_query(loc, modality, 0, size=size)[0] for loc in locations]
        result = histogram_retrieval(queries, satellites, bins=8)
        assert result["n"] == 50
        assert result["recall_at_1"] < 0.10, (modality, result)


def test_misregistered_streetmaps_are_the_aligned_map_shifted_and_turned(world, locations):
    """Street maps as real map data sits on imagery: a shift (east, north) moves the aligned map
    by exactly that many metres; a rotation turns it clockwise about the centre; the error is
    per location, deterministic, within its limits and recorded in the query's metadata."""
    loc = locations[0]
    aligned = world.render_streetmap(loc, size=256)  # 256 m tile at 256 px: 1 m per pixel
    assert np.array_equal(world.render_streetmap(loc, size=256, shift_m=(0, 0), rotation_deg=0.0), aligned)
    east = world.render_streetmap(loc, size=256, shift_m=(16.0, 0.0))
    assert np.mean(east[:, :-16] == aligned[:, 16:]) > 0.99 and np.mean(east == aligned) < 0.99
    north = world.render_streetmap(loc, size=256, shift_m=(0.0, 16.0))
    assert np.mean(north[16:] == aligned[:-16]) > 0.99
    turned = world.render_streetmap(loc, size=256, rotation_deg=90.0)
    assert np.mean(turned == np.rot90(aligned, k=-1)) > 0.99  # clockwise
    small = world.render_streetmap(loc, size=256, rotation_deg=3.0)
    assert 0.5 < np.mean(small == aligned) < 0.995  # a few degrees: most pixels, not all
    errors = [world.misregistration(l, 6.0, 4.0) for l in locations[:20]]
    assert errors == [world.misregistration(l, 6.0, 4.0) for l in locations[:20]]
    assert all(math.hypot(e["dx_m"], e["dy_m"]) <= 6.0 and abs(e["rotation_deg"]) <= 4.0 for e in errors)
    assert len({(e["dx_m"], e["rotation_deg"]) for e in errors}) == 20
    image, meta = world.render_query(loc, "streetmap", size=256, misregistration=(6.0, 4.0))
    error = meta["registration"]
    assert error == errors[0] and np.array_equal(
        image, world.render_streetmap(loc, size=256, shift_m=(error["dx_m"], error["dy_m"]),
                                      rotation_deg=error["rotation_deg"]))
    assert "registration" not in world.render_query(loc, "streetmap", size=256)[1]
    with pytest.raises(ValueError, match="non-negative"):
        world.misregistration(loc, -1.0, 0.0)
