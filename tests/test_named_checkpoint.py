"""Named GLEAM-C checkpoints: ``model.checkpoint: <name>`` loads ``models/<name>``; the kept
checkpoint (models/gleam-c-lite0-synth) loads and matches its model card's sha256."""

from __future__ import annotations

import os
import re

import pytest

from gleam.core.model import MODELS_DIR, known_checkpoints, resolve_checkpoint
from gleam.provenance import file_sha256

NAME = "gleam-c-lite0-synth"
KEPT = os.path.join(MODELS_DIR, NAME)


@pytest.fixture()
def models(tmp_path):
    folder = tmp_path / "models"
    (folder / "alpha").mkdir(parents=True)
    (folder / "alpha" / "config.json").write_text("{}")
    (folder / "no-config").mkdir()
    return folder


def test_bare_name_resolves_to_models_folder(models):
    assert resolve_checkpoint("alpha", str(models)) == os.path.join(str(models), "alpha")
    # what a config loader hands over: the bare name made absolute against the working directory
    assert resolve_checkpoint(os.path.join(os.getcwd(), "alpha"), str(models)) == os.path.join(str(models), "alpha")
    assert known_checkpoints(str(models)) == ["alpha"]


def test_paths_and_urls_unchanged(models, tmp_path):
    existing = tmp_path / "run" / "final"
    existing.mkdir(parents=True)
    assert resolve_checkpoint(str(existing), str(models)) == str(existing)
    assert resolve_checkpoint("s3://bucket/ckpt", str(models)) == "s3://bucket/ckpt"


def test_unknown_name_lists_known(models, tmp_path):
    with pytest.raises(FileNotFoundError, match="known: alpha"):
        resolve_checkpoint("beta", str(models))
    with pytest.raises(FileNotFoundError):  # a folder path elsewhere is not a name
        resolve_checkpoint(str(tmp_path / "elsewhere" / "alpha"), str(models))
    with pytest.raises(FileNotFoundError):  # a folder without config.json is no checkpoint
        resolve_checkpoint("no-config", str(models))


@pytest.mark.skipif(not os.path.isfile(os.path.join(KEPT, "model.safetensors")),
                    reason="models/gleam-c-lite0-synth not in this checkout")
def test_kept_checkpoint_loads_and_matches_its_card():
    import torch

    from gleam.core.model import GleamEncoder

    card = open(os.path.join(KEPT, "MODEL_CARD.md"), encoding="utf-8").read()
    listed = re.search(r"model\.safetensors sha256\W*([0-9a-f]{64})", card)
    assert listed, "the model card names model.safetensors' sha256"
    assert file_sha256(os.path.join(KEPT, "model.safetensors")) == listed.group(1)
    encoder = GleamEncoder.from_pretrained(NAME).eval()  # by name, as model.checkpoint gives it
    size = encoder.config.image_size
    with torch.no_grad():
        out = encoder(torch.zeros(2, 3, size, size))
    assert out.shape == (2, encoder.embedding_dim)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-4)
