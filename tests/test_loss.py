"""Symmetric InfoNCE: 2 Ray Train workers (DDP, gathered features) == 1 process on the global batch."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gleam.core.loss import symmetric_infonce

GLOBAL_BATCH, DIM, INPUT = 8, 6, 10


class TinyTower(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(INPUT, DIM)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, x):
        return F.normalize(self.linear(x), dim=-1)


def global_inputs():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(GLOBAL_BATCH, INPUT, generator=generator), torch.randn(GLOBAL_BATCH, INPUT, generator=generator)


def one_process():
    model = TinyTower()
    queries, satellites = global_inputs()
    loss = symmetric_infonce(model(queries), model(satellites), model.logit_scale, label_smoothing=0.1)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def worker_loop(config):
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    model = ray.train.torch.prepare_model(TinyTower())
    queries, satellites = global_inputs()
    local = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    loss = symmetric_infonce(model(queries[local]), model(satellites[local]),
                             model.module.logit_scale, label_smoothing=0.1)
    loss.backward()
    grads = {n.removeprefix("module."): p.grad.numpy() for n, p in model.named_parameters()}
    np.savez(os.path.join(config["out"], f"rank{rank}.npz"), loss=loss.item(), **grads)


def test_two_workers_equal_one_process(ray_session, tmp_path):
    from ray.train import ScalingConfig, RunConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(worker_loop, train_loop_config={"out": str(tmp_path)},
                           scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                           run_config=RunConfig(storage_path=str(tmp_path / "ray"), name="loss-check"))
    trainer.fit()
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    expected_loss, expected_grads = one_process()
    assert np.mean([r["loss"] for r in ranks]) == pytest.approx(expected_loss, rel=1e-5)
    assert abs(ranks[0]["loss"] - ranks[1]["loss"]) > 1e-6  # each rank really has its own rows
    for name, grad in expected_grads.items():
        for rank in ranks:  # DDP averaged: every rank holds the global-batch gradient
            np.testing.assert_allclose(rank[name], grad.numpy(), rtol=1e-4, atol=1e-6)


def test_without_gather_local_negatives_only():
    queries = F.normalize(torch.randn(4, 3), dim=-1)
    loss = symmetric_infonce(queries, queries, torch.tensor(0.0), label_smoothing=0.0, gather=False)
    logits = queries @ queries.T
    expected = F.cross_entropy(logits, torch.arange(4))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_logit_scale_is_clamped():
    queries = F.normalize(torch.randn(4, 3), dim=-1)
    high = symmetric_infonce(queries, queries, torch.tensor(50.0), label_smoothing=0.0)
    at_max = symmetric_infonce(queries, queries, torch.tensor(math.log(100.0)), label_smoothing=0.0)
    assert high.item() == pytest.approx(at_max.item())


def test_shape_mismatch_is_explained():
    with pytest.raises(ValueError, match=r"must both be \[batch, dim\]"):
        symmetric_infonce(torch.zeros(2, 3), torch.zeros(3, 3), torch.tensor(1.0))
