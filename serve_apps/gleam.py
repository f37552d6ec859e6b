"""GLEAM as a Ray Serve application.

    serve run serve_apps.gleam:app                                   # defaults (runs/index-local, ...)
    serve run serve_apps.gleam:app index=s3://bucket/index explainer=''
    serve run configs/serve-local.yaml                               # serve build-style config
    serve build serve_apps.gleam:app -o serve.yaml                   # config for a RayService

``app`` is an application builder: Serve calls it with the arguments given on the command
line or under ``args:`` in a config file (see gleam.serving.config.ServeAppConfig).
"""

from gleam.serving.app import app_from_args


def app(args: dict):
    return app_from_args(args)
