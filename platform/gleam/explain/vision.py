"""GLEAM-X image tokens from a GLEAM-C checkpoint: place-aware vision, a match head, fact heads.

The VLM's own vision tower is replaced by ``GleamVisionTower``: the GLEAM-C backbone (the encoder
that retrieval trained to tell places apart) turns each image into its feature map; the
map is average-pooled to the token grid the language model expects (Qwen2.5-VL: one token per
``spatial_merge_size``^2 patches) and projected to the text width (the ``merger``, the projector
peft trains as ``modules_to_save``).

Two auxiliary heads sit on the pooled features, trained beside the answer loss
(``auxiliary_loss``) and fed back into the image tokens (conditioning):

- **view head** (per image): which kind of view it is (``VIEW_KINDS``: satellite, UAV, street
  map, panorama, ground photo), a linear layer on the pooled features trained by cross-entropy
  from the examples' modality.  How similar two embeddings of one place are depends on the
  query's kind (a street map sits far closer to its tile than a ground photo), so the match
  head is told what it compares.
- **match head** (per pair): an MLP over ``[q * s, |q - s|, cos(q, s), P(view kind of q),
  layout correlation]`` -> logit of P(same place).  ``q, s`` are the two GLEAM-C embeddings; the
  layout correlation compares the two feature maps place by place: each map is average-pooled to
  ``LAYOUT_GRID`` x ``LAYOUT_GRID`` cells, the image's mean cell subtracted (what is where, not
  what is there: the embeddings carry that), every cell's channel vector unit-normalised, and the
  cosine of every query cell with every satellite cell (``LAYOUT_GRID``^4 values, near 0 for
  unrelated images) plus the cosine of the pooled features goes in.  A street map or UAV image is
  near-aligned with its tile, so the diagonal says whether the same things lie in the same
  places, which one pooled vector per image cannot (offline, on GLEAM-C features of held-out
  regions, 1/2 positives, 1/4 hardest wrong tiles, 1/4 random: pair accuracy 79.5 -> 83.8 %,
  street maps 92 -> 99 %, UAV 76 -> 81 %, ground photos 71 %, unchanged).  Its probability is added to the satellite image's
  first token through a learned vector, so the verdict the LM writes can follow the images.
- **fact heads** (per image): logits of the checkable scene facts ``FACT_VOCAB`` (junction types,
  nearest junction and tallest building directions, landmarks, building and green buckets:
  the claims ``gleam.explain.prompts.check_claim`` verifies).  Their probabilities go into the
  image's first token, so an explanation can state what the image shows.

Image order: the tower sees a batch's images in prompt order; every GLEAM-X prompt holds two
images, (query, satellite), so images ``2i`` and ``2i + 1`` are pair ``i``.

Pixels: the Qwen2-VL processor's flattened patches are folded back into images (its
``patchify`` layout: ``[grid_h/m, grid_w/m, m, m, C, T, P, P]``), un-normalised with the
processor's mean/std and normalised with the GLEAM-C backbone's own (timm data config).

Saved as ``gleam_vision.json`` (settings, GLEAM-C model config, shapes) and
``gleam_vision.safetensors`` (every tower weight) beside a model folder; ``load_vlm`` attaches
the tower when it finds them, so serving and evaluation need nothing else.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gleam.config import ModelPath

VISION_CONFIG = "gleam_vision.json"
VISION_WEIGHTS = "gleam_vision.safetensors"
TRAIN_BACKBONE = ("frozen", "last_stage", "full")
VIEW_KINDS = ("satellite", "uav", "streetmap", "panorama", "ground")
LAYOUT_GRID = 3  # cells per side of the feature maps the match head compares place by place
MATCH_INPUTS = "embeddings+view+centred-layout3"  # saved with a tower: folders with other match heads are refused
COMPASS_CENTER = ("north", "north-east", "east", "south-east", "south", "south-west", "west", "north-west",
                  "center")


@dataclass
class VisionSettings:
    """Where GLEAM-X's image tokens come from (``model.vision`` of the GLEAM-X config)."""

    source: str = "native"  # "native": the VLM's own vision tower; "gleam_c": a GLEAM-C backbone
    # GLEAM-C checkpoint folder, a name under models/, or "auto" (models/gleam-c-lite0-synth, else
    # the demo's runs/gleam-c-local/final) for source gleam_c
    checkpoint: ModelPath = ""
    train_backbone: str = "frozen"  # frozen | last_stage (last block + conv head) | full
    match_loss: float = 1.0  # weight of the match head's BCE beside the answer loss
    fact_loss: float = 0.5  # weight of the fact heads' BCE
    view_loss: float = 0.2  # weight of the view head's cross-entropy (which kind of image)
    condition: bool = True  # feed the heads' probabilities into the first token of each image
    # in training, the share of images whose first token is fed the true label / facts instead of
    # the heads' outputs (teacher conditioning: the LM learns to follow the token; at inference it
    # is always the heads')
    teacher_rate: float = 0.5
    # grounded decoding: the greedy answer and candidates - 1 sampled ones are written, and the one
    # whose verdict agrees with the match head and whose claims the fact heads find most likely is
    # kept (1: greedy only)
    candidates: int = 8
    # claims the heads do not back: after selection, a sentence stating a claim whose fact-head
    # P(true) is below this is dropped (the verdict line always stays); 0 keeps every sentence.
    # benchmarks/bench_explain.py chooses it on the val split (results/explain_grounded_1024*.json)
    claim_threshold: float = 0.0
    hidden: int = 256  # width of the heads' hidden layers

    def enabled(self) -> bool:
        return self.source == "gleam_c"


def check_vision_settings(settings: VisionSettings, key: str = "model.vision") -> None:
    """Refuse unusable settings before any model or Ray work (key, value, fix)."""
    if settings.source not in ("native", "gleam_c"):
        raise ValueError(f"{key}.source: {settings.source!r} unknown; use 'native' (the VLM's own vision "
                         "tower) or 'gleam_c' (a GLEAM-C checkpoint's backbone)")
    if settings.train_backbone not in TRAIN_BACKBONE:
        raise ValueError(f"{key}.train_backbone: {settings.train_backbone!r} unknown; use one of {list(TRAIN_BACKBONE)}")
    if settings.enabled() and not settings.checkpoint:
        raise ValueError(f"{key}.checkpoint: empty, but {key}.source is 'gleam_c'; give a GLEAM-C checkpoint "
                         "folder (e.g. runs/gleam-c-local/final or models/gleam-c-lite0-synth)")
    for name in ("match_loss", "fact_loss", "view_loss"):
        if getattr(settings, name) < 0:
            raise ValueError(f"{key}.{name}: {getattr(settings, name)} is negative; use 0 to switch the head's loss off")
    if not 0.0 <= settings.claim_threshold < 1.0:
        raise ValueError(f"{key}.claim_threshold: {settings.claim_threshold} is outside [0, 1); it is the fact heads' "
                         "P(true) a stated claim needs to stay in the answer (0 keeps every sentence)")
    if settings.candidates < 1:
        raise ValueError(f"{key}.candidates: {settings.candidates}; use 1 (greedy only) or more")


# ------------------------------------------------------------------------------ facts


def fact_vocab() -> list[tuple[str, str | None, str | None]]:
    """The checkable facts the fact heads predict: ``(claim kind, value, direction)`` triples."""
    from gleam.explain.prompts import BUILDING_BUCKETS, FEATURE_VALUES, GREEN_BUCKETS

    vocab: list[tuple[str, str | None, str | None]] = []
    vocab += [("junction", value, None) for value in ("crossroad", "T-junction", "roundabout")]
    vocab += [("junction", "any", direction) for direction in COMPASS_CENTER]
    vocab += [("feature", value, None) for value in FEATURE_VALUES]
    vocab += [("feature", "water", direction) for direction in COMPASS_CENTER]
    vocab += [("feature", "park", direction) for direction in COMPASS_CENTER]
    vocab += [("buildings", bucket, None) for bucket in BUILDING_BUCKETS]
    vocab += [("tallest", None, direction) for direction in COMPASS_CENTER]
    vocab += [("green", bucket, None) for bucket in GREEN_BUCKETS]
    return vocab


FACT_VOCAB = fact_vocab()


def fact_targets(facts: dict | None) -> list[float] | None:
    """0/1 per ``FACT_VOCAB`` entry, by the same checker that scores explanations; None without facts."""
    if not facts:
        return None
    from gleam.explain.prompts import Claim, check_claim

    return [float(check_claim(Claim(kind, value, direction), facts)) for kind, value, direction in FACT_VOCAB]


# ------------------------------------------------------------------------------ the tower


def _images_from_patches(pixel_values: torch.Tensor, grid_thw: torch.Tensor, patch: int, merge: int,
                         temporal: int) -> list[torch.Tensor]:
    """Invert the Qwen2-VL processor's patch flattening: one ``(C, H, W)`` image per grid row."""
    images, start = [], 0
    for t, gh, gw in grid_thw.tolist():
        count = t * gh * gw
        rows = pixel_values[start:start + count]
        start += count
        channels = rows.shape[1] // (temporal * patch * patch)
        x = rows.reshape(t, gh // merge, gw // merge, merge, merge, channels, temporal, patch, patch)
        x = x[0, :, :, :, :, :, 0]  # the first frame: an image is one frame repeated
        x = x.permute(4, 0, 2, 5, 1, 3, 6).reshape(channels, gh * patch, gw * patch)
        images.append(x)
    return images


class TowerMerger(nn.Module):
    """The trainable part of the tower: token projector, summary token, view, match and fact heads.

    ``forward(embeddings (images, dim), features (images, channels), cells [(tokens_i, channels)])``
    -> ``(tokens (sum tokens_i, hidden), match_logits (pairs,) or None, fact_logits (images, facts),
    view_logits (images, len(VIEW_KINDS)))``.
    One module with one forward, so peft's ``modules_to_save`` wrapper can stand in for it."""

    def __init__(self, channels: int, dim: int, text_hidden: int, hidden: int, condition: bool):
        super().__init__()
        facts = len(FACT_VOCAB)
        self.condition = condition
        self.tokens = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, text_hidden), nn.GELU(),
                                    nn.Linear(text_hidden, text_hidden))
        self.summary = nn.Sequential(nn.Linear(dim + facts, text_hidden), nn.GELU(), nn.Linear(text_hidden, text_hidden))
        # dropout before the heads' last layer: a few hundred training places are easy to memorise
        self.view_head = nn.Linear(channels, len(VIEW_KINDS))
        match_inputs = 2 * dim + 1 + len(VIEW_KINDS) + LAYOUT_GRID ** 4 + 1
        self.match_head = nn.Sequential(nn.Linear(match_inputs, hidden), nn.GELU(),
                                        nn.Dropout(0.2), nn.Linear(hidden, 1))
        self.fact_head = nn.Sequential(nn.Linear(dim + channels, hidden), nn.GELU(), nn.Dropout(0.2),
                                       nn.Linear(hidden, facts))
        self.match_token = nn.Linear(2, text_hidden)

    def forward(self, embeddings: torch.Tensor, features: torch.Tensor, cells: list[torch.Tensor],
                layouts: torch.Tensor, teacher: dict[str, torch.Tensor] | None = None):
        """``layouts`` (images, channels, LAYOUT_GRID^2): each feature map pooled to the layout grid,
        unit-normalised per cell.  ``teacher`` (training only): ``use`` (images,) bool, ``match`` (pairs,), ``facts``
        (images, facts), ``mask`` (images,): where ``use`` (and the truth is known) the first token
        carries the truth instead of the heads' outputs."""
        fact_logits = self.fact_head(torch.cat([embeddings, features], dim=-1))
        view_logits = self.view_head(features)
        pairs = embeddings.shape[0] // 2
        match_logits = None
        if pairs:
            query, satellite = embeddings[0:2 * pairs:2], embeddings[1:2 * pairs:2]
            cosine = (query * satellite).sum(-1, keepdim=True)
            view = torch.softmax(view_logits[0:2 * pairs:2], dim=-1)
            layout = torch.einsum("pcq,pcs->pqs", layouts[0:2 * pairs:2], layouts[1:2 * pairs:2]).flatten(1)
            pooled = F.normalize(features, dim=-1)
            pooled_cosine = (pooled[0:2 * pairs:2] * pooled[1:2 * pairs:2]).sum(-1, keepdim=True)
            match_logits = self.match_head(torch.cat([query * satellite, (query - satellite).abs(), cosine, view,
                                                      layout, pooled_cosine], -1))[:, 0]
        fact_probabilities = torch.sigmoid(fact_logits)
        match_probabilities = torch.sigmoid(match_logits) if match_logits is not None else None
        if teacher is not None:
            use = teacher["use"].to(fact_probabilities.device)
            known = use & teacher["mask"].to(use.device).bool()
            fact_probabilities = torch.where(known[:, None], teacher["facts"].to(fact_probabilities), fact_probabilities)
            if match_probabilities is not None and teacher.get("match") is not None:
                pair_use = use[1:2 * pairs:2]
                match_probabilities = torch.where(pair_use, teacher["match"].to(match_probabilities), match_probabilities)
        tokens = []
        for i, cell in enumerate(cells):
            image_tokens = self.tokens(cell)
            if self.condition:
                summary = self.summary(torch.cat([embeddings[i], fact_probabilities[i]]))
                if i % 2 == 1 and match_probabilities is not None and i // 2 < pairs:
                    probability = match_probabilities[i // 2]
                    summary = summary + self.match_token(torch.stack([probability, 1 - probability]))
                image_tokens = torch.cat([image_tokens[:1] + summary, image_tokens[1:]], dim=0)
            tokens.append(image_tokens)
        return torch.cat(tokens, dim=0), match_logits, fact_logits, view_logits


class GleamVisionTower(nn.Module):
    """A GLEAM-C backbone as the VLM's vision tower (see the module docstring).

    ``forward(pixel_values, grid_thw)`` -> an object with ``pooler_output`` (and
    ``last_hidden_state``): ``(sum over images of gh*gw / merge^2, text_hidden)`` tokens, what
    Qwen2.5-VL's ``get_image_features`` expects of its ``visual``.  After each forward,
    ``last_match_logits`` ``(pairs,)`` and ``last_fact_logits`` ``(images, len(FACT_VOCAB))`` hold
    the heads' outputs for ``auxiliary_loss``.
    """

    def __init__(self, encoder_config: dict[str, Any], settings: VisionSettings, text_hidden: int,
                 spatial_merge_size: int, patch_size: int, temporal_patch_size: int,
                 processor_mean: Sequence[float], processor_std: Sequence[float]):
        super().__init__()
        from gleam.config import from_dict
        from gleam.core.model import GleamEncoder, ModelConfig

        config = from_dict(ModelConfig, dict(encoder_config), "gleam_vision encoder config")
        config.pretrained, config.pretrained_path = None, None  # weights come from the checkpoint / saved tower
        self.encoder = GleamEncoder(config)
        self.settings = settings
        self.encoder_config = asdict(config)
        self.spatial_merge_size = spatial_merge_size
        self.patch_size, self.temporal_patch_size = patch_size, temporal_patch_size
        self.text_hidden = text_hidden
        data = self.encoder.data_config()
        self.register_buffer("processor_mean", torch.tensor(list(processor_mean)).view(3, 1, 1), persistent=False)
        self.register_buffer("processor_std", torch.tensor(list(processor_std)).view(3, 1, 1), persistent=False)
        self.register_buffer("encoder_mean", torch.tensor(list(data["mean"])).view(3, 1, 1), persistent=False)
        self.register_buffer("encoder_std", torch.tensor(list(data["std"])).view(3, 1, 1), persistent=False)
        # everything that trains beside the backbone lives under `merger` (peft modules_to_save)
        self.merger = TowerMerger(self.encoder.backbone.num_features, self.encoder.embedding_dim, text_hidden,
                                  settings.hidden, settings.condition)
        self.teacher: dict[str, torch.Tensor] | None = None  # set per training batch (set_teacher)
        self.last_match_logits: torch.Tensor | None = None
        self.last_fact_logits: torch.Tensor | None = None
        self.last_view_logits: torch.Tensor | None = None
        # per answer of the last generate(): the selected text and the heads' outputs it was judged by
        self.last_grounding: list[dict[str, Any]] = []
        self.set_backbone_training()

    # -- what trains ---------------------------------------------------------------------------

    def set_backbone_training(self) -> None:
        """``train_backbone``: frozen (no gradients), last_stage (the last block and conv head), full."""
        mode = self.settings.train_backbone
        backbone = self.encoder.backbone
        for parameter in backbone.parameters():
            parameter.requires_grad_(mode == "full")
        if mode == "last_stage":
            blocks = getattr(backbone, "blocks", None)
            last = [blocks[-1]] if blocks is not None else []  # EfficientNet: the last stage
            for module in last + [getattr(backbone, name) for name in ("conv_head", "bn2") if hasattr(backbone, name)]:
                module.requires_grad_(True)
        self.encoder.head.requires_grad_(mode != "frozen")
        self.encoder.logit_scale.requires_grad_(False)

    def train(self, mode: bool = True) -> "GleamVisionTower":
        super().train(mode)
        if self.settings.train_backbone == "frozen":
            self.encoder.eval()  # BatchNorm statistics and dropout as GLEAM-C left them
        else:
            self.encoder.train(mode)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return next(self.encoder.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    # -- forward -------------------------------------------------------------------------------

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, **kwargs: Any):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        merge = self.spatial_merge_size
        images = _images_from_patches(pixel_values.float(), grid_thw, self.patch_size, merge,
                                      self.temporal_patch_size)
        grids = [(gh // merge, gw // merge) for _, gh, gw in grid_thw.tolist()]
        shapes = {tuple(image.shape) for image in images}
        backbone_grad = self.settings.train_backbone != "frozen" and torch.is_grad_enabled()
        maps, pooled, layouts = [], [], []
        for shape in shapes:  # one forward per image shape
            index = [i for i, image in enumerate(images) if tuple(image.shape) == shape]
            batch = torch.stack([images[i] for i in index])
            batch = (batch * self.processor_std + self.processor_mean - self.encoder_mean) / self.encoder_std
            with torch.set_grad_enabled(backbone_grad):
                feature_map = self.encoder.backbone.forward_features(batch)
                features = self.encoder.backbone.forward_head(feature_map, pre_logits=True)
                embedding = F.normalize(self.encoder.head(features), dim=-1)
            layout = F.adaptive_avg_pool2d(feature_map, LAYOUT_GRID).flatten(2)  # (images, channels, cells)
            layout = F.normalize(layout - layout.mean(-1, keepdim=True), dim=1)  # where each cell differs from the image
            for position, i in enumerate(index):
                maps.append((i, feature_map[position]))
                layouts.append((i, layout[position]))
                pooled.append((i, embedding[position], features[position]))
        maps.sort(key=lambda item: item[0])
        pooled.sort(key=lambda item: item[0])
        embeddings = torch.stack([e for _, e, _ in pooled])  # (images, dim)
        features = torch.stack([f for _, _, f in pooled])  # (images, channels)
        cells = [F.adaptive_avg_pool2d(m.unsqueeze(0), grids[i])[0].flatten(1).transpose(0, 1) for i, m in maps]
        layout = torch.stack([cell for _, cell in sorted(layouts, key=lambda item: item[0])])
        teacher = self.teacher if self.training else None
        tokens, match_logits, fact_logits, view_logits = self.merger(embeddings, features, cells, layout, teacher)
        out = tokens.to(self.dtype)
        self.last_match_logits, self.last_fact_logits = match_logits, fact_logits
        self.last_view_logits = view_logits
        return BaseModelOutputWithPooling(last_hidden_state=out, pooler_output=out)

    def set_teacher(self, match: torch.Tensor | None, facts: torch.Tensor, mask: torch.Tensor,
                    views: torch.Tensor | None = None, generator: torch.Generator | None = None) -> None:
        """Teacher conditioning for the next training forward: each pair, with probability
        ``settings.teacher_rate``, has the truth in its first tokens (``auxiliary_targets``' tensors)."""
        rate = self.settings.teacher_rate
        if not rate or not self.settings.condition:
            self.teacher = None
            return
        pairs = facts.shape[0] // 2
        coin = torch.rand(pairs, generator=generator) < rate
        self.teacher = {"use": coin.repeat_interleave(2), "match": match, "facts": facts, "mask": mask}

    # -- saving --------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {"settings": asdict(self.settings), "encoder_config": self.encoder_config,
                "text_hidden": self.text_hidden, "spatial_merge_size": self.spatial_merge_size,
                "patch_size": self.patch_size, "temporal_patch_size": self.temporal_patch_size,
                "processor_mean": self.processor_mean.flatten().tolist(),
                "processor_std": self.processor_std.flatten().tolist(),
                "fact_vocab": [list(entry) for entry in FACT_VOCAB], "view_kinds": list(VIEW_KINDS),
                "match_inputs": MATCH_INPUTS}

    def save(self, folder: str) -> None:
        """``gleam_vision.json`` + ``gleam_vision.safetensors`` into a local folder.  Under peft the
        merger's trained copy (``modules_to_save``) is saved as the merger."""
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        state = {}
        for key, value in self.state_dict().items():
            if ".original_module." in key:
                continue
            key = key.replace(".modules_to_save.default.", ".")
            state[key] = value.detach().cpu().contiguous()
        save_file(state, os.path.join(folder, VISION_WEIGHTS))
        with open(os.path.join(folder, VISION_CONFIG), "w", encoding="utf-8") as handle:
            json.dump(self.describe(), handle, indent=1)


# ------------------------------------------------------------------------------ attaching


def _visual_owner(model: nn.Module) -> nn.Module:
    """The module whose ``visual`` attribute is the vision tower (Qwen2-VL / Qwen2.5-VL)."""
    for module in model.modules():
        if hasattr(module, "visual") and isinstance(getattr(module, "visual"), nn.Module):
            return module
    raise ValueError(f"{type(model).__name__}: no `visual` vision tower to replace; model.vision.source "
                     "'gleam_c' supports Qwen2-VL / Qwen2.5-VL models (set model.vision.source: native)")


AUTO = "auto"
REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DEFAULT_CHECKPOINTS = ("models/gleam-c-lite0-synth", "runs/gleam-c-local/final")


def auto_checkpoint() -> str:
    """``checkpoint: auto``: the repository's kept GLEAM-C model (``models/gleam-c-lite0-synth``)
    when present, else the demo's (``runs/gleam-c-local/final`` of ``./run.sh demo``)."""
    from gleam.core.model import CONFIG_NAME

    for candidate in DEFAULT_CHECKPOINTS:
        for base in (os.getcwd(), REPOSITORY):
            path = os.path.join(base, candidate)
            if os.path.isfile(os.path.join(path, CONFIG_NAME)):
                return path
    raise FileNotFoundError(f"model.vision.checkpoint: auto found no GLEAM-C checkpoint (looked for "
                            f"{' and '.join(DEFAULT_CHECKPOINTS)}); run ./run.sh demo, give a checkpoint "
                            "folder, or set model.vision.source: native")


def resolve_gleam_c(name_or_path: str) -> str:
    """A GLEAM-C checkpoint folder for ``model.vision.checkpoint``: a folder holding
    ``config.json``, or a name under the repository's ``models/`` (``gleam.core.model.resolve_checkpoint``)."""
    from gleam.core.model import CONFIG_NAME, resolve_checkpoint

    if name_or_path == AUTO:
        return auto_checkpoint()
    try:
        path = resolve_checkpoint(name_or_path)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"model.vision.checkpoint: {error}; train one with ./run.sh demo "
                                "(runs/gleam-c-local/final)") from None
    if "://" not in path and not os.path.isfile(os.path.join(path, CONFIG_NAME)):
        raise FileNotFoundError(f"model.vision.checkpoint: {path} is neither a GLEAM-C checkpoint folder "
                                f"({CONFIG_NAME} + model.safetensors) nor a name under models/")
    return path


def find_tower(model: nn.Module) -> GleamVisionTower | None:
    for module in model.modules():
        if isinstance(module, GleamVisionTower):
            return module
    return None


def _processor_stats(processor: Any) -> tuple[list[float], list[float]]:
    image_processor = getattr(processor, "image_processor", processor)
    return list(image_processor.image_mean), list(image_processor.image_std)


def attach_gleam_vision(model: nn.Module, processor: Any, settings: VisionSettings) -> GleamVisionTower:
    """Replace ``model``'s vision tower with a fresh ``GleamVisionTower`` whose backbone and head
    are the GLEAM-C checkpoint ``settings.checkpoint``'s (heads and projector newly initialised)."""
    from gleam.core.model import GleamEncoder

    check_vision_settings(settings)
    path = resolve_gleam_c(settings.checkpoint)
    encoder = GleamEncoder.from_pretrained(path)
    owner = _visual_owner(model)
    native = owner.visual
    vision_config = model.config.vision_config
    mean, std = _processor_stats(processor)
    tower = GleamVisionTower(asdict(encoder.config), settings, int(model.config.text_config.hidden_size),
                             int(vision_config.spatial_merge_size), int(vision_config.patch_size),
                             int(vision_config.temporal_patch_size), mean, std)
    tower.encoder.load_state_dict(encoder.state_dict())
    tower.to(device=next(native.parameters()).device)
    owner.visual = tower
    return tower


def load_gleam_vision(model: nn.Module, folder: str) -> GleamVisionTower | None:
    """Attach the tower saved in ``folder`` (``save``) to ``model``; None when the folder holds none."""
    config_path = os.path.join(folder, VISION_CONFIG)
    if not os.path.isfile(config_path):
        return None
    from safetensors.torch import load_file

    from gleam.config import from_dict

    with open(config_path, encoding="utf-8") as handle:
        saved = json.load(handle)
    vocab = [tuple(entry) for entry in saved.get("fact_vocab", [])]
    if vocab != [tuple(entry) for entry in FACT_VOCAB]:
        raise ValueError(f"{config_path}: its fact vocabulary ({len(vocab)} entries) differs from this version's "
                         f"({len(FACT_VOCAB)}); retrain GLEAM-X (jobs/train_explain.py) with this version")
    if saved.get("view_kinds") != list(VIEW_KINDS):
        raise ValueError(f"{config_path}: saved by a version without the view head (view kinds "
                         f"{saved.get('view_kinds')}, this version {list(VIEW_KINDS)}); retrain GLEAM-X "
                         "(jobs/train_explain.py) with this version")
    if saved.get("match_inputs") != MATCH_INPUTS:
        raise ValueError(f"{config_path}: its match head compares {saved.get('match_inputs') or 'embeddings+view'}, "
                         f"this version's compares {MATCH_INPUTS} (the feature maps' layouts too); retrain GLEAM-X "
                         "(jobs/train_explain.py) with this version")
    settings = from_dict(VisionSettings, saved["settings"], config_path)
    owner = _visual_owner(model)
    tower = GleamVisionTower(saved["encoder_config"], settings, saved["text_hidden"], saved["spatial_merge_size"],
                             saved["patch_size"], saved["temporal_patch_size"], saved["processor_mean"],
                             saved["processor_std"])
    tower.load_state_dict(load_file(os.path.join(folder, VISION_WEIGHTS)), strict=True)
    tower.to(device=next(owner.visual.parameters()).device)
    owner.visual = tower
    return tower


def without_tower_state(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """``model.state_dict()`` without the GLEAM tower's tensors (saved separately), or None when
    the model has no tower (save as usual)."""
    tower = find_tower(model)
    if tower is None:
        return None
    prefix = next(name for name, module in model.named_modules() if module is tower) + "."
    return {k: v for k, v in model.state_dict().items() if not k.startswith(prefix)}


# ------------------------------------------------------------------------------ the loss


def auxiliary_loss(model: nn.Module, match: torch.Tensor | None, facts: torch.Tensor | None,
                   fact_mask: torch.Tensor | None, views: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor | None, dict[str, float]]:
    """Weighted BCE of the match head (``match``: (pairs,) 0/1) and the fact heads (``facts``:
    (images, len(FACT_VOCAB)) 0/1, ``fact_mask``: (images,) 1 where the image has facts), and the
    view head's cross-entropy (``views``: (images,) index into ``VIEW_KINDS``, -100 where
    unknown), from the tower's last forward; ``(None, {})`` without a tower."""
    tower = find_tower(model)
    if tower is None or tower.last_match_logits is None:
        return None, {}
    settings = tower.settings
    parts: dict[str, float] = {}
    total = None
    if match is not None and settings.match_loss:
        logits = tower.last_match_logits
        loss = F.binary_cross_entropy_with_logits(logits, match.to(logits.device, logits.dtype))
        parts["match_loss"] = float(loss.detach())
        parts["match_accuracy"] = float(((logits > 0).float() == match.to(logits.device)).float().mean())
        total = settings.match_loss * loss
    if facts is not None and settings.fact_loss and fact_mask is not None and bool(fact_mask.any()):
        logits = tower.last_fact_logits
        keep = fact_mask.to(logits.device).bool()
        loss = F.binary_cross_entropy_with_logits(logits[keep], facts.to(logits.device, logits.dtype)[keep])
        parts["fact_loss"] = float(loss.detach())
        total = settings.fact_loss * loss if total is None else total + settings.fact_loss * loss
    logits = tower.last_view_logits
    if views is not None and settings.view_loss and logits is not None and bool((views >= 0).any()):
        views = views.to(logits.device)
        loss = F.cross_entropy(logits.float(), views, ignore_index=-100)
        known = views >= 0
        parts["view_loss"] = float(loss.detach())
        parts["view_accuracy"] = float((logits.argmax(-1)[known] == views[known]).float().mean())
        total = settings.view_loss * loss if total is None else total + settings.view_loss * loss
    return total, parts


def match_probabilities(model: nn.Module) -> list[float] | None:
    """P(same place) per pair of the tower's last forward (None without a tower)."""
    tower = find_tower(model)
    if tower is None or tower.last_match_logits is None:
        return None
    return torch.sigmoid(tower.last_match_logits.detach().float()).cpu().tolist()


def auxiliary_targets(examples: Sequence[Any]) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(match (pairs,) or None, facts (2 * pairs, len(FACT_VOCAB)), fact_mask (2 * pairs,), views
    (2 * pairs,))`` of a batch: the pair labels, each image's fact targets (query: the query
    location's facts, satellite: the tile's; zeros with mask 0 where an example carries no facts or
    label) and each image's ``VIEW_KINDS`` index (the query's ``modality``; -100 when unknown)."""
    matches, facts, mask, views = [], [], [], []
    for example in examples:
        modality = getattr(example, "modality", None)
        views += [VIEW_KINDS.index(modality) if modality in VIEW_KINDS[1:] else -100, 0]
        label = getattr(example, "match", None)
        matches.append(None if label is None else float(bool(label)))
        query_facts = getattr(example, "query_facts", None)
        satellite_facts = getattr(example, "satellite_facts", None)
        if satellite_facts is None and label:
            satellite_facts = query_facts
        for item in (query_facts, satellite_facts):
            targets = fact_targets(item)
            facts.append(targets or [0.0] * len(FACT_VOCAB))
            mask.append(targets is not None)
    match = None if any(m is None for m in matches) else torch.tensor(matches)
    return match, torch.tensor(facts), torch.tensor(mask), torch.tensor(views, dtype=torch.long)


# ------------------------------------------------------------------------------ grounded decoding


def _fact_index() -> dict[tuple, int]:
    return {entry: i for i, entry in enumerate(FACT_VOCAB)}


def claim_probability(claim: Any, facts: Sequence[float]) -> float:
    """P(``claim`` is true) under one image's fact-head probabilities (``FACT_VOCAB`` order): the
    entry that states it (a direction where the vocabulary has one, else presence), negated for
    ``present=False``; 0.5 where the vocabulary cannot tell."""
    index = _fact_index()
    kind, value, direction = claim.kind, claim.value, claim.direction
    probability = None
    if kind == "junction":
        keys = ([("junction", "any", direction)] if direction else []) + (
            [("junction", value, None)] if value not in (None, "any") else [])
        found = [facts[index[k]] for k in keys if k in index]
        probability = min(found) if found else None
    elif kind == "feature":
        keys = ([("feature", value, direction)] if direction else []) + [("feature", value, None)]
        found = [facts[index[k]] for k in keys if k in index]
        probability = found[0] if found else None
    elif kind == "buildings":
        probability = facts[index[("buildings", value, None)]] if ("buildings", value, None) in index else None
    elif kind == "building_count":
        from gleam.explain.prompts import building_bucket

        key = ("buildings", building_bucket(int(value)), None)
        probability = facts[index[key]] if key in index else None
    elif kind == "tallest":
        key = ("tallest", None, direction)
        probability = facts[index[key]] if direction and key in index else None
    elif kind == "green":
        key = ("green", value, None)
        probability = facts[index[key]] if key in index else None
    if probability is None:
        return 0.5
    return float(probability if claim.present else 1.0 - probability)


def answer_support(text: str, query_facts: Sequence[float], satellite_facts: Sequence[float]) -> float:
    """Mean P(true) of the claims ``text`` states, each side judged by its image's fact heads
    (``both``: the less likely of the two); 0.5 for an answer without claims."""
    from gleam.explain.prompts import extract_claims, script_language

    claims = extract_claims(text, script_language(text) or "en")
    if not claims:
        return 0.5
    scores = [claim_support(claim, query_facts, satellite_facts) for claim in claims]
    return float(sum(scores) / len(scores))


_SENTENCE_END = re.compile(r"(?<=[.!?。！？；;])\s*")


def claim_support(claim: Any, query_facts: Sequence[float], satellite_facts: Sequence[float]) -> float:
    """P(``claim`` true) by the fact heads of the image its side names (``both``: the less likely)."""
    if claim.side == "query":
        return claim_probability(claim, query_facts)
    if claim.side == "satellite":
        return claim_probability(claim, satellite_facts)
    return min(claim_probability(claim, query_facts), claim_probability(claim, satellite_facts))


def prune_claims(text: str, query_facts: Sequence[float], satellite_facts: Sequence[float],
                 threshold: float) -> tuple[str, int]:
    """``text`` without the sentences that state a claim the fact heads give P(true) < ``threshold``
    -> ``(text, sentences dropped)``.  Lines holding a verdict stay verbatim; sentences with no
    checkable claim stay (the claim checker still counts their unparsed mentions)."""
    from gleam.explain.prompts import _verdicts, extract_claims, script_language

    if threshold <= 0:
        return text, 0
    language = script_language(text) or "en"
    joiner = "" if language == "zh" else " "
    lines, dropped = [], 0
    for line in text.split("\n"):
        if _verdicts(line):
            lines.append(line)
            continue
        kept = []
        for sentence in _SENTENCE_END.split(line):
            if not sentence.strip():
                continue
            claims = extract_claims(sentence, language)
            if claims and min(claim_support(c, query_facts, satellite_facts) for c in claims) < threshold:
                dropped += 1
                continue
            kept.append(sentence.strip())
        if kept:
            lines.append(joiner.join(kept))
    return "\n".join(lines), dropped


def select_grounded(candidates: Sequence[str], match_probability: float, query_facts: Sequence[float],
                    satellite_facts: Sequence[float]) -> tuple[int, dict[str, Any]]:
    """Which of ``candidates`` (the greedy answer first) GLEAM-X answers: among those whose verdict
    is the match head's (P >= 0.5), the one whose claims the fact heads support most (earlier wins
    ties); when none agrees, the first (greedy first) that states a verdict, flagged ``grounded: false``."""
    from gleam.explain.prompts import parse_answer

    wanted = match_probability >= 0.5
    agree = [i for i, text in enumerate(candidates) if parse_answer(text).verdict == wanted]
    if not agree:  # the greedy answer, or the first that states a verdict at all
        parsed = [i for i, text in enumerate(candidates) if parse_answer(text).verdict is not None]
        return (parsed[0] if parsed else 0), {"grounded": False, "candidates": len(candidates), "agreeing": 0}
    supports = {i: answer_support(candidates[i], query_facts, satellite_facts) for i in agree}
    best = max(agree, key=lambda i: (supports[i], -i))
    return best, {"grounded": True, "candidates": len(candidates), "agreeing": len(agree),
                  "claim_support": round(supports[best], 4)}


def head_outputs(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[list[float], list[list[float]]] | None:
    """``(P(same place) per pair, fact probabilities per image)`` of a prompt batch, from the tower
    alone (no language model); None without a tower."""
    tower = find_tower(model)
    if tower is None or "pixel_values" not in batch:
        return None
    with torch.no_grad():
        tower(batch["pixel_values"], batch["image_grid_thw"])
    return (torch.sigmoid(tower.last_match_logits.float()).cpu().tolist(),
            torch.sigmoid(tower.last_fact_logits.float()).cpu().tolist())
