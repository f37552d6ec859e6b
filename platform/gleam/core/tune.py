"""Ray Tune sweep of GLEAM-C: temperature (logit-scale init), label smoothing and the phase
schedule (phase-1 length, phase-2 learning rate), with ASHA early stopping.

Train V2 style (RAY_NOTES): each trial is a function that builds and fits a ``TorchTrainer``
with ``TuneReportCallback``; Ray Tune sees one report per epoch.  The train/validation sets
are read once by the driver and shared by every trial through the object store.  Outputs in
``{run.output_dir}/{run.name}/``: ``tune_results.json`` (one row per trial, sorted by the
metric), ``best_config.yaml`` (a ready ``train_core`` config) and the trials' own run folders.
"""

from __future__ import annotations

import copy
import os
import math
from dataclasses import dataclass, field
from typing import Any

from gleam import storage
from gleam.config import RayConfig, RunConfig, save_config
from gleam.core.train import TrainCoreConfig, load_splits, make_trainer

DEFAULT_METRIC = "val/query->satellite/all/R@1"


@dataclass
class TuneSection:
    num_samples: int = 4
    max_concurrent_trials: int = 1
    metric: str = DEFAULT_METRIC
    mode: str = "max"
    temperatures: list[float] = field(default_factory=lambda: [0.07, 0.3, 1.0])
    label_smoothing: list[float] = field(default_factory=lambda: [0.0, 0.1])
    phase1_epochs: list[int] = field(default_factory=lambda: [0, 1, 2])  # 0: skip phase 1
    phase2_lr: list[float] = field(default_factory=lambda: [3e-4, 1e-3])
    grace_period: int = 1  # epochs before ASHA may stop a trial
    reduction_factor: int = 2


@dataclass
class TuneCoreConfig:
    """Root config of ``jobs/tune_core.py``: a base training config plus the search space."""

    kind: str = "tune_core"
    run: RunConfig = field(default_factory=lambda: RunConfig(name="gleam-c-sweep"))
    ray: RayConfig = field(default_factory=RayConfig)
    experiment: TrainCoreConfig = field(default_factory=TrainCoreConfig)
    tune: TuneSection = field(default_factory=TuneSection)


def trial_config(base: TrainCoreConfig, params: dict[str, Any], output_dir: str, name: str) -> TrainCoreConfig:
    """The training config of one trial: ``base`` with the sampled parameters applied."""
    config = copy.deepcopy(base)
    config.run.output_dir, config.run.name = output_dir, name
    config.model.logit_scale_init = math.log(1.0 / params["temperature"])
    config.optim.label_smoothing = params["label_smoothing"]
    if len(config.phases) >= 2:
        config.phases[0].epochs = params["phase1_epochs"]
        config.phases[-1].lr = params["phase2_lr"]
        if config.phases[0].epochs == 0:
            config.phases = config.phases[1:]
    return config


def search_space(section: TuneSection) -> dict[str, Any]:
    from ray import tune

    return {"temperature": tune.choice(section.temperatures),
            "label_smoothing": tune.choice(section.label_smoothing),
            "phase1_epochs": tune.choice(section.phase1_epochs),
            "phase2_lr": tune.choice(section.phase2_lr)}


def tune_core(config: TuneCoreConfig) -> dict[str, Any]:
    """Run the sweep; Ray must be initialised. Returns the best trial's row."""
    import ray
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback
    from ray.tune.schedulers import ASHAScheduler

    sweep_dir = storage.join(config.run.output_dir, config.run.name)
    storage.makedirs(sweep_dir)
    save_config(config, sweep_dir)
    train_set, val_set = load_splits(config.experiment)
    trials_dir = storage.join(sweep_dir, "trials")

    def trial(params: dict[str, Any]) -> None:
        name = "trial-" + ray.tune.get_context().get_trial_id()
        trial_cfg = trial_config(config.experiment, params, trials_dir, name)
        make_trainer(trial_cfg, train_set, val_set, callbacks=[TuneReportCallback()]).fit()

    storage_path = sweep_dir if storage.is_remote(sweep_dir) else os.path.abspath(sweep_dir)
    tuner = tune.Tuner(
        tune.with_resources(trial, {"CPU": 0.01}),  # its TorchTrainer reserves the real resources
        param_space=search_space(config.tune),
        tune_config=tune.TuneConfig(
            metric=config.tune.metric, mode=config.tune.mode, num_samples=config.tune.num_samples,
            max_concurrent_trials=config.tune.max_concurrent_trials,
            scheduler=ASHAScheduler(grace_period=config.tune.grace_period,
                                    reduction_factor=config.tune.reduction_factor,
                                    max_t=sum(p.epochs for p in config.experiment.phases) + 2),
        ),
        run_config=tune.RunConfig(name="tune", storage_path=storage_path),
    )
    results = tuner.fit()
    rows = []
    for result in results:
        if result.metrics is None:
            continue
        rows.append({**{k: v for k, v in result.config.items()},
                     config.tune.metric: result.metrics.get(config.tune.metric),
                     "epochs_run": result.metrics.get("training_iteration"),
                     "error": str(result.error) if result.error else None})
    reverse = config.tune.mode == "max"
    rows.sort(key=lambda r: (r[config.tune.metric] is not None, r[config.tune.metric] or 0), reverse=reverse)
    storage.write_json(storage.join(sweep_dir, "tune_results.json"), rows)
    best = results.get_best_result(metric=config.tune.metric, mode=config.tune.mode)
    best_config = trial_config(config.experiment, best.config, config.experiment.run.output_dir,
                               config.experiment.run.name + "-best")
    save_config(best_config, sweep_dir, "best_config.yaml")
    return {"best": {**best.config, config.tune.metric: best.metrics.get(config.tune.metric)},
            "trials": len(rows), "results": storage.join(sweep_dir, "tune_results.json")}
