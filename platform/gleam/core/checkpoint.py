"""Resumable GLEAM-C checkpoints without pickles.

A checkpoint is a folder (local, or uploaded by Ray Train to s3):
    model.safetensors       encoder weights (with the logit scale)
    config.json             the encoder's ModelConfig
    optimizer.safetensors   every tensor of the optimizer state ("state.<param>.<name>")
    trainer_state.json      optimizer param groups and scalar state, scheduler, grad scaler,
                            phase, epoch, global step, sampler state, DSS neighbours, metrics
Nothing is unpickled when loading: tensors come from safetensors, the rest from JSON.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from gleam.core.model import GleamEncoder

OPTIMIZER_WEIGHTS = "optimizer.safetensors"
TRAINER_STATE = "trainer_state.json"


def _split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(param_id), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, param_id, name = key.split(".", 2)
        state.setdefault(int(param_id), {})[name] = value
    for param_id, values in rest["scalars"].items():
        state.setdefault(int(param_id), {}).update(values)
    return {"state": state, "param_groups": rest["param_groups"]}


def save_optimizer(directory: str, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's tensors to ``optimizer.safetensors`` in ``directory``; returns the rest
    (param groups, scalars) for the caller's JSON state."""
    tensors, rest = _split_optimizer_state(optimizer.state_dict())
    save_file(tensors, os.path.join(directory, OPTIMIZER_WEIGHTS))
    return rest


def load_optimizer(directory: str, optimizer: torch.optim.Optimizer, rest: dict[str, Any]) -> None:
    """Restore what ``save_optimizer`` wrote (``rest`` is what it returned)."""
    optimizer.load_state_dict(_join_optimizer_state(load_file(os.path.join(directory, OPTIMIZER_WEIGHTS)), rest))


def save_checkpoint(directory: str, model: GleamEncoder, optimizer: torch.optim.Optimizer,
                    scheduler: Any, trainer_state: dict[str, Any], scaler: Any = None) -> None:
    """Write everything needed to resume into local ``directory``."""
    os.makedirs(directory, exist_ok=True)
    model.save_pretrained(directory)
    state = {
        **trainer_state,
        "optimizer": save_optimizer(directory, optimizer),
        "scheduler": scheduler.state_dict(),  # LambdaLR: plain numbers; lambdas are stored as None
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
    }
    with open(os.path.join(directory, TRAINER_STATE), "w", encoding="utf-8") as handle:
        json.dump(state, handle, indent=1)


def load_trainer_state(directory: str) -> dict[str, Any]:
    with open(os.path.join(directory, TRAINER_STATE), encoding="utf-8") as handle:
        return json.load(handle)


def restore_checkpoint(directory: str, model: GleamEncoder | None, optimizer: torch.optim.Optimizer | None,
                       scheduler: Any = None, scaler: Any = None) -> dict[str, Any]:
    """Load weights (unless ``model`` is None: already loaded) and optimizer/scheduler/scaler
    when given from ``directory``; returns the state."""
    if model is not None:
        model.load_state_dict(load_file(os.path.join(directory, "model.safetensors")))
    state = load_trainer_state(directory)
    if optimizer is not None:
        load_optimizer(directory, optimizer, state["optimizer"])
    if scheduler is not None and state.get("scheduler"):
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return state
