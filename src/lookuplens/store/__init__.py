"""The run directory: tables, the run.json manifest, stage marks, shards and resume.

Layout (a public format; see CONVENTIONS.md)::

    RUN/
      run.json                  manifest (format version, model, corpus, config, stages)
      neurons.parquet ...       one parquet file (zstd) per table in TABLE_COLUMNS
      views.parquet             what the report and dashboard show from the model
      report.html
      shards/<stage>/00000.parquet   partial results of a resumable stage

Every write goes to a temporary file whose name starts with ``.tmp-`` in the same
folder and is then renamed over the target (``os.replace``), so a file either exists
complete or not at all; leftover temporary files of a crashed process are removed when
the run directory is opened. One process writes to a run directory at a time.

Secrets are never written: :func:`redact` drops every mapping key ending in
``api_key``, ``apikey``, ``token``, ``secret`` or ``password`` (case-insensitive, at any
depth) from everything that goes into run.json. Name non-secret settings accordingly
(``pad_token_id``, not ``pad_token``).

The package's modules: `schema` (tables, columns, stages), `jsondata` (run.json data,
redaction, canonical JSON), `atomic` (atomic writes), `rundir` (`RunDir`), `shards`
(`ShardStore`), `means` (the ``attribution_means`` table, written or streamed). Import
the names from ``lookuplens.store``.
"""

from __future__ import annotations

from lookuplens.store.atomic import atomic_write_bytes
from lookuplens.store.jsondata import canonical_json, config_sha256, redact, to_jsonable
from lookuplens.store.rundir import RunDir
from lookuplens.store.schema import (
    COLUMN_DOCS,
    DERIVED_TABLES,
    FORMAT_VERSION,
    NULLABLE_COLUMNS,
    ROW_GROUP_ROWS,
    STAGE_TABLES,
    STAGES,
    TABLE_COLUMNS,
    TABLE_SORT,
    conform_columns,
    conform_table,
    table_schema,
)
from lookuplens.store.shards import ShardStore

__all__ = [
    "COLUMN_DOCS",
    "DERIVED_TABLES",
    "FORMAT_VERSION",
    "NULLABLE_COLUMNS",
    "ROW_GROUP_ROWS",
    "STAGES",
    "STAGE_TABLES",
    "TABLE_COLUMNS",
    "TABLE_SORT",
    "RunDir",
    "ShardStore",
    "atomic_write_bytes",
    "canonical_json",
    "conform_columns",
    "conform_table",
    "config_sha256",
    "redact",
    "table_schema",
    "to_jsonable",
]
