"""Typed configuration: dataclasses, YAML files under ``configs/`` and dotted CLI overrides.

A job declares one root dataclass made of sections (``run``, ``synth``, ``shards``, ...).
``load_config(RootConfig, "configs/local-cpu.yaml", ["shards.max_samples=64"])`` reads the
YAML file, applies the overrides, checks every key and every value's type against the
dataclasses and returns an instance.  Unknown keys and wrong types raise ``ConfigError``
naming the dotted key and the file (or ``<cli>`` for an override).  ``save_config`` writes the
resolved config next to a run's outputs.

Path fields (typed ``InputPath``/``OutputPath``, or named ``path``/``*_path``/``*_dir``) are made
absolute against the working directory by ``load_config`` (``resolve_paths``), on the driver,
before any Ray work: Ray workers, tasks and actors run in other directories.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")

CLI_SOURCE = "<cli>"


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the key and its source."""


# --------------------------------------------------------------------------- path fields


@dataclass(frozen=True)
class PathField:
    """Marks a config field as a path: ``role`` "input" (read), "output" (written) or "model"
    (a model: a path, a URL, or a bare name such as a folder under the repository's ``models/``,
    "auto" or "none", which stays a name so the loader, e.g. ``gleam.core.model.resolve_checkpoint``,
    finds it on whichever node loads it)."""

    role: str


# A path-valued field: a local path (made absolute on the driver by ``resolve_paths``) or a URL.
InputPath = Annotated[str, PathField("input")]
OutputPath = Annotated[str, PathField("output")]
ModelPath = Annotated[str, PathField("model")]
# Unmarked ``str`` fields named like paths are paths too (so a new ``*_path``/``*_dir`` field is
# resolved without anyone remembering to mark it); their role comes from the name.
PATH_NAME_SUFFIXES = ("_path", "_dir")
PATH_NAMES = ("path",)
OUTPUT_NAMES = ("output", "output_dir", "storage_path")
# The folder a job submitted with `ray job submit --working-dir ...` runs in: Ray's temporary
# copy of the uploaded folder (ray/_private/runtime_env/working_dir.py).
RAY_WORKING_DIR_MARK = os.sep + os.path.join("runtime_resources", "working_dir_files") + os.sep


# --------------------------------------------------------------------------- sections


@dataclass
class RunConfig:
    """Where a run writes its outputs and how it is seeded."""

    name: str = "gleam"
    output_dir: OutputPath = "runs"
    seed: int = 0


@dataclass
class RayConfig:
    """How a job connects to Ray and how much of a node each worker takes."""

    address: str | None = None  # None: connect to RAY_ADDRESS / a running cluster, else start local
    num_workers: int = 2
    cpus_per_worker: float = 0.5  # fractional on small machines: see RAY_NOTES (Data/Train deadlock)
    gpus_per_worker: float = 0.0
    log_level: str = "WARNING"  # Ray Train's console logs; INFO echoes every rank's reports


@dataclass
class TrackingConfig:
    """Experiment tracking of a training run (``tracking:``; written by gleam.progress)."""

    tensorboard: bool = True  # event files under <run folder>/tensorboard/
    mlflow_uri: str = ""  # "" = no MLflow; else a tracking URI (http://host:5000, file:/abs/mlruns)
    mlflow_experiment: str = "gleam"


@dataclass
class ShardConfig:
    """Shard size bounds: a shard closes at whichever limit comes first."""

    max_samples: int = 256
    max_bytes: int = 256 * 1024 * 1024
    prefix: str = "shard"
    jpeg_quality: int = 90


@dataclass
class SynthConfig:
    """The synthetic world: how many locations per split and which views are rendered."""

    seed: int = 0
    origin_lat: float = 47.37
    origin_lon: float = 8.54
    size_m: float = 2000.0
    locations: dict[str, int] = field(default_factory=lambda: {"train": 64, "val": 16, "test": 16})
    modalities: list[str] = field(default_factory=lambda: ["uav", "streetmap", "panorama", "ground"])
    views_per_location: int = 1
    distractors: int = 0
    image_size: int = 256
    panorama_width: int = 512
    locations_per_task: int = 64  # = locations_per_region: a region is generated once, by one task
    locations_per_region: int = 64  # a 2 km region holds ~117-196 query locations (measured); overflow spills
    regions_per_split: int = 1  # at least this many regions per split (locations spread evenly)
    biomes: list[str] = field(default_factory=list)  # region r gets biomes[r % len]; empty: from the seed


# Root configs of the jobs, by the ``kind`` key every YAML file under configs/ carries.
# Values are "module:Class" so that importing gleam.config stays light.
ROOT_CONFIGS: dict[str, str] = {
    "make_shards": "gleam.data.make_shards:MakeShardsConfig",
    "train_core": "gleam.core.train:TrainCoreConfig",
    "tune_core": "gleam.core.tune:TuneCoreConfig",
    "evaluate_core": "gleam.core.evaluate:EvaluateCoreConfig",
    "ingest": "gleam.data.ingest:IngestConfig",
    "train_explain": "gleam.explain.train:TrainExplainConfig",
    "evaluate_explain": "gleam.explain.evaluate:EvaluateExplainConfig",
    "serve": "gleam.serving.config:ServeAppConfig",
    "build_index": "gleam.retrieval.build:BuildIndexConfig",
    "localize_batch": "gleam.retrieval.batch:LocalizeBatchConfig",
}


def root_config_class(kind: str) -> type:
    """The root dataclass of a job config ``kind`` (see ``ROOT_CONFIGS``)."""
    import importlib

    if kind not in ROOT_CONFIGS:
        raise ConfigError(f"unknown config kind {kind!r}; known: {', '.join(sorted(ROOT_CONFIGS))}")
    module_name, class_name = ROOT_CONFIGS[kind].split(":")
    return getattr(importlib.import_module(module_name), class_name)


# --------------------------------------------------------------------------- building


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against type ``tp`` (recursively) and return it, converted where lossless."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def fail(expected: str) -> ConfigError:
        return ConfigError(
            f"{source}: key '{key}' expects {expected}, got {type(value).__name__} {value!r}"
        )

    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key, source)
            except ConfigError as error:
                errors.append(error)
        raise fail(" or ".join(_type_name(a) for a in args))
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{source}: key '{key}' must be one of {list(args)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail(f"a mapping (section {tp.__name__})")
        return _build(tp, value, key, source)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail("a list")
        item_type = args[0] if args else Any
        items = [_coerce(v, item_type, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise fail("a mapping")
        key_type, value_type = args if args else (Any, Any)
        return {
            _coerce(k, key_type, f"{key}.{k}", source): _coerce(v, value_type, f"{key}.{k}", source)
            for k, v in value.items()
        }
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string: accept the number meant
            try:
                return float(value)
            except ValueError:
                raise fail("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    if isinstance(tp, type):
        if not isinstance(value, tp):
            raise fail(tp.__name__)
        return value
    return value


def _build(cls: type[T], data: dict[str, Any], prefix: str, source: str) -> T:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    for name in data:
        if name not in known:
            dotted = f"{prefix}.{name}" if prefix else name
            raise ConfigError(
                f"{source}: unknown key '{dotted}' ({cls.__name__} has: {', '.join(sorted(known))})"
            )
    kwargs = {}
    for name, value in data.items():
        dotted = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], dotted, source)
    return cls(**kwargs)


def from_dict(cls: type[T], data: dict[str, Any], source: str = "<dict>") -> T:
    """Build dataclass ``cls`` from a plain mapping, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    return _build(cls, data, "", source)


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain Python data (what ``save_config`` writes)."""
    return dataclasses.asdict(config)


# --------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` -> (["train", "lr"], 0.0003); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"{CLI_SOURCE}: override {text!r} must look like section.key=value")
    dotted, raw = text.split("=", 1)
    path = dotted.strip().split(".")
    if not all(path):
        raise ConfigError(f"{CLI_SOURCE}: override {text!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"{CLI_SOURCE}: override {text!r}: value is not valid YAML ({error})")
    return path, value


def apply_overrides(cls: type, data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted override in ``data`` after checking the key exists in ``cls``."""
    data = _deep_copy(data)
    for text in overrides:
        path, value = parse_override(text)
        section_cls: Any = cls
        node = data
        for depth, part in enumerate(path):
            dotted = ".".join(path[: depth + 1])
            is_leaf = depth == len(path) - 1
            if section_cls is not None:
                fields = {f.name: f for f in dataclasses.fields(section_cls)}
                if part not in fields:
                    raise ConfigError(
                        f"{CLI_SOURCE}: unknown key '{dotted}' in override {text!r} "
                        f"({section_cls.__name__} has: {', '.join(sorted(fields))})"
                    )
                hint = typing.get_type_hints(section_cls)[part]
                section_cls = hint if dataclasses.is_dataclass(hint) else None
                if not is_leaf and section_cls is None and typing.get_origin(hint) is not dict:
                    raise ConfigError(
                        f"{CLI_SOURCE}: unknown key '{'.'.join(path)}' in override {text!r} "
                        f"('{dotted}' is a {_type_name(hint)} value, not a section)"
                    )
            if is_leaf:
                node[part] = value
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"{CLI_SOURCE}: '{dotted}' is not a section")
    return data


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


# --------------------------------------------------------------------------- paths


def _path_role(name: str, hint: Any) -> str | None:
    """"input"/"output" when field ``name`` with type ``hint`` (extras kept) holds a path."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)
    for option in options:
        if typing.get_origin(option) is Annotated:
            for extra in option.__metadata__:
                if isinstance(extra, PathField):
                    return extra.role
    if str in options and (name in PATH_NAMES or name in OUTPUT_NAMES or name.endswith(PATH_NAME_SUFFIXES)):
        return "output" if name in OUTPUT_NAMES else "input"
    return None


def path_fields(cls: type, prefix: str = "") -> dict[str, str]:
    """Dotted names of every path field under dataclass ``cls`` -> "input" | "output"."""
    found: dict[str, str] = {}
    hints = typing.get_type_hints(cls, include_extras=True)
    for item in dataclasses.fields(cls):
        dotted = f"{prefix}.{item.name}" if prefix else item.name
        hint = hints[item.name]
        plain = typing.get_type_hints(cls)[item.name]
        if dataclasses.is_dataclass(plain):
            found.update(path_fields(plain, dotted))
        elif typing.get_origin(plain) is list and typing.get_args(plain) and dataclasses.is_dataclass(
                typing.get_args(plain)[0]):
            found.update(path_fields(typing.get_args(plain)[0], f"{dotted}[]"))
        else:
            role = _path_role(item.name, hint)
            if role:
                found[dotted] = role
    return found


def ray_working_dir(cwd: str | None = None) -> str | None:
    """The Ray job's temporary working directory when ``cwd`` (default: this process's) is one."""
    cwd = cwd or os.getcwd()
    if RAY_WORKING_DIR_MARK not in cwd + os.sep:
        return None
    head, tail = (cwd + os.sep).split(RAY_WORKING_DIR_MARK, 1)
    return os.path.join(head + RAY_WORKING_DIR_MARK, tail.split(os.sep, 1)[0])


def resolve_path(value: str, key: str, role: str, base: str | None = None) -> str:
    """One path field's value made absolute against ``base`` (default: the working directory).

    URLs (``s3://...``) and empty values stay as they are; ``~`` is expanded. In the temporary
    copy of the working directory that ``ray job submit --working-dir`` runs a job in, a relative
    output (lost with the copy) or a relative input missing from the copy (git-ignored files are
    not uploaded) raises ``ConfigError`` naming the key and the fix.
    """
    if not value or ("://" in value and not value.startswith("file://")):
        return value
    path = os.path.expanduser(value.removeprefix("file://"))
    if os.path.isabs(path):
        return os.path.normpath(path)
    base = base or os.getcwd()
    resolved = os.path.normpath(os.path.join(base, path))
    if role == "model" and os.sep not in path and path not in (".", "..") and not os.path.exists(resolved):
        return path  # a named checkpoint (models/<name>, or "auto"): resolved where it is loaded
    copy = ray_working_dir(base)
    if copy and (role == "output" or not os.path.exists(resolved)):
        what = ("outputs written there are deleted with it" if role == "output"
                else "it does not hold this path (git-ignored files such as data/ and runs/ are not uploaded)")
        raise ConfigError(
            f"{key}={value!r} is a relative path, and this job runs in Ray's temporary copy of the working "
            f"directory ({copy}): {what}. Give a path every Ray node can reach: an absolute path on shared "
            f"storage (e.g. {key}=$PWD/{path} when the cluster runs on this machine) or an s3:// URL.")
    return resolved


def resolve_paths(config: T, base: str | None = None, _prefix: str = "") -> T:
    """Make every path field of ``config`` (see ``path_fields``) absolute, in place; returns it.

    Ray workers, tasks and actors do not share the driver's working directory (a relative path
    opened there lands in Ray's temporary folders), so jobs resolve paths once, on the driver,
    before any Ray work starts (``load_config`` does it). Errors: ``ConfigError`` (see
    ``resolve_path``).
    """
    hints = typing.get_type_hints(type(config), include_extras=True)
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        dotted = f"{_prefix}{item.name}"
        if dataclasses.is_dataclass(value):
            resolve_paths(value, base, f"{dotted}.")
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            for position, element in enumerate(value):
                resolve_paths(element, base, f"{dotted}[{position}].")
        elif isinstance(value, str) and (role := _path_role(item.name, hints[item.name])):
            setattr(config, item.name, resolve_path(value, dotted, role, base))
    return config


# --------------------------------------------------------------------------- files


def read_yaml(path: str) -> dict[str, Any]:
    """Read a YAML mapping from a local path or URL; errors name the file."""
    from gleam import storage

    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | None = None, overrides: list[str] | None = None,
                resolve: bool = True) -> T:
    """Defaults of ``cls``, updated by the YAML file at ``path``, then by dotted overrides; path
    fields made absolute against the working directory (``resolve_paths``) unless ``resolve``
    is false."""
    data = read_yaml(path) if path else {}
    source = path or "<defaults>"
    from_dict(cls, data, source)  # report file errors against the file, before overrides
    overrides = list(overrides or [])
    if overrides:
        data = apply_overrides(cls, data, overrides)
        source = f"{source} + {CLI_SOURCE}" if path else CLI_SOURCE
    config = from_dict(cls, data, source)
    return resolve_paths(config) if resolve else config


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)


def save_config(config: Any, directory: str, name: str = "config.yaml") -> str:
    """Write the resolved config atomically as ``<directory>/<name>``; returns its URL."""
    from gleam import storage

    url = storage.join(directory, name)
    storage.write_text(url, dump_yaml(config))
    return url
