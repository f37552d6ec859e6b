"""gleam.provenance: commit, dirty flag, versions, machine, command, seeds, checkpoint hashes."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess

import pytest

from gleam.provenance import checkpoint_hashes, file_sha256, git_state, package_versions, provenance


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture()
def repo(tmp_path):
    path = tmp_path / "repo"
    path.mkdir()
    _git(path, "init", "-q")
    (path / "a.txt").write_text("a\n")
    _git(path, "add", "a.txt")
    _git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    return path


def test_git_state_clean_then_dirty(repo):
    clean = git_state(str(repo))
    assert re.fullmatch(r"[0-9a-f]{40}", clean["commit"])
    assert clean["dirty"] is False
    (repo / "new.txt").write_text("untracked\n")  # untracked, not ignored: dirty
    assert git_state(str(repo))["dirty"] is True


def test_git_state_outside_a_checkout(tmp_path):
    assert git_state(str(tmp_path)) == {"commit": None, "dirty": None, "describe": None}


def test_package_versions_python_first_missing_left_out():
    versions = package_versions(("numpy", "no-such-distribution-xyz", ("faiss", ("no-such-a", "numpy"))))
    assert list(versions)[0] == "python"
    assert "numpy" in versions and "no-such-distribution-xyz" not in versions
    assert versions["faiss"] == versions["numpy"]  # the first installed alternative


def test_checkpoint_hashes_file_folder_missing(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    assert file_sha256(str(folder / "model.safetensors")) == digest
    assert checkpoint_hashes(str(folder))["files"] == {"model.safetensors": digest}  # config.json not hashed
    assert checkpoint_hashes(str(folder / "model.safetensors"))["files"] == {"model.safetensors": digest}
    assert "error" in checkpoint_hashes(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    assert "error" in checkpoint_hashes(str(tmp_path / "empty"))


def test_provenance_is_json_ready(repo, tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    out = provenance(["python", "bench.py", "--seed", "3"], {"world": 1, "train": 3}, {"encoder": str(weights)},
                     repo=str(repo))
    assert json.loads(json.dumps(out)) == out
    assert out["command"] == ["python", "bench.py", "--seed", "3"]
    assert out["seeds"] == {"world": 1, "train": 3}
    assert out["git"]["dirty"] is False
    assert out["checkpoints"]["encoder"]["files"]["w.pt"] == hashlib.sha256(b"x").hexdigest()
    assert {"node", "platform", "cpu_count", "gpu"} <= set(out["machine"])
    assert out["date_utc"].endswith("+00:00")
    assert "python" in out["packages"] and "numpy" in out["packages"]


def test_provenance_defaults_to_this_process():
    out = provenance()
    assert out["command"] and out["seeds"] == {} and out["checkpoints"] == {}
