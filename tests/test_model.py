"""The encoder: timm backbone by name, local weight files by path, clear errors, per-view sizes."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from gleam.core.model import GleamEncoder, ModelConfig


def test_local_weights_are_loaded_by_path(tmp_path):
    torch.manual_seed(123)
    source = timm.create_model("convnext_atto", num_classes=0)
    path = tmp_path / "atto.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    encoder = GleamEncoder(ModelConfig(backbone="convnext_atto", pretrained_path=str(path)))
    for name, value in source.state_dict().items():
        torch.testing.assert_close(encoder.backbone.state_dict()[name], value, msg=name)
    fresh = GleamEncoder(ModelConfig(backbone="convnext_atto"))
    assert not torch.equal(fresh.backbone.stem[0].weight, source.stem[0].weight)


def test_missing_weight_file_and_unknown_backbone_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="no hub downloads"):
        GleamEncoder(ModelConfig(pretrained_path=str(tmp_path / "none.safetensors")))
    with pytest.raises(ValueError, match="timm has no model 'resnet9000'"):
        GleamEncoder(ModelConfig(backbone="resnet9000"))


def test_embeddings_are_unit_length_for_square_and_wide_views():
    config = ModelConfig(backbone="convnext_atto", embedding_dim=24, image_size=64, panorama_size=[64, 128])
    encoder = GleamEncoder(config).eval()
    with torch.no_grad():
        square = encoder(torch.randn(2, 3, *config.input_size("uav")))
        wide = encoder(torch.randn(2, 3, *config.input_size("panorama")))
    assert square.shape == wide.shape == (2, 24)
    torch.testing.assert_close(wide.norm(dim=-1), torch.ones(2))
    assert config.input_size("panorama") == (64, 128) and config.input_size("satellite") == (64, 64)
