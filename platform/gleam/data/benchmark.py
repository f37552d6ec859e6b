"""What a benchmark scores: the evaluation protocol a converter records in ``manifest.json``.

A dataset converter (``gleam.data.ingest``) knows how its benchmark evaluates; it writes that
knowledge under ``manifest["evaluation"][<split>]`` so evaluation (``jobs/evaluate_core.py``,
validation during training, ``jobs/build_index.py``) builds exactly the benchmark's query set and
gallery instead of guessing from one split.  Fields of one protocol (``EvaluationProtocol``):

- ``query_splits``: splits whose query-view samples (UAV, panorama, ...) are the queries of
  query->satellite;
- ``gallery_splits``: splits whose satellite tiles (the query samples' tiles and satellite-only
  tiles) form the satellite gallery, one tile per location id;
- ``query_modalities``: the query views that count (``None``: all);
- ``reverse_gallery_splits``: splits whose query-view images form the gallery of
  satellite->query (University-1652's satellite->drone ranks ``gallery_drone``: the 701 query
  classes' drone images plus the 250 distractor classes');
- ``reverse_queries``: ``query_locations`` (the tiles of locations that have a query: the 701
  ``query_satellite`` tiles of University-1652) or ``all_tiles``;
- ``semi_positives``: the samples carry ``metadata.semi_positive_location_ids`` (VIGOR hit rate);
- ``top1_percent_rule``: k of R@top1%: ``round`` (round half up of G/100) or ``floor``
  (``G // 100``, Sample4Geo's CVUSA/CVACT evaluation);
- ``official``: the published query and gallery counts of the full release, for comparison.

A dataset without a recorded protocol (the synthetic world, a generic manifest) gets the
default: queries and gallery from the split itself, satellite-only tiles of that split included
when ``distractors`` is on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from gleam.data.schema import SPLITS

__all__ = ["EvaluationProtocol", "TOP1_PERCENT_RULES", "default_protocol", "protocol_for", "read_protocols"]

# k of R@top1% for a gallery of G items, by rule (gleam.core.evaluate.top1_percent_k computes it)
TOP1_PERCENT_RULES = {"round": "max(1, floor(G/100 + 0.5))", "floor": "max(1, G // 100)"}


@dataclass
class EvaluationProtocol:
    """Which samples a benchmark scores for one evaluation split (see the module docstring)."""

    benchmark: str = "split"
    split: str = "test"
    query_splits: list[str] = field(default_factory=lambda: ["test"])
    gallery_splits: list[str] = field(default_factory=lambda: ["test"])
    query_modalities: list[str] | None = None
    reverse_gallery_splits: list[str] = field(default_factory=lambda: ["test"])
    reverse_queries: Literal["query_locations", "all_tiles"] = "all_tiles"
    semi_positives: bool = False
    top1_percent_rule: Literal["round", "floor"] = "round"
    official: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "manifest") -> "EvaluationProtocol":
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{where}: unknown evaluation protocol fields {unknown}")
        protocol = cls(**data)
        protocol.check(where)
        return protocol

    def check(self, where: str = "protocol") -> None:
        for name in ("query_splits", "gallery_splits", "reverse_gallery_splits"):
            bad = [s for s in getattr(self, name) if s not in SPLITS]
            if bad or not getattr(self, name):
                raise ValueError(f"{where}: {name}={getattr(self, name)} must be a non-empty list of {list(SPLITS)}")
        if self.reverse_queries not in ("query_locations", "all_tiles"):
            raise ValueError(f"{where}: reverse_queries={self.reverse_queries!r} is not query_locations or all_tiles")
        if self.top1_percent_rule not in TOP1_PERCENT_RULES:
            raise ValueError(f"{where}: top1_percent_rule={self.top1_percent_rule!r} is not one of "
                             f"{list(TOP1_PERCENT_RULES)}")

    def splits(self) -> list[str]:
        """Every split the evaluation reads, in schema order."""
        wanted = set(self.query_splits) | set(self.gallery_splits) | set(self.reverse_gallery_splits)
        return [s for s in SPLITS if s in wanted]


def default_protocol(split: str) -> EvaluationProtocol:
    """Queries and gallery of ``split`` alone (datasets that record no protocol)."""
    return EvaluationProtocol(benchmark="split", split=split, query_splits=[split], gallery_splits=[split],
                              reverse_gallery_splits=[split], reverse_queries="all_tiles",
                              note=f"no protocol recorded: queries and gallery tiles of split {split!r}")


def read_protocols(manifest: dict[str, Any]) -> dict[str, EvaluationProtocol]:
    """The protocols recorded in a manifest, by evaluation split."""
    recorded = manifest.get("evaluation") or {}
    return {split: EvaluationProtocol.from_json(data, f"manifest.json evaluation.{split}")
            for split, data in recorded.items()}


def protocol_for(source: str | list[str], split: str) -> EvaluationProtocol:
    """The protocol of ``split`` recorded in ``source``'s manifest, else ``default_protocol``.

    ``source`` is a dataset folder / ``s3://`` URL with ``manifest.json``; a list of shard URLs has
    no manifest and gets the default.
    """
    if not isinstance(source, str):
        return default_protocol(split)
    from gleam.data.shards import read_manifest

    protocols = read_protocols(read_manifest(source))
    return protocols.get(split) or default_protocol(split)


class RowSelection:
    """Which rows of an evaluation set are queries and which form the gallery.

    Mixed into ``gleam.data.pipeline.TrainingSet`` and any other row-addressed set (the held-out
    benchmark's in-memory arrays) that has per-row ``location_ids``, ``modalities`` and ``splits``
    lists, a ``protocol`` (``EvaluationProtocol`` or None) and a ``distractors`` flag. Needs no Ray.
    """

    location_ids: list[str]
    modalities: list[str]
    splits: list[str]
    protocol: Any = None
    distractors: bool = True

    def _query_view_rows(self, splits: list[str] | None) -> np.ndarray:
        """Rows with a query view (not satellite-only tiles), of ``splits`` and the protocol's
        query modalities (``splits=None``: every row with a query view)."""
        wanted = None if splits is None else set(splits)
        views = None if self.protocol is None else self.protocol.query_modalities
        return np.array([i for i, (m, s) in enumerate(zip(self.modalities, self.splits))
                         if m != "satellite" and (wanted is None or s in wanted) and (views is None or m in views)],
                        dtype=np.int64)

    def query_rows(self) -> np.ndarray:
        """Rows that have a query view (not satellite-only distractors); with an evaluation
        protocol, those of its query splits and query modalities."""
        return self._query_view_rows(None if self.protocol is None else self.protocol.query_splits)

    def reverse_gallery_rows(self) -> np.ndarray:
        """Query-view rows ranked by the tiles in satellite->query: the protocol's reverse
        gallery splits (University-1652: gallery_drone), else the queries themselves."""
        return self._query_view_rows(None if self.protocol is None else self.protocol.reverse_gallery_splits)

    def gallery_rows(self) -> np.ndarray:
        """One row per distinct location: its satellite tile (distractors included); with an
        evaluation protocol, the tiles of its gallery splits (only those of locations with a query
        when the set was built with ``include_distractors=False``)."""
        first: dict[str, int] = {}
        splits = None if self.protocol is None else set(self.protocol.gallery_splits)
        for row, location in enumerate(self.location_ids):
            if splits is None or self.splits[row] in splits:
                first.setdefault(location, row)
        if self.protocol is not None and not self.distractors:
            queried = {self.location_ids[r] for r in self.query_rows()}
            first = {location: row for location, row in first.items() if location in queried}
        return np.array(sorted(first.values()), dtype=np.int64)
