"""What a training run shows while it runs and writes for experiment tracking, on the driver.

Ray Train hands every ``ray.train.report`` to callbacks in its controller actor, not in the
driver process.  ``RunMonitor`` puts a small ``ReportRelay`` callback there that forwards rank
0's reports through a Ray queue; a thread on the driver takes them off and feeds the sinks:

- a one-line-per-epoch printer (phase/epoch, step, loss, lr, samples/s, validation R@1),
- TensorBoard event files (tensorboardX, installed with Ray) under ``<run>/tensorboard/``,
- MLflow (``tracking.mlflow_uri``: a tracking server URL or a local ``file:`` store), when set.

The full metrics stay in the run's ``metrics.jsonl`` and ``summary.json``; this is the view.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from typing import Any, Callable, TextIO

from ray.train import UserCallback

from gleam.config import TrackingConfig

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
RUN_FILES = ("config.yaml", "summary.json", "metrics.jsonl", "eval.json", "plots")


class ReportRelay(UserCallback):
    """Ray Train controller callback: forwards rank 0's metrics of every report to a queue."""

    def __init__(self, queue: Any):
        self.queue = queue

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if metrics:
            try:
                self.queue.put_nowait(dict(metrics[0]))
            except Exception as error:  # the view must never fail training
                log.debug("report relay: %s", error)


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def tag(key: str) -> str:
    """A metric name as TensorBoard and MLflow accept it: ``val/query->satellite/uav/R@1`` ->
    ``val/query_to_satellite/uav/R_at_1`` (they allow letters, digits, ``_-./`` and spaces)."""
    return key.replace("->", "_to_").replace("@", "_at_").replace("%", "pct")


class TensorBoardSink:
    """Scalars per report, step = ``global_step`` (else the report's index)."""

    def __init__(self, folder: str):
        from tensorboardX import SummaryWriter

        self.folder = folder
        self.writer = SummaryWriter(logdir=folder, flush_secs=5)

    def __call__(self, index: int, metrics: dict[str, Any]) -> None:
        step = int(metrics.get("global_step", index))
        for key, value in numeric(metrics).items():
            self.writer.add_scalar(tag(key), value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MlflowSink:
    """One MLflow run per training run: params from the config, metrics per report, the run's
    small files at the end. Uses ``MlflowClient`` with the run id (the fluent API's active run is
    per thread, and reports arrive on the monitor's thread)."""

    def __init__(self, uri: str, experiment: str, run_name: str, params: dict[str, Any]):
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ValueError(f"tracking.mlflow_uri={uri!r} asks for MLflow, which is not installed: "
                             "`pip install -c constraints.txt mlflow-skinny`, or leave tracking.mlflow_uri "
                             "empty") from None
        if uri.startswith("file:") or "://" not in uri:
            # MLflow 3 keeps the folder store but refuses it unless asked (its default is a
            # database); a plain folder is what a laptop run without a server wants.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        flat = [Param(k, str(v)[:500]) for k, v in params.items()]
        for start in range(0, len(flat), 100):  # MLflow takes at most 100 params per call
            self.client.log_batch(self.run_id, params=flat[start:start + 100])

    def __call__(self, index: int, metrics: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        step = int(metrics.get("global_step", index))
        now = int(time.time() * 1000)
        values = [Metric(tag(k), v, now, step) for k, v in numeric(metrics).items()]
        for start in range(0, len(values), 1000):
            self.client.log_batch(self.run_id, metrics=values[start:start + 1000])

    def log_run_files(self, run_dir: str) -> None:
        """The run's small files (config, summary, metrics, plots; not checkpoints)."""
        for name in RUN_FILES:
            path = os.path.join(run_dir, name)
            if os.path.isfile(path):
                self.client.log_artifact(self.run_id, path)
            elif os.path.isdir(path):
                self.client.log_artifacts(self.run_id, path, artifact_path=name)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


def flat_params(config: Any, prefix: str = "") -> dict[str, Any]:
    """A dataclass config as dotted ``key: value`` pairs (MLflow params)."""
    import dataclasses

    out: dict[str, Any] = {}
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        key = f"{prefix}{item.name}"
        if dataclasses.is_dataclass(value):
            out.update(flat_params(value, key + "."))
        else:
            out[key] = value
    return out


class RunMonitor:
    """Context manager around a ``fit()``: ``callback`` goes into the trainer's RunConfig; every
    report reaches ``printer`` (one line) and the tracking sinks on the driver.

    ``printer(index, metrics) -> str`` formats a report; the line goes to ``stream``.
    """

    def __init__(self, run_dir: str, tracking: TrackingConfig, printer: Callable[[int, dict], str],
                 params: dict[str, Any] | None = None, run_name: str = "", stream: TextIO | None = None):
        from ray.util.queue import Queue

        from gleam import storage

        self.queue = Queue(actor_options={"num_cpus": 0})
        self.callback = ReportRelay(self.queue)
        self.printer, self.stream = printer, stream or sys.stdout
        self.reports: list[dict[str, Any]] = []
        self.sinks: list[Any] = []
        if tracking.tensorboard and not storage.is_remote(run_dir):
            self.sinks.append(TensorBoardSink(os.path.join(run_dir, TENSORBOARD_DIR)))
        self.mlflow = None
        if tracking.mlflow_uri:
            self.mlflow = MlflowSink(tracking.mlflow_uri, tracking.mlflow_experiment,
                                     run_name or os.path.basename(run_dir.rstrip("/")), params or {})
            self.sinks.append(self.mlflow)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gleam-run-monitor", daemon=True)

    def __enter__(self) -> "RunMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if exc[0] is not None:
            self.close_mlflow(ok=False)
        self._thread.join(timeout=30)
        self._drain()
        for sink in self.sinks:
            if sink is not self.mlflow:
                sink.close()
        try:
            self.queue.shutdown()
        except Exception:
            pass

    def close_mlflow(self, artifacts: str | None = None, ok: bool = True) -> None:
        """End the MLflow run (after the summary and plots exist, so they go up with it)."""
        if self.mlflow is not None:
            if artifacts and os.path.isdir(artifacts):
                self.mlflow.log_run_files(artifacts)
            self.mlflow.close("FINISHED" if ok else "FAILED")
            self.mlflow = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._drain()
            self._stop.wait(0.5)

    def _drain(self) -> None:
        while True:
            try:
                items = self.queue.get_nowait_batch(max(1, self.queue.qsize()))
            except Exception:
                return
            if not items:
                return
            for metrics in items:
                self._handle(metrics)

    def _handle(self, metrics: dict[str, Any]) -> None:
        index = len(self.reports)
        self.reports.append(metrics)
        try:
            print(self.printer(index, metrics), file=self.stream, flush=True)
        except Exception as error:
            log.debug("progress line: %s", error)
        for sink in self.sinks:
            try:
                sink(index, metrics)
            except Exception as error:
                log.warning("tracking (%s) failed: %s", type(sink).__name__, error)


def elapsed(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class Clock:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    def __call__(self) -> str:
        return elapsed(time.perf_counter() - self.started)


# --------------------------------------------------------------------------- endings


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain text table (left-aligned first column, right-aligned numbers)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for number, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 0.1 or value == 0 else f"{value:.2g}"
    return str(value)


def chance_recall(k: int, gallery: float) -> float:
    """R@k (%) of a random ranking when each query has one true tile among ``gallery`` tiles."""
    return 100.0 * min(k, gallery) / gallery if gallery else float("nan")


def recall_table(metrics: dict[str, Any], prefix: str, ks: tuple[int, ...] = (1, 5)) -> str:
    """Per query view: R@k beside chance, from flat metrics ``<prefix>/<view>/R@k`` (and
    ``<prefix>/<view>/gallery_size``). Empty when the metrics hold no such keys."""
    views = sorted({k[len(prefix) + 1:].split("/")[0] for k in metrics
                    if k.startswith(prefix + "/") and k.endswith(f"/R@{ks[0]}")}, key=lambda v: (v == "all", v))
    rows = []
    for view in views:
        gallery = metrics.get(f"{prefix}/{view}/gallery_size")
        row: list[Any] = [view, int(metrics[f"{prefix}/{view}/queries"]) if f"{prefix}/{view}/queries" in metrics else None]
        row += [metrics.get(f"{prefix}/{view}/R@{k}") for k in ks]
        row += [chance_recall(k, gallery) if gallery else None for k in ks]
        rows.append(row)
    if not rows:
        return ""
    return table(["view", "queries"] + [f"R@{k} %" for k in ks] + [f"chance R@{k} %" for k in ks], rows)


def ending(title: str, body: str, folder: str | None, next_commands: list[str] | None = None) -> str:
    """The few lines a job ends with: what happened, the answer, where the files are, what next."""
    lines = [title]
    if body:
        lines += ["", body, ""]
    if folder:
        lines.append(f"outputs: {folder}")
    for command in next_commands or []:
        lines.append(f"next:    {command}")
    return "\n".join(lines)


def generic_epoch_line(total_epochs: int, extra: tuple[str, ...] = ("val_loss",)):
    """One line per report from the common keys (epoch, global_step, loss, lr, *_per_second)."""

    def line(index: int, metrics: dict[str, Any]) -> str:
        parts = [f"epoch {int(metrics.get('epoch', index)) + 1}/{total_epochs}"]
        if "global_step" in metrics:
            parts.append(f"step {int(metrics['global_step'])}")
        if "loss" in metrics:
            parts.append(f"loss {metrics['loss']:.4f}")
        if "lr" in metrics:
            parts.append(f"lr {metrics['lr']:.2e}")
        for key, value in metrics.items():
            if key.endswith("_per_second"):
                parts.append(f"{value:.1f} {key.removeprefix('train_').removesuffix('_per_second')}/s")
        parts += [f"{key} {metrics[key]:.4f}" for key in extra if key in metrics]
        return " | ".join(parts)

    return line


def verdict_table(evaluations: dict[str, dict[str, Any]]) -> str:
    """GLEAM-X verdicts per evaluated split (and prompt): accuracy and F1 beside the majority
    baseline, parse and well-formed rates, in %."""
    rows = []
    for split, report in evaluations.items():
        for prompt, scores in (("explanation", report), ("verdict only", report.get("verdict_only"))):
            if not scores or "match" not in scores:
                continue
            match = scores["match"]
            baseline = scores.get("majority_baseline")
            well_formed = scores.get("well_formed_rate")
            rows.append([split, prompt, scores.get("examples", match.get("support")), 100 * match["accuracy"],
                         100 * match["f1"], None if baseline is None else 100 * baseline,
                         100 * scores.get("parse_rate", match.get("parse_rate", 0.0)),
                         None if well_formed is None else 100 * well_formed])
    if not rows:
        return ""
    return table(["split", "prompt", "examples", "accuracy %", "F1 %", "majority %", "parsed %", "well formed %"],
                 rows)
