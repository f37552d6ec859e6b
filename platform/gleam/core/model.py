"""The GLEAM-C encoder: one shared timm backbone for every view, an optional projection head,
L2-normalised embeddings and the learnable logit scale of the contrastive loss.

Backbones come from ``timm.create_model`` by name, never from a hub: ``pretrained`` names
ImageNet weights that ship inside a pinned registry package (``gleam.core.pretrained``:
``efficientnet_lite0`` / ``_lite1`` / ``_lite2``), ``pretrained_path`` loads a local weight file
(safetensors or a torch state dict) through timm's own pretrained-config mechanism.  Checkpoints are a folder with ``model.safetensors`` and ``config.json``; nothing is
unpickled.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from gleam.core.loss import DEFAULT_LOGIT_SCALE, DEFAULT_MAX_LOGIT_SCALE

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


@dataclass
class ModelConfig:
    """Which backbone, how embeddings are produced, and the input sizes per view."""

    backbone: str = "convnext_atto"  # any timm model name (LayerNorm: safe for mixed-size batches)
    pretrained: str | None = None  # named weights from an installed package (gleam.core.pretrained)
    pretrained_path: str | None = None  # local weight file; None: random init (no downloads)
    # BatchNorm backbones (EfficientNet): "frozen" keeps the pretrained running statistics (eval
    # mode, affine parameters still learn); "batch" normalises with each forward's own statistics
    # (one forward per image shape in a mixed batch). LayerNorm backbones ignore it.
    batchnorm: Literal["frozen", "batch"] = "frozen"
    # Freeze the stem and the first k stages (timm's coarse parameter groups, in forward order:
    # for EfficientNet-Lite the stem then blocks.0 .. blocks.6): no gradients, BatchNorm in eval
    # mode. 0 trains everything. Low-level pretrained features transfer as they are and the
    # backward pass skips the high-resolution layers (measured in benchmarks/bench_heldout.py).
    frozen_stages: int = 0
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {dynamic_img_size: true} for ViTs
    embedding_dim: int | None = 256  # projection head output; None: backbone features as they are
    image_size: int = 128  # square views: satellite, uav, streetmap, ground
    panorama_size: list[int] = field(default_factory=lambda: [128, 256])  # [height, width]
    logit_scale_init: float = DEFAULT_LOGIT_SCALE
    max_logit_scale: float = DEFAULT_MAX_LOGIT_SCALE
    learn_logit_scale: bool = True

    def input_size(self, modality: str) -> tuple[int, int]:
        """(height, width) the encoder sees for a view of ``modality``."""
        if modality == "panorama":
            return int(self.panorama_size[0]), int(self.panorama_size[1])
        return self.image_size, self.image_size


def create_backbone(config: ModelConfig) -> nn.Module:
    """A timm backbone with pooled features (``num_classes=0``), weights from a local file if given."""
    import timm

    kwargs = dict(config.backbone_kwargs)
    if config.pretrained and config.pretrained_path:
        raise ValueError("model.pretrained and model.pretrained_path are exclusive: name packaged "
                         "weights or give a file, not both")
    if config.pretrained:
        from gleam.core.pretrained import get_weights, load_pretrained_state

        row = get_weights(config.pretrained)
        if config.backbone != row.architecture:
            raise ValueError(f"model.pretrained: {config.pretrained} weights fit the timm backbone "
                             f"'{row.architecture}', but model.backbone is '{config.backbone}'; set "
                             f"model.backbone: {row.architecture}")
        backbone = timm.create_model(config.backbone, pretrained=False, num_classes=0, **kwargs)
        backbone.load_state_dict(load_pretrained_state(config.pretrained, num_classes=0), strict=True)
        return backbone
    if config.pretrained_path:
        if not os.path.isfile(config.pretrained_path):
            raise FileNotFoundError(
                f"model.pretrained_path: {config.pretrained_path} does not exist; give a local "
                ".safetensors/.pth file of the '{config.backbone}' backbone (no hub downloads)")
        kwargs["pretrained_cfg_overlay"] = {"file": config.pretrained_path}
    try:
        return timm.create_model(config.backbone, pretrained=bool(config.pretrained_path),
                                 num_classes=0, **kwargs)
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise ValueError(f"model.backbone: timm has no model '{config.backbone}' "
                             "(see timm.list_models())") from None
        raise


class GleamEncoder(nn.Module):
    """Shared encoder for query and satellite views; ``forward`` returns unit-length embeddings."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.backbone = create_backbone(config)
        # pooled output width: timm's head_hidden_size where a pre-logits layer exists (MobileNetV3)
        features = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        self.head = nn.Linear(features, config.embedding_dim) if config.embedding_dim else nn.Identity()
        self.embedding_dim = config.embedding_dim or features
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)),
                                        requires_grad=config.learn_logit_scale)
        self.frozen_modules = self._freeze_stages(config.frozen_stages)
        self.train()  # applies the batchnorm policy from the start

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.backbone(images)), dim=-1)

    def _freeze_stages(self, stages: int) -> list[nn.Module]:
        """Stop gradients to the stem and the first ``stages`` stages; returns their modules.

        Stages are timm's coarse parameter groups (``model.group_matcher(coarse=True)``), so the
        same setting works for any timm backbone that defines them. Raises ``ValueError`` when
        ``stages`` is negative or not below the number of groups (something must still train).
        """
        if stages == 0:
            return []
        from timm.models import group_parameters

        if not hasattr(self.backbone, "group_matcher"):
            raise ValueError(f"model.frozen_stages: timm backbone '{self.config.backbone}' does not "
                             "define its stages (no group_matcher); set model.frozen_stages: 0")
        groups = list(group_parameters(self.backbone, self.backbone.group_matcher(coarse=True)).values())
        if not 0 <= stages < len(groups):
            raise ValueError(f"model.frozen_stages: {stages} is out of range for '{self.config.backbone}': "
                             f"0 (train everything) to {len(groups) - 1} (stem and {len(groups) - 2} stages; "
                             "the last stage always trains)")
        frozen = {name for group in groups[:stages + 1] for name in group}  # the stem is group 0
        for name, parameter in self.backbone.named_parameters():
            if name in frozen:
                parameter.requires_grad_(False)
        # every module whose parameters are all frozen (blocks with their drop-path/dropout too)
        return [module for module in self.backbone.modules()
                if any(True for _ in module.parameters()) and not any(p.requires_grad for p in module.parameters())]

    def train(self, mode: bool = True) -> "GleamEncoder":
        """``nn.Module.train``, keeping BatchNorm layers in eval mode when ``batchnorm: frozen``
        and every layer of the frozen stages (``frozen_stages``) in eval mode always."""
        super().train(mode)
        if mode and self.config.batchnorm == "frozen":
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        if mode:
            for module in self.frozen_modules:
                module.eval()
        return self

    def data_config(self) -> dict[str, Any]:
        """timm's normalisation settings for this backbone (mean, std, interpolation)."""
        import timm.data

        return timm.data.resolve_data_config({}, model=self.backbone)

    def save_pretrained(self, directory: str) -> None:
        """``model.safetensors`` + ``config.json`` in ``directory`` (local or s3://), atomically."""
        from safetensors.torch import save

        from gleam import storage

        storage.makedirs(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        storage.write_bytes(storage.join(directory, WEIGHTS_NAME), save(state))
        storage.write_json(storage.join(directory, CONFIG_NAME), asdict(self.config))

    @classmethod
    def from_pretrained(cls, directory: str) -> "GleamEncoder":
        from safetensors.torch import load

        from gleam import storage
        from gleam.config import from_dict

        directory = resolve_checkpoint(directory)  # a bare name loads models/<name>
        config_url = storage.join(directory, CONFIG_NAME)
        if not storage.exists(config_url):
            raise FileNotFoundError(f"{directory}: not a GLEAM-C checkpoint (no {CONFIG_NAME})")
        config = from_dict(ModelConfig, storage.read_json(config_url), config_url)
        config.pretrained_path = None  # the checkpoint carries all weights
        config.pretrained = None
        model = cls(config)
        model.load_state_dict(load(storage.read_bytes(storage.join(directory, WEIGHTS_NAME))))
        return model


# Named checkpoints kept in the repository: ``model.checkpoint: gleam-c-lite0-synth`` loads
# ``<repo>/models/gleam-c-lite0-synth`` (config.json + model.safetensors + MODEL_CARD.md).
MODELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))), "models")


def known_checkpoints(models_dir: str = MODELS_DIR) -> list[str]:
    """Names of the GLEAM-C checkpoints under ``models/`` (folders holding a config.json)."""
    if not os.path.isdir(models_dir):
        return []
    return sorted(name for name in os.listdir(models_dir)
                  if os.path.isfile(os.path.join(models_dir, name, CONFIG_NAME)))


def resolve_checkpoint(name_or_path: str, models_dir: str = MODELS_DIR) -> str:
    """A GLEAM-C checkpoint folder from a path, a URL or a bare name of ``models/<name>``.

    URLs (``s3://...``) and paths that exist come back unchanged.  A bare name (no folder part,
    or a path a config loader made absolute against the working directory, which holds no such
    folder) becomes ``models/<name>`` when that folder exists; otherwise ``FileNotFoundError``
    names the known checkpoints.
    """
    if "://" in name_or_path or os.path.exists(name_or_path):
        return name_or_path
    name = os.path.basename(os.path.normpath(name_or_path))
    bare = os.path.dirname(name_or_path) == "" or os.path.dirname(os.path.abspath(name_or_path)) == os.getcwd()
    if bare and os.path.isfile(os.path.join(models_dir, name, CONFIG_NAME)):
        return os.path.join(models_dir, name)
    known = known_checkpoints(models_dir)
    raise FileNotFoundError(f"{name_or_path}: no GLEAM-C checkpoint there; a named one is a folder of {models_dir} "
                            f"(known: {', '.join(known) if known else 'none'}), otherwise give a folder with "
                            f"{CONFIG_NAME} + {WEIGHTS_NAME}")


def describe(model: GleamEncoder) -> dict[str, Any]:
    """Backbone name, parameter count and embedding size, for logs and run reports."""
    return {"backbone": model.config.backbone, "pretrained": model.config.pretrained,
            "embedding_dim": model.embedding_dim, "parameters": sum(p.numel() for p in model.parameters())}
