"""Provenance of a result file: what code, which packages, which machine, which seeds, which weights.

One call, JSON-ready, cheap (a few ``git`` calls and file hashes), no Ray and no torch import
unless torch is already installed::

    from gleam.provenance import provenance

    result["provenance"] = provenance(seeds={"world": 0, "train": 0},
                                      checkpoints={"encoder": "data/heldout-models/6144-..."})

Returns::

    {"git": {"commit": "<40 hex>" | None, "dirty": bool | None, "describe": ...},
     "packages": {"python": "3.11.x", "torch": "2.x", ...},   # absent packages left out
     "date_utc": "2026-12-06T13:20:00+00:00",
     "machine": {"node": ..., "platform": ..., "cpu_count": N, "gpu": "NVIDIA H100 ..." | None},
     "command": ["python", "benchmarks/bench_heldout.py", ...],
     "seeds": {...},
     "checkpoints": {"encoder": {"path": ..., "files": {"model.safetensors": "<sha256>"}}}}

``dirty`` is true when ``git status --porcelain`` lists anything (tracked changes or untracked
files that git does not ignore): a result from a dirty tree cannot be reproduced from the
commit alone.  A checkpoint is a file (hashed itself) or a folder, whose weight files
(``*.safetensors``, ``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``) are hashed; ``file_sha256`` hashes one.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import subprocess
import sys
from typing import Any

# distribution names, in the order they are reported; faiss ships as faiss-cpu or faiss-gpu
PACKAGES = ("torch", "torchvision", "timm", "numpy", "ray", "transformers", "peft",
            ("faiss", ("faiss-cpu", "faiss-gpu", "faiss")))
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    """sha256 (hex) of one file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_hashes(path: str) -> dict[str, Any]:
    """``{"path": path, "files": {name: sha256}}`` of a checkpoint file or of a folder's weight
    files (sorted by name, subfolders included with their relative names); ``"error"`` instead
    of ``"files"`` when the path does not exist or holds no weight file."""
    out: dict[str, Any] = {"path": path}
    if os.path.isfile(path):
        out["files"] = {os.path.basename(path): file_sha256(path)}
    elif os.path.isdir(path):
        files = {}
        for folder, _, names in sorted(os.walk(path)):
            for name in sorted(names):
                if name.endswith(WEIGHT_SUFFIXES):
                    full = os.path.join(folder, name)
                    files[os.path.relpath(full, path)] = file_sha256(full)
        if files:
            out["files"] = files
        else:
            out["error"] = f"no weight file ({', '.join(WEIGHT_SUFFIXES)}) in the folder"
    else:
        out["error"] = "no such file or folder"
    return out


def _git(*args: str, cwd: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(repo: str = REPO_ROOT) -> dict[str, Any]:
    """``{"commit", "dirty", "describe"}`` of the repository at ``repo`` (``None`` values
    outside a git checkout or without git)."""
    commit = _git("rev-parse", "HEAD", cwd=repo)
    status = _git("status", "--porcelain", cwd=repo) if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status),
            "describe": _git("describe", "--always", "--dirty", cwd=repo) if commit else None}


def package_versions(packages: tuple = PACKAGES) -> dict[str, str]:
    """Installed versions (importlib.metadata) of ``packages``; ``python`` first; packages that
    are not installed are left out.  An item is a distribution name or ``(label, (names...))``."""
    versions = {"python": platform.python_version()}
    for item in packages:
        label, names = (item, (item,)) if isinstance(item, str) else item
        for name in names:
            try:
                versions[label] = importlib.metadata.version(name)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return versions


def machine() -> dict[str, Any]:
    """Node name, platform string, CPU count and, when torch sees CUDA, the GPU's name."""
    gpu = None
    if "torch" in sys.modules or importlib.util.find_spec("torch") is not None:
        try:
            import torch

            if torch.cuda.is_available():
                gpu = torch.cuda.get_device_name(0)
        except Exception:  # a broken CUDA install must not break a result file
            gpu = None
    return {"node": platform.node(), "platform": platform.platform(), "cpu_count": os.cpu_count(), "gpu": gpu}


def provenance(command: list[str] | None = None, seeds: dict | None = None,
               checkpoints: dict[str, str] | None = None, repo: str = REPO_ROOT) -> dict[str, Any]:
    """Everything needed to say where a result came from (see the module docstring).

    ``command`` defaults to ``[sys.executable, *sys.argv]``; ``seeds`` is copied as given;
    ``checkpoints`` maps a label to a checkpoint file or folder, each hashed (sha256).
    """
    return {
        "git": git_state(repo),
        "packages": package_versions(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": list(command) if command is not None else [sys.executable, *sys.argv],
        "seeds": dict(seeds or {}),
        "checkpoints": {label: checkpoint_hashes(path) for label, path in (checkpoints or {}).items()},
    }
