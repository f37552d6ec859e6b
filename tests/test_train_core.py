"""GLEAM-C jobs as users run them: a killed run resumes, a killed worker is survived, a Tune
sweep writes its results, and a run writes outputs and checkpoints to S3 (the README's
`ray job submit` line: tests/test_submit_from_a_clone.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import shutil
import sys
import tempfile
import time

import pytest

from gleam.config import ShardConfig
from gleam.data.shards import write_manifest, write_part
from samples import make_sample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("phases=[{name: pano, epochs: 1, modalities: [panorama], lr: 0.001},"
          " {name: all, epochs: %d, modalities: [uav, streetmap, panorama, ground], lr: 0.0005}]")


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """Random-texture pairs: enough to exercise the machinery (not to learn anything)."""
    out = str(tmp_path_factory.mktemp("tiny"))
    records = [write_part(out, "train", lambda: [make_sample(i, split="train") for i in range(48)], ShardConfig()),
               write_part(out, "val", lambda: [make_sample(500 + i, split="val") for i in range(12)], ShardConfig())]
    write_manifest(out, records, dataset="tiny")
    return out


def job_command(dataset: str, output: str, name: str, epochs: int, *extra: str) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "jobs", "train_core.py"), "--config",
            os.path.join(ROOT, "configs", "local-cpu.yaml"), f"data.dataset={dataset}",
            f"run.output_dir={output}", f"run.name={name}", "train.global_batch=8",
            "model.image_size=32", "model.panorama_size=[32, 64]", "model.embedding_dim=32",
            PHASES % epochs, *extra]


def job_env() -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def wait_for(predicate, timeout: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"job ended ({process.returncode}) before {what}:\n{process.stdout.read()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    return [json.loads(line) for line in open(path) if line.strip()]


def kill_processes_mentioning(path: str) -> None:
    """SIGKILL every process whose command line names ``path`` (a killed driver's Ray daemons
    run in sessions of their own and outlive it)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if path.encode() in handle.read():
                    os.kill(int(pid), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


@pytest.mark.slow
def test_killed_worker_is_replaced_then_a_killed_run_resumes_where_it_was(tiny_dataset, tmp_path):
    """One job, two faults: a Ray Train worker is SIGKILLed after the first epoch (a new worker
    group takes over, train.max_failures=1), then the whole driver with its local Ray after the
    second (a lost node); the same command again resumes at the next epoch and never trains an
    epoch twice."""
    command = job_command(tiny_dataset, str(tmp_path), "resume", 3, "train.max_failures=1")
    run_dir = str(tmp_path / "resume")
    pid_file = os.path.join(run_dir, "workers", "rank1.pid")
    ray_root = tempfile.mkdtemp(prefix="gleam-job-", dir="/tmp")  # short: AF_UNIX paths
    env = {**job_env(), "RAY_TMPDIR": ray_root}
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env, start_new_session=True)
    try:
        wait_for(lambda: len(metrics(run_dir)) >= 1, 240, "the first epoch", first)
        victim = int(open(pid_file).read())
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(metrics(run_dir)) >= 2, 240, "an epoch after the worker was killed", first)
        replaced = int(open(pid_file).read())
        os.killpg(first.pid, signal.SIGKILL)  # the driver dies mid-run, like a lost node
        first.wait()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        kill_processes_mentioning(ray_root)  # and its orphaned local Ray with it
    assert replaced != victim  # a new worker group took over and trained on
    done_before = len(metrics(run_dir))
    assert done_before < 4
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=400)
    kill_processes_mentioning(ray_root)
    shutil.rmtree(ray_root, ignore_errors=True)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    history = metrics(run_dir)
    assert [(h["phase"], h["epoch"]) for h in history] == [(0, 0), (1, 0), (1, 1), (1, 2)]
    steps = [h["global_step"] for h in history]
    assert steps == sorted(set(steps))  # no epoch was trained twice
    assert "resumed at phase" in second.stdout + second.stderr
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert summary["epochs"] == 4
    assert os.path.exists(os.path.join(run_dir, "plots", "recall.png"))
    assert os.path.exists(os.path.join(run_dir, "final", "model.safetensors"))


def yaml_load(path) -> dict:
    import yaml

    return yaml.safe_load(open(path))


@pytest.mark.slow
def test_tune_sweep_writes_results_and_best_config(tiny_dataset, tmp_path):
    command = [sys.executable, os.path.join(ROOT, "jobs", "tune_core.py"), "--config",
               os.path.join(ROOT, "configs", "sweep-local.yaml"), f"run.output_dir={tmp_path}",
               "tune.num_samples=2", "tune.phase1_epochs=[0, 1]", "tune.temperatures=[0.05, 0.1]",
               f"experiment.data.dataset={tiny_dataset}", "experiment.train.global_batch=8",
               "experiment.model.image_size=32", "experiment.model.panorama_size=[32, 64]",
               f"experiment.run.output_dir={tmp_path}/trials"]
    result = subprocess.run(command, capture_output=True, text=True, env=job_env(), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sweep = tmp_path / "gleam-c-sweep"
    rows = json.loads((sweep / "tune_results.json").read_text())
    assert len(rows) == 2
    assert all(r["temperature"] in (0.05, 0.1) and r["val/query->satellite/all/R@1"] is not None for r in rows)
    import yaml

    best = yaml.safe_load((sweep / "best_config.yaml").read_text())
    assert best["kind"] == "train_core"
    assert best["model"]["logit_scale_init"] in (pytest.approx(2.9957, abs=1e-3), pytest.approx(2.3026, abs=1e-3))


@pytest.mark.slow
def test_run_outputs_and_checkpoints_on_s3(ray_session, tiny_dataset, s3_bucket):
    from gleam import storage
    from gleam.config import load_config
    from gleam.core.model import GleamEncoder
    from gleam.core.train import TrainCoreConfig, train_core

    config = load_config(TrainCoreConfig, os.path.join(ROOT, "configs", "local-cpu.yaml"),
                         [f"data.dataset={tiny_dataset}", f"run.output_dir={s3_bucket}/runs", "run.name=s3run",
                          "train.global_batch=8", "model.image_size=32", "model.panorama_size=[32, 64]",
                          "phases=[{name: all, epochs: 1, modalities: [uav, streetmap, panorama, ground]}]"])
    summary = train_core(config)
    run_dir = f"{s3_bucket}/runs/s3run"
    names = {url.rsplit("/", 1)[-1] for url in storage.list_files(run_dir)}
    assert {"config.yaml", "metrics.jsonl", "summary.json"} <= names
    assert summary["checkpoint"].startswith(run_dir.removeprefix("s3://"))
    assert storage.exists(f"{run_dir}/plots/recall.png")
    encoder = GleamEncoder.from_pretrained(f"{run_dir}/final")
    assert encoder.config.image_size == 32

    from gleam.core.evaluate import EvaluateCoreConfig, evaluate_checkpoint

    report = evaluate_checkpoint(EvaluateCoreConfig(checkpoint=f"{run_dir}/final", dataset=tiny_dataset, split="val"))
    assert report["queries"] == 12 and report["gallery"] == 12 and report["read_report"]["corrupt"] == 0
    assert set(report["metrics"]) == {"query->satellite", "satellite->query"}
    assert storage.read_json(report["output"])["metrics"] == json.loads(json.dumps(report["metrics"]))
    with pytest.raises(ValueError, match="no shard with split='test'"):
        evaluate_checkpoint(EvaluateCoreConfig(checkpoint=f"{run_dir}/final", dataset=tiny_dataset, split="test"))
