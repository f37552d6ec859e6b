"""Typed configuration: YAML + dotted overrides, strict keys and types, resolved config saved."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest
import yaml

from gleam.config import (ConfigError, RayConfig, RunConfig, ShardConfig, load_config,
                          save_config)


@dataclass
class TrainSection:
    lr: float = 1e-3
    epochs: int = 1
    modalities: list[str] = field(default_factory=lambda: ["uav"])
    warmup: float | None = None


@dataclass
class ExampleConfig:
    run: RunConfig = field(default_factory=RunConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    train: TrainSection = field(default_factory=TrainSection)


def write(tmp_path, text: str) -> str:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_then_overrides_in_order(tmp_path):
    path = write(tmp_path, "train:\n  lr: 0.01\n  epochs: 3\nrun:\n  name: demo\n")
    config = load_config(ExampleConfig, path, ["train.lr=3e-4", "train.modalities=[uav, panorama]",
                                               "ray.cpus_per_worker=1", "train.warmup=null"])
    assert config.train.lr == pytest.approx(3e-4)
    assert config.train.epochs == 3
    assert config.train.modalities == ["uav", "panorama"]
    assert config.ray.cpus_per_worker == 1.0 and isinstance(config.ray.cpus_per_worker, float)
    assert config.train.warmup is None
    assert config.run.name == "demo"
    assert config.shards.max_samples == ShardConfig().max_samples


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    path = write(tmp_path, "train:\n  lr: 3e-4\n")  # PyYAML reads this as a string
    assert load_config(ExampleConfig, path).train.lr == pytest.approx(3e-4)


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    path = write(tmp_path, "train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as error:
        load_config(ExampleConfig, path)
    assert "'train.lrr'" in str(error.value) and path in str(error.value)
    assert "lr" in str(error.value)  # lists the known keys


def test_unknown_section_in_file(tmp_path):
    path = write(tmp_path, "trian:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'trian'"):
        load_config(ExampleConfig, path)


def test_wrong_type_in_file_names_key_file_and_types(tmp_path):
    path = write(tmp_path, "train:\n  epochs: three\n")
    with pytest.raises(ConfigError) as error:
        load_config(ExampleConfig, path)
    message = str(error.value)
    assert path in message and "'train.epochs'" in message and "integer" in message and "'three'" in message


@pytest.mark.parametrize("override, fragment", [
    ("train.lrr=1", "unknown key 'train.lrr'"),
    ("train.epochs=1.5", "'train.epochs' expects an integer"),
    ("shards.max_samples=true", "'shards.max_samples' expects an integer"),
    ("train.modalities=uav", "'train.modalities' expects a list"),
    ("run.name.first=x", "unknown key 'run.name.first'"),
    ("novalue", "must look like section.key=value"),
])
def test_bad_overrides_are_rejected_with_the_key(tmp_path, override, fragment):
    with pytest.raises(ConfigError) as error:
        load_config(ExampleConfig, None, [override])
    assert fragment in str(error.value)
    assert "<cli>" in str(error.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(ExampleConfig, str(tmp_path / "nope.yaml"))


def test_resolved_config_is_saved_and_reloads_identically(tmp_path):
    config = load_config(ExampleConfig, None, ["train.lr=0.5", "run.name=x"])
    url = save_config(config, str(tmp_path / "run1"))
    saved = yaml.safe_load(open(url))
    assert saved["train"]["lr"] == 0.5 and saved["run"]["name"] == "x"
    assert load_config(ExampleConfig, url) == config


def test_repository_configs_load():
    import glob
    import os

    from gleam.config import root_config_class

    root = os.path.join(os.path.dirname(__file__), "..", "configs")
    files = sorted(glob.glob(os.path.join(root, "*.yaml")))
    assert files, "configs/ holds no YAML file"
    for path in files:
        document = yaml.safe_load(open(path))
        if "applications" in document:  # a Ray Serve config (serve build format): tests/test_cluster_configs.py
            continue
        kind = document["kind"]
        config = load_config(root_config_class(kind), path)
        assert config.kind == kind


# Every str field of a job config is either a path (marked InputPath/OutputPath, or named
# *_path/*_dir/path) or one of these plain values. A new str field fails this test until it is
# classified, so a new path cannot slip past resolve_paths unresolved.
NOT_PATHS = {"address", "log_level", "backbone", "dataset", "device", "dtype", "fallback_modality", "file", "images", "kind",
             "locations", "loss_reduction", "mlflow_uri", "mlflow_experiment", "mat_file", "metric", "modality", "mode", "name", "prefix", "pretrained", "source",
             "split", "target_scope", "train_csv", "train_split", "val_csv", "val_split", "verdict_prompt",
             "top1_percent_rule", "method", "group_by", "fit_split", "train_backbone"}


def _str_fields(cls, prefix=""):
    import dataclasses
    import types
    import typing

    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        hint, dotted = hints[item.name], f"{prefix}{item.name}"
        element = typing.get_args(hint)[0] if typing.get_origin(hint) is list and typing.get_args(hint) else None
        if dataclasses.is_dataclass(hint) or dataclasses.is_dataclass(element):
            yield from _str_fields(hint if dataclasses.is_dataclass(hint) else element,
                                   dotted + ("." if dataclasses.is_dataclass(hint) else "[]."))
        elif str in (typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)):
            yield dotted


def test_every_str_field_of_every_job_config_is_classified_path_or_not():
    from gleam.config import ROOT_CONFIGS, path_fields, root_config_class

    for kind in ROOT_CONFIGS:
        cls = root_config_class(kind)
        paths = path_fields(cls)
        unclassified = [d for d in _str_fields(cls) if d not in paths and d.rsplit(".", 1)[-1] not in NOT_PATHS]
        assert not unclassified, (f"{kind}: {unclassified}: mark path fields InputPath/OutputPath "
                                  "(gleam.config), or add plain values to NOT_PATHS")
    assert path_fields(root_config_class("train_core")) == {
        "run.output_dir": "output", "data.dataset": "input", "model.pretrained_path": "input",
        "train.storage_path": "output"}


def test_paths_become_absolute_against_the_working_directory(tmp_path, monkeypatch):
    from gleam.config import root_config_class

    monkeypatch.chdir(tmp_path)
    config = load_config(root_config_class("tune_core"), None, [
        "run.output_dir=runs", "experiment.data.dataset=s3://bucket/synth", "experiment.train.storage_path=~/ckpt",
        "experiment.model.pretrained_path=../weights/w.safetensors"])
    assert config.run.output_dir == str(tmp_path / "runs")
    assert config.experiment.run.output_dir == str(tmp_path / "runs")  # the default, resolved too
    assert config.experiment.data.dataset == "s3://bucket/synth"  # URLs stay URLs
    assert config.experiment.train.storage_path == os.path.expanduser("~/ckpt")
    assert config.experiment.model.pretrained_path == str(tmp_path.parent / "weights" / "w.safetensors")
    explain = load_config(root_config_class("evaluate_explain"), None, ["data=/abs/data"])
    assert explain.adapter == "" and explain.data == "/abs/data"  # empty stays "not set"
    assert explain.model == str(tmp_path / "runs" / "gleam-x-local" / "final")
    assert load_config(root_config_class("make_shards"), None, [], resolve=False).output == "data/synth"


def test_relative_paths_in_rays_temporary_working_dir_name_the_path_and_the_fix(tmp_path, monkeypatch):
    from gleam.config import resolve_path, root_config_class

    copy = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_abc"
    (copy / "configs").mkdir(parents=True)
    monkeypatch.chdir(copy)
    with pytest.raises(ConfigError) as error:
        load_config(root_config_class("train_core"), None, ["data.dataset=/shared/synth"])
    message = str(error.value)
    assert "run.output_dir='runs'" in message and "temporary copy" in message and str(copy) in message
    assert "run.output_dir=$PWD/runs" in message and "s3://" in message
    with pytest.raises(ConfigError, match=r"data.dataset='data/synth'.*git-ignored"):
        load_config(root_config_class("train_core"), None, ["run.output_dir=/shared/runs"])
    config = load_config(root_config_class("train_core"), None,
                         ["run.output_dir=s3://bucket/runs", "data.dataset=/shared/synth"])
    assert (config.run.output_dir, config.data.dataset) == ("s3://bucket/runs", "/shared/synth")
    assert resolve_path("configs", "x", "input") == str(copy / "configs")  # an uploaded input is there


def test_model_fields_keep_names_and_resolve_paths(tmp_path, monkeypatch):
    from gleam.config import resolve_path, root_config_class

    copy = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_abc"
    (copy / "ckpt").mkdir(parents=True)
    monkeypatch.chdir(copy)
    # a bare name (models/<name>, "auto", "none") stays a name, even in Ray's copy of the working dir
    assert resolve_path("gleam-c-lite0-synth", "checkpoint", "model") == "gleam-c-lite0-synth"
    assert resolve_path("auto", "model.vision.checkpoint", "model") == "auto"
    # a folder that exists here, or a path with a folder part, is a path
    assert resolve_path("ckpt", "checkpoint", "model") == str(copy / "ckpt")
    with pytest.raises(ConfigError, match="relative path"):
        resolve_path("runs/missing/final", "checkpoint", "model")
    monkeypatch.chdir(tmp_path)
    config = load_config(root_config_class("build_index"), None, ["checkpoint=gleam-c-lite0-synth"])
    assert config.checkpoint == "gleam-c-lite0-synth"
