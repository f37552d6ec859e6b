"""The GLEAM-X model side: a Hugging Face vision-language model loaded by path with its processor,
LoRA through peft, batching with answer-only labels, generation, adapter save/load and merging.

Any image-text-to-text model that ``AutoModelForImageTextToText`` knows can be loaded by path
(Qwen2.5-VL is the production class).  Nothing is ever downloaded: every load is
``local_files_only``.  With ``VLMConfig.path == ""`` a *tiny* Qwen2.5-VL is built from its config
(random, seeded init) with a byte-level BPE tokenizer trained here on a bilingual English + Chinese
corpus, and saved as an ordinary ``from_pretrained`` folder, so load, train, save, merge and
generate all run the real code paths of the production model.

Trainable parameters (``LoraSettings``):
- ``full_finetune``: every weight trains (no peft).
- ``enabled``: LoRA on ``target_modules`` of the *language model only* (module paths must contain
  ``target_scope``; the vision tower has MLP layers with the same names as the text MLP);
  ``train_projector`` adds a full fine-tune of the vision->text projector (peft
  ``modules_to_save``).
- neither: frozen, except the projector when ``train_projector``.

Labels are -100 everywhere except the assistant answer and its closing end token.  Over-long
examples are cut inside the answer only; a prompt (image tokens included) that does not fit
``max_length`` is an error, never a silent cut through image tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Protocol, Sequence

import torch
from torch import nn

from gleam.explain.vision import VisionSettings

# Special tokens the Qwen2-VL / Qwen2.5-VL processor and chat template use.  The first three
# carry the roles: pad/bos, chat turn start, chat turn end (= eos).
PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [
    PAD_TOKEN, IM_START, IM_END,
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
IGNORE_INDEX = -100
COMPLETE_MARKER = "GLEAM_TINY_VLM_COMPLETE"

# Pre-tokenizer split: contractions, letter runs (a Chinese run is one piece; BPE merges inside
# it), single digits, punctuation runs, whitespace.  Byte-level afterwards: every character of any
# script is representable, and decode(encode(text)) == text exactly.
_SPLIT_PATTERN = (
    r"'(?:[sdmtSDMT]|ll|ve|re|LL|VE|RE)| ?\p{L}+| ?\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

# A chat template written for this project, compatible with the processor's
# ``apply_chat_template``: string content or a list of {"type": "image"|"video"|"text"} parts.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Vision->text projector module name per architecture (the key peft's modules_to_save matches).
PROJECTOR_MODULES = {
    "qwen2_vl": ["merger"],
    "qwen2_5_vl": ["merger"],
    "llava": ["multi_modal_projector"],
    "llava_next": ["multi_modal_projector"],
    "llava_onevision": ["multi_modal_projector"],
    "paligemma": ["multi_modal_projector"],
    "gemma3": ["multi_modal_projector"],
    "idefics3": ["connector"],
    "smolvlm": ["connector"],
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

@dataclass
class TinyVLMSpec:
    """Shape of the tiny offline Qwen2.5-VL (about 1.6M parameters with these defaults)."""

    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 256
    vision_depth: int = 2
    vision_hidden: int = 64
    vision_heads: int = 4
    vision_intermediate: int = 128
    vision_patch: int = 14
    spatial_merge: int = 2
    vocab_size: int = 4000
    max_position_embeddings: int = 4096
    # Std of the text model's random init.  The usual 0.02 bounds a 128-wide model's logits to
    # about +-2.5 while the output head is frozen, so LoRA cannot push the loss below ~5.8
    # (ln 4000 - 2.5) however long it trains; a pretrained head is far sharper.  0.1 gives the
    # tiny model a usable logit range.
    initializer_range: float = 0.1
    seed: int = 0


@dataclass
class VLMConfig:
    """Which vision-language model and how its inputs are sized."""

    path: str = ""  # a local from_pretrained folder; "": the tiny default built under cache_dir
    tiny: TinyVLMSpec = field(default_factory=TinyVLMSpec)
    cache_dir: str = ""  # where the tiny default is built; "": ~/.cache/gleam/explain
    image_size: int = 56  # query and satellite are resized to this square (multiple of 28 for Qwen)
    max_length: int = 512  # tokens per example, image tokens included
    dtype: str = "float32"  # "float32" | "bfloat16"
    # where the image tokens come from: the VLM's own tower, or a GLEAM-C checkpoint's backbone
    # with match and fact heads (gleam.explain.vision)
    vision: VisionSettings = field(default_factory=VisionSettings)


@dataclass
class LoraSettings:
    """What trains: LoRA adapters, the projector, or everything."""

    enabled: bool = True
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # module-path component the targets must sit under ("": anywhere, vision tower included)
    target_scope: str = "language_model"
    train_projector: bool = False  # full fine-tune of the vision->text projector
    # projector module names; []: by model type (PROJECTOR_MODULES)
    projector_modules: list[str] = field(default_factory=list)
    full_finetune: bool = False  # every weight trains; exclusive with `enabled`
    # further modules trained in full beside the adapters (peft modules_to_save), e.g.
    # ["embed_tokens", "lm_head"] when the vocabulary is new, as for the tiny default model
    modules_to_save: list[str] = field(default_factory=list)


class ExplainExample(Protocol):
    """What collate/generate need of an example (the dataset's records satisfy it)."""

    query_image: Any  # encoded image bytes (or a PIL image)
    satellite_image: Any
    instruction: str
    answer: str | None


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


# ---------------------------------------------------------------------------------------------
# Tokenizer and tiny model
# ---------------------------------------------------------------------------------------------

def train_tokenizer(texts: Iterable[str], vocab_size: int, folder: str | None = None):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts`` (English + Chinese), with
    the Qwen2.5-VL special tokens, pad ``<|endoftext|>``, eos ``<|im_end|>`` and the project chat
    template.  Saved to ``folder`` when given."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size {vocab_size} is below the byte alphabet + special tokens")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=alphabet, min_frequency=2, show_progress=False)
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=IM_END, pad_token=PAD_TOKEN, unk_token=None,
        bos_token=None, padding_side="right", clean_up_tokenization_spaces=False,
        model_max_length=1 << 20, chat_template=CHAT_TEMPLATE)
    if folder:
        tokenizer.save_pretrained(folder)
    return tokenizer


def default_corpus() -> list[str]:
    """A few hundred bilingual sentences in the register of the explanations (for the tiny
    tokenizer when the caller passes no corpus)."""
    things = [("river", "河流"), ("road", "道路"), ("roundabout", "环岛"), ("bridge", "桥"),
              ("park", "公园"), ("lake", "湖泊"), ("railway", "铁路"), ("forest", "森林"),
              ("building", "建筑"), ("field", "农田"), ("parking lot", "停车场"), ("tower", "塔")]
    places = [("north", "北"), ("south", "南"), ("east", "东"), ("west", "西"), ("centre", "中心")]
    verdicts = [("Yes, it is the same place.", "是，这是同一个地点。"),
                ("No, it is a different place.", "否，这不是同一个地点。")]
    sentences = []
    for index, (english, chinese) in enumerate(things):
        for side_en, side_zh in places:
            verdict_en, verdict_zh = verdicts[(index + len(side_en)) % 2]
            sentences.append(f"The {english} in the {side_en} of the query view matches the "
                             f"satellite image. {verdict_en}")
            sentences.append(f"查询图像{side_zh}部的{chinese}与卫星图像一致。{verdict_zh}")
            sentences.append(f"Is the query taken at the satellite location? Look at the "
                             f"{english}.")
            sentences.append(f"查询图像是否拍摄于卫星图像所示的位置？请观察{chinese}和植被、水体。")
    return sentences


def _mrope_section(head_dim: int) -> list[int]:
    """Split of the rotary half-dimension over (time, height, width), in Qwen2.5-VL's 1:1.5:1.5."""
    half = head_dim // 2
    time = half // 4
    height = (half - time) // 2
    return [time, height, half - time - height]


def tiny_vlm_configs(spec: TinyVLMSpec, tokenizer) -> Any:
    """The ``Qwen2_5_VLConfig`` of the tiny model, token ids taken from ``tokenizer``."""
    from transformers import Qwen2_5_VLConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    vocab_size = max(spec.vocab_size, len(tokenizer))
    head_dim = spec.hidden_size // spec.heads
    text_config = dict(
        vocab_size=vocab_size, hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_position_embeddings, use_sliding_window=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                         "mrope_section": _mrope_section(head_dim)},
        initializer_range=spec.initializer_range,
        bos_token_id=ids[PAD_TOKEN], eos_token_id=ids[IM_END], pad_token_id=ids[PAD_TOKEN])
    vision_config = dict(
        depth=spec.vision_depth, hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_intermediate, num_heads=spec.vision_heads,
        patch_size=spec.vision_patch, spatial_merge_size=spec.spatial_merge,
        temporal_patch_size=2, window_size=spec.vision_patch * spec.spatial_merge * 4,
        out_hidden_size=spec.hidden_size, fullatt_block_indexes=[spec.vision_depth - 1])
    return Qwen2_5_VLConfig(
        text_config=text_config, vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False)


def _is_complete(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, COMPLETE_MARKER))


def build_tiny_vlm(folder: str, corpus_texts: Iterable[str] | None = None,
                   config: TinyVLMSpec | None = None, max_image_size: int = 448) -> str:
    """Build (once) the tiny Qwen2.5-VL + processor as a from_pretrained folder and return it.

    Written to a temporary sibling folder and renamed into place, so a reader never sees half a
    model; a folder that already holds a complete build is reused as it is."""
    from transformers import (GenerationConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    spec = config or TinyVLMSpec()
    folder = os.path.abspath(folder)
    if _is_complete(folder):
        return folder
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.", dir=parent)
    try:
        texts = list(corpus_texts) if corpus_texts is not None else default_corpus()
        tokenizer = train_tokenizer(texts, spec.vocab_size)
        model_config = tiny_vlm_configs(spec, tokenizer)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            model = Qwen2_5_VLForConditionalGeneration(model_config).eval()
        pad_id, end_id = tokenizer.pad_token_id, tokenizer.eos_token_id
        model.generation_config = GenerationConfig(
            bos_token_id=pad_id, eos_token_id=[end_id, pad_id], pad_token_id=pad_id,
            do_sample=False)
        factor = spec.vision_patch * spec.spatial_merge
        sizes = dict(min_pixels=factor * factor, max_pixels=max_image_size * max_image_size,
                     patch_size=spec.vision_patch, merge_size=spec.spatial_merge,
                     temporal_patch_size=2)
        # transformers 5 insists on a video processor even for image-only use.
        processor = Qwen2_5_VLProcessor(
            image_processor=Qwen2VLImageProcessor(**sizes), tokenizer=tokenizer,
            video_processor=Qwen2VLVideoProcessor(**sizes), chat_template=CHAT_TEMPLATE)
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        with open(os.path.join(staging, COMPLETE_MARKER), "w") as marker:
            json.dump({"spec": asdict(spec), "corpus_sentences": len(texts)}, marker)
        if _is_complete(folder):  # another process finished first: keep its build
            return folder
        if os.path.isdir(folder):  # an earlier, incomplete attempt
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.rename(staging, folder)
        except OSError:
            if not _is_complete(folder):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def resolve_model_path(config: VLMConfig, corpus_texts: Iterable[str] | None = None) -> str:
    """``config.path``, or the tiny default (built on first use, keyed by spec and corpus)."""
    if config.path:
        if not os.path.isdir(config.path):
            raise FileNotFoundError(f"VLM path {config.path!r} is not a local folder (no hub "
                                    "downloads: give a from_pretrained directory)")
        return config.path
    texts = list(corpus_texts) if corpus_texts is not None else default_corpus()
    digest = hashlib.sha256(json.dumps(asdict(config.tiny), sort_keys=True).encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    cache = config.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "gleam", "explain")
    return build_tiny_vlm(os.path.join(cache, f"tiny-vlm-{digest.hexdigest()[:12]}"), texts,
                          config.tiny)


# ---------------------------------------------------------------------------------------------
# Loading and trainable parameters
# ---------------------------------------------------------------------------------------------

def _model_type(path: str) -> str:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    model_type = AutoConfig.from_pretrained(path, local_files_only=True).model_type
    if model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise ValueError(f"{path}: model_type {model_type!r} is not an image-text-to-text "
                         "architecture that transformers can load (e.g. qwen2_5_vl, qwen2_vl, "
                         "llava)")
    return model_type


def projector_names(model: nn.Module, lora: LoraSettings) -> list[str]:
    """Module names (as peft's modules_to_save keys) of the vision->text projector."""
    names = list(lora.projector_modules) or PROJECTOR_MODULES.get(
        getattr(getattr(model, "config", None), "model_type", ""), [])
    present = [name for name in names
               if any(module_name.split(".")[-1] == name.split(".")[-1]
                      and module_name.endswith(name) for module_name, _ in model.named_modules())]
    if not present:
        raise ValueError(f"no projector module among {names or '(none known)'} in this model; "
                         "set LoraSettings.projector_modules")
    return present


def lora_target_regex(lora: LoraSettings) -> str:
    """peft ``target_modules`` regex: the named leaf modules, under ``target_scope`` only."""
    leaves = "|".join(re.escape(name) for name in lora.target_modules)
    anywhere = "(?:.*\\.)?"
    scope = f"{anywhere}{re.escape(lora.target_scope)}\\.{anywhere}" if lora.target_scope else anywhere
    return f"{scope}(?:{leaves})"


def apply_training_mode(model: nn.Module, lora: LoraSettings) -> nn.Module:
    """Set what trains according to ``lora`` (wrapping in a peft model when LoRA is enabled)."""
    if lora.full_finetune and lora.enabled:
        raise ValueError("LoraSettings: full_finetune and enabled (LoRA) are exclusive")
    if lora.full_finetune:
        model.requires_grad_(True)
        return model
    projector = projector_names(model, lora) if lora.train_projector else []
    extra = [name for name in lora.modules_to_save if name not in projector]
    missing = [name for name in extra if not any(m.endswith(name) for m, _ in model.named_modules())]
    if missing:
        raise ValueError(f"LoraSettings.modules_to_save: no module named {missing} in this model")
    projector = projector + extra
    if lora.enabled:
        from peft import LoraConfig, get_peft_model

        peft_config = LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
            target_modules=lora_target_regex(lora), modules_to_save=projector or None)
        return get_peft_model(model, peft_config)
    model.requires_grad_(False)
    for name, module in model.named_modules():
        if any(name.endswith(key) for key in projector):
            module.requires_grad_(True)
    return model


def load_vlm(path: str, lora: LoraSettings | None = None, dtype: str = "float32",
             device: str | torch.device = "cpu", gradient_checkpointing: bool = False,
             vision: VisionSettings | None = None):
    """``(model, processor)`` from a local folder, trainable parameters set per ``lora``
    (``None``: frozen, for inference).

    A folder that holds a saved GLEAM vision tower (``gleam_vision.json``, written by
    ``merge_and_save`` / ``save_adapter``) gets it back; otherwise ``vision`` with source
    ``gleam_c`` replaces the model's vision tower by a new one over that GLEAM-C checkpoint."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from gleam.explain.vision import attach_gleam_vision, find_tower, load_gleam_vision

    _model_type(path)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model = _quiet_from_pretrained(AutoModelForImageTextToText, path, dtype=torch_dtype(dtype),
                                   local_files_only=True)
    if load_gleam_vision(model, path) is None and vision is not None and vision.enabled():
        attach_gleam_vision(model, processor, vision)
    model.to(device)
    if gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.enable_input_require_grads()  # frozen embeddings: LoRA layers still get gradients
    model = apply_training_mode(model, lora or LoraSettings(enabled=False))
    tower = find_tower(model)
    if tower is not None and lora is not None and (lora.enabled or lora.train_projector or lora.full_finetune):
        tower.set_backbone_training()  # the tower's own policy for the GLEAM-C backbone
    return model, processor


def _quiet_from_pretrained(cls: Any, path: str, **kwargs: Any):
    """``from_pretrained``; a folder saved with a GLEAM vision tower lacks the native tower's
    weights on purpose (they are unused), so that load report is silenced."""
    import logging

    if not os.path.isfile(os.path.join(path, "gleam_vision.json")):
        return cls.from_pretrained(path, **kwargs)
    logger = logging.getLogger("transformers.modeling_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return cls.from_pretrained(path, **kwargs)
    finally:
        logger.setLevel(level)


def trainable_summary(model: nn.Module) -> dict[str, Any]:
    """Counts of trainable and total parameters, and the trainable ones grouped by kind."""
    total = trainable = 0
    groups: dict[str, int] = {}
    for name, parameter in model.named_parameters():
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
            kind = ("lora" if "lora_" in name else "modules_to_save" if "modules_to_save" in name
                    else name.split(".")[-2] if "." in name else name)
            groups[kind] = groups.get(kind, 0) + parameter.numel()
    return {"trainable": trainable, "total": total,
            "fraction": trainable / max(total, 1), "groups": groups}


# ---------------------------------------------------------------------------------------------
# Batching and generation
# ---------------------------------------------------------------------------------------------

def build_messages(instruction: str, answer: str | None = None) -> list[dict[str, Any]]:
    """Chat messages: the user turn holds the query image, the satellite image, then the
    instruction; the answer (if any) is the assistant turn."""
    messages = [{"role": "user", "content": [
        {"type": "image"}, {"type": "image"}, {"type": "text", "text": instruction}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def load_image(data: Any, image_size: int):
    """An RGB PIL image of ``image_size`` x ``image_size`` from encoded bytes or a PIL image.

    Bytes are decoded by the platform's one decoder (``gleam.data.images.decode_rgb``: EXIF
    orientation, 16-bit/float scaling, alpha...), so GLEAM-X sees the pixels GLEAM-C sees;
    refused bytes raise its ``ImageError`` subclasses.
    """
    from PIL import Image

    from gleam.data.images import decode_rgb

    image = data.convert("RGB") if isinstance(data, Image.Image) else Image.fromarray(decode_rgb(bytes(data)))
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return image


def _render(processor, messages, add_generation_prompt: bool) -> str:
    return processor.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def _image_token_id(processor) -> int:
    token_id = getattr(processor, "image_token_id", None)
    if token_id is None:
        token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    return int(token_id)


def collate(examples: Sequence[ExplainExample], processor, image_size: int, max_length: int,
            train: bool = True) -> dict[str, torch.Tensor]:
    """A batch ready for ``model(**batch)``.

    ``train``: prompt + answer, right padding, ``labels`` = -100 except the answer tokens and the
    closing end token; over-long rows lose the end of their answer.  Otherwise: the prompt with the
    generation header, left padding, no labels."""
    if not examples:
        raise ValueError("collate: empty batch")
    tokenizer = processor.tokenizer
    prompts, texts, images = [], [], []
    for example in examples:
        images += [load_image(example.query_image, image_size),
                   load_image(example.satellite_image, image_size)]
        prompt = _render(processor, build_messages(example.instruction), True)
        prompts.append(prompt)
        if train:
            if example.answer is None:
                raise ValueError("collate(train=True) needs an answer on every example")
            full = _render(processor, build_messages(example.instruction, example.answer),
                           False).rstrip()
            if not full.startswith(prompt):
                raise ValueError("chat template renders the prompt differently with an answer; "
                                 "cannot locate the answer span")
            texts.append(full)
        else:
            texts.append(prompt)
    batch = processor(text=texts, images=images, padding=True, return_tensors="pt",
                      padding_side="right" if train else "left")
    input_ids = batch["input_ids"]
    image_token = _image_token_id(processor)
    image_tokens = (input_ids == image_token).sum(dim=1)
    # Prompt length in tokens: the prompt as text, its image placeholders expanded as the
    # processor expanded them.
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    prompt_lengths = [len(ids) - ids.count(image_token) + int(count)
                      for ids, count in zip(prompt_ids, image_tokens)]
    for row, length in enumerate(prompt_lengths):
        if length + int(train) > max_length:
            raise ValueError(
                f"max_length={max_length} is too small: example {row} has a prompt of {length} "
                f"tokens ({int(image_tokens[row])} of them image tokens) and needs room for at "
                "least one answer token; raise max_length or lower image_size")
    if train:
        labels = input_ids.clone()
        labels[batch["attention_mask"] == 0] = IGNORE_INDEX
        for row, length in enumerate(prompt_lengths):
            if int(input_ids[row, length - 1]) != prompt_ids[row][-1]:
                raise ValueError("the prompt's tokens are not a prefix of the full example's; "
                                 "cannot locate the answer span")
            labels[row, :length] = IGNORE_INDEX
        batch["labels"] = labels
        if input_ids.shape[1] > max_length:  # right padding: cutting columns only shortens answers
            for key, value in list(batch.items()):
                if torch.is_tensor(value) and value.dim() == 2 and value.shape == input_ids.shape:
                    batch[key] = value[:, :max_length].contiguous()
    return dict(batch)


@torch.no_grad()
def generate(model: nn.Module, processor, examples: Sequence[ExplainExample], image_size: int,
             max_new_tokens: int = 128, do_sample: bool = False, max_length: int = 1 << 20,
             **generate_kwargs) -> list[str]:
    """Batched (left-padded) generation; returns only the new text of each example."""
    batch = collate(examples, processor, image_size, max_length, train=False)
    device = next(model.parameters()).device
    batch = {key: value.to(device) if torch.is_tensor(value) else value
             for key, value in batch.items()}
    tokenizer = processor.tokenizer
    was_training = model.training
    model.eval()
    from gleam.explain.vision import find_tower, head_outputs, prune_claims, select_grounded

    tower = find_tower(unwrap(model))
    candidates = tower.settings.candidates if tower is not None and not do_sample else 1
    heads = head_outputs(unwrap(model), batch) if tower is not None else None
    try:
        output = unwrap(model).generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=do_sample,
            pad_token_id=tokenizer.pad_token_id, **generate_kwargs)
        texts = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        if candidates > 1 and heads is not None:
            # grounded decoding: sampled alternatives (seeded: the same request, the same answer)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                sampled = unwrap(model).generate(
                    **batch, max_new_tokens=max_new_tokens, do_sample=True, top_p=0.95, temperature=1.0,
                    num_return_sequences=candidates - 1, pad_token_id=tokenizer.pad_token_id, **generate_kwargs)
            others = tokenizer.batch_decode(sampled[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            match, facts = heads
            chosen = []
            for row, greedy in enumerate(texts):
                options = [greedy] + others[row * (candidates - 1):(row + 1) * (candidates - 1)]
                best, _ = select_grounded(options, match[row], facts[2 * row], facts[2 * row + 1])
                chosen.append(options[best])
            texts = chosen
            head_outputs(unwrap(model), batch)  # leave the prompt batch's head outputs for the caller
        if heads is not None:
            # the images decide the verdict: where no answer the LM wrote states the match head's
            # verdict, its verdict line is set to the head's (the explanation stays, claims are pruned)
            from gleam.explain.prompts import parse_answer, with_verdict

            match, _ = heads
            texts = [text if parse_answer(text).verdict == (match[row] >= 0.5)
                     else with_verdict(text, match[row] >= 0.5, getattr(examples[row], "language", None))
                     for row, text in enumerate(texts)]
            # what the heads said of each answer, before claims they do not back are dropped
            # (evaluation chooses claim_threshold from these without generating again)
            match, facts = heads
            tower.last_grounding = [{"selected": text, "match_probability": match[row],
                                     "query_facts": facts[2 * row], "satellite_facts": facts[2 * row + 1]}
                                    for row, text in enumerate(texts)]
            threshold = tower.settings.claim_threshold
            if threshold > 0:
                texts = [prune_claims(text, facts[2 * row], facts[2 * row + 1], threshold)[0]
                         for row, text in enumerate(texts)]
    finally:
        model.train(was_training)
    return texts


# ---------------------------------------------------------------------------------------------
# Saving, loading, merging, distributed state
# ---------------------------------------------------------------------------------------------

def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel / DeepSpeed engine wrapper (``.module``)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def _atomic_save(folder: str, write) -> str:
    folder = os.path.abspath(folder)
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{os.path.basename(folder)}.{uuid.uuid4().hex[:8]}")
    try:
        write(staging)
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        os.rename(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def save_adapter(model: nn.Module, processor, folder: str) -> str:
    """The peft adapter (LoRA + modules_to_save) and the processor, as a folder."""
    from peft import PeftModel

    model = unwrap(model)
    if not isinstance(model, PeftModel):
        raise TypeError("save_adapter needs a peft model (LoRA enabled); use merge_and_save or "
                        "save_pretrained for full fine-tunes")

    def write(staging: str) -> None:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        _save_tower(model, staging)

    return _atomic_save(folder, write)


def _save_tower(model: nn.Module, folder: str) -> None:
    from gleam.explain.vision import find_tower

    tower = find_tower(model)
    if tower is not None:
        tower.save(folder)


def load_adapter(base_path: str, adapter_folder: str, dtype: str = "float32",
                 device: str | torch.device = "cpu", trainable: bool = False):
    """``(peft model, processor)``: the base model from ``base_path`` plus the saved adapter."""
    from peft import PeftModel
    from transformers import AutoProcessor

    base, processor = load_vlm(base_path, None, dtype, device)
    from gleam.explain.vision import load_gleam_vision

    load_gleam_vision(base, adapter_folder)  # a GLEAM tower saved with the adapter replaces the native one
    model = PeftModel.from_pretrained(base, adapter_folder, is_trainable=trainable)
    if os.path.isfile(os.path.join(adapter_folder, "processor_config.json")) or os.path.isfile(
            os.path.join(adapter_folder, "preprocessor_config.json")):
        processor = AutoProcessor.from_pretrained(adapter_folder, local_files_only=True)
    model.to(device)
    return model, processor


def merge_and_save(model: nn.Module, processor, folder: str) -> str:
    """Merge LoRA into the base weights (in place) and save a plain from_pretrained folder that
    ``load_vlm`` reads with LoRA disabled."""
    from peft import PeftModel

    model = unwrap(model)
    merged = model.merge_and_unload() if isinstance(model, PeftModel) else model

    def write(staging: str) -> None:
        from gleam.explain.vision import without_tower_state

        state = without_tower_state(merged)
        if state is None:
            merged.save_pretrained(staging)
        else:  # the tower is saved on its own (gleam_vision.*); load_vlm puts it back
            merged.save_pretrained(staging, state_dict=state)
        processor.save_pretrained(staging)
        _save_tower(merged, staging)

    return _atomic_save(folder, write)


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (adapter, projector, or all), detached on CPU: what a
    distributed checkpoint needs to store besides the base model path."""
    return {name: parameter.detach().to("cpu", copy=True)
            for name, parameter in unwrap(model).named_parameters() if parameter.requires_grad}


def load_trainable_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load what ``trainable_state_dict`` returned; every key must name a parameter."""
    target = unwrap(model)
    missing = set(state) - {name for name, _ in target.named_parameters()}
    if missing:
        raise KeyError(f"state holds parameters this model lacks: {sorted(missing)[:5]}")
    target.load_state_dict(state, strict=False)
