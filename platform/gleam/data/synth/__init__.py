"""Procedural synthetic world for GLEAM: the embedded default dataset.

A world is a geo-referenced square region (WGS84 around a configurable origin) generated from a
seed: road network (grid and curved roads; crossroads, T-junctions, roundabouts), buildings
with heights and roof colours, trees, parks, water, parking lots and sports fields, in one of
several visual styles (biomes). Every location can be rendered as a satellite tile and as the
query views (UAV, street map, panorama, ground photo), all aligned to the same ground truth,
and described by JSON scene facts measured on the same rasters.

    from gleam.data.synth import WorldConfig, generate_world
    world = generate_world(WorldConfig(seed=0))
    loc = world.locations(10)[0]
    satellite = world.render_satellite(loc)
    image, meta = world.render_query(loc, "panorama", view_index=0)
    facts = world.scene_facts(loc)

See ``camera`` for the heading conventions and ``facts`` for the fact schema.
"""

from . import facts
from .baseline import colour_histogram_baseline, histogram_retrieval
from .biomes import BIOME_NAMES, BIOMES, Biome
from .camera import PinholeCamera, panorama_column, panorama_row
from .world import (MODALITIES, SPLITS, VIEWS, Location, World, WorldConfig, generate_split_world,
                    generate_world, load_world, osm_world_config, region_bounds_latlon, split_config)

__all__ = [
    "BIOMES", "BIOME_NAMES", "Biome", "Location", "MODALITIES", "PinholeCamera", "SPLITS", "VIEWS",
    "World", "WorldConfig", "colour_histogram_baseline", "facts", "generate_split_world",
    "generate_world", "histogram_retrieval", "load_world", "osm_world_config", "panorama_column", "panorama_row",
    "region_bounds_latlon", "split_config",
]
