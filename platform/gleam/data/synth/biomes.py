"""Visual styles (biomes): palettes and densities shared by every location of a world.

A biome fixes what things look like (colours of ground, roofs, facades, water, sky) and how
dense the city is (block size, building sizes and heights, tree density, land-use mix).
Colours are shared by many locations on purpose, so that colour alone does not identify
a place. Add a biome by adding a ``Biome`` to ``BIOMES``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Colour = tuple[int, int, int]


@dataclass(frozen=True)
class Biome:
    """Palette and density parameters of one visual style."""

    name: str
    # ground cover
    bare: Colour
    grass: Colour
    grass_dry: Colour
    park: Colour
    trees: tuple[Colour, ...]
    water: Colour
    road: Colour
    road_major: Colour
    marking: Colour
    sidewalk: Colour
    parking: Colour
    pitch: Colour
    track: Colour
    court: Colour
    roofs: tuple[Colour, ...]
    facades: tuple[Colour, ...]
    sky_zenith: Colour
    sky_horizon: Colour
    # layout
    block_spacing_m: tuple[float, float]
    curved_fraction: float
    segment_drop: float
    roundabout_prob: float
    lot_size_m: tuple[float, float]
    build_prob: float
    floors_median: float
    floors_sigma: float
    downtown_boost: float
    gable_prob: float
    landuse_weights: dict[str, float] = field(default_factory=dict)
    yard_ground: str = "grass"
    river_prob: float = 0.6
    yard_trees_per_lot: float = 1.0
    park_tree_density: float = 0.004  # trees per square metre
    street_tree_prob: float = 0.4
    tree_radius_m: tuple[float, float] = (2.5, 5.0)
    tree_height_m: tuple[float, float] = (6.0, 14.0)
    sun_elevation_deg: tuple[float, float] = (35.0, 55.0)
    ambient: float = 0.45
    sun_strength: float = 0.75


BIOMES: dict[str, Biome] = {
    "temperate": Biome(
        name="temperate",
        bare=(132, 118, 96), grass=(104, 138, 72), grass_dry=(140, 146, 92), park=(96, 146, 70),
        trees=((52, 88, 42), (62, 98, 48), (44, 78, 40)),
        water=(58, 92, 108), road=(88, 88, 90), road_major=(76, 76, 80), marking=(225, 225, 215),
        sidewalk=(168, 164, 156), parking=(110, 110, 112), pitch=(88, 150, 70),
        track=(170, 82, 64), court=(66, 120, 150),
        roofs=((150, 72, 56), (120, 62, 50), (92, 92, 98), (168, 160, 150), (112, 96, 84)),
        facades=((220, 208, 186), (236, 230, 218), (196, 180, 160), (214, 196, 150), (170, 150, 132)),
        sky_zenith=(70, 120, 196), sky_horizon=(190, 212, 232),
        block_spacing_m=(130.0, 190.0), curved_fraction=0.35, segment_drop=0.2,
        roundabout_prob=0.15, lot_size_m=(20.0, 34.0), build_prob=0.8,
        floors_median=3.0, floors_sigma=0.45, downtown_boost=2.5, gable_prob=0.6,
        landuse_weights={"buildings": 0.68, "park": 0.1, "parking": 0.06, "sports": 0.06,
                         "lake": 0.04, "woodland": 0.06},
    ),
    "arid": Biome(
        name="arid",
        bare=(196, 170, 128), grass=(150, 146, 90), grass_dry=(186, 164, 116), park=(118, 136, 74),
        trees=((92, 104, 58), (106, 112, 66), (80, 92, 52)),
        water=(64, 112, 124), road=(112, 104, 96), road_major=(96, 90, 86), marking=(236, 226, 196),
        sidewalk=(206, 190, 164), parking=(128, 120, 110), pitch=(120, 142, 78),
        track=(176, 96, 70), court=(90, 130, 150),
        roofs=((214, 200, 176), (196, 176, 150), (232, 224, 210), (170, 110, 80), (186, 160, 128)),
        facades=((222, 196, 156), (236, 222, 196), (204, 170, 128), (226, 210, 178), (190, 150, 112)),
        sky_zenith=(84, 134, 200), sky_horizon=(214, 218, 214),
        block_spacing_m=(110.0, 160.0), curved_fraction=0.2, segment_drop=0.15,
        roundabout_prob=0.2, lot_size_m=(16.0, 28.0), build_prob=0.9,
        floors_median=2.0, floors_sigma=0.4, downtown_boost=2.0, gable_prob=0.05,
        landuse_weights={"buildings": 0.78, "park": 0.05, "parking": 0.08, "sports": 0.05,
                         "lake": 0.01, "woodland": 0.03},
        yard_ground="bare", river_prob=0.3, yard_trees_per_lot=0.3, park_tree_density=0.0025,
        street_tree_prob=0.25, tree_radius_m=(2.0, 4.0), tree_height_m=(4.0, 9.0),
        sun_elevation_deg=(55.0, 72.0), ambient=0.42, sun_strength=0.8,
    ),
    "tropical": Biome(
        name="tropical",
        bare=(150, 112, 80), grass=(84, 146, 60), grass_dry=(118, 150, 70), park=(74, 152, 62),
        trees=((36, 96, 38), (48, 112, 44), (30, 84, 36)),
        water=(78, 106, 84), road=(96, 94, 92), road_major=(80, 80, 82), marking=(232, 228, 200),
        sidewalk=(176, 168, 150), parking=(116, 114, 110), pitch=(78, 156, 64),
        track=(180, 80, 60), court=(70, 140, 120),
        roofs=((176, 80, 52), (64, 120, 150), (214, 212, 204), (196, 120, 60), (90, 140, 110)),
        facades=((236, 214, 170), (206, 230, 214), (240, 196, 170), (226, 226, 206), (180, 206, 226)),
        sky_zenith=(60, 126, 204), sky_horizon=(200, 222, 236),
        block_spacing_m=(150.0, 230.0), curved_fraction=0.55, segment_drop=0.25,
        roundabout_prob=0.12, lot_size_m=(18.0, 30.0), build_prob=0.7,
        floors_median=2.5, floors_sigma=0.5, downtown_boost=3.0, gable_prob=0.45,
        landuse_weights={"buildings": 0.6, "park": 0.1, "parking": 0.05, "sports": 0.06,
                         "lake": 0.05, "woodland": 0.14},
        river_prob=0.7, yard_trees_per_lot=2.2, park_tree_density=0.007,
        street_tree_prob=0.6, tree_radius_m=(3.0, 6.5), tree_height_m=(7.0, 18.0),
        sun_elevation_deg=(58.0, 78.0), ambient=0.44, sun_strength=0.78,
    ),
    "nordic-winter": Biome(
        name="nordic-winter",
        bare=(212, 216, 222), grass=(226, 230, 236), grass_dry=(206, 210, 216), park=(232, 236, 242),
        trees=((40, 58, 48), (50, 66, 56), (34, 50, 44)),
        water=(150, 168, 180), road=(104, 106, 110), road_major=(92, 94, 100), marking=(200, 200, 196),
        sidewalk=(184, 188, 194), parking=(140, 142, 148), pitch=(236, 238, 244),
        track=(150, 96, 90), court=(190, 200, 210),
        roofs=((236, 238, 242), (220, 224, 230), (120, 60, 52), (70, 74, 80), (244, 246, 248)),
        facades=((150, 60, 48), (214, 186, 120), (232, 228, 216), (120, 130, 140), (180, 96, 64)),
        sky_zenith=(120, 146, 180), sky_horizon=(214, 220, 228),
        block_spacing_m=(160.0, 240.0), curved_fraction=0.4, segment_drop=0.25,
        roundabout_prob=0.12, lot_size_m=(22.0, 38.0), build_prob=0.72,
        floors_median=2.5, floors_sigma=0.45, downtown_boost=2.0, gable_prob=0.7,
        landuse_weights={"buildings": 0.62, "park": 0.08, "parking": 0.06, "sports": 0.05,
                         "lake": 0.06, "woodland": 0.13},
        river_prob=0.6, yard_trees_per_lot=1.2, park_tree_density=0.004,
        street_tree_prob=0.3, tree_radius_m=(2.0, 3.5), tree_height_m=(8.0, 16.0),
        sun_elevation_deg=(10.0, 20.0), ambient=0.55, sun_strength=0.7,
    ),
}

BIOME_NAMES: tuple[str, ...] = tuple(BIOMES)


def get_biome(name: str) -> Biome:
    """The biome called name; ValueError naming the known ones otherwise."""
    try:
        return BIOMES[name]
    except KeyError:
        raise ValueError(f"unknown biome {name!r}; known biomes: {', '.join(BIOME_NAMES)}") from None
