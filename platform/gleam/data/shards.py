"""WebDataset shards: a size-bounded, resumable writer, a manifest, and a tolerant reader.

Writing.  A shard holds at most ``max_samples`` samples and its members never
exceed ``max_bytes`` unless a single sample is larger (the file adds tar's end-of-archive
padding, under 10 KiB).  Work is cut into *parts* (a part is what one Ray task writes: e.g. 16 synthetic
locations, or one folder of a real dataset).  ``write_part`` streams the part's samples into
tar shards named ``{prefix}-{part}-{seq:04d}.tar``, closing a shard at ``max_samples`` or
``max_bytes``; every shard is published atomically (see ``gleam.storage``).  When all shards of
a part are written, a part record ``{prefix}-{part}.part.json`` lists them with sample counts,
per-modality/per-split counts and sha256 checksums.  A re-run skips a part whose record exists
and whose shards still verify, and rewrites the rest, so an interrupted job resumes without
duplicates.  ``write_manifest`` gathers the part records into ``manifest.json``.

Reading.  ``iter_samples`` (plain Python) and ``gleam.data.pipeline.read_samples`` (Ray Data)
share ``iter_shard_samples``: a corrupt image, bad json, missing member or truncated tar is
skipped and reported through a callback with the shard, key, field and reason, never raised.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import IO, Any, Callable, Iterable, Iterator

from gleam import storage
from gleam.config import ShardConfig
from gleam.data.schema import SCHEMA_VERSION, Sample, SampleError, decode_members, encode_members

MANIFEST_NAME = "manifest.json"
PART_SUFFIX = ".part.json"
_PART_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")


# --------------------------------------------------------------------------- records


@dataclass
class ShardInfo:
    """One written shard: where, how many samples of which kind, and its checksum."""

    name: str
    samples: int
    bytes: int
    sha256: str
    modalities: dict[str, int] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)


@dataclass
class PartRecord:
    """The shards one part produced; written after all of them are published."""

    part: str
    shards: list[ShardInfo]
    skipped: bool = False  # True when a re-run found the part complete and verified
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)  # the writer's own facts (JSON), kept on resume

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def to_json(self) -> dict[str, Any]:
        return {"part": self.part, "shards": [asdict(s) for s in self.shards], "seconds": self.seconds,
                "details": self.details}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PartRecord":
        return cls(part=data["part"], shards=[ShardInfo(**s) for s in data["shards"]],
                   seconds=data.get("seconds", 0.0), details=data.get("details", {}))


@dataclass
class CorruptSample:
    """A sample (or the rest of a shard) that could not be read, and why."""

    shard: str
    key: str
    field: str
    reason: str


# --------------------------------------------------------------------------- writing


class _TarShard:
    """One open shard: a local temporary tar published to its URL on ``close``."""

    def __init__(self, url: str):
        self.url = url
        self._publisher = storage.atomic_local_file(url, suffix=".tar")
        self._tmp_path = self._publisher.__enter__()
        # PAX: any key the schema accepts fits (USTAR stores at most 100 bytes of name without a
        # '/'); a member whose name fits USTAR gets the same 512-byte header either way
        self._tar = tarfile.open(self._tmp_path, mode="w", format=tarfile.PAX_FORMAT)
        self.samples = 0
        self.modalities: Counter[str] = Counter()
        self.splits: Counter[str] = Counter()

    @property
    def bytes(self) -> int:
        return self._tar.fileobj.tell()  # type: ignore[union-attr]

    def add(self, members: dict[str, bytes], sample: Sample) -> None:
        for extension, data in sorted(members.items()):
            self._tar.addfile(member_info(sample.key, extension, len(data)), io.BytesIO(data))
        self.samples += 1
        self.modalities[sample.modality] += 1
        self.splits[sample.split] += 1

    def close(self) -> ShardInfo:
        self._tar.close()
        size = os.path.getsize(self._tmp_path)
        digest = storage.sha256_of(self._tmp_path)
        self._publisher.__exit__(None, None, None)
        return ShardInfo(name=os.path.basename(self.url.rstrip("/")), samples=self.samples,
                         bytes=size, sha256=digest, modalities=dict(self.modalities),
                         splits=dict(self.splits))

    def abort(self, error: BaseException) -> None:
        self._tar.close()
        self._publisher.__exit__(type(error), error, error.__traceback__)


def member_info(key: str, extension: str, size: int) -> tarfile.TarInfo:
    """The tar header of member ``{key}.{extension}`` (mtime 0, mode 644: reproducible shards)."""
    info = tarfile.TarInfo(f"{key}.{extension}")
    info.size = size
    info.mtime = 0  # same input, same bytes: shards are reproducible
    info.mode = 0o644
    return info


def archived_size(members: dict[str, bytes], key: str = "") -> int:
    """Bytes the members of sample ``key`` take inside a PAX tar: each member's header (512
    bytes, plus an extended header when the name is over 100 bytes) and its data padded to 512."""
    return sum(len(member_info(key, extension, len(data)).tobuf(tarfile.PAX_FORMAT))
               + -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
               for extension, data in members.items())


def shard_name(prefix: str, part: str, sequence: int) -> str:
    return f"{prefix}-{part}-{sequence:04d}.tar"


def part_record_url(output_url: str, prefix: str, part: str) -> str:
    return storage.join(output_url, f"{prefix}-{part}{PART_SUFFIX}")


def write_shards(samples: Iterable[Sample], output_url: str, part: str,
                 config: ShardConfig) -> list[ShardInfo]:
    """Stream ``samples`` into size-bounded shards of ``part``; returns their infos."""
    if not _PART_PATTERN.match(part):
        raise ValueError(f"part name {part!r} must be letters, digits, '_' or '-'")
    infos: list[ShardInfo] = []
    shard: _TarShard | None = None
    try:
        for sample in samples:
            members = encode_members(sample)
            if shard is not None and (shard.samples >= config.max_samples
                                      or shard.bytes + archived_size(members, sample.key) > config.max_bytes):
                infos.append(shard.close())
                shard = None
            if shard is None:
                shard = _TarShard(storage.join(output_url, shard_name(config.prefix, part, len(infos))))
            shard.add(members, sample)
        if shard is not None:
            infos.append(shard.close())
            shard = None
    except BaseException as error:
        if shard is not None:
            shard.abort(error)
        raise
    return infos


def verify_shard(output_url: str, info: ShardInfo) -> str | None:
    """None when the shard at ``output_url`` matches ``info``; otherwise why not."""
    url = storage.join(output_url, info.name)
    if not storage.exists(url):
        return "missing"
    if storage.file_size(url) != info.bytes:
        return f"size {storage.file_size(url)} != {info.bytes}"
    if storage.sha256_of(url) != info.sha256:
        return "checksum mismatch"
    return None


def load_part_record(output_url: str, prefix: str, part: str, verify: bool = True) -> PartRecord | None:
    """The part's record if it exists and (when ``verify``) all its shards check out."""
    url = part_record_url(output_url, prefix, part)
    if not storage.exists(url):
        return None
    try:
        record = PartRecord.from_json(storage.read_json(url))
    except (storage.StorageError, KeyError, TypeError):
        return None
    if verify and any(verify_shard(output_url, info) for info in record.shards):
        return None
    return record


def write_part(output_url: str, part: str, make_samples: Callable[[], Iterable[Sample]],
               config: ShardConfig, resume: bool = True,
               details: Callable[[], dict[str, Any]] | None = None) -> PartRecord:
    """Write one part's shards and its record, or skip it when a verified record exists.

    ``make_samples`` is called only when the part must be (re)written, so a resumed job does
    not regenerate finished work.  ``details()`` (called after the samples are written) is
    stored in the record as ``details`` and comes back with a skipped part's record.
    """
    if resume:
        existing = load_part_record(output_url, config.prefix, part)
        if existing is not None:
            existing.skipped = True
            return existing
    started = time.perf_counter()
    storage.makedirs(output_url)
    storage.remove_stale_temporaries(output_url, f"{config.prefix}-{part}-")
    infos = write_shards(make_samples(), output_url, part, config)
    _remove_leftover_shards(output_url, config.prefix, part, keep={i.name for i in infos})
    record = PartRecord(part=part, shards=infos, seconds=round(time.perf_counter() - started, 3),
                        details=details() if details else {})
    storage.write_json(part_record_url(output_url, config.prefix, part), record.to_json())
    return record


def _remove_leftover_shards(output_url: str, prefix: str, part: str, keep: set[str]) -> None:
    """Delete shards of ``part`` from an earlier, different run that this run did not write."""
    pattern = re.compile(rf"^{re.escape(prefix)}-{re.escape(part)}-\d{{4}}\.tar$")
    for url in storage.list_files(output_url, ".tar"):
        name = url.rstrip("/").rsplit("/", 1)[-1]
        if pattern.match(name) and name not in keep:
            storage.remove(url)


class EmptyDatasetError(ValueError):
    """A shard-writing run that kept no sample."""


def write_manifest(output_url: str, records: list[PartRecord], *, dataset: str,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Gather part records into ``manifest.json`` (written atomically); returns the manifest.

    A dataset without a single sample is never published: ``EmptyDatasetError`` (a ValueError)
    and no manifest, so a run that kept nothing fails here instead of in whatever reads it next."""
    shards = sorted((s for r in records for s in r.shards), key=lambda s: s.name)
    if not sum(s.samples for s in shards):
        raise EmptyDatasetError(f"{output_url}: no samples were written ({len(records)} parts, {len(shards)} shards), "
                                f"so no {MANIFEST_NAME} is published; see the run's report for what was rejected")
    modalities: Counter[str] = Counter()
    splits: Counter[str] = Counter()
    for shard in shards:
        modalities.update(shard.modalities)
        splits.update(shard.splits)
    manifest = {
        "dataset": dataset,
        "schema_version": SCHEMA_VERSION,
        "num_shards": len(shards),
        "num_samples": sum(s.samples for s in shards),
        "modalities": dict(sorted(modalities.items())),
        "splits": dict(sorted(splits.items())),
        "shards": [asdict(s) for s in shards],
        **(extra or {}),
    }
    storage.write_json(storage.join(output_url, MANIFEST_NAME), manifest)
    return manifest


def read_manifest(output_url: str) -> dict[str, Any]:
    url = storage.join(output_url, MANIFEST_NAME)
    if not storage.exists(url):
        raise FileNotFoundError(
            f"{url}: no manifest. Write the dataset with jobs/make_shards.py first, or point at "
            f"the folder that holds manifest.json."
        )
    return storage.read_json(url)


def shard_urls(output_url: str, split: str | Iterable[str] | None = None,
               modalities: Iterable[str] | None = None) -> list[str]:
    """URLs of the manifest's shards holding any sample of ``split`` (one or several) / ``modalities``."""
    wanted = set(modalities) if modalities is not None else None
    splits = None if split is None else ({split} if isinstance(split, str) else set(split))
    urls = []
    for shard in read_manifest(output_url)["shards"]:
        if splits is not None and not any(shard["splits"].get(s) for s in splits):
            continue
        if wanted is not None and not wanted & set(shard["modalities"]):
            continue
        urls.append(storage.join(output_url, shard["name"]))
    return urls


# --------------------------------------------------------------------------- parallel parts


class PartsFailed(ValueError):
    """Some parts' Ray tasks raised; the others finished (their shards and records are kept).

    ``failures`` maps each failed part to its one-line error; ``total`` is the number of parts.
    """

    def __init__(self, failures: dict[str, str], total: int):
        self.failures, self.total = failures, total
        listed = "; ".join(f"{name}: {error}" for name, error in list(failures.items())[:5])
        more = f"; and {len(failures) - 5} more" if len(failures) > 5 else ""
        super().__init__(f"{len(failures)} of {total} parts failed ({listed}{more}); the other "
                         f"{total - len(failures)} finished and are kept: fix the cause and re-run the "
                         "same command, which resumes and redoes only the failed parts")


def one_line_error(error: BaseException) -> str:
    """``"Type: message"`` of the exception a Ray task raised (``RayTaskError.cause``), on one line
    and without the remote traceback."""
    cause = getattr(error, "cause", None)
    cause = cause if isinstance(cause, BaseException) else error
    text = " ".join(str(cause).split())
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def run_part_tasks(function: Callable[..., Any], argument_lists: list[tuple], names: list[str],
                   describe: Callable[[int, Any], str]) -> list[Any]:
    """Run ``function(*arguments)`` as one Ray task per part (1 CPU, retried on worker loss) and
    collect every result with ``ray.wait``, in argument order.

    A part whose task raises does not stop the others: each failure is logged as one line and,
    after all parts ended, ``PartsFailed`` lists them.  Ray must be initialised.
    """
    import logging

    import ray

    log = logging.getLogger(__name__)
    task = ray.remote(num_cpus=1, max_retries=2)(function)
    pending = {task.remote(*arguments): index for index, arguments in enumerate(argument_lists)}
    results: list[Any] = [None] * len(argument_lists)
    failures: dict[str, str] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        index = pending.pop(done[0])
        finished = len(argument_lists) - len(pending)
        try:
            results[index] = ray.get(done[0])
        except Exception as error:  # the task's own exception (RayTaskError) or a lost worker
            failures[names[index]] = one_line_error(error)
            log.error("part %s failed: %s (%d/%d)", names[index], failures[names[index]], finished,
                      len(argument_lists))
            continue
        log.info("%s (%d/%d)", describe(index, results[index]), finished, len(argument_lists))
    if failures:
        raise PartsFailed(failures, len(argument_lists))
    return results


# --------------------------------------------------------------------------- reading


def split_member_name(name: str) -> tuple[str, str]:
    """``"a/b/k1.query.jpg"`` -> ``("a/b/k1", "query.jpg")``: the key ends at the first dot."""
    folder, base = os.path.split(name)
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension


class _CountingReader:
    """A read-only stream wrapper that counts the bytes handed out."""

    def __init__(self, stream: IO[bytes]):
        self._stream = stream
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.count += len(data)
        return data


def iter_tar_groups(stream: IO[bytes], shard: str,
                    on_error: Callable[[CorruptSample], None]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {extension: bytes})`` per sample; a truncated tar ends the shard, reported.

    tarfile ends a stream quietly when a header is cut short, so the end-of-archive marker (two
    zero blocks after the last member) is checked explicitly: no silent loss.  A sample whose
    members are ambiguous is reported (field ``tar_member``) and not yielded: a member repeated
    within the sample (``k1.sat.jpg`` twice: which copy is meant is unknown), or a key whose
    members come back after another key's (WebDataset groups adjacent members only).
    PAX headers (long names) are read by ``tarfile`` itself.
    """
    key: str | None = None
    members: dict[str, bytes] = {}
    repeated: list[str] = []
    seen: set[str] = set()
    reader = _CountingReader(stream)
    problem: str | None = None

    def finish() -> Iterator[tuple[str, dict[str, bytes]]]:
        assert key is not None
        if repeated:
            on_error(CorruptSample(shard, key, "tar_member", f"tar member(s) {', '.join(repeated)} appear more "
                                   "than once in this sample; the copies are ambiguous, so the sample is skipped"))
        elif key in seen:
            on_error(CorruptSample(shard, key, "tar_member", "the key's members appear again after another "
                                   "sample's (a key may occur once per shard); this later group is skipped"))
        else:
            yield key, members
        seen.add(key)

    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
            for info in tar:
                if not info.isreg():
                    continue
                member_key, extension = split_member_name(info.name)
                if not extension:
                    on_error(CorruptSample(shard, info.name, "name", "tar member has no extension"))
                    continue
                data = tar.extractfile(info).read()  # type: ignore[union-attr]
                if member_key != key:
                    if key is not None:
                        yield from finish()
                    key, members, repeated = member_key, {}, []
                if extension in members and f"{key}.{extension}" not in repeated:
                    repeated.append(f"{key}.{extension}")
                members[extension] = data
            end_of_members = tar.offset
        while reader.read(1 << 20):
            pass
        if reader.count < end_of_members + 2 * tarfile.BLOCKSIZE:
            problem = f"no end-of-archive marker after byte {end_of_members} (file has {reader.count} bytes)"
    except (tarfile.TarError, EOFError, OSError, ValueError) as error:
        problem = f"{type(error).__name__}: {error}"
    if problem is not None:
        on_error(CorruptSample(shard, key or "?", "tar",
                               f"shard is truncated or unreadable after this key ({problem}); "
                               "the rest of the shard is skipped"))
    if key is not None:
        yield from finish()


def iter_shard_samples(stream: IO[bytes], shard: str, on_error: Callable[[CorruptSample], None],
                       check_images: bool = True, keep_pixels: bool = False) -> Iterator[Sample]:
    """Valid samples of one shard; every invalid one goes to ``on_error`` instead.
    ``keep_pixels``: each sample keeps the images validation decoded (``Sample.decode_and_keep``)."""
    for key, members in iter_tar_groups(stream, shard, on_error):
        try:
            yield decode_members(key, members, check_images=check_images, keep_pixels=keep_pixels)
        except SampleError as error:
            on_error(CorruptSample(shard, error.key, error.field, error.reason))


@dataclass
class ReadReport:
    """What a read pass saw: good samples and every skipped one, with reasons."""

    samples: int = 0
    corrupt: list[CorruptSample] = field(default_factory=list)

    def counts_by_field(self) -> dict[str, int]:
        return dict(Counter(c.field for c in self.corrupt))

    def summary(self) -> dict[str, Any]:
        return {"samples": self.samples, "corrupt": len(self.corrupt),
                "corrupt_by_field": self.counts_by_field(),
                "examples": [asdict(c) for c in self.corrupt[:20]]}


def iter_samples(urls: Iterable[str], report: ReadReport | None = None,
                 check_images: bool = True) -> Iterator[Sample]:
    """Read shards one after another (no Ray); corrupt samples land in ``report``."""
    report = report if report is not None else ReadReport()
    for url in urls:
        with storage.open_read(url) as stream:
            for sample in iter_shard_samples(stream, url, report.corrupt.append, check_images):
                report.samples += 1
                yield sample
