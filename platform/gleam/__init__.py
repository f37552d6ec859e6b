"""GLEAM: cross-view geo-localization (GLEAM-C matching, GLEAM-X explanation) on Ray.

The library lives here; thin entry points live in ``jobs/`` and ``serve_apps/``.
"""

__version__ = "0.1.0"
