"""Storage layer: local and s3:// (real moto server) reads, atomic writes, listing, errors."""

from __future__ import annotations

import os

import pytest

from gleam import storage


@pytest.fixture(params=["local", "s3"])
def base_url(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_bucket") + "/prefix"


def test_write_read_list_remove(base_url):
    storage.makedirs(base_url)
    storage.write_bytes(storage.join(base_url, "b.bin"), b"\x00\x01binary")
    storage.write_json(storage.join(base_url, "a.json"), {"x": 1, "名": "值"})
    storage.write_text(storage.join(base_url, "c.txt"), "hello")
    assert storage.read_bytes(storage.join(base_url, "b.bin")) == b"\x00\x01binary"
    assert storage.read_json(storage.join(base_url, "a.json")) == {"x": 1, "名": "值"}
    assert [u.rsplit("/", 1)[-1] for u in storage.list_files(base_url)] == ["a.json", "b.bin", "c.txt"]
    assert [u.rsplit("/", 1)[-1] for u in storage.list_files(base_url, ".json")] == ["a.json"]
    assert storage.file_size(storage.join(base_url, "c.txt")) == 5
    storage.remove(storage.join(base_url, "c.txt"))
    assert not storage.exists(storage.join(base_url, "c.txt"))
    with pytest.raises(FileNotFoundError, match="not found"):
        storage.read_bytes(storage.join(base_url, "missing.bin"))


def test_failed_write_publishes_nothing(base_url):
    target = storage.join(base_url, "half.bin")
    with pytest.raises(RuntimeError):
        with storage.atomic_local_file(target) as tmp_path:
            with open(tmp_path, "wb") as handle:
                handle.write(b"partial")
            raise RuntimeError("writer died")
    assert not storage.exists(target)
    assert not os.path.exists(tmp_path)


def test_overwrite_is_atomic_locally(tmp_path):
    target = str(tmp_path / "f.txt")
    storage.write_text(target, "old")
    with pytest.raises(RuntimeError):
        with storage.atomic_local_file(target) as tmp:
            open(tmp, "w").write("new but unfinished")
            raise RuntimeError
    assert open(target).read() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_missing_bucket_is_explained(s3_server):
    with pytest.raises(storage.StorageError) as error:
        storage.write_text("s3://no-such-bucket-xyz/a.txt", "x")
    assert "no-such-bucket-xyz" in str(error.value) and "does not exist" in str(error.value)


def test_missing_credentials_are_explained(s3_server, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    import fsspec

    fsspec.filesystem("s3").clear_instance_cache()
    with pytest.raises(storage.StorageError, match="no AWS credentials found"):
        storage.write_text("s3://any-bucket/a.txt", "x")
    fsspec.filesystem("s3").clear_instance_cache()
