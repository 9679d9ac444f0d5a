"""Reader of offline W&B run files (``run-<id>.wandb``).

wandb >= 0.30 no longer ships a reader, so this module decodes the format that
``wandb-core`` writes, checked against wandb 0.31:

* a 7-byte file header: ident ``b":W&B"``, magic ``0xBEE1`` (uint16 little
  endian), version ``0``;
* then the LevelDB log format: the file is cut into 32 KiB blocks counted from
  byte 0 (the file header sits in the first block). Each block holds chunks with
  a 7-byte chunk header: CRC32 (IEEE, of the type byte then the data; uint32 LE),
  data length (uint16 LE), type (1 full, 2 first, 3 middle, 4 last). A record
  longer than a block's space is split into first/middle.../last chunks; fewer
  than 7 bytes left at a block's end are a zero trailer;
* every reassembled record is a serialized ``wandb_internal_pb2.Record``.

:func:`iter_records` yields the records; :func:`read_run` folds them into a
:class:`RunData` (metadata, config, summary, history rows, logged artifacts).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2 as pb

from arr_coc.errors import ArrCocError

FILE_IDENT = b":W&B"
FILE_MAGIC = 0xBEE1
FILE_VERSION = 0
FILE_HEADER = struct.Struct("<4sHB")
CHUNK_HEADER = struct.Struct("<IHB")
BLOCK_SIZE = 32 * 1024

FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4

# Keys that wandb keeps for itself inside config and summary.
INTERNAL_KEY = "_wandb"


class RunFileError(ArrCocError):
    """A run file that is missing, not a W&B run file, truncated or corrupt.

    ``path`` is the file (or folder) concerned; ``offset`` the byte offset of the
    chunk where decoding failed, or ``None`` when the failure has no position.
    """

    def __init__(self, detail: str, *, path: Path | str, offset: int | None = None) -> None:
        where = str(path) if offset is None else f"{path} at byte {offset}"
        super().__init__(f"{where}: {detail}")
        self.path = Path(path)
        self.offset = offset


@dataclass(frozen=True)
class ArtifactInfo:
    """An artifact that the run logged (``run.log_artifact``)."""

    name: str
    type: str
    aliases: tuple[str, ...] = ()
    digest: str = ""
    files: tuple[str, ...] = ()  # paths inside the artifact, from its manifest


@dataclass
class RunData:
    """Everything :func:`read_run` extracts from one run file.

    config: the run config, nested dicts as logged, without wandb's ``_wandb`` key.
    summary: the final summary, nested dicts as logged, without ``_wandb``.
    history: one dict per ``run.log`` step, nested keys flattened with ``"."``
        (as the W&B API shows them), including wandb's ``_step``, ``_runtime``
        (seconds) and ``_timestamp`` (Unix seconds).
    exit_code: the process exit code from the exit record, ``None`` when the
        file has none (the run crashed or is still running).
    """

    path: Path
    run_id: str = ""
    entity: str = ""
    project: str = ""
    group: str = ""
    job_type: str = ""
    name: str = ""
    tags: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[ArtifactInfo] = field(default_factory=list)
    exit_code: int | None = None

    def metric(self, key: str) -> list[Any]:
        """Values of one history key, in step order, over the rows that have it."""
        return [row[key] for row in self.history if key in row]


def iter_chunks(path: Path | str, *, allow_truncated_tail: bool = False) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(offset, type, data)`` of every CRC-checked chunk of a run file.

    With ``allow_truncated_tail`` a chunk cut short by the end of the file (a run
    file still being written, or of a killed process) ends the iteration instead
    of raising :class:`RunFileError`.
    """
    path = Path(path)
    try:
        handle = path.open("rb")
    except OSError as error:
        raise RunFileError(f"cannot open: {error.strerror}", path=path) from error
    with handle:
        header = handle.read(FILE_HEADER.size)
        if len(header) < FILE_HEADER.size:
            raise RunFileError("shorter than the 7-byte W&B file header", path=path, offset=0)
        ident, magic, version = FILE_HEADER.unpack(header)
        if ident != FILE_IDENT or magic != FILE_MAGIC:
            raise RunFileError("not a W&B run file (bad header)", path=path, offset=0)
        if version != FILE_VERSION:
            raise RunFileError(f"unsupported run file version {version}", path=path, offset=0)
        block_start, pos = 0, FILE_HEADER.size
        block = header + handle.read(BLOCK_SIZE - FILE_HEADER.size)
        while True:
            at_eof = len(block) < BLOCK_SIZE
            while len(block) - pos >= CHUNK_HEADER.size:
                offset = block_start + pos
                crc, length, kind = CHUNK_HEADER.unpack_from(block, pos)
                if crc == 0 and length == 0 and kind == 0:
                    break  # zero padding: the rest of this block is unused
                end = pos + CHUNK_HEADER.size + length
                if end > len(block):
                    if at_eof and allow_truncated_tail:
                        return
                    detail = "chunk cut off by the end of the file" if at_eof else "chunk crosses a block boundary"
                    raise RunFileError(detail, path=path, offset=offset)
                data = block[pos + CHUNK_HEADER.size : end]
                if zlib.crc32(data, zlib.crc32(bytes([kind]))) != crc:
                    raise RunFileError("CRC mismatch", path=path, offset=offset)
                if kind not in (FULL, FIRST, MIDDLE, LAST):
                    raise RunFileError(f"unknown chunk type {kind}", path=path, offset=offset)
                yield offset, kind, data
                pos = end
            if at_eof:
                if pos < len(block) and any(block[pos:]) and not allow_truncated_tail:
                    raise RunFileError(
                        "chunk header cut off by the end of the file", path=path, offset=block_start + pos
                    )
                return
            block_start += BLOCK_SIZE
            block, pos = handle.read(BLOCK_SIZE), 0
            if not block:
                return


def iter_records(path: Path | str, *, allow_truncated_tail: bool = False) -> Iterator[pb.Record]:
    """Yield every ``wandb_internal_pb2.Record`` of a run file, in file order.

    Raises :class:`RunFileError` on a bad header, a CRC mismatch, chunks out of
    order, a record that does not parse, or (unless ``allow_truncated_tail``) a
    file that ends inside a record.
    """
    pending: list[bytes] = []
    pending_offset = 0
    for offset, kind, data in iter_chunks(path, allow_truncated_tail=allow_truncated_tail):
        if kind in (FULL, FIRST):
            if pending:
                raise RunFileError("record started before the previous one ended", path=path, offset=offset)
            pending_offset = offset
        elif not pending:
            raise RunFileError("continuation chunk without a first chunk", path=path, offset=offset)
        pending.append(data)
        if kind in (FULL, LAST):
            yield _parse_record(b"".join(pending), path, pending_offset)
            pending = []
    if pending and not allow_truncated_tail:
        raise RunFileError("file ends inside a record", path=path, offset=pending_offset)


def _parse_record(payload: bytes, path: Path | str, offset: int) -> pb.Record:
    record = pb.Record()
    try:
        record.ParseFromString(payload)
    except DecodeError as error:
        raise RunFileError(f"record does not parse: {error}", path=path, offset=offset) from error
    return record


def find_run_file(run_dir_or_file: Path | str) -> Path:
    """The ``.wandb`` file of a run folder (``offline-run-...``), or the file itself."""
    path = Path(run_dir_or_file)
    if path.is_file():
        return path
    if not path.is_dir():
        raise RunFileError("no such run file or folder", path=path)
    found = sorted(path.glob("*.wandb"))
    if len(found) != 1:
        raise RunFileError(f"expected one .wandb file in the folder, found {len(found)}", path=path)
    return found[0]


def find_run_files(root: Path | str) -> list[Path]:
    """Every ``run-*.wandb`` file below ``root`` (e.g. a ``WANDB_DIR``), sorted by path."""
    return sorted(Path(root).rglob("run-*.wandb"))


def read_run(run_dir_or_file: Path | str, *, allow_truncated_tail: bool = False) -> RunData:
    """Fold a run file's records into a :class:`RunData` (see :func:`iter_records`)."""
    path = find_run_file(run_dir_or_file)
    run = RunData(path=path)
    for record in iter_records(path, allow_truncated_tail=allow_truncated_tail):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            _apply_run(run, record.run)
        elif kind == "config":
            _apply_updates(run.config, record.config.update, record.config.remove, path)
        elif kind == "summary":
            _apply_updates(run.summary, record.summary.update, record.summary.remove, path)
        elif kind == "history":
            run.history.append(_history_row(record.history.item, path))
        elif kind == "artifact":
            art = record.artifact
            files = tuple(entry.path for entry in art.manifest.contents)
            run.artifacts.append(ArtifactInfo(art.name, art.type, tuple(art.aliases), art.digest, files))
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    run.config.pop(INTERNAL_KEY, None)
    run.summary.pop(INTERNAL_KEY, None)
    return run


def _apply_run(run: RunData, record: pb.RunRecord) -> None:
    run.run_id = record.run_id or run.run_id
    run.entity = record.entity or run.entity
    run.project = record.project or run.project
    run.group = record.run_group or run.group
    run.job_type = record.job_type or run.job_type
    run.name = record.display_name or run.name
    run.tags = tuple(record.tags) or run.tags
    _apply_updates(run.config, record.config.update, record.config.remove, run.path)
    _apply_updates(run.summary, record.summary.update, record.summary.remove, run.path)


def _key_path(item: Any) -> Sequence[str]:
    return list(item.nested_key) if item.nested_key else [item.key]


def _decode(value_json: str, path: Path | str) -> Any:
    try:
        return json.loads(value_json)
    except ValueError as error:
        raise RunFileError(f"value is not JSON: {value_json[:80]!r}", path=path) from error


def _apply_updates(target: dict[str, Any], updates: Iterable[Any], removes: Iterable[Any], path: Path | str) -> None:
    for item in updates:
        *parents, last = _key_path(item)
        node = target
        for key in parents:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[last] = _decode(item.value_json, path)
    for item in removes:
        *parents, last = _key_path(item)
        node = target
        for key in parents:
            node = node.get(key, {})
        if isinstance(node, dict):
            node.pop(last, None)


def _history_row(items: Iterable[pb.HistoryItem], path: Path | str) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for item in items:
        key = ".".join(_key_path(item))
        if item.value_json:
            row[key] = _decode(item.value_json, path)
            continue
        typed = item.WhichOneof("value")
        if typed == "json":
            row[key] = _decode(item.json, path)
        elif typed == "none" or typed is None:
            row[key] = None
        else:
            row[key] = getattr(item, typed)
    return row
