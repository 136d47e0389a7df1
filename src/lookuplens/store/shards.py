"""`ShardStore`: the numbered partial results of a resumable stage."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from lookuplens.store.atomic import write_parquet
from lookuplens.store.schema import check_stage, to_arrow

if TYPE_CHECKING:
    import pandas as pd

    from lookuplens.store.rundir import RunDir

__all__ = ["ShardStore"]

_SHARD_RE = re.compile(r"^(\d{5,})\.parquet$")


class ShardStore:
    """Numbered partial results of a resumable stage: ``shards/<stage>/00000.parquet``.

    A shard file exists only when it was written completely; resume by skipping the
    numbers in :meth:`done`.
    """

    def __init__(self, run_dir: RunDir, stage: str) -> None:
        check_stage(stage)
        self.stage = stage
        self.dir = run_dir.path / "shards" / stage

    def path(self, i: int) -> Path:
        """The file of shard ``i``."""
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise ValueError(f"shard index must be a non-negative integer, got {i!r}")
        return self.dir / f"{i:05d}.parquet"

    def write(self, i: int, table: pa.Table | pd.DataFrame) -> Path:
        """Atomically write shard ``i`` (replacing it if present)."""
        path = self.path(i)
        self.dir.mkdir(parents=True, exist_ok=True)
        write_parquet(path, to_arrow(table).replace_schema_metadata(None))
        return path

    def done(self) -> set[int]:
        """The indices of the shards written so far."""
        if not self.dir.is_dir():
            return set()
        return {int(m.group(1)) for p in self.dir.iterdir() if (m := _SHARD_RE.match(p.name))}

    def read(self, i: int) -> pa.Table:
        """Read shard ``i``."""
        return pq.read_table(self.path(i))

    def read_all(self) -> pa.Table:
        """All shards concatenated in index order (an empty table if there are none)."""
        indices = sorted(self.done())
        if not indices:
            return pa.table({})
        return pa.concat_tables([self.read(i) for i in indices], promote_options="default")

    def clear(self) -> None:
        """Delete every shard of this stage."""
        if self.dir.exists():
            shutil.rmtree(self.dir)
