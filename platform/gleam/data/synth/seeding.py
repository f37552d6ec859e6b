"""Deterministic random streams keyed by names, so every part can be drawn independently.

A stream is identified by the world seed plus any keys (strings or ints), e.g.
``stream(seed, "render", location_id, "uav", view_index)``. Strings are hashed with SHA-256
(never Python's salted ``hash``), so streams are identical across processes and machines.
"""

from __future__ import annotations

import hashlib

import numpy as np


def _key_to_int(key: str | int) -> int:
    if isinstance(key, (int, np.integer)):
        if key < 0:
            raise ValueError(f"stream keys must be non-negative, got {key}")
        return int(key)
    digest = hashlib.sha256(str(key).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def stream(seed: int, *keys: str | int) -> np.random.Generator:
    """A numpy Generator determined only by seed and keys."""
    entropy = [_key_to_int(seed)] + [_key_to_int(k) for k in keys]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def derived_seed(seed: int, *keys: str | int) -> int:
    """A 31-bit integer seed derived from seed and keys (for child worlds)."""
    return int(stream(seed, "derived-seed", *keys).integers(0, 2**31 - 1))
