"""The .wandb reader: a real offline run read back after its process exited, the
block/chunk framing on files written here, and typed errors on damaged files."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
import wandb_jobs
from hypothesis import given, settings
from hypothesis import strategies as st
from wandb.proto import wandb_internal_pb2 as pb

from arr_coc.errors import ArrCocError
from training_hooks.comparison.runfile import (
    BLOCK_SIZE,
    RunFileError,
    find_run_file,
    find_run_files,
    iter_chunks,
    iter_records,
    read_run,
)

REPO = Path(__file__).resolve().parents[1]
STEPS = 300
BLOB = "z" * 70_000  # one record longer than two blocks: first, middle, last chunks

RUN_SCRIPT = textwrap.dedent(
    f"""
    import wandb
    run = wandb.init(
        project="arr-coc-test", group="arr-coc-25", job_type="eval", name="reader-run",
        tags=["reader", "offline"],
        config={{"variant": {{"name": "arr-coc-25", "method": "arr-coc", "budget": 0.25}},
                "blob": "z" * 70_000}},
    )
    for step in range({STEPS}):
        run.log({{"loss": 1.0 / (step + 1), "eval": {{"recall": step / {STEPS}}}, "note": f"s{{step}}"}})
    run.log({{"odd": float("nan"), "huge": float("inf")}})
    run.config.update({{"late": {{"x": 1}}}})
    run.summary["latency_p50_ms"] = 12.5
    with open("weights.bin", "wb") as handle:
        handle.write(b"0123456789")
    artifact = wandb.Artifact("scorer-ckpt", type="model")
    artifact.add_file("weights.bin")
    run.log_artifact(artifact)
    run.finish()
    """
)


def offline_env(root: Path) -> dict[str, str]:
    return wandb_jobs.offline_env(root, PYTHONPATH=str(REPO))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wandb")
    subprocess.run([sys.executable, "-c", RUN_SCRIPT], env=offline_env(root), cwd=root, check=True, timeout=120)
    (found,) = find_run_files(root)
    return found.parent


def test_metadata_config_and_artifacts_round_trip(run_dir: Path) -> None:
    run = read_run(run_dir)
    assert (run.project, run.group, run.job_type, run.name) == ("arr-coc-test", "arr-coc-25", "eval", "reader-run")
    assert run.tags == ("reader", "offline")
    assert run.run_id and run_dir.name.endswith(run.run_id)
    assert run.config["variant"] == {"name": "arr-coc-25", "method": "arr-coc", "budget": 0.25}
    assert run.config["blob"] == BLOB
    assert run.config["late"] == {"x": 1}
    assert "_wandb" not in run.config and "_wandb" not in run.summary
    (artifact,) = run.artifacts
    assert (artifact.name, artifact.type, artifact.files) == ("scorer-ckpt", "model", ("weights.bin",))
    assert run.exit_code == 0


def test_history_and_summary_values_round_trip(run_dir: Path) -> None:
    run = read_run(run_dir / f"run-{read_run(run_dir).run_id}.wandb")
    assert len(run.history) == STEPS + 1
    assert [row["_step"] for row in run.history] == list(range(STEPS + 1))
    assert run.metric("loss") == [1.0 / (step + 1) for step in range(STEPS)]
    assert run.metric("eval.recall") == [step / STEPS for step in range(STEPS)]
    assert run.history[7]["note"] == "s7"
    last = run.history[-1]
    assert math.isnan(last["odd"]) and last["huge"] == math.inf
    assert run.summary["latency_p50_ms"] == 12.5
    assert run.summary["loss"] == 1.0 / STEPS
    assert run.summary["eval"] == {"recall": (STEPS - 1) / STEPS}


def test_records_span_blocks_and_arrive_in_order(run_dir: Path) -> None:
    path = find_run_file(run_dir)
    assert path.stat().st_size > 2 * BLOCK_SIZE
    kinds = {kind for _, kind, _ in iter_chunks(path)}
    assert kinds == {1, 2, 3, 4}
    records = list(iter_records(path))
    assert records[0].WhichOneof("record_type") == "header"
    assert records[-1].WhichOneof("record_type") == "exit"
    nums = [record.num for record in records if record.num]
    assert nums == sorted(nums)


def damaged_copy(run_dir: Path, tmp_path: Path, damage) -> Path:
    data = bytearray(find_run_file(run_dir).read_bytes())
    damage(data)
    path = tmp_path / "damaged.wandb"
    path.write_bytes(bytes(data))
    return path


def test_flipped_byte_is_a_crc_error_at_its_chunk(run_dir: Path, tmp_path: Path) -> None:
    chunks = list(iter_chunks(find_run_file(run_dir)))
    offset, _, data = chunks[len(chunks) // 2]
    assert data

    def flip(buffer: bytearray) -> None:
        buffer[offset + 7] ^= 0x40

    with pytest.raises(RunFileError, match="CRC") as caught:
        read_run(damaged_copy(run_dir, tmp_path, flip))
    assert caught.value.offset == offset
    assert isinstance(caught.value, ArrCocError)


def test_bad_header_and_missing_files_are_typed_errors(run_dir: Path, tmp_path: Path) -> None:
    def unmagic(buffer: bytearray) -> None:
        buffer[0:4] = b"XXXX"

    with pytest.raises(RunFileError, match="not a W&B run file") as caught:
        list(iter_records(damaged_copy(run_dir, tmp_path, unmagic)))
    assert caught.value.offset == 0
    (tmp_path / "empty.wandb").write_bytes(b"")
    with pytest.raises(RunFileError, match="header"):
        read_run(tmp_path / "empty.wandb")
    with pytest.raises(RunFileError, match="no such"):
        read_run(tmp_path / "absent")
    (tmp_path / "no-run").mkdir()
    with pytest.raises(RunFileError, match="found 0"):
        read_run(tmp_path / "no-run")


def test_truncated_file_raises_unless_the_tail_may_be_cut(run_dir: Path, tmp_path: Path) -> None:
    def cut(buffer: bytearray) -> None:
        del buffer[-5:]

    path = damaged_copy(run_dir, tmp_path, cut)
    with pytest.raises(RunFileError, match="end of the file"):
        read_run(path)
    partial = read_run(path, allow_truncated_tail=True)
    assert partial.exit_code is None  # the exit record was the one cut short
    assert len(partial.history) == STEPS + 1
    assert partial.config["blob"] == BLOB


# Files written here with the framing of the LevelDB log, to reach the corners
# (a block ending with < 7 bytes, zero-length first chunks, zero padding).

FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def chunk(kind: int, piece: bytes) -> bytes:
    crc = zlib.crc32(piece, zlib.crc32(bytes([kind])))
    return struct.pack("<IHB", crc, len(piece), kind) + piece


def write_log(path: Path, payloads: list[bytes]) -> None:
    out = bytearray(struct.pack("<4sHB", b":W&B", 0xBEE1, 0))
    for data in payloads:
        first = True
        while True:
            left = BLOCK_SIZE - len(out) % BLOCK_SIZE
            if left < 7:
                out += b"\0" * left
                continue
            piece, data = data[: left - 7], data[left - 7 :]
            last = not data
            kind = FULL if first and last else FIRST if first else LAST if last else MIDDLE
            out += chunk(kind, piece)
            first = False
            if last:
                break
    path.write_bytes(bytes(out))


def history_record(num: int, text: str) -> bytes:
    record = pb.Record(num=num)
    record.history.item.add(key="text", value_json=json.dumps(text))
    record.history.item.add(key="_step", value_json=str(num))
    return record.SerializeToString()


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(0, 3 * BLOCK_SIZE), min_size=1, max_size=5))
def test_framing_round_trips_any_record_sizes(tmp_path_factory: pytest.TempPathFactory, sizes: list[int]) -> None:
    path = tmp_path_factory.mktemp("framing") / "run-x.wandb"
    texts = [chr(ord("a") + i) * size for i, size in enumerate(sizes)]
    write_log(path, [history_record(i + 1, text) for i, text in enumerate(texts)])
    run = read_run(path)
    assert [row["text"] for row in run.history] == texts
    assert [row["_step"] for row in run.history] == list(range(1, len(sizes) + 1))


@pytest.mark.parametrize("tail", range(8))
def test_every_block_tail_and_zero_padding(tmp_path: Path, tail: int) -> None:
    """Block 0 ends ``tail`` bytes after the first record: 0 (next chunk starts the
    block), 1-6 (a zero trailer), 7 (a zero-length first chunk). Zero padding after
    the last record (a preallocated file) is skipped."""
    path = tmp_path / "run-y.wandb"
    size = BLOCK_SIZE - 2 * 7 - tail  # file header + chunk header + data, then the tail
    text = next("p" * n for n in range(size - 40, size) if len(history_record(1, "p" * n)) == size)
    write_log(path, [history_record(1, text), history_record(2, "after")])
    raw = path.read_bytes()
    if tail == 7:
        assert raw[BLOCK_SIZE - 1] == FIRST and raw[BLOCK_SIZE - 3 : BLOCK_SIZE - 1] == b"\0\0"
    elif tail:
        assert raw[BLOCK_SIZE - tail : BLOCK_SIZE] == b"\0" * tail
    path.write_bytes(raw + b"\0" * (BLOCK_SIZE - len(raw) % BLOCK_SIZE))
    assert [row["text"] for row in read_run(path).history] == [text, "after"]


def test_chunks_out_of_order_are_typed_errors(tmp_path: Path) -> None:
    header = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
    payload = history_record(1, "x")
    cases = {
        "continuation chunk without a first": chunk(MIDDLE, payload),
        "started before the previous one ended": chunk(FIRST, payload[:3]) + chunk(FULL, payload),
        "ends inside a record": chunk(FIRST, payload[:3]),
        "unknown chunk type": chunk(9, payload),
        "does not parse": chunk(FULL, b"\xff\xff\xff"),
    }
    for message, body in cases.items():
        path = tmp_path / "run-z.wandb"
        path.write_bytes(header + body)
        with pytest.raises(RunFileError, match=message):
            read_run(path)
