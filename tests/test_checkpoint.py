"""Checkpoints: safetensors + JSON only, and a restored trainer continues bit for bit."""

from __future__ import annotations

import os

import torch

from gleam.core.checkpoint import restore_checkpoint, save_checkpoint
from gleam.core.model import GleamEncoder, ModelConfig
from gleam.core.phases import cosine_with_warmup

CONFIG = ModelConfig(backbone="resnet10t", embedding_dim=16, image_size=32)


def make():
    torch.manual_seed(0)
    model = GleamEncoder(CONFIG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = cosine_with_warmup(optimizer, total_steps=10, warmup_steps=2, min_lr_ratio=0.1)
    return model, optimizer, scheduler


def step(model, optimizer, scheduler, seed):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(4, 3, 32, 32, generator=generator)
    loss = (model(images) ** 2).sum() * model.logit_scale
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()


def test_resume_matches_uninterrupted_training(tmp_path):
    model, optimizer, scheduler = make()
    for seed in range(3):
        step(model, optimizer, scheduler, seed)
    save_checkpoint(str(tmp_path), model, optimizer, scheduler, {"phase": 1, "epoch": 2, "history": []})
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors", "optimizer.safetensors",
                                            "trainer_state.json"]
    for seed in range(3, 6):
        step(model, optimizer, scheduler, seed)

    model.eval()  # BatchNorm running stats are part of the state and must round-trip too
    restored, optimizer2, scheduler2 = make()
    state = restore_checkpoint(str(tmp_path), restored, optimizer2, scheduler2)
    assert state["phase"] == 1 and state["epoch"] == 2
    for seed in range(3, 6):
        step(restored, optimizer2, scheduler2, seed)
    restored.eval()
    for (name, a), b in zip(model.state_dict().items(), restored.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert scheduler.get_last_lr() == scheduler2.get_last_lr()


def test_encoder_round_trip(tmp_path):
    model, _, _ = make()
    model.save_pretrained(str(tmp_path / "enc"))
    loaded = GleamEncoder.from_pretrained(str(tmp_path / "enc"))
    images = torch.randn(2, 3, 32, 32)
    model.eval(); loaded.eval()
    torch.testing.assert_close(model(images), loaded(images))
    assert torch.allclose(model(images).norm(dim=-1), torch.ones(2))
