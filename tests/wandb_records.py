"""Reading what an offline W&B run recorded (its `run-<id>.wandb` file), so tests see exactly what `wandb sync`
would send to W&B's server: the run (its project), history rows, console lines, artifacts and the exit code.

The file is W&B's LevelDB-style log: a 7-byte header (":W&B", magic, version), then records of 7-byte headers
(checksum, length, type) holding `wandb_internal_pb2.Record` protobufs, in 32 KiB blocks.
"""

from __future__ import annotations

from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    position, chunks, pending = HEADER, [], b""
    while position + HEADER <= len(data):
        left = BLOCK - position % BLOCK
        if left < HEADER:  # a block's tail too short for a header is padding
            position += left
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        body = data[position + HEADER:position + HEADER + length]
        position += HEADER + length
        if kind == FULL:
            chunks.append(body)
        elif kind == FIRST:
            pending = body
        elif kind == MIDDLE:
            pending += body
        elif kind == LAST:
            chunks.append(pending + body)
    return [pb.Record.FromString(chunk) for chunk in chunks]


def of_kind(path: Path, kind: str) -> list:
    """The records of one kind: "run", "history", "output_raw", "artifact", "exit", ..."""
    return [getattr(record, kind) for record in records(path) if record.WhichOneof("record_type") == kind]


def run_file(output_dir: Path, run_id: str) -> Path:
    """The newest offline W&B file of run `run_id` under a run's output folder (`<output_dir>/wandb/`), complete.

    W&B's service writes the file behind the process's back (after a failed run, `finish` returns before the exit
    record is written), and completes it when the process ends: `wandb.teardown()` is that end here.
    """
    import wandb

    wandb.teardown()
    folders = sorted(Path(output_dir).glob(f"wandb/offline-run-*-{run_id}"), key=lambda p: p.stat().st_mtime)
    assert folders, f"no offline W&B run {run_id} in {output_dir}"
    return folders[-1] / f"run-{run_id}.wandb"
