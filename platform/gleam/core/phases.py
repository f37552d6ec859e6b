"""The two-phase schedule as configuration, and the learning-rate schedule inside a phase.

The paper trains phase 1 on one modality (VIGOR panoramas) and phase 2 on every modality with
balanced sampling; how long each phase runs, at what learning rate and what carries over from
phase 1 is left open, so every one of those is a field here (and a Ray Tune axis).
Weights always carry over; ``carry_over`` may add ``logit_scale`` (else it is re-initialised)
and ``optimizer`` (else optimizer moments and the LR schedule start afresh).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from gleam.data.sampling import SamplingConfig

CarryOver = Literal["logit_scale", "optimizer"]


@dataclass
class PhaseConfig:
    """One phase of training."""

    name: str = "phase"
    epochs: int = 1
    modalities: list[str] = field(default_factory=lambda: ["panorama"])
    lr: float = 1e-3
    warmup_steps: int = 0
    min_lr_ratio: float = 0.05  # cosine decays to lr * min_lr_ratio
    carry_over: list[CarryOver] = field(default_factory=lambda: ["logit_scale"])
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


def default_phases() -> list[PhaseConfig]:
    """Paper-style default: panoramas first, then every modality balanced."""
    return [
        PhaseConfig(name="panorama", epochs=2, modalities=["panorama"], lr=1e-3, warmup_steps=5),
        PhaseConfig(name="all", epochs=3, modalities=["uav", "streetmap", "panorama", "ground"], lr=5e-4,
                    warmup_steps=5, carry_over=["logit_scale"],
                    sampling=SamplingConfig(modality_weights={"uav": 1.0, "streetmap": 1.0,
                                                              "panorama": 1.0, "ground": 1.0})),
    ]


def cosine_with_warmup(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                       min_lr_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then cosine decay to ``min_lr_ratio`` of the base LR over ``total_steps``."""
    total_steps = max(1, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
