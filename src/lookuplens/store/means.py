"""The ``attribution_means`` table: the mean of each attribution method per (neuron,
upstream head) over the neuron's top prompts, what the report and the dashboard show of
the ``attributions`` table.

The attribute stage writes it beside ``attributions.parquet`` (`attribution_means`);
for a run directory written before it existed, readers compute it with
`stream_attribution_means`, one record batch at a time. Both sum each group's values in
the table's row order, one thread, so they give the same numbers as each other and as a
``group_by`` over the whole table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    import pandas as pd

    from lookuplens.store.rundir import RunDir

__all__ = ["MEANS_KEYS", "attribution_means", "stream_attribution_means", "top_example_ids"]

MEANS_KEYS: tuple[str, ...] = ("layer", "neuron", "head_layer", "head", "method")
"""The columns an attribution mean is grouped by (and its table sorted by)."""


def top_example_ids(examples: pa.Table | pd.DataFrame | None) -> pa.Array | None:
    """The example ids of the top prompts, or None when every prompt counts (an examples
    table without a ``kind`` column, or none at all)."""
    if examples is None:
        return None
    if isinstance(examples, pa.Table):
        if "kind" not in examples.column_names:
            return None
        top = examples.filter(pc.equal(examples.column("kind"), "top"))
        return top.column("example_id").combine_chunks().cast(pa.int64())
    if "kind" not in examples.columns:
        return None
    ids = examples.example_id[examples.kind == "top"].to_numpy()
    return pa.array(ids, pa.int64())


def _finish(agg: pa.Table) -> pa.Table:
    agg = agg.rename_columns(
        [
            "mean" if c == "value_mean" else "n" if c == "value_count" else c
            for c in agg.column_names
        ]
    )
    agg = agg.select([*MEANS_KEYS, "mean", "n"])
    if agg.schema.field("method").type != pa.string():
        agg = agg.set_column(
            MEANS_KEYS.index("method"), "method", agg.column("method").cast(pa.string())
        )
    return agg.sort_by([(k, "ascending") for k in MEANS_KEYS])


def attribution_means(table: pa.Table, top: pa.Array | None) -> pa.Table:
    """Mean (``mean``) and count (``n``) of ``value`` per (layer, neuron, head_layer,
    head, method), over the rows of the examples `top` (all rows when None), sorted."""
    if top is not None:
        table = table.filter(pc.is_in(table.column("example_id"), value_set=top))
    agg = (
        table.select([*MEANS_KEYS, "value"])
        .group_by(list(MEANS_KEYS), use_threads=False)
        .aggregate([("value", "mean"), ("value", "count")])
    )
    return _finish(agg)


def stream_attribution_means(run: RunDir, top: pa.Array | None) -> pa.Table:
    """:func:`attribution_means` of the run's ``attributions`` table, read a record batch
    at a time (the table is never held whole)."""
    import pyarrow.acero as ac
    import pyarrow.dataset as ds

    run.table_info("attributions")  # the store's errors for a missing or bad table
    dataset = ds.dataset(run.table_path("attributions"), format="parquet")
    nodes = [
        ac.Declaration(
            "scan", ac.ScanNodeOptions(dataset, columns=[*MEANS_KEYS, "value", "example_id"])
        ),
    ]
    if top is not None:
        nodes.append(
            ac.Declaration("filter", ac.FilterNodeOptions(pc.field("example_id").isin(top)))
        )
    nodes.append(
        ac.Declaration(
            "aggregate",
            ac.AggregateNodeOptions(
                [
                    ("value", "hash_mean", None, "value_mean"),
                    ("value", "hash_count", None, "value_count"),
                ],
                keys=list(MEANS_KEYS),
            ),
        )
    )
    agg = ac.Declaration.from_sequence(nodes).to_table(use_threads=False)
    columns = []
    for name in agg.column_names:
        col = agg.column(name)
        if name in ("layer", "neuron", "head_layer", "head", "value_count"):
            col = col.cast(pa.int64())
        elif name == "method":
            col = col.cast(pa.string())
        columns.append(col)
    return _finish(pa.table(columns, names=agg.column_names))
