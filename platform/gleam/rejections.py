"""Runs that keep nothing fail: rejected rows grouped by reason, with examples and a hint.

``group_rejections`` turns rejected rows (``{"reason", "error", "where"}``) into
``{reason: {"count", "examples": [...], "hint"}}``; ``check_kept`` raises ``RejectedRunError`` (a
ValueError: the jobs end non-zero) when a run kept nothing, or lost more than
``max_rejected_fraction`` of its rows, so that it publishes nothing.

Defaults (documented in the job configs): ``jobs/build_index.py`` 0.0 (a gallery that silently
lacks tiles can never find those places), ``jobs/localize_batch.py`` 0.01 (a stray broken file in
a hundred is an error row; a folder where more fail points at a wrong setting).
"""

from __future__ import annotations

import posixpath
from typing import Any, Iterable

EXAMPLES_PER_REASON = 3


class RejectedRunError(ValueError):
    """A run that kept no rows, or lost more than it may; ``report`` holds the grouped reasons."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


def check_fraction(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{key}={value!r}: must be a share in [0, 1] (0: no row may be lost); "
                         f"set {key}=0.01 for example")
    return float(value)


def group_rejections(rows: Iterable[dict[str, Any]], examples: int = EXAMPLES_PER_REASON) -> dict[str, Any]:
    groups: dict[str, dict[str, Any]] = {}
    for row in rows:
        group = groups.setdefault(str(row.get("reason") or "other"), {"count": 0, "examples": []})
        group["count"] += 1
        if len(group["examples"]) < examples:
            group["examples"].append({"where": str(row.get("where", "")), "error": str(row.get("error", ""))[:300]})
    return dict(sorted(groups.items(), key=lambda item: -item[1]["count"]))


def batch_reason(error: str) -> str:
    """The reason of a localize_batch error row (its message's first words)."""
    for prefix, reason in (("no modality", "no modality"), ("unknown modality", "unknown modality"),
                           ("cannot read", "unreadable file"), ("cannot decode", "undecodable image"),
                           ("cannot embed", "embedding or search failed")):
        if error.startswith(prefix):
            return reason
    return "other"


def batch_hints(groups: dict[str, Any], rejected_paths: list[str], total: int, known_modalities: list[str],
                root: str = "") -> None:
    """Add a ``hint`` to the groups of a localize_batch run where the rows share a cause."""
    undecodable = groups.get("undecodable image")
    if undecodable and undecodable["count"] == total:
        undecodable["hint"] = ("no file decoded: are these really JPEG/PNG images (a renamed file, an HTML error "
                               "page or a truncated download keeps its extension)? Open one with an image viewer")
    unreadable = groups.get("unreadable file")
    if unreadable and unreadable["count"] == total:
        unreadable["hint"] = "no file could be read: check the input path and its permissions or credentials"
    missing = groups.get("no modality")
    if missing:
        folders: dict[str, int] = {}
        known = {m.lower(): m for m in known_modalities}
        for path in rejected_paths:
            relative = path[len(root):] if root and path.startswith(root) else path
            for folder in posixpath.dirname(relative.replace("\\", "/")).split("/"):
                if folder and folder.lower() in known and folder != known[folder.lower()]:
                    folders[folder] = folders.get(folder, 0) + 1
        if folders:
            named = ", ".join(f"{f!r} (-> {known[f.lower()]!r})" for f in sorted(folders))
            missing["hint"] = (f"folders {named} look like modality names in another case: modality folders must be "
                               f"named exactly {', '.join(known_modalities)}; rename them or set modality=")
        else:
            missing["hint"] = (f"put the images under folders named after their modality ({', '.join(known_modalities)}),"
                               " or set modality=<one for all> or fallback_modality=")


def gallery_hints(groups: dict[str, Any], total: int) -> None:
    """Hints for the rejected samples of a gallery read (by the field that failed)."""
    for reason, group in groups.items():
        if group["count"] == total and "image" in reason:
            group["hint"] = ("every sample's image failed to decode: were the shards written with another image "
                             "codec, or truncated? Re-run jobs/make_shards.py / the ingest for this source")
        elif group["count"] == total:
            group["hint"] = f"every sample failed on {reason!r}: the shards are probably of another schema or damaged"


def check_kept(what: str, kept: int, rejected: int, max_rejected_fraction: float, groups: dict[str, Any],
               key: str, report: dict[str, Any] | None = None) -> None:
    """Raise ``RejectedRunError`` when ``kept`` is 0 or ``rejected`` is more than the allowed share."""
    total = kept + rejected
    if total and kept and rejected / total <= max_rejected_fraction:
        return
    lines = []
    for reason, group in groups.items():
        example = group["examples"][0] if group["examples"] else {}
        lines.append(f"  {group['count']} x {reason}: e.g. {example.get('where', '')}: {example.get('error', '')}"
                     + (f"\n    hint: {group['hint']}" if group.get("hint") else ""))
    if not kept:
        head = f"{what}: kept none of {total} rows, so nothing was published"
    else:
        head = (f"{what}: rejected {rejected} of {total} rows ({100 * rejected / total:.1f} %), more than "
                f"{key}={max_rejected_fraction:g} allows, so nothing was published (raise {key} to accept the loss)")
    raise RejectedRunError("\n".join([head + (":" if lines else "")] + lines),
                           {**(report or {}), "kept": kept, "rejected": rejected, "rejected_by_reason": groups})
