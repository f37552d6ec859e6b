"""Ray Serve application entry points (``serve run serve_apps.gleam:app``)."""
