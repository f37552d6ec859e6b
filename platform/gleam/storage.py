"""One storage layer for local paths and ``s3://`` URLs (fsspec + s3fs).

Everything the platform reads or writes goes through here: shards, manifests, configs,
checkpoints, metrics.  Writes are atomic: a local file is written to a temporary name in the
same folder and renamed; an S3 object is uploaded from a finished local temporary file in one
PUT (or one multipart upload that S3 commits only at the end), so a reader never sees half a
file.  S3 failures are turned into ``StorageError`` messages that say what is wrong and how to
fix it (missing credentials, missing bucket, denied access).

S3 endpoints: ``AWS_ENDPOINT_URL`` (or ``GLEAM_S3_ENDPOINT_URL``) points s3fs at a
non-AWS server such as MinIO or moto.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import tempfile
import uuid
from typing import IO, Any, Iterator

import fsspec


class StorageError(OSError):
    """A storage operation failed for a reason the user can fix; the message says how."""


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def _strip_file_scheme(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def s3_options() -> dict[str, Any]:
    """s3fs keyword arguments from the environment (endpoint override for S3-compatible servers)."""
    endpoint = os.environ.get("GLEAM_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    options: dict[str, Any] = {}
    if endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    return options


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``url`` and the path inside it."""
    url = _strip_file_scheme(url)
    if url.startswith("s3://"):
        fs = fsspec.filesystem("s3", **s3_options())
        return fs, url[len("s3://") :]
    if is_remote(url):
        fs, path = fsspec.core.url_to_fs(url)
        return fs, path
    return fsspec.filesystem("file"), os.path.abspath(url)


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or URL."""
    if is_remote(base):
        scheme, rest = base.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest, *parts)
    return os.path.join(_strip_file_scheme(base), *parts)


def explain_error(error: BaseException, url: str, action: str) -> StorageError:
    """Turn a low-level error into a message naming the URL, the cause and the fix."""
    name = type(error).__name__
    text = str(error)
    if name in ("NoCredentialsError", "PartialCredentialsError") or "Unable to locate credentials" in text:
        return StorageError(
            f"cannot {action} {url}: no AWS credentials found. Set AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and AWS_ENDPOINT_URL for a non-AWS S3 server."
        )
    if "NoSuchBucket" in text or "bucket does not exist" in text.lower() or (
        isinstance(error, FileNotFoundError) and url.startswith("s3://") and action == "write"
    ):
        bucket = url[len("s3://") :].split("/", 1)[0]
        return StorageError(
            f"cannot {action} {url}: bucket '{bucket}' does not exist or is not reachable at "
            f"{s3_options().get('client_kwargs', {}).get('endpoint_url', 'AWS')}. Create it first "
            f"(e.g. `aws s3 mb s3://{bucket}`) or fix the URL."
        )
    if isinstance(error, PermissionError) or "AccessDenied" in text or "InvalidAccessKeyId" in text:
        return StorageError(
            f"cannot {action} {url}: access denied ({text}). Check the credentials and the "
            f"bucket policy."
        )
    return StorageError(f"cannot {action} {url}: {name}: {text}")


@contextlib.contextmanager
def _errors(url: str, action: str) -> Iterator[None]:
    try:
        yield
    except (StorageError, IsADirectoryError):
        raise
    except FileNotFoundError as error:
        if url.startswith("s3://") and action == "write":
            raise explain_error(error, url, action) from error
        raise FileNotFoundError(f"{url}: not found") from None
    except Exception as error:  # botocore/aiobotocore errors have no common base we can import
        if type(error).__module__.split(".")[0] in ("botocore", "aiobotocore", "s3fs") or isinstance(
            error, PermissionError
        ):
            raise explain_error(error, url, action) from error
        raise


# --------------------------------------------------------------------------- reading


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    with _errors(url, "check"):
        return fs.exists(path)


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    with _errors(url, "read"):
        return fs.cat_file(path)


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def read_json(url: str) -> Any:
    text = read_text(url)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise StorageError(f"{url}: not valid JSON ({error})") from None


@contextlib.contextmanager
def open_read(url: str) -> Iterator[IO[bytes]]:
    fs, path = filesystem(url)
    with _errors(url, "read"):
        handle = fs.open(path, "rb")
    with handle:
        yield handle


def list_files(url: str, suffix: str = "") -> list[str]:
    """Sorted URLs of the files directly under ``url`` whose names end with ``suffix``."""
    fs, path = filesystem(url)
    with _errors(url, "list"):
        if not fs.exists(path):
            return []
        fs.invalidate_cache(path)
        entries = fs.ls(path, detail=True)
    names = sorted(
        posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "file"
    )
    return [join(url, n) for n in names if n.endswith(suffix)]


def file_size(url: str) -> int:
    fs, path = filesystem(url)
    with _errors(url, "stat"):
        return int(fs.size(path))


def sha256_of(url: str, chunk_bytes: int = 4 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with open_read(url) as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- writing


def makedirs(url: str) -> None:
    fs, path = filesystem(url)
    if is_remote(url):
        return  # object stores have no folders
    with _errors(url, "create"):
        fs.makedirs(path, exist_ok=True)


@contextlib.contextmanager
def atomic_local_file(url: str, suffix: str = "") -> Iterator[str]:
    """Yield a local temporary path; on success its content becomes ``url`` atomically.

    On an exception nothing is published and the temporary file is removed.
    """
    if is_remote(url):
        handle, tmp_path = tempfile.mkstemp(prefix="gleam-upload-", suffix=suffix)
    else:
        target = _strip_file_scheme(url)
        folder = os.path.dirname(os.path.abspath(target))
        os.makedirs(folder, exist_ok=True)
        handle, tmp_path = tempfile.mkstemp(
            prefix=f".{os.path.basename(target)}.", suffix=f".tmp-{uuid.uuid4().hex[:8]}", dir=folder
        )
    os.close(handle)
    try:
        yield tmp_path
        publish_file(tmp_path, url)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def publish_file(local_path: str, url: str) -> None:
    """Move a finished local file to ``url`` atomically (rename locally, one upload to S3)."""
    if is_remote(url):
        fs, path = filesystem(url)
        with _errors(url, "write"):
            fs.put_file(local_path, path)
        return
    os.replace(local_path, _strip_file_scheme(url))


def write_bytes(url: str, data: bytes) -> None:
    """Atomically write ``data`` to ``url``."""
    with atomic_local_file(url) as tmp_path:
        with open(tmp_path, "wb") as handle:
            handle.write(data)


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode("utf-8"))


def write_json(url: str, data: Any, indent: int | None = 2) -> None:
    write_text(url, json.dumps(data, indent=indent, ensure_ascii=False, sort_keys=False) + "\n")


def append_jsonl(path: str, record: dict[str, Any]) -> None:
    """Append one JSON line to a local file (metrics logs); flushed on every call."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()


def remove(url: str) -> None:
    fs, path = filesystem(url)
    with _errors(url, "remove"):
        if fs.exists(path):
            fs.rm(path)


def remove_stale_temporaries(url: str, target_prefix: str = "") -> int:
    """Remove temporary files an interrupted local writer left in folder ``url`` for targets
    whose names start with ``target_prefix`` (other writers may be busy with theirs)."""
    if is_remote(url) or not os.path.isdir(_strip_file_scheme(url)):
        return 0
    folder = _strip_file_scheme(url)
    stale = [n for n in os.listdir(folder) if n.startswith("." + target_prefix) and ".tmp-" in n]
    for name in stale:
        try:
            os.remove(os.path.join(folder, name))
        except FileNotFoundError:
            pass
    return len(stale)
