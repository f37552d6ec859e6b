"""Contact sheet: one row per location, one column per view, to eyeball cross-view alignment."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .world import Location, World, WorldConfig, generate_world

COLUMNS: tuple[tuple[str, int], ...] = (("satellite", 256), ("streetmap", 256), ("uav", 256),
                                         ("panorama", 512), ("ground", 256))
GAP, HEADER, CAPTION = 6, 22, 18
BACKGROUND, INK = (255, 255, 255), (20, 20, 20)


def _caption(world: World, loc: Location) -> str:
    facts = world.scene_facts(loc)
    junction = facts["nearest_junction"]
    where = (f"{junction['type']} {junction['direction']} {junction['distance_m']:.0f} m"
             if junction["type"] != "none" else "no junction")
    water = "/".join(facts["water"]["kinds"]) or "no water"
    return (f"{loc.location_id}  [{world.biome.name}, {loc.kind}]  {where} | "
            f"{facts['buildings']['count']} buildings (max {facts['buildings']['height_max_m']} m) | "
            f"{water} | green {facts['green_fraction']:.0%}")


def _row_images(world: World, loc: Location, view_index: int) -> list[np.ndarray]:
    images = [world.render_satellite(loc)]
    for modality in ("streetmap", "uav", "panorama", "ground"):
        images.append(world.render_query(loc, modality, view_index)[0])
    return images


def make_contact_sheet(worlds: World | Sequence[World], n_locations: int = 4,
                       view_index: int = 0) -> Image.Image:
    """Grid of views: ``n_locations`` rows per world, columns as in ``COLUMNS``."""
    worlds = [worlds] if isinstance(worlds, World) else list(worlds)
    if n_locations < 1:
        raise ValueError(f"n_locations must be >= 1, got {n_locations}")
    rows = [(world, loc) for world in worlds for loc in world.locations(n_locations)]
    width = sum(w for _, w in COLUMNS) + GAP * (len(COLUMNS) + 1)
    row_height = CAPTION + 256 + GAP
    sheet = Image.new("RGB", (width, HEADER + row_height * len(rows)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    x = GAP
    for name, column_width in COLUMNS:
        draw.text((x + 4, 5), name, fill=INK, font=font)
        x += column_width + GAP
    for index, (world, loc) in enumerate(rows):
        top = HEADER + index * row_height
        draw.text((GAP + 4, top + 3), _caption(world, loc), fill=INK, font=font)
        x = GAP
        for image in _row_images(world, loc, view_index):
            sheet.paste(Image.fromarray(image), (x, top + CAPTION))
            x += image.shape[1] + GAP
    return sheet


def contact_sheet_for_seed(seed: int, n_locations: int = 4, biomes: Sequence[str | None] = (None,),
                           size_m: float = 2000.0) -> Image.Image:
    """Contact sheet of one world per biome (None: the seed's own biome)."""
    worlds = [generate_world(WorldConfig(seed=seed, biome=biome, size_m=size_m)) for biome in biomes]
    return make_contact_sheet(worlds, n_locations)
