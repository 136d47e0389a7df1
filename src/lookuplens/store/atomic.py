"""Atomic file writes: a temporary ``.tmp-`` file in the same folder, fsync, then a rename
over the target, so a file exists complete or not at all; and the cleanup of temporary
files a crashed process left behind."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

__all__ = ["atomic_write_bytes", "clean_tmp", "write_parquet", "write_parquet_chunks"]

_TMP_PREFIX = ".tmp-"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write ``data`` (str as UTF-8) to ``path`` through a ``.tmp-`` file and a rename."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    _atomic_write(Path(path), lambda tmp: tmp.write_bytes(payload))


def clean_tmp(folder: Path) -> None:
    for p in folder.rglob(f"{_TMP_PREFIX}*"):
        if p.is_file():
            logger.info("removing %s, left behind by an interrupted write", p)
            p.unlink(missing_ok=True)


def write_parquet(path: Path, table: pa.Table, row_group_size: int | None = None) -> None:
    _atomic_write(
        path,
        lambda tmp: pq.write_table(table, tmp, compression="zstd", row_group_size=row_group_size),
    )


def write_parquet_chunks(
    path: Path,
    schema: pa.Schema,
    chunks: Iterable[pa.Table],
    row_group_size: int | None = None,
) -> int:
    """Write `chunks` (each cast to `schema`) one after the other as one zstd Parquet file,
    atomically; returns the rows written. Chunks are gathered into row groups of
    `row_group_size` rows (the writer's default when None), so only about one row group is
    in memory at a time, whatever the chunks' sizes."""
    rows = 0

    def write(tmp: Path) -> None:
        nonlocal rows
        pending: list[pa.Table] = []
        held = 0
        with pq.ParquetWriter(tmp, schema, compression="zstd") as w:
            for chunk in chunks:
                if not chunk.num_rows:
                    continue
                pending.append(chunk.select(schema.names).cast(schema))
                held += chunk.num_rows
                rows += chunk.num_rows
                if row_group_size is not None and held >= row_group_size:
                    table = pa.concat_tables(pending)
                    full = (held // row_group_size) * row_group_size
                    w.write_table(table.slice(0, full), row_group_size=row_group_size)
                    pending, held = [table.slice(full)], held - full
            if held:
                w.write_table(pa.concat_tables(pending), row_group_size=row_group_size)

    _atomic_write(path, write)
    return rows
