"""Symmetric InfoNCE: 2 Ray Train workers (DDP, gathered features) == 1 process on the global batch,
with and without the feature cache (gradient caching)."""

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


def cached(model, tower, queries, satellites, chunk):
    """The feature-cache step over these (local) rows; returns the loss."""
    from functools import partial

    from gleam.core.feature_cache import cached_contrastive_step

    return cached_contrastive_step(model, tower.logit_scale, lambda rows: model(torch.stack(list(rows))),
                                   list(queries), list(satellites), partial(symmetric_infonce, label_smoothing=0.1),
                                   chunk, torch.device("cpu"))


@pytest.mark.parametrize("chunk", [1, 3, GLOBAL_BATCH])
def test_feature_cache_equals_one_big_batch(chunk):
    expected_loss, expected_grads = one_process()
    model = TinyTower()
    queries, satellites = global_inputs()
    assert cached(model, model, queries, satellites, chunk) == pytest.approx(expected_loss, rel=1e-6)
    for name, parameter in model.named_parameters():
        np.testing.assert_allclose(parameter.grad.numpy(), expected_grads[name].numpy(), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="feature_cache_chunk"):
        cached(model, model, queries, satellites, 0)


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
    grads = {n.removeprefix("module."): p.grad.numpy().copy() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)  # the same global batch through the feature cache, 2 pairs a chunk
    cached_loss = cached(model, model.module, queries[local], satellites[local], 2)
    cached_grads = {"cached." + n.removeprefix("module."): p.grad.numpy() for n, p in model.named_parameters()}
    np.savez(os.path.join(config["out"], f"rank{rank}.npz"), loss=loss.item(), cached_loss=cached_loss,
             **grads, **cached_grads)


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
            # the feature cache on 2 workers: the same global-batch loss and gradients
            assert float(rank["cached_loss"]) == pytest.approx(expected_loss, rel=1e-5)
            np.testing.assert_allclose(rank["cached." + name], grad.numpy(), rtol=0, atol=1e-5)


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


def test_train_step_with_feature_cache_matches_plain_step_on_mixed_views():
    """The real encoder, square views and wide panoramas in one batch: the cached step leaves
    the gradients of the plain one (within 1e-5, relative and absolute: float32 sums in another order)."""
    from gleam.config import from_dict
    from gleam.core.model import GleamEncoder
    from gleam.core.train import TrainCoreConfig, train_step

    rng = np.random.default_rng(0)
    items = [{"query": rng.integers(0, 255, (32, 64 if m == "panorama" else 32, 3), dtype=np.uint8),
              "satellite": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), "modality": m}
             for m in ["uav", "panorama", "streetmap", "panorama", "ground", "uav"]]
    grads = {}
    for chunk in (None, 2):
        config = from_dict(TrainCoreConfig, {
            "model": {"backbone": "convnext_atto", "embedding_dim": 16, "image_size": 32, "panorama_size": [32, 64]},
            "optim": {"grad_clip": 0.0}, "train": {"feature_cache_chunk": chunk}})
        torch.manual_seed(0)
        encoder = GleamEncoder(config.model)
        optimizer = torch.optim.SGD(encoder.parameters(), lr=0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        train_step(encoder, encoder.logit_scale, items, optimizer, scheduler, config, torch.device("cpu"),
                   (0.5,) * 3, (0.5,) * 3, np.random.default_rng(1))
        grads[chunk] = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}
    assert grads[None].keys() == grads[2].keys() and len(grads[None]) > 10
    for name, grad in grads[None].items():
        np.testing.assert_allclose(grads[2][name].numpy(), grad.numpy(), rtol=1e-5, atol=1e-5, err_msg=name)
