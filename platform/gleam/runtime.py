"""Process-level plumbing shared by the jobs: Ray start-up, run folders, CLI parsing, logging."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Callable, Sequence, TypeVar

from gleam.config import ConfigError, RayConfig, load_config

T = TypeVar("T")

log = logging.getLogger("gleam")


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def parse_job_args(config_class: type[T], argv: Sequence[str] | None, description: str,
                   default_config: str | None = None) -> T:
    """``--config FILE`` plus dotted overrides (``train.lr=3e-4``) -> a checked config.

    A ``ConfigError`` ends the process with its message (exit 2), not a traceback.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=default_config, help="YAML config file (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. shards.max_samples=64")
    args = parser.parse_args(argv)
    try:
        return load_config(config_class, args.config, args.overrides)
    except ConfigError as error:
        parser.exit(2, f"config error: {error}\n")


def init_ray(config: RayConfig, **kwargs: Any) -> None:
    """Connect to the cluster named by ``config.address`` / ``RAY_ADDRESS``, else start a fresh
    local one (``address="local"``: never a stale cluster a killed run left behind).

    Under ``ray job submit`` RAY_ADDRESS is set and the job joins that cluster; to use a cluster
    started with ``ray start --head`` from a plain ``python jobs/...`` call, pass
    ``ray.address=auto``.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
    else:
        # A local Ray of our own: say the auth mode (else it turns token auth on and warns), keep
        # the dashboard (Ray Train's placement-group cleaner asks the State API, which it serves,
        # and warns every few seconds without it), and no spot-preemption watcher on one machine.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        kwargs.setdefault("include_dashboard", True)
        kwargs.setdefault("dashboard_host", "127.0.0.1")
        ray.init(address="local", **kwargs)
    quiet_ray_data()


def quiet_train_worker(level: str = "WARNING") -> None:
    """Call first in a Ray Train worker loop: the per-rank "Reporting training result ..." echo
    (every metric of every report) comes from a logger Ray names by its file path, outside
    ``ray.train``, so ``LoggingConfig(log_level)`` does not reach it; set its level here."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray version: keep its echo
        return
    logging.getLogger(context.__file__).setLevel(level)


def quiet_ray_data() -> None:
    """Ray Data's per-dataset execution plans and logged progress dumps (non-interactive output)
    down to warnings; the jobs log their own one-line read reports."""
    import ray.data  # noqa: F401  (configures the ray.data logger first)

    logging.getLogger("ray.data").setLevel(logging.WARNING)


def run_job(config_class: type[T], run: Callable[[T], Any], summarize: Callable[[T, Any], dict],
            argv: Sequence[str] | None, doc: str, default_config: str | None = None,
            errors: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)) -> int:
    """The body of every config-driven job: parse (paths made absolute), connect to Ray, run,
    print the short ending ``summarize`` returns (text as it is, a mapping as JSON).

    Expected failures (bad data, missing files) end with a one-line message and exit 1.
    """
    import json
    import sys

    setup_logging()
    config = parse_job_args(config_class, argv, doc.strip().splitlines()[0], default_config)
    init_ray(getattr(config, "ray", RayConfig()))
    try:
        result = run(config)
    except errors as error:
        print(f"{config_class.__name__.removesuffix('Config')} failed: {error}", file=sys.stderr)
        return 1
    summary = summarize(config, result)
    print(summary if isinstance(summary, str) else json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def torch_trainer(loop: Callable[[dict[str, Any]], None], loop_config: dict[str, Any], *, name: str,
                  storage_path: str, ray_config: RayConfig, max_failures: int = 0, checkpoints_to_keep: int = 2,
                  callbacks: list[Any] | None = None) -> Any:
    """A Ray Train ``TorchTrainer`` as every GLEAM training job configures it.

    Checkpoints go to ``storage_path/name`` (local folder or s3://, with gleam.storage's fsspec
    settings), so re-running with the same name resumes from the latest checkpoint; workers
    take fractional CPUs (RAY_NOTES: whole CPUs starve Ray Data on small machines) and GPUs
    when ``ray_config.gpus_per_worker > 0``; FailureConfig restarts a failed worker group.
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig as RayRunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from gleam import storage

    storage_filesystem = None
    if storage.is_remote(storage_path):
        from gleam.data.pipeline import _pyarrow_filesystem

        storage_filesystem = _pyarrow_filesystem(storage_path)
        storage_path = storage.filesystem(storage_path)[1]
    else:
        storage_path = os.path.abspath(storage_path)
    use_gpu = ray_config.gpus_per_worker > 0
    resources = {"CPU": ray_config.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = ray_config.gpus_per_worker
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=ray_config.num_workers, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=RayRunConfig(
            name=name, storage_path=storage_path, storage_filesystem=storage_filesystem,
            callbacks=callbacks or [],
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=checkpoints_to_keep),
            # WARNING: no per-rank "Reporting training result ..." echo of every metric; the driver
            # prints one line per epoch (gleam.progress). ray.log_level=INFO brings it back.
            logging_config=LoggingConfig(log_level=ray_config.log_level),
        ),
    )
