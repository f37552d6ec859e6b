"""An index folder is one build: every file written into a fresh staging folder, then published
in one step with a manifest of every file's sha256, and refused on reading when its files do not
belong together.

    with BuildWriter(output) as build:        # staging: <parent>/.<name>.staging-<build id>/
        build.write_bytes("index.faiss", ...)  # ... every file of the build
    # on success: manifest.json written, the staging folder renamed over ``output`` (the previous
    # build is moved aside first and removed only once the new one is in place); on an exception
    # the staging folder is removed and ``output`` is untouched.

    folder = IndexFolder.open(url)            # manifest present, no file missing or unexpected
    data = folder.read_bytes("index.faiss")   # content checked against the manifest's sha256

Local folders are published by ``os.rename`` (atomic on one file system).  An ``s3://`` prefix has
no rename: the files are uploaded first, ``manifest.json`` last, then the previous build's files
that the new manifest does not list are deleted; a reader in between sees files that do not match
the manifest it reads and refuses the folder (never a mix that loads).

A rebuild never inherits a file: the new folder holds only what the new build wrote.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import uuid
from typing import Any

from gleam import storage

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
# files a build may write; anything else in the folder that is not in the manifest is tolerated
# only when it is not a build file (e.g. a README an operator put there)
BUILD_FILES = ("index.faiss", "gallery.parquet", "meta.json", "retrieval.json", "calibration.json",
               "tiles.parquet", "report.json", "config.yaml")
REBUILD_HINT = "rebuild it: python jobs/build_index.py --config configs/build-index-local.yaml output={url}"


class IndexFolderError(ValueError):
    """An index folder that cannot be used as it is (the message says why and how to fix it)."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_build_id() -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{uuid.uuid4().hex[:8]}"


class BuildWriter:
    """Collects the files of one build in a staging folder and publishes them together (module
    docstring).  Use as a context manager; ``build_id`` names the build in its manifest."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.build_id = new_build_id()
        self.files: dict[str, dict[str, Any]] = {}
        if storage.is_remote(self.url):
            import tempfile

            self.staging = tempfile.mkdtemp(prefix="gleam-index-staging-")
        else:
            target = os.path.abspath(storage._strip_file_scheme(self.url))
            parent = os.path.dirname(target)
            os.makedirs(parent, exist_ok=True)
            if os.path.exists(target) and not os.path.isdir(target):
                raise IndexFolderError(f"output={url}: a file is in the way of the index folder; "
                                       "choose another output or remove the file")
            self.staging = os.path.join(parent, f".{os.path.basename(target)}.staging-{self.build_id}")
            os.makedirs(self.staging)
        self.published = False

    # ------------------------------------------------------------------ writing

    def path(self, name: str) -> str:
        """Local path of ``name`` in the staging folder (for writers that need a file path)."""
        if "/" in name or name.startswith(".") or name == MANIFEST_FILE:
            raise ValueError(f"{name!r}: build files are plain names in the folder (not {MANIFEST_FILE})")
        return os.path.join(self.staging, name)

    def write_bytes(self, name: str, data: bytes) -> None:
        with open(self.path(name), "wb") as handle:
            handle.write(data)

    def write_json(self, name: str, data: Any) -> None:
        self.write_bytes(name, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    def manifest(self) -> dict[str, Any]:
        files = {}
        for name in sorted(os.listdir(self.staging)):
            with open(os.path.join(self.staging, name), "rb") as handle:
                data = handle.read()
            files[name] = {"bytes": len(data), "sha256": _sha256(data)}
        return {"manifest_version": MANIFEST_VERSION, "build_id": self.build_id,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "files": files}

    # ------------------------------------------------------------------ publishing

    def publish(self) -> dict[str, Any]:
        """Write the manifest and make the staging folder the index folder; returns the manifest."""
        manifest = self.manifest()
        with open(os.path.join(self.staging, MANIFEST_FILE), "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=2)
        if storage.is_remote(self.url):
            self._publish_remote(manifest)
        else:
            self._publish_local()
        self.published = True
        return manifest

    def _publish_local(self) -> None:
        target = os.path.abspath(storage._strip_file_scheme(self.url))
        previous = None
        if os.path.exists(target):
            previous = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.previous-{self.build_id}")
            os.rename(target, previous)
        try:
            os.rename(self.staging, target)
        except BaseException:
            if previous is not None:
                os.rename(previous, target)  # put the previous build back
            raise
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)

    def _publish_remote(self, manifest: dict[str, Any]) -> None:
        old = set(storage.list_files(self.url)) if storage.exists(self.url) else set()
        for name in manifest["files"]:
            storage.publish_file(os.path.join(self.staging, name), storage.join(self.url, name))
        storage.publish_file(os.path.join(self.staging, MANIFEST_FILE), storage.join(self.url, MANIFEST_FILE))
        keep = {storage.join(self.url, name) for name in [*manifest["files"], MANIFEST_FILE]}
        for url in sorted(old - keep):
            if os.path.basename(url) in BUILD_FILES:
                storage.remove(url)  # a file of the previous build the new one does not have
        shutil.rmtree(self.staging, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> "BuildWriter":
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        if kind is None:
            self.publish()
        else:
            self.discard()


class IndexFolder:
    """A published index folder whose manifest has been checked against its listing; files read
    through ``read_bytes`` / ``read_json`` are checked against their sha256."""

    def __init__(self, url: str, manifest: dict[str, Any]):
        self.url = url.rstrip("/")
        self.manifest = manifest
        self._verified: set[str] = set()

    @property
    def build_id(self) -> str:
        return str(self.manifest.get("build_id", ""))

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return self.manifest["files"]

    def has(self, name: str) -> bool:
        return name in self.files

    @classmethod
    def open(cls, url: str) -> "IndexFolder":
        url = url.rstrip("/")
        manifest_url = storage.join(url, MANIFEST_FILE)
        if not storage.exists(manifest_url):
            if storage.exists(storage.join(url, "meta.json")) or storage.exists(storage.join(url, "index.faiss")):
                raise IndexFolderError(f"{url}: index folder without {MANIFEST_FILE}, written by an older build "
                                       "(its files cannot be checked to belong together); "
                                       + REBUILD_HINT.format(url=url))
            raise FileNotFoundError(f"{url}: not a gallery index (no {MANIFEST_FILE}); build one with "
                                    f"jobs/build_index.py output={url}")
        try:
            manifest = storage.read_json(manifest_url)
        except (OSError, ValueError) as error:
            raise IndexFolderError(f"{manifest_url}: unreadable ({error}); " + REBUILD_HINT.format(url=url)) from None
        if not isinstance(manifest, dict) or manifest.get("manifest_version") != MANIFEST_VERSION \
                or not isinstance(manifest.get("files"), dict):
            raise IndexFolderError(f"{manifest_url}: not a manifest this code reads (version "
                                   f"{manifest.get('manifest_version') if isinstance(manifest, dict) else None!r}, "
                                   f"expected {MANIFEST_VERSION}); " + REBUILD_HINT.format(url=url))
        present = {os.path.basename(u) for u in storage.list_files(url)}
        missing = sorted(set(manifest["files"]) - present)
        if missing:
            raise FileNotFoundError(f"{url}: index incomplete, {', '.join(storage.join(url, m) for m in missing)} "
                                    f"is missing (listed in {MANIFEST_FILE}, build {manifest.get('build_id')}); "
                                    + REBUILD_HINT.format(url=url))
        extra = sorted(n for n in present - set(manifest["files"]) - {MANIFEST_FILE} if n in BUILD_FILES)
        if extra:
            raise IndexFolderError(f"{url}: {', '.join(extra)} do not belong to build {manifest.get('build_id')} "
                                   f"(not in its {MANIFEST_FILE}: left by another build or copied in); remove them "
                                   "or " + REBUILD_HINT.format(url=url))
        return cls(url, manifest)

    def read_bytes(self, name: str) -> bytes:
        if name not in self.files:
            raise FileNotFoundError(f"{self.url}: build {self.build_id} has no {name}")
        file_url = storage.join(self.url, name)
        try:
            data = storage.read_bytes(file_url)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.url}: index incomplete, {file_url} is missing; "
                                    + REBUILD_HINT.format(url=self.url)) from None
        if _sha256(data) != self.files[name]["sha256"]:
            raise IndexFolderError(f"{file_url}: content does not match {MANIFEST_FILE} of build {self.build_id} "
                                   "(changed after the build, or a concurrent or interrupted save); "
                                   + REBUILD_HINT.format(url=self.url))
        self._verified.add(name)
        return data

    def read_json(self, name: str) -> Any:
        return json.loads(self.read_bytes(name).decode("utf-8"))

    def verify_all(self) -> None:
        """Check every listed file's checksum (reads them all)."""
        for name in self.files:
            if name not in self._verified:
                self.read_bytes(name)


def open_folder(index: "str | IndexFolder") -> IndexFolder:
    return index if isinstance(index, IndexFolder) else IndexFolder.open(index)
