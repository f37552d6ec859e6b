"""GLEAM-C jobs as users run them: a killed run resumes, a killed worker is survived, and the
README's `ray job submit` line runs on a `ray start --head` cluster, and jobs started from another
folder with relative paths write every file under it."""

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


# configs/local-cpu.yaml of the copy the README line runs in: the same command, a smaller model
TINY_LOCAL_CPU = """kind: train_core
run: {name: gleam-c-local, output_dir: runs, seed: 0}
ray: {num_workers: 2, cpus_per_worker: 0.5}
data: {dataset: data/synth}
model: {backbone: convnext_atto, logit_scale_init: 0.0, embedding_dim: 32, image_size: 32, panorama_size: [32, 64]}
phases:
  - {name: panorama, epochs: 1, modalities: [panorama], lr: 0.001}
  - {name: all, epochs: 1, modalities: [uav, streetmap, panorama, ground], lr: 0.0005}
train: {global_batch: 8}
"""


def readme_line(job: str) -> str:
    """The README's `ray job submit` command for ``job``, exactly as written there."""
    import re

    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    return re.search(r"`(ray job submit --working-dir \. -- python jobs/%s\.py[^`]*)`" % job, text).group(1)


def run_in(folder, command: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", "-c", command], cwd=folder, capture_output=True, text=True, env=env,
                            timeout=timeout)
    return result


@pytest.mark.slow
def test_jobs_from_another_folder_and_the_readme_submit_line(tmp_path, head_cluster):
    """A copy of the repository (tracked files) as a new user has it: make_shards, the README's
    `ray job submit` line against `ray start --head`, build_index and evaluate_core, each with
    the configs' relative paths, from that folder. Every file lands under it, none in Ray's
    temporary directories; a relative path the job cannot use is refused naming the fix."""
    from ray_cluster import cluster_env

    clone = tmp_path / "clone"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in filter(None, tracked.stdout.split("\0")):
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(clone / os.path.dirname(name), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), clone / name)
    (clone / "configs" / "local-cpu.yaml").write_text(TINY_LOCAL_CPU)
    cluster = head_cluster
    before = {os.path.join(d, f) for d, _, files in os.walk(cluster.temp_dir) for f in files}
    # drivers run from the clone join the cluster (RAY_ADDRESS, as on a cluster's head node);
    # the README line submits through the job API
    driver_env = cluster_env(RAY_ADDRESS=cluster.address)
    shards = run_in(clone, "python jobs/make_shards.py --config configs/make-shards-local.yaml "
                    "synth.distractors=0 synth.image_size=64 synth.locations_per_task=12 "
                    "'synth.locations={train: 24, val: 8, test: 8}' synth.regions_per_split=1 "
                    "'synth.biomes=[temperate]'", driver_env)
    assert shards.returncode == 0, shards.stdout[-2000:] + shards.stderr[-3000:]
    assert (clone / "data" / "synth" / "manifest.json").exists()
    assert f"outputs: {clone}/data/synth" in shards.stdout

    command = readme_line("train_core")
    assert "$PWD/data/synth" in command and "$PWD/runs" in command
    env = cluster_env(RAY_ADDRESS=cluster.dashboard_url)
    for _ in range(24):  # the job agent takes a few seconds to come up
        submit = run_in(clone, command, env, timeout=480)
        if "No available agent" not in submit.stdout + submit.stderr:
            break
        time.sleep(5)
    assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-2000:]
    relative = run_in(clone, command.split(" data.dataset=")[0], env)
    index = run_in(clone, "python jobs/build_index.py --config configs/build-index-local.yaml split=val",
                   driver_env)
    assert index.returncode == 0, index.stdout[-2000:] + index.stderr[-3000:]
    evaluation = run_in(clone, "python jobs/evaluate_core.py split=val", driver_env)
    assert evaluation.returncode == 0, evaluation.stdout[-2000:] + evaluation.stderr[-3000:]
    outside = [os.path.join(d, f) for d, _, files in os.walk(cluster.temp_dir) for f in files
               if (f in ("metrics.jsonl", "summary.json", "config.yaml", "report.json")
                   or f.startswith("eval-")) and os.path.join(d, f) not in before]
    run_dir = clone / "runs" / "gleam-c-local"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "plots/recall.png", "final/model.safetensors"):
        assert (run_dir / name).exists(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert not outside, outside  # nothing written inside Ray's temporary copy or session folders
    assert json.load(open(run_dir / "summary.json"))["train_samples"] == 96
    assert yaml_load(run_dir / "config.yaml")["data"]["dataset"] == str(clone / "data" / "synth")
    assert f"outputs: {run_dir}" in submit.stdout and "next:    ./run.sh serve" in submit.stdout
    assert "epoch 2/2 | phase 2/2 all" in submit.stdout and "chance R@1 %" in submit.stdout
    assert "Reporting training result" not in submit.stdout  # no per-rank echo of every metric
    assert relative.returncode != 0
    assert "run.output_dir='runs' is a relative path" in relative.stdout and "run.output_dir=$PWD/runs" in relative.stdout
    assert (clone / "runs" / "index-local" / "report.json").exists()
    assert (run_dir / "final" / "eval-val.json").exists()


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
