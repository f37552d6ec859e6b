"""The README's `ray job submit` line as a new user runs it: a copy of the repository's tracked
files, `ray start --head` (the session's shared cluster, tests/conftest.py ``head_cluster``),
make_shards, the submitted GLEAM-C training, build_index and evaluate_core with the configs'
relative paths from that folder; every file lands under it and a relative path the job cannot
use is refused naming the fix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    assert yaml.safe_load(open(run_dir / "config.yaml"))["data"]["dataset"] == str(clone / "data" / "synth")
    assert f"outputs: {run_dir}" in submit.stdout and "next:    ./run.sh serve" in submit.stdout
    assert "epoch 2/2 | phase 2/2 all" in submit.stdout and "chance R@1 %" in submit.stdout
    assert "Reporting training result" not in submit.stdout  # no per-rank echo of every metric
    assert relative.returncode != 0
    assert "run.output_dir='runs' is a relative path" in relative.stdout and "run.output_dir=$PWD/runs" in relative.stdout
    assert (clone / "runs" / "index-local" / "report.json").exists()
    assert (run_dir / "final" / "eval-val.json").exists()
