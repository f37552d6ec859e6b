"""GLEAM-C training on Ray Train: shared encoder, symmetric InfoNCE, two phases, DSS batches.

Driver side (``train_core``): read the train and validation splits from shards into
``TrainingSet``s (Ray Data), start a ``TorchTrainer`` whose workers run ``train_loop``, then
write plots next to the metrics.  Worker side (``train_loop``): every epoch the batch planner
(``gleam.data.sampling``) lays out the global batches, each rank trains on its slice (features
all-gathered in the loss), evaluates on the validation split, and reports metrics with a
checkpoint.  A restarted worker group (FailureConfig) or a re-submitted job with the same run
name resumes from the latest checkpoint: phase, epoch, optimizer, scheduler and sampler state.

Run folder ``{run.output_dir}/{run.name}/``: ``config.yaml``, ``metrics.jsonl``,
``summary.json``, ``plots/*.png``, ``final/`` (the last encoder), and Ray Train's checkpoints.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from gleam import storage
from gleam.config import InputPath, OutputPath, RayConfig, RunConfig, TrackingConfig, save_config
from gleam.core.model import GleamEncoder, ModelConfig
from gleam.core.phases import PhaseConfig, cosine_with_warmup, default_phases
from gleam.data.transforms import AugmentConfig

log = logging.getLogger(__name__)


@dataclass
class DataSection:
    dataset: InputPath = "data/synth"  # folder or s3:// URL with manifest.json
    train_split: str = "train"
    val_split: str = "val"
    val_distractors: bool = True  # add the split's distractor tiles to the validation gallery


@dataclass
class OptimSection:
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    amp: bool = False  # bfloat16 autocast on GPU workers


@dataclass
class TrainSection:
    global_batch: int = 32
    max_steps_per_epoch: int | None = None  # cap for smoke runs
    eval_every: int = 1  # epochs; 0: only after the last epoch (if final_eval)
    final_eval: bool = True
    eval_batch: int = 64
    checkpoints_to_keep: int = 2
    max_failures: int = 2  # worker-group restarts Ray Train may do (FailureConfig)
    storage_path: OutputPath | None = None  # where Ray Train keeps checkpoints; default: the run folder
    # Feature cache (gradient caching, gleam.core.feature_cache): embed the local batch without
    # gradients, then re-embed this many pairs at a time with gradients. Same gradients as one big
    # batch, activation memory of one chunk. None: one forward over the local batch.
    feature_cache_chunk: int | None = None


@dataclass
class TrainCoreConfig:
    """Root config of ``jobs/train_core.py``."""

    kind: str = "train_core"
    run: RunConfig = field(default_factory=RunConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    data: DataSection = field(default_factory=DataSection)
    model: ModelConfig = field(default_factory=ModelConfig)
    phases: list[PhaseConfig] = field(default_factory=default_phases)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def run_dir(self) -> str:
        return storage.join(self.run.output_dir, self.run.name)


# --------------------------------------------------------------------------- encoding helpers


def encode_images(model: torch.nn.Module, images: list[np.ndarray], device: torch.device,
                  mean: tuple, std: tuple) -> torch.Tensor:
    """Embed a list of images of possibly different sizes (grouped by shape), in input order."""
    from gleam.data.transforms import to_tensor

    groups: dict[tuple[int, ...], list[int]] = {}
    for position, image in enumerate(images):
        groups.setdefault(image.shape, []).append(position)
    embeddings: list[torch.Tensor | None] = [None] * len(images)
    for positions in groups.values():
        batch = to_tensor([images[p] for p in positions], mean, std).to(device)
        output = model(batch)
        for position, row in zip(positions, output):
            embeddings[position] = row
    return torch.stack(embeddings)  # type: ignore[arg-type]


@torch.no_grad()
def embed_rows(model: torch.nn.Module, dataset: Any, rows: np.ndarray, view: str, batch_size: int,
               device: torch.device, mean: tuple, std: tuple, tta: Any = None) -> np.ndarray:
    """Embeddings of ``rows`` of a TrainingSet; ``view`` is "query" or "satellite"; ``tta``
    (``gleam.core.tta.TTAConfig``) averages flipped / rescaled variants. The model's train/eval
    mode is restored afterwards."""
    from gleam.core.tta import encode_with_tta

    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(rows), batch_size):
        items = dataset.fetch(rows[start:start + batch_size], query=view == "query", satellite=view == "satellite")
        kinds = [item["modality"] if view == "query" else "satellite" for item in items]
        out.append(encode_with_tta(model, [item[view] for item in items], kinds, device, mean, std, tta)
                   .float().cpu().numpy())
    model.train(was_training)
    dim = getattr(model, "embedding_dim", None) or getattr(getattr(model, "module", None), "embedding_dim", 0)
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


def _gather_rows(array: np.ndarray, rank_rows: list[np.ndarray]) -> np.ndarray:
    """All ranks' pieces (rank r embedded rows[r::world]) back in the original row order."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return array
    pieces: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(pieces, array)
    total = sum(len(p) for p in pieces)
    ordered = np.zeros((total, array.shape[1]), dtype=array.dtype)
    for rank, piece in enumerate(pieces):
        ordered[rank_rows[rank]] = piece
    return ordered


def distributed_embed(model, dataset, rows: np.ndarray, view: str, batch_size: int, device, mean, std,
                      rank: int, world: int, tta: Any = None) -> np.ndarray:
    """Each rank embeds every world-th row; everyone gets all embeddings in row order."""
    positions = [np.arange(r, len(rows), world) for r in range(world)]
    mine = embed_rows(model, dataset, rows[positions[rank]], view, batch_size, device, mean, std, tta)
    return _gather_rows(mine, positions)


def evaluate_split(model, dataset: Any, batch: int, device, mean, std, rank: int = 0,
                   world: int = 1) -> dict[str, Any]:
    """Retrieval metrics of a TrainingSet's queries against its gallery, both directions, per
    modality (each rank embeds a share; every rank gets the metrics).  The set's evaluation
    protocol (if any) picks queries and galleries; semi-positives give VIGOR's hit rate."""
    from gleam.core.evaluate import evaluate_dataset

    metrics = evaluate_dataset(model, dataset, batch, device, mean, std, rank, world)
    metrics.pop("counts", None)
    return metrics


# --------------------------------------------------------------------------- one step


def train_step(model: torch.nn.Module, logit_scale: torch.Tensor, items: list[dict[str, Any]],
               optimizer: torch.optim.Optimizer, scheduler: Any, config: TrainCoreConfig,
               device: torch.device, mean: tuple, std: tuple, rng: np.random.Generator) -> float:
    """Augment, encode, symmetric InfoNCE, backward, clip, step. Returns the loss."""
    from gleam.core.loss import symmetric_infonce
    from gleam.data.transforms import augment_pair

    queries, satellites = [], []
    for item in items:
        query, satellite = augment_pair(item["query"], item["satellite"], item["modality"], rng, config.augment)
        queries.append(query)
        satellites.append(satellite)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                              enabled=config.optim.amp and device.type == "cuda")
    if config.train.feature_cache_chunk:
        from functools import partial

        from gleam.core.feature_cache import cached_contrastive_step

        optimizer.zero_grad(set_to_none=True)
        loss_value = cached_contrastive_step(
            model, logit_scale, lambda images: encode_images(model, list(images), device, mean, std),
            queries, satellites, partial(symmetric_infonce, label_smoothing=config.optim.label_smoothing,
                                         max_logit_scale=config.model.max_logit_scale),
            config.train.feature_cache_chunk, device, autocast)
        if config.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        return loss_value
    with autocast:
        query_embeddings = encode_images(model, queries, device, mean, std)
        satellite_embeddings = encode_images(model, satellites, device, mean, std)
        loss = symmetric_infonce(query_embeddings.float(), satellite_embeddings.float(), logit_scale,
                                 label_smoothing=config.optim.label_smoothing,
                                 max_logit_scale=config.model.max_logit_scale)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.optim.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
    optimizer.step()
    scheduler.step()
    return float(loss.detach())


# --------------------------------------------------------------------------- worker loop


def _phase_rows(dataset: Any, phase: PhaseConfig) -> np.ndarray:
    wanted = set(phase.modalities)
    rows = np.array([r for r in dataset.query_rows() if dataset.modalities[r] in wanted], dtype=np.int64)
    if len(rows) == 0:
        raise ValueError(f"phase '{phase.name}': no training samples of modalities {phase.modalities}")
    return rows


def _sub_index(dataset: Any, rows: np.ndarray) -> Any:
    from gleam.data.sampling import SampleIndex

    return SampleIndex([dataset.location_ids[r] for r in rows], [dataset.modalities[r] for r in rows],
                       dataset.latitudes[rows], dataset.longitudes[rows])


def _neighbours(phase: PhaseConfig, phase_index: int, epoch: int, model, dataset, rows: np.ndarray,
                config: TrainCoreConfig, device, mean, std, rank: int, world: int) -> dict[str, list[str]] | None:
    """Hard-negative neighbours for this epoch (DSS: from the current model's satellite embeddings)."""
    from gleam.data.sampling import gps_neighbours, similarity_neighbours

    mode = phase.sampling.hard_negatives
    if mode == "gps":
        return gps_neighbours([dataset.location_ids[r] for r in rows], dataset.latitudes[rows],
                              dataset.longitudes[rows], phase.sampling.neighbours)
    if mode == "dss" and (epoch > 0 or phase_index > 0):  # a random model's similarities mean nothing
        first: dict[str, int] = {}
        for row in rows:
            first.setdefault(dataset.location_ids[row], int(row))
        gallery = np.array(list(first.values()), dtype=np.int64)
        embeddings = distributed_embed(model, dataset, gallery, "satellite", config.train.eval_batch,
                                       device, mean, std, rank, world)
        return similarity_neighbours(list(first), embeddings, phase.sampling.neighbours)
    return None


def _mean_across_ranks(value: float) -> float:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item() / dist.get_world_size())


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}/{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def _register_worker(config: TrainCoreConfig, rank: int) -> None:
    """Record this worker's pid under the run folder (operators and the failure test use it)."""
    folder = os.path.join(os.path.abspath(config.run.output_dir), config.run.name, "workers")
    if storage.is_remote(config.run.output_dir):
        return
    os.makedirs(folder, exist_ok=True)
    storage.write_text(os.path.join(folder, f"rank{rank}.pid"), str(os.getpid()))


def train_loop(loop_config: dict[str, Any]) -> None:
    """The Ray Train worker function (see module docstring)."""
    import ray.train
    import ray.train.torch

    from gleam.core.checkpoint import load_trainer_state, restore_checkpoint, save_checkpoint
    from gleam.data.sampling import plan_epoch

    config: TrainCoreConfig = loop_config["config"]
    train_set, val_set = loop_config["train_set"], loop_config["val_set"]
    from gleam.runtime import quiet_train_worker

    quiet_train_worker(config.ray.log_level)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    _register_worker(config, rank)
    device = ray.train.torch.get_device()
    torch.manual_seed(config.run.seed)
    encoder = GleamEncoder(config.model)
    data_config = encoder.data_config()
    mean, std = tuple(data_config["mean"]), tuple(data_config["std"])
    # Ranks may run different numbers of forward passes per step (one per image size in a mixed
    # batch), so DDP must not sync BatchNorm buffers inside forward (a collective per call); it
    # still syncs them once at start. channels_last: the images arrive NHWC (to_tensor permutes)
    # and ConvNeXt blocks permute back, so conv weight gradients come out channels_last; weights in
    # the same layout keep them matching DDP's gradient buckets (no copy, no stride warning).
    encoder = encoder.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(encoder, parallel_strategy_kwargs={"forward_sync_buffers": False})

    checkpoint = ray.train.get_checkpoint()
    state: dict[str, Any] = {"phase": 0, "epoch": -1, "global_step": 0, "history": []}
    checkpoint_dir = None
    if checkpoint is not None:
        checkpoint_dir = checkpoint.to_directory()
        state = load_trainer_state(checkpoint_dir)
        restore_checkpoint(checkpoint_dir, encoder, None)
        log.info("rank %d resumed at phase %d epoch %d", rank, state["phase"], state["epoch"] + 1)

    optimizer = None
    for phase_index in range(state["phase"], len(config.phases)):
        phase = config.phases[phase_index]
        start_epoch = state["epoch"] + 1 if phase_index == state["phase"] else 0
        rows = _phase_rows(train_set, phase)
        index = _sub_index(train_set, rows)
        steps = len(plan_epoch(index, phase.sampling, epoch=0, seed=config.run.seed,
                               global_batch=config.train.global_batch, world_size=world))
        steps = min(steps, config.train.max_steps_per_epoch or steps)
        if steps == 0:
            raise ValueError(f"phase '{phase.name}': {len(rows)} samples do not fill one global batch "
                             f"of {config.train.global_batch}")
        carried = optimizer is not None and "optimizer" in phase.carry_over
        if not carried:
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=phase.lr,
                                          weight_decay=config.optim.weight_decay)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] = phase.lr
        scheduler = cosine_with_warmup(optimizer, steps * phase.epochs, phase.warmup_steps, phase.min_lr_ratio)
        if checkpoint_dir is not None and phase_index == state["phase"] and start_epoch > 0:
            restore_checkpoint(checkpoint_dir, None, optimizer, scheduler)  # weights: loaded above
        elif phase_index > 0 and start_epoch == 0 and "logit_scale" not in phase.carry_over:
            with torch.no_grad():
                encoder.logit_scale.fill_(config.model.logit_scale_init)
        if start_epoch >= phase.epochs:
            state["epoch"] = -1
            continue
        for epoch in range(start_epoch, phase.epochs):
            started = time.perf_counter()
            neighbours = _neighbours(phase, phase_index, epoch, encoder, train_set, rows, config,
                                     device, mean, std, rank, world)
            plan = plan_epoch(index, phase.sampling, epoch=phase_index * 10_000 + epoch, seed=config.run.seed,
                              global_batch=config.train.global_batch, world_size=world,
                              neighbours=neighbours)[:steps]
            rng = np.random.default_rng([config.run.seed, phase_index, epoch, rank])
            losses = []
            for step in plan:
                items = train_set.fetch(rows[step[rank]])
                losses.append(train_step(model, encoder.logit_scale, items, optimizer, scheduler, config,
                                         device, mean, std, rng))
                state["global_step"] += 1
            seconds = time.perf_counter() - started
            metrics: dict[str, Any] = {
                "phase": phase_index, "epoch": epoch, "global_step": state["global_step"],
                "loss": _mean_across_ranks(float(np.mean(losses))),
                "lr": optimizer.param_groups[0]["lr"],
                "logit_scale": float(encoder.logit_scale.detach().exp()),
                "train_samples_per_second": len(plan) * config.train.global_batch / seconds,
                "hard_negative_neighbours": 0 if neighbours is None else len(neighbours),
            }
            last_epoch = phase_index == len(config.phases) - 1 and epoch == phase.epochs - 1
            every = config.train.eval_every
            if (every and (epoch + 1) % every == 0 and not last_epoch) or (last_epoch and config.train.final_eval):
                metrics.update(flatten_metrics(evaluate_split(encoder, val_set, config.train.eval_batch, device, mean, std,
                                                              rank, world), "val"))
            state.update({"phase": phase_index, "epoch": epoch})
            state["history"].append(metrics)
            with tempfile.TemporaryDirectory() as folder:
                if rank == 0:
                    save_checkpoint(folder, encoder, optimizer, scheduler, state)
                    _write_metrics(config, state["history"])
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if rank == 0 else None)
        state["epoch"] = -1


def _write_metrics(config: TrainCoreConfig, history: list[dict[str, Any]]) -> None:
    import json

    text = "".join(json.dumps(record) + "\n" for record in history)
    storage.write_text(storage.join(config.run_dir(), "metrics.jsonl"), text)


# --------------------------------------------------------------------------- driver


def load_splits(config: TrainCoreConfig) -> tuple[Any, Any]:
    """Train and validation TrainingSets at the encoder's input sizes."""
    from gleam.data.pipeline import build_training_set
    from gleam.data.schema import query_modalities

    modalities = sorted({m for phase in config.phases for m in phase.modalities})
    unknown = [m for m in modalities if m not in query_modalities()]
    if unknown:
        raise ValueError(f"phases name unknown modalities {unknown}; known: {list(query_modalities())}")
    sizes = {m: config.model.input_size(m) for m in modalities}
    satellite = config.model.input_size("satellite")
    train_set = build_training_set(config.data.dataset, split=config.data.train_split, modalities=modalities,
                                   sizes=sizes, satellite_size=satellite)
    val_set = build_training_set(config.data.dataset, split=config.data.val_split, modalities=modalities,
                                 sizes=sizes, satellite_size=satellite,
                                 include_distractors=config.data.val_distractors, evaluation=True)
    return train_set, val_set


def make_trainer(config: TrainCoreConfig, train_set: Any, val_set: Any, callbacks: list[Any] | None = None) -> Any:
    """The TorchTrainer of a run (shared by ``train_core`` and the Tune sweep)."""
    from gleam.runtime import torch_trainer

    return torch_trainer(train_loop, {"config": config, "train_set": train_set, "val_set": val_set},
                         name=config.run.name, storage_path=config.train.storage_path or config.run.output_dir,
                         ray_config=config.ray, max_failures=config.train.max_failures,
                         checkpoints_to_keep=config.train.checkpoints_to_keep, callbacks=callbacks)


def train_core(config: TrainCoreConfig) -> dict[str, Any]:
    """Run GLEAM-C training; Ray must be initialised. Returns the run summary."""
    run_dir = config.run_dir()
    storage.makedirs(run_dir)
    save_config(config, run_dir)
    started = time.perf_counter()
    train_set, val_set = load_splits(config)
    log.info("training set: %d samples, validation: %d (read report: %s)", len(train_set), len(val_set),
             train_set.read_report["corrupt_by_field"] or "clean")
    from gleam.progress import RunMonitor, flat_params

    with RunMonitor(run_dir, config.tracking, epoch_line(config), flat_params(config), config.run.name) as monitor:
        result = make_trainer(config, train_set, val_set, callbacks=[monitor.callback]).fit()
    if result.checkpoint is None:
        monitor.close_mlflow(ok=False)
        raise RuntimeError(f"training produced no checkpoint (error: {result.error})")
    with result.checkpoint.as_directory() as folder:
        GleamEncoder.from_pretrained(folder).save_pretrained(storage.join(run_dir, "final"))
        from gleam.core.checkpoint import load_trainer_state

        history = load_trainer_state(folder)["history"]
    plot_history(history, storage.join(run_dir, "plots"))
    summary = {
        "run_dir": run_dir, "seconds": round(time.perf_counter() - started, 1),
        "epochs": len(history), "final": history[-1] if history else {},
        "train_samples": len(train_set), "val_samples": len(val_set),
        "read_report": {"train": train_set.read_summary(), "val": val_set.read_summary()},
        "checkpoint": result.checkpoint.path,
    }
    storage.write_json(storage.join(run_dir, "summary.json"), summary)
    monitor.close_mlflow(None if storage.is_remote(run_dir) else run_dir)
    return summary


def epoch_line(config: TrainCoreConfig):
    """The driver's one line per reported epoch (gleam.progress.RunMonitor's printer)."""
    total = sum(p.epochs for p in config.phases)

    def line(index: int, metrics: dict[str, Any]) -> str:
        phase_index, epoch = int(metrics["phase"]), int(metrics["epoch"])
        phase = config.phases[phase_index]
        done = sum(p.epochs for p in config.phases[:phase_index]) + epoch + 1
        parts = [f"epoch {done}/{total}", f"phase {phase_index + 1}/{len(config.phases)} {phase.name}",
                 f"step {int(metrics['global_step'])}", f"loss {metrics['loss']:.4f}", f"lr {metrics['lr']:.2e}",
                 f"{metrics['train_samples_per_second']:.1f} samples/s"]
        recall = metrics.get("val/query->satellite/all/R@1")
        if recall is not None:
            parts.append(f"val R@1 {recall:.1f} %")
        return " | ".join(parts)

    return line


def plot_history(history: list[dict[str, Any]], folder: str) -> list[str]:
    """loss.png (training loss per epoch) and recall.png (validation R@1 per modality)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    storage.makedirs(folder)
    written = []
    epochs = list(range(1, len(history) + 1))
    figures = {
        "loss.png": ("training loss", {"loss": [h.get("loss") for h in history]}),
        "recall.png": ("validation R@1 (query->satellite)", {
            key.split("/")[2]: [h.get(key) for h in history]
            for key in sorted({k for h in history for k in h})
            if key.startswith("val/query->satellite/") and key.endswith("/R@1")}),
    }
    for name, (title, series) in figures.items():
        figure, axis = plt.subplots(figsize=(6, 4))
        for label, values in series.items():
            points = [(e, v) for e, v in zip(epochs, values) if v is not None]
            if points:
                axis.plot(*zip(*points), marker="o", label=label)
        axis.set_xlabel("epoch")
        axis.set_title(title)
        if series:
            axis.legend()
        with storage.atomic_local_file(storage.join(folder, name), suffix=".png") as tmp:
            figure.savefig(tmp, format="png", dpi=100)
        plt.close(figure)
        written.append(storage.join(folder, name))
    return written
