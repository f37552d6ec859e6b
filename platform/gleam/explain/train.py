"""GLEAM-X fine-tuning on Ray Train: a vision-language model learns to verify and explain.

Driver (``train_explain``):
  1. builds the bilingual dataset - from shards of the synthetic world (answers written from the
     true scene facts; hard negatives from a GLEAM-C checkpoint when one is given) or from a
     conversation JSON (LLaVA / ShareGPT) - and exports it as conversations under the run folder;
  2. resolves the base model: ``model.path``, or the tiny Qwen2.5-VL built from config with a
     tokenizer trained on the dataset's own bilingual text (cached by content hash);
  3. runs ``train_loop`` on a TorchTrainer: DDP on CPU/GPU, or DeepSpeed ZeRO-2/3 when
     ``deepspeed.enabled``; LoRA (peft) on the language model, optionally the projector;
  4. writes ``adapter/`` (peft), ``final/`` (adapter merged: a plain from_pretrained folder that
     serving loads), metrics.jsonl, plots, the evaluation report and summary.json.

Checkpoints (every epoch, rank 0): trainable weights and optimizer tensors as safetensors, the
rest as JSON (nothing unpickled). Re-running with the same ``run.name`` resumes.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gleam import storage
from gleam.config import InputPath, ModelPath, OutputPath, RayConfig, RunConfig, TrackingConfig, save_config
from gleam.explain.model import LoraSettings, VLMConfig

log = logging.getLogger(__name__)

TRAINABLE_WEIGHTS = "trainable.safetensors"  # beside core.checkpoint's optimizer and trainer-state files
EXPLAIN_META = "gleam_explain.json"


@dataclass
class ExplainDataSection:
    """Where examples come from and how pairs are made."""

    source: InputPath = "data/synth"  # shard folder (manifest.json) or conversation .json/.jsonl (or a folder of them)
    train_split: str = "train"
    val_split: str = "val"
    modalities: list[str] = field(default_factory=lambda: ["uav", "streetmap", "panorama", "ground"])
    languages: list[str] = field(default_factory=lambda: ["en", "zh"])
    negatives_per_positive: int = 1
    hard_fraction: float = 0.5  # share of negatives taken from GLEAM-C's most similar wrong tiles
    # GLEAM-C checkpoint for hard negatives; "": the model.vision checkpoint when its source is
    # gleam_c, else random negatives only
    retrieval_checkpoint: ModelPath = ""
    max_train_examples: int = 0  # 0 = all
    max_val_examples: int = 96
    # label-only supervision: this share of the training pairs also appears with a verdict-only
    # instruction and the verdict line as the answer (0 = explanations only)
    verdict_only_fraction: float = 0.0


@dataclass
class ExplainOptimSection:
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0


@dataclass
class ExplainTrainSection:
    epochs: int = 3
    per_worker_batch: int = 8
    max_steps_per_epoch: int = 0  # 0 = the whole epoch
    # label-only warm start: the first N epochs train on the verdict-only twin of every training
    # pair (verdict line as the whole answer), later epochs on the examples as built. From a
    # from-scratch model, explanation supervision alone never teaches the verdict (the verdict
    # line follows from the explanation text, so its loss asks nothing of the images); the warm
    # start makes the model compare the two views first.
    verdict_only_epochs: int = 0
    # how the answer-token losses of a batch are averaged: "token" (the Hugging Face default: every
    # answer token counts once, so a long explanation outweighs a one-line verdict ~60:1) or
    # "example" (each example's mean, then the batch mean: label-only and explanation examples
    # weigh the same)
    loss_reduction: str = "token"
    eval_every: int = 1  # validation loss every N epochs (generation metrics at the end)
    max_new_tokens: int = 128
    eval_batch: int = 16
    max_failures: int = 1
    checkpoints_to_keep: int = 2
    storage_path: OutputPath = ""  # Ray Train storage; "" = run.output_dir


@dataclass
class DeepSpeedSection:
    """DeepSpeed on GPU workers (``pip install .[gpu]``); ignored when ``enabled`` is false."""

    enabled: bool = False
    stage: int = 2  # ZeRO stage 2 or 3
    offload_optimizer: bool = False
    bf16: bool = True


@dataclass
class TrainExplainConfig:
    """Root config of ``jobs/train_explain.py``."""

    kind: str = "train_explain"
    run: RunConfig = field(default_factory=lambda: RunConfig(name="gleam-x-local"))
    ray: RayConfig = field(default_factory=RayConfig)
    data: ExplainDataSection = field(default_factory=ExplainDataSection)
    model: VLMConfig = field(default_factory=VLMConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    optim: ExplainOptimSection = field(default_factory=ExplainOptimSection)
    train: ExplainTrainSection = field(default_factory=ExplainTrainSection)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def run_dir(self) -> str:
        return storage.join(self.run.output_dir, self.run.name)


# --------------------------------------------------------------------------- DeepSpeed


def deepspeed_config(section: DeepSpeedSection, per_worker_batch: int, optim: ExplainOptimSection,
                     total_steps: int) -> dict[str, Any]:
    """The DeepSpeed config dict for ZeRO-2/3 with AdamW and warmup-cosine-like decay."""
    if section.stage not in (2, 3):
        raise ValueError(f"deepspeed.stage: {section.stage} is not supported; use 2 or 3")
    zero: dict[str, Any] = {"stage": section.stage, "overlap_comm": True, "contiguous_gradients": True}
    if section.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if section.stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": per_worker_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": optim.grad_clip,
        "bf16": {"enabled": section.bf16},
        "zero_optimization": zero,
        "optimizer": {"type": "AdamW", "params": {"lr": optim.lr, "weight_decay": optim.weight_decay}},
        "scheduler": {"type": "WarmupCosineLR", "params": {
            "total_num_steps": max(total_steps, 1), "warmup_num_steps": min(optim.warmup_steps, max(total_steps - 1, 0)),
            "cos_min_ratio": optim.min_lr_ratio}},
    }


# --------------------------------------------------------------------------- worker


def _epoch_batches(count: int, epoch: int, seed: int, rank: int, world: int, batch: int,
                   max_steps: int) -> list[np.ndarray]:
    """This rank's batches of one epoch: one global shuffle, ranks take interleaved slices, all
    ranks the same number of steps (DDP needs every rank in every step)."""
    order = np.random.default_rng([seed, epoch]).permutation(count)
    steps = len(order) // (batch * world)
    if max_steps:
        steps = min(steps, max_steps)
    if steps == 0:
        raise ValueError(f"{count} training examples do not fill one step of {batch} x {world} workers; "
                         "lower train.per_worker_batch or add data")
    return [order[(s * world + rank) * batch:(s * world + rank + 1) * batch] for s in range(steps)]


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


LOSS_REDUCTIONS = ("token", "example")


def _check_loss_reduction(reduction: str) -> None:
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"train.loss_reduction: {reduction!r} unknown; use one of {list(LOSS_REDUCTIONS)}")


def answer_loss(model: Any, batch: dict[str, Any], reduction: str = "token") -> torch.Tensor:
    """The causal-LM loss over the answer tokens (``labels`` != -100) of ``batch``.

    ``token``: the model's own loss, a mean over all answer tokens of the batch. ``example``: the
    mean over each example's answer tokens, then over the examples that have any."""
    _check_loss_reduction(reduction)
    if reduction == "token":
        return model(**batch).loss
    from gleam.explain.model import IGNORE_INDEX

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits[:, :-1].float()
    targets = batch["labels"][:, 1:].to(logits.device)
    per_token = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                  ignore_index=IGNORE_INDEX, reduction="none").view(targets.shape)
    counts = (targets != IGNORE_INDEX).sum(dim=1)
    has_answer = counts > 0
    per_example = per_token.sum(dim=1)[has_answer] / counts[has_answer]
    return per_example.mean()


def _gathered_trainable_state(model: Any, zero_stage: int) -> dict[str, torch.Tensor]:
    """``trainable_state_dict`` of ``model``; under ZeRO-3 its partitioned parameters are gathered
    first, which is a collective: every rank must call this."""
    from gleam.explain.model import trainable_state_dict

    if zero_stage != 3:
        return trainable_state_dict(model)
    import deepspeed

    params = [p for p in model.parameters() if p.requires_grad]
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        return trainable_state_dict(model)


def _save_checkpoint(folder: str, model: Any, optimizer: Any, scheduler: Any, state: dict[str, Any],
                     weights: dict[str, torch.Tensor] | None = None) -> None:
    from safetensors.torch import save_file

    from gleam.core.checkpoint import TRAINER_STATE, save_optimizer
    from gleam.explain.model import trainable_state_dict

    weights = trainable_state_dict(model) if weights is None else weights
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()},
              os.path.join(folder, TRAINABLE_WEIGHTS))
    record = dict(state)
    if optimizer is not None:
        record["optimizer"] = save_optimizer(folder, optimizer)
    if scheduler is not None:
        record["scheduler"] = scheduler.state_dict()
    with open(os.path.join(folder, TRAINER_STATE), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)


def _load_checkpoint(folder: str, model: Any, optimizer: Any = None, scheduler: Any = None) -> dict[str, Any]:
    from safetensors.torch import load_file

    from gleam.core.checkpoint import load_optimizer, load_trainer_state
    from gleam.explain.model import load_trainable_state_dict

    load_trainable_state_dict(model, load_file(os.path.join(folder, TRAINABLE_WEIGHTS)))
    state = load_trainer_state(folder)
    if optimizer is not None and "optimizer" in state:
        load_optimizer(folder, optimizer, state["optimizer"])
    if scheduler is not None and state.get("scheduler"):
        scheduler.load_state_dict(state["scheduler"])
    return state


def _validation_loss(model: Any, processor: Any, examples: list[Any], config: TrainExplainConfig,
                     device: torch.device, rank: int, world: int) -> float:
    from gleam.explain.model import collate

    mine = examples[rank::world]
    # every rank runs the same number of forward passes (ZeRO-3 gathers weights collectively in
    # each); a rank out of examples repeats one with weight 0
    share = -(-len(examples) // world)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, share, config.train.eval_batch):
            chunk = mine[start:start + config.train.eval_batch]
            weight = len(chunk)
            chunk = chunk or (mine or examples)[:1]
            batch = _to_device(collate(chunk, processor, config.model.image_size, config.model.max_length), device)
            total += float(model(**batch).loss) * weight
            count += weight
    model.train()
    values = torch.tensor([total, count], dtype=torch.float64)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(values)
    return float(values[0] / max(values[1], 1))


def train_loop(loop_config: dict[str, Any]) -> None:
    """The Ray Train worker function."""
    import ray
    import ray.train
    import ray.train.torch

    from gleam.explain.model import collate, load_vlm, unwrap

    config: TrainExplainConfig = loop_config["config"]
    from gleam.runtime import quiet_train_worker

    quiet_train_worker(config.ray.log_level)
    train_examples = ray.get(loop_config["train_ref"])
    warm_examples = ray.get(loop_config["warm_ref"]) if loop_config.get("warm_ref") is not None else []
    val_examples = ray.get(loop_config["val_ref"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(config.run.seed)
    use_deepspeed = config.deepspeed.enabled
    dtype = "bfloat16" if use_deepspeed and config.deepspeed.bf16 else config.model.dtype
    model, processor = load_vlm(loop_config["base_model"], config.lora, dtype=dtype, device=str(device),
                                vision=config.model.vision)
    model.train()
    from gleam.explain.vision import auxiliary_loss, auxiliary_targets, find_tower

    has_tower = find_tower(model) is not None
    teacher_rng = torch.Generator().manual_seed(config.run.seed * 1000 + rank)

    def epoch_examples(epoch: int) -> list[Any]:
        return warm_examples if epoch < config.train.verdict_only_epochs and warm_examples else train_examples

    def batches(epoch: int) -> list[np.ndarray]:
        return _epoch_batches(len(epoch_examples(epoch)), epoch, config.run.seed, rank, world,
                              config.train.per_worker_batch, config.train.max_steps_per_epoch)

    total_steps = sum(len(batches(epoch)) for epoch in range(config.train.epochs))
    params = [p for p in model.parameters() if p.requires_grad]
    state: dict[str, Any] = {"epoch": -1, "global_step": 0, "history": []}
    checkpoint = ray.train.get_checkpoint()
    zero_stage = config.deepspeed.stage if use_deepspeed else 0
    if use_deepspeed:
        if device.type == "cpu":  # DeepSpeed's CPU accelerator (gloo, C++ ops built on first use)
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed

        if checkpoint is not None:
            # weights go in before DeepSpeed copies (ZeRO-3: partitions) them into its optimizer;
            # its optimizer moments and LR position are not in the checkpoint and start afresh
            with checkpoint.as_directory() as folder:
                state = _load_checkpoint(folder, model)
            log.warning("rank %d resumed after epoch %d with DeepSpeed: weights restored, optimizer "
                        "moments and the LR schedule start afresh", rank, state["epoch"])
        ds_config = deepspeed_config(config.deepspeed, config.train.per_worker_batch, config.optim, total_steps)
        engine, optimizer, _, scheduler = deepspeed.initialize(model=model, model_parameters=params,
                                                               config=ds_config)
        wrapped = engine
    else:
        from gleam.core.phases import cosine_with_warmup

        optimizer = torch.optim.AdamW(params, lr=config.optim.lr, weight_decay=config.optim.weight_decay)
        scheduler = cosine_with_warmup(optimizer, total_steps, config.optim.warmup_steps, config.optim.min_lr_ratio)
        wrapped = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"broadcast_buffers": False})
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                state = _load_checkpoint(folder, unwrap(wrapped), optimizer, scheduler)
            log.info("rank %d resumed after epoch %d (step %d)", rank, state["epoch"], state["global_step"])

    for epoch in range(state["epoch"] + 1, config.train.epochs):
        started = time.perf_counter()
        losses = []
        aux_parts: dict[str, list[float]] = {}
        examples = epoch_examples(epoch)
        for indices in batches(epoch):
            chosen = [examples[i] for i in indices]
            batch = _to_device(collate(chosen, processor, config.model.image_size, config.model.max_length), device)
            if has_tower:
                targets = auxiliary_targets(chosen)
                find_tower(unwrap(wrapped)).set_teacher(*targets, generator=teacher_rng)
            loss = answer_loss(wrapped, batch, config.train.loss_reduction)
            if has_tower:  # the match and fact heads of the GLEAM-C vision tower (same forward)
                aux, parts = auxiliary_loss(unwrap(wrapped), *targets)
                if aux is not None:
                    loss = loss + aux
                for key, value in parts.items():
                    aux_parts.setdefault(key, []).append(value)
            if use_deepspeed:
                wrapped.backward(loss)
                wrapped.step()
            else:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.optim.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, config.optim.grad_clip)
                optimizer.step()
                scheduler.step()
            losses.append(float(loss.detach()))
            state["global_step"] += 1
        seconds = time.perf_counter() - started
        loss_mean = torch.tensor([float(np.mean(losses))], dtype=torch.float64)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(loss_mean)
            loss_mean /= world
        metrics: dict[str, Any] = {
            "epoch": epoch, "global_step": state["global_step"], "loss": float(loss_mean[0]),
            "task": "verdict" if examples is warm_examples else "all",
            "lr": float(optimizer.param_groups[0]["lr"]),
            "train_examples_per_second": len(losses) * config.train.per_worker_batch * world / seconds,
            **{key: float(np.mean(values)) for key, values in aux_parts.items()},
        }
        every = config.train.eval_every
        if val_examples and every and ((epoch + 1) % every == 0 or epoch == config.train.epochs - 1):
            metrics["val_loss"] = _validation_loss(wrapped, processor, val_examples, config, device, rank, world)
        state["epoch"] = epoch
        state["history"].append(metrics)
        # ZeRO-3 gathers the partitioned weights collectively (every rank); otherwise rank 0 reads them
        weights = _gathered_trainable_state(unwrap(wrapped), zero_stage) if zero_stage == 3 or rank == 0 else None
        with tempfile.TemporaryDirectory() as folder:
            if rank == 0:
                _save_checkpoint(folder, unwrap(wrapped), None if use_deepspeed else optimizer,
                                 None if use_deepspeed else scheduler, state, weights)
                storage.write_text(storage.join(config.run_dir(), "metrics.jsonl"),
                                   "".join(json.dumps(r) + "\n" for r in state["history"]))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if rank == 0 else None)


# --------------------------------------------------------------------------- driver


def _is_shard_dataset(source: str) -> bool:
    return storage.exists(storage.join(source, "manifest.json"))


def _read_split(source: str, split: str, modalities: list[str]) -> list[Any]:
    """Every sample of ``split`` (query modalities and satellite distractors) via Ray Data."""
    from gleam.data.pipeline import read_samples
    from gleam.data.schema import SATELLITE_ONLY, Sample
    from gleam.data.shards import read_manifest

    manifest = read_manifest(source)
    if not manifest.get("splits", {}).get(split):
        raise ValueError(f"{source}: no samples in split {split!r} (the manifest has {manifest.get('splits')})")
    reader = read_samples(source, split=split, modalities=[*modalities, SATELLITE_ONLY], decode=False)
    samples = []
    for row in reader.dataset.iter_rows():
        samples.append(Sample(key=row["key"], location_id=row["location_id"], modality=row["modality"],
                              satellite_image=row["satellite"], query_image=row["query"],
                              latitude=row["latitude"], longitude=row["longitude"], heading=row["heading"],
                              split=row["split"], source=row["source"], metadata=json.loads(row["metadata"])))
    report = reader.report()
    if report.get("corrupt"):
        log.warning("%s split %s: %d corrupt samples skipped (%s)", source, split, report["corrupt"],
                    report.get("corrupt_by_field"))
    samples.sort(key=lambda s: s.key)
    return samples


def _hard_neighbours(checkpoint: str, samples: list[Any]) -> dict[str, list[str]]:
    """GLEAM-C's most similar wrong satellite tiles per query location."""
    from gleam.explain.dataset import hard_neighbours_from_embeddings
    from gleam.retrieval.embed import Embedder

    embedder = Embedder(checkpoint, device="cpu")
    satellites: dict[str, Any] = {}
    for sample in samples:
        satellites.setdefault(sample.location_id, sample)
    sat_ids = sorted(satellites)
    queries = [s for s in samples if s.query_image is not None]
    sat_emb = embedder.embed([satellites[i].satellite_array() for i in sat_ids], "satellite")
    query_emb = np.zeros((len(queries), sat_emb.shape[1]), dtype=np.float32)
    by_modality: dict[str, list[int]] = {}
    for position, sample in enumerate(queries):
        by_modality.setdefault(sample.modality, []).append(position)
    for modality, positions in by_modality.items():
        query_emb[positions] = embedder.embed([queries[p].query_array() for p in positions], modality)
    return hard_neighbours_from_embeddings([q.location_id for q in queries], query_emb, sat_ids, sat_emb, k=5)


def build_datasets(config: TrainExplainConfig) -> tuple[list[Any], list[Any], list[Any], dict[str, Any]]:
    """(train examples, validation examples, fit examples, a report of how they were made).

    The fit set pairs the training locations' views again with freshly drawn negatives (other
    seed): verdicts there show what the model learned about the places it trained on, while the
    validation split (other regions) shows whether that transfers. Empty for conversation data.
    """
    from gleam.explain.dataset import build_examples, load_conversations, write_conversations

    data = config.data
    report: dict[str, Any] = {"source": data.source}
    if _is_shard_dataset(data.source):
        splits = {}
        for name, split in (("train", data.train_split), ("val", data.val_split)):
            samples = _read_split(data.source, split, list(data.modalities))
            neighbours = _hard_neighbours(data.retrieval_checkpoint, samples) if data.retrieval_checkpoint else None
            options = dict(languages=tuple(data.languages), negatives_per_positive=data.negatives_per_positive,
                           hard_fraction=data.hard_fraction if neighbours else 0.0, hard_neighbours=neighbours)
            splits[name] = build_examples(samples, **options, seed=config.run.seed + (name == "val"),
                                          verdict_only_fraction=data.verdict_only_fraction if name == "train" else 0.0)
            if name == "train":
                fresh = build_examples(samples, **options, seed=config.run.seed + 1000)
                seen = {(e.location_id, e.modality, e.satellite_location_id) for e in splits[name]}
                splits["fit"] = [e for e in fresh if e.match or
                                 (e.location_id, e.modality, e.satellite_location_id) not in seen]
        train, val, fit = splits["train"], splits["val"], splits["fit"]
        folder = storage.join(config.run_dir(), "data")
        write_conversations(train, folder, "train")
        write_conversations(val, folder, "val")
        report.update({"format": "shards", "exported_to": folder,
                       "hard_negatives": bool(data.retrieval_checkpoint)})
    else:
        if data.verdict_only_fraction:
            log.warning("data.verdict_only_fraction=%s applies to shard sources; conversation data %s is used "
                        "as written (add verdict-only records to it instead)", data.verdict_only_fraction, data.source)
        train = _loaded(load_conversations(data.source, split=data.train_split), report, "train")
        val = _loaded(load_conversations(data.source, split=data.val_split), report, "val")
        fit = []
        report["format"] = "conversations"
    rng = np.random.default_rng(config.run.seed)
    if data.max_train_examples and len(train) > data.max_train_examples:
        train = [train[i] for i in sorted(rng.choice(len(train), data.max_train_examples, replace=False))]
    if data.max_val_examples and len(val) > data.max_val_examples:
        val = [val[i] for i in sorted(rng.choice(len(val), data.max_val_examples, replace=False))]
    if data.max_val_examples and len(fit) > data.max_val_examples:
        fit = [fit[i] for i in sorted(rng.choice(len(fit), data.max_val_examples, replace=False))]
    explain = [e for e in train if getattr(e, "task", "explain") == "explain"]
    report.update({"train_examples": len(train), "val_examples": len(val), "fit_examples": len(fit),
                   "train_verdict_only_examples": len(train) - len(explain),
                   "train_match_fraction": float(np.mean([e.match for e in explain])) if explain else None})
    return train, val, fit, report


def warm_start_examples(train: list[Any], seed: int) -> list[Any]:
    """The label-only warm start's examples, in ``train``'s order: the label-only examples already
    there, and the verdict-only twin (phrasing drawn per twin) of every explanation example that
    has none yet (``data.verdict_only_fraction`` twins are not doubled)."""
    import random

    from gleam.explain.dataset import label_only_examples

    return label_only_examples(train, random.Random(seed + 2))


def _loaded(examples: Any, report: dict[str, Any], name: str) -> list[Any]:
    load_report = getattr(examples, "report", None)
    if load_report is not None:
        report[f"{name}_load_report"] = load_report.to_json()
    return list(examples)


def _corpus(examples: list[Any]) -> list[str]:
    texts = []
    for example in examples:
        texts.append(example.instruction)
        texts.append(example.answer)
    return texts


def _base_model(config: TrainExplainConfig, train: list[Any]) -> str:
    from gleam.explain.model import resolve_model_path

    if config.model.path:
        return config.model.path
    if not config.model.cache_dir and not storage.is_remote(config.run.output_dir):
        config.model.cache_dir = os.path.abspath(os.path.join(config.run.output_dir, "_models"))
    return resolve_model_path(config.model, _corpus(train))


def train_explain(config: TrainExplainConfig) -> dict[str, Any]:
    """Build the data, fine-tune on Ray Train, save adapter + merged model, evaluate. Ray must be up."""
    import ray

    from gleam.core.train import plot_history
    from gleam.explain.evaluate import evaluate_examples
    from gleam.explain.model import load_vlm, merge_and_save, save_adapter
    from gleam.runtime import torch_trainer

    _check(config)
    run_dir = config.run_dir()
    storage.makedirs(run_dir)
    started = time.perf_counter()
    train, val, fit, data_report = build_datasets(config)
    warm = warm_start_examples(train, config.run.seed) if config.train.verdict_only_epochs else []
    data_report["warm_start_examples"] = len(warm)
    base = _base_model(config, train + warm)
    save_config(config, run_dir)
    log.info("GLEAM-X: %d train / %d val examples, base model %s", len(train), len(val), base)
    from gleam.progress import RunMonitor, flat_params, generic_epoch_line

    monitor = RunMonitor(run_dir, config.tracking, generic_epoch_line(config.train.epochs), flat_params(config),
                         config.run.name)
    trainer = torch_trainer(
        train_loop, {"config": config, "train_ref": ray.put(train), "val_ref": ray.put(val),
                     "warm_ref": ray.put(warm) if warm else None, "base_model": base},
        name=config.run.name, storage_path=config.train.storage_path or config.run.output_dir,
        ray_config=config.ray, max_failures=config.train.max_failures,
        checkpoints_to_keep=config.train.checkpoints_to_keep, callbacks=[monitor.callback])
    with monitor:
        result = trainer.fit()
    if result.checkpoint is None:
        monitor.close_mlflow(ok=False)
        raise RuntimeError(f"GLEAM-X training produced no checkpoint (error: {result.error})")
    model, processor = load_vlm(base, config.lora, dtype="float32", device="cpu", vision=config.model.vision)
    with result.checkpoint.as_directory() as folder:
        history = _load_checkpoint(folder, model)["history"]
    meta = {"gleam_image_size": config.model.image_size, "languages": list(config.data.languages),
            "base_model": base, "max_length": config.model.max_length,
            "vision": _vision_record(config)}
    adapter_dir = storage.join(run_dir, "adapter")
    final_dir = storage.join(run_dir, "final")
    save_adapter(model, processor, adapter_dir)
    merged = merge_and_save(model, processor, final_dir)
    for folder in (adapter_dir, final_dir):
        storage.write_json(storage.join(folder, EXPLAIN_META), meta)
    plot_history([{**h, "phase": 0} for h in history], storage.join(run_dir, "plots"))
    model.eval()
    evaluation = {}
    for name, examples in (("val", val), ("fit", fit)):
        if examples:
            evaluation[name] = evaluate_examples(model, processor, examples, image_size=config.model.image_size,
                                                 max_new_tokens=config.train.max_new_tokens,
                                                 batch_size=config.train.eval_batch)
    storage.write_json(storage.join(run_dir, "eval.json"), evaluation)
    summary = {
        "run_dir": run_dir, "seconds": round(time.perf_counter() - started, 1), "epochs": len(history),
        "final": history[-1] if history else {}, "data": data_report, "base_model": base,
        "adapter": adapter_dir, "merged_model": merged, "checkpoint": result.checkpoint.path,
        "eval": {name: {k: report[k] for k in ("match", "majority_baseline", "parse_rate", "well_formed_rate",
                                                "language_consistency", "text", "faithfulness", "verdict_only",
                                                "match_head")
                        if k in report}
                 for name, report in evaluation.items()},
    }
    storage.write_json(storage.join(run_dir, "summary.json"), summary)
    monitor.close_mlflow(None if storage.is_remote(run_dir) else run_dir)
    return summary


def _vision_record(config: TrainExplainConfig) -> dict[str, Any]:
    """Which image tokens the model reads, and the GLEAM-C checkpoint (path, sha256) behind them."""
    from dataclasses import asdict

    vision = config.model.vision
    record: dict[str, Any] = asdict(vision)
    if vision.enabled():
        import hashlib

        from gleam.core.model import WEIGHTS_NAME
        from gleam.explain.vision import resolve_gleam_c

        path = resolve_gleam_c(vision.checkpoint)
        with open(os.path.join(path, WEIGHTS_NAME), "rb") as handle:
            record["checkpoint_sha256"] = hashlib.sha256(handle.read()).hexdigest()
        record["checkpoint_path"] = path
    return record


def _check(config: TrainExplainConfig) -> None:
    from gleam.data.schema import check_query_modalities
    from gleam.explain.prompts import LANGUAGES
    from gleam.explain.vision import check_vision_settings, resolve_gleam_c

    check_vision_settings(config.model.vision)
    if config.model.vision.enabled():
        # resolved on the driver (a name under models/, or a path against the launch directory):
        # a missing checkpoint fails here, before Ray work, and workers get an absolute path
        config.model.vision.checkpoint = os.path.abspath(resolve_gleam_c(config.model.vision.checkpoint))
        if not config.data.retrieval_checkpoint:  # hard negatives from the same GLEAM-C
            config.data.retrieval_checkpoint = config.model.vision.checkpoint
        if config.lora.enabled and not config.lora.train_projector:
            raise ValueError("lora.train_projector: false, but model.vision.source is 'gleam_c': the tower's "
                             "projector and match/fact heads (its `merger`) must train; set lora.train_projector: true")

    check_query_modalities(config.data.modalities, "data.modalities")
    bad = [lang for lang in config.data.languages if lang not in LANGUAGES]
    if bad:
        raise ValueError(f"data.languages: {bad} unsupported; choose from {list(LANGUAGES)}")
    if not config.data.languages:
        raise ValueError("data.languages: name at least one language")
    if not 0.0 <= config.data.verdict_only_fraction <= 1.0:
        raise ValueError(f"data.verdict_only_fraction: {config.data.verdict_only_fraction} is outside [0, 1] "
                         "(the share of training pairs also given as verdict-only examples)")
    _check_loss_reduction(config.train.loss_reduction)
    if not 0 <= config.train.verdict_only_epochs <= config.train.epochs:
        raise ValueError(f"train.verdict_only_epochs: {config.train.verdict_only_epochs} must lie in "
                         f"[0, train.epochs={config.train.epochs}] (the first epochs that train on "
                         "verdict-only twins of the pairs)")
    if config.deepspeed.enabled and config.ray.gpus_per_worker <= 0:
        log.warning("deepspeed.enabled without GPUs: workers use DeepSpeed's CPU accelerator (gloo; it "
                    "builds C++ ops with g++ on first use, about a minute) and it is slower than DDP, the "
                    "CPU default; set deepspeed.bf16=false unless the CPU has fast bfloat16")
