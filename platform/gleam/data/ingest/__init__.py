"""Real cross-view datasets -> the platform's WebDataset shards (``jobs/ingest.py``).

    python jobs/ingest.py dataset=university1652 root=/data/University-Release output=s3://bucket/u1652

``CONVERTERS`` maps a dataset name to its converter: a function ``(root, options) ->
IngestPlan`` that checks the layout (``LayoutError`` naming what is missing and the expected
tree) and lists the samples to write.  ``ingest`` runs the converter named by the config and
hands the plan to ``common.run_plan`` (Ray tasks, resumable parts, report, manifest).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from gleam import storage
from gleam.config import InputPath, OutputPath, RayConfig, RunConfig, ShardConfig, save_config, to_dict
from gleam.data.ingest.common import REPORT_NAME, IngestPlan, LayoutError, PairRecord, Skip, run_plan
from gleam.data.ingest.cvact import CvactOptions, plan_cvact
from gleam.data.ingest.cvusa import CvusaOptions, plan_cvusa
from gleam.data.ingest.manifest import ManifestOptions, plan_manifest
from gleam.data.ingest.university1652 import University1652Options, plan_university1652
from gleam.data.ingest.vigor import VigorOptions, plan_vigor

__all__ = ["CONVERTERS", "Converter", "IngestConfig", "IngestPlan", "LayoutError", "PairRecord", "REPORT_NAME",
           "Skip", "ingest", "plan_dataset"]


@dataclass(frozen=True)
class Converter:
    """A dataset converter: its planning function and the config section holding its options."""

    plan: Callable[[str, Any], IngestPlan]
    options: str  # attribute of IngestConfig


CONVERTERS: dict[str, Converter] = {
    "university1652": Converter(plan_university1652, "university1652"),
    "vigor": Converter(plan_vigor, "vigor"),
    "cvusa": Converter(plan_cvusa, "cvusa"),
    "cvact": Converter(plan_cvact, "cvact"),
    "manifest": Converter(plan_manifest, "manifest"),
}


@dataclass
class IngestConfig:
    """Root config of ``jobs/ingest.py``."""

    kind: str = "ingest"
    dataset: str = ""  # one of CONVERTERS
    root: InputPath = ""  # the dataset's folder (local or s3://); for 'manifest' also the manifest file
    output: OutputPath = ""  # local folder or s3://bucket/prefix
    resume: bool = True
    records_per_part: int = 512  # samples per Ray task / part
    max_side: int | None = None  # re-encode images larger than this (longest side, pixels) as JPEG
    dedupe: bool | None = None  # content de-duplication; None: the dataset's default (on for CVUSA)
    # the run fails, and publishes no manifest, when it keeps no sample or rejects more than this
    # share of its rows (missing files, bad coordinates, unreadable images): 0 = no row may be lost
    max_rejected_fraction: float = 0.5
    run: RunConfig = field(default_factory=RunConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    university1652: University1652Options = field(default_factory=University1652Options)
    vigor: VigorOptions = field(default_factory=VigorOptions)
    cvusa: CvusaOptions = field(default_factory=CvusaOptions)
    cvact: CvactOptions = field(default_factory=CvactOptions)
    manifest: ManifestOptions = field(default_factory=ManifestOptions)


def _check(config: IngestConfig) -> Converter:
    if config.dataset not in CONVERTERS:
        raise ValueError(f"dataset={config.dataset!r}: choose one of {sorted(CONVERTERS)}")
    if not config.root:
        raise ValueError("root is empty: set root=<the dataset's folder or s3:// URL>")
    if not config.output:
        raise ValueError("output is empty: set output=<folder or s3://bucket/prefix>")
    if config.records_per_part < 1:
        raise ValueError(f"records_per_part={config.records_per_part} must be at least 1")
    if config.max_side is not None and config.max_side < 8:
        raise ValueError(f"max_side={config.max_side} must be at least 8 (or null)")
    from gleam.rejections import check_fraction

    check_fraction("max_rejected_fraction", config.max_rejected_fraction)
    return CONVERTERS[config.dataset]


def plan_dataset(config: IngestConfig) -> IngestPlan:
    """Check the config and the dataset layout; the plan of what would be written (no Ray)."""
    converter = _check(config)
    return converter.plan(config.root.rstrip("/") or config.root, getattr(config, converter.options))


def ingest(config: IngestConfig) -> dict[str, Any]:
    """Convert the dataset named by ``config``; returns the ingest report. Ray must be initialised.

    The layout is checked before anything is written.
    """
    plan = plan_dataset(config)
    storage.makedirs(config.output)
    save_config(config, config.output)
    return run_plan(plan, config.output, config.shards, resume=config.resume,
                    records_per_part=config.records_per_part, max_side=config.max_side, dedupe=config.dedupe,
                    extra_report={"config": to_dict(config)}, max_rejected_fraction=config.max_rejected_fraction)
