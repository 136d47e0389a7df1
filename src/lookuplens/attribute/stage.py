"""The attribute stage: examples planned into batches (the stage's shards), each batch
attributed by every method, and the `attributions` table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from lookuplens.attribute.config import AttributeConfig
from lookuplens.attribute.labels import label_reference
from lookuplens.attribute.methods import Attributor, _Batch, head_means
from lookuplens.attribute.readout import upstream_layers
from lookuplens.model import LoadedModel, as_float32, pad_right
from lookuplens.store import TABLE_SORT, ShardStore

__all__ = [
    "AttributionResult",
    "ExampleBatch",
    "attribute_batch",
    "attribute_examples",
    "concat_attributions",
    "plan_batches",
]


@dataclass(frozen=True)
class AttributionResult:
    attributions: pa.Table
    labels: pa.Table
    pairs: pa.Table
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class ExampleBatch:
    """Examples of one neuron layer attributed together (one shard of the attribute stage)."""

    layer: int
    """The layer of every example's neuron."""
    example_ids: np.ndarray
    """``[B]`` example ids."""
    neurons: np.ndarray
    """``[B]`` the neuron (in `layer`) of each example."""
    tokens: tuple[np.ndarray, ...]
    """Each example's trimmed prompt (token ids), ending at the firing token."""
    reference: np.ndarray | None = None
    """``[B]`` the activation the label rule measures ablation effects against
    (`label_reference`), for the candidate pruning; None: the top `candidates` only."""


def plan_batches(
    examples: pa.Table, cfg: AttributeConfig
) -> tuple[list[list[int]], list[ExampleBatch]]:
    """All prompts (for `head_means`) and the batches, numbered as the stage's shards.

    Examples are sorted by (layer, prompt length, neuron, example_id), so that a batch
    pads little, and cut into batches of `cfg.batch_examples` within each layer; every
    backend uses this plan, so shard ``i`` is the same batch whichever backend wrote it.
    """
    ex = examples.to_pandas()
    ex["_len"] = ex.tokens.map(len)
    ex = ex.sort_values(["layer", "_len", "neuron", "example_id"], kind="stable")
    ex["_ref"] = label_reference(ex, cfg)
    prompts = [list(t) for t in ex.tokens]
    batches: list[ExampleBatch] = []
    for layer, g in ex.groupby("layer", sort=True):
        for j in range(0, len(g), cfg.batch_examples):
            part = g.iloc[j : j + cfg.batch_examples]
            batches.append(
                ExampleBatch(
                    layer=int(layer),
                    example_ids=part.example_id.to_numpy(),
                    neurons=part.neuron.to_numpy(),
                    tokens=tuple(part.tokens),
                    reference=part._ref.to_numpy(dtype=np.float64),
                )
            )
    return prompts, batches


def attribute_batch(att: Attributor, eb: ExampleBatch) -> pa.Table:
    """The `attributions` rows of one batch: every method, example and upstream head (the
    ablations only for each example's candidate heads, see `AttributeConfig.candidates`)."""
    lm, cfg, layer = att.lm, att.cfg, eb.layer
    ids, mask = pad_right(lm, [list(t) for t in eb.tokens])
    batch = _Batch.on_device(
        lm, eb.example_ids, layer, torch.tensor(eb.neurons), ids, mask, reference=eb.reference
    )
    vals = {m: v.cpu() for m, v in att.run(batch).items()}
    ups = upstream_layers(lm, layer, cfg.include_same_layer)
    head_layer = np.repeat(np.array(ups, dtype=np.int64), lm.n_heads)
    head = np.tile(np.arange(lm.n_heads, dtype=np.int64), len(ups))
    n_up = len(head)
    B = len(eb.example_ids)
    cols: dict[str, list[np.ndarray]] = {
        k: [] for k in ("example_id", "layer", "neuron", "head_layer", "head", "value")
    }
    methods: list[str] = []
    for m in cfg.methods:
        v = vals[m].numpy().reshape(-1)
        keep = ~np.isnan(v)  # ablations pruned to the candidate heads have no row elsewhere
        cols["example_id"].append(np.repeat(batch.example_ids, n_up)[keep])
        cols["layer"].append(np.full(B * n_up, layer, dtype=np.int64)[keep])
        cols["neuron"].append(np.repeat(eb.neurons, n_up)[keep])
        cols["head_layer"].append(np.tile(head_layer, B)[keep])
        cols["head"].append(np.tile(head, B)[keep])
        cols["value"].append(v[keep])
        methods += [m] * int(keep.sum())
    return pa.table(
        {
            "example_id": np.concatenate(cols["example_id"]).astype(np.int64),
            "layer": np.concatenate(cols["layer"]),
            "neuron": np.concatenate(cols["neuron"]).astype(np.int64),
            "head_layer": np.concatenate(cols["head_layer"]),
            "head": np.concatenate(cols["head"]),
            "method": pa.array(methods, pa.string()),
            "value": np.concatenate(cols["value"]).astype(np.float64),
        }
    )


def attribute_examples(
    lm: LoadedModel,
    examples: pa.Table,
    cfg: AttributeConfig,
    shards: ShardStore | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> pa.Table:
    """The `attributions` table for every example and upstream head (resumable by shard).

    It is computed in float32 so that the decompositions close: a model in another dtype
    is attributed through a float32 copy (`lookuplens.model.as_float32`, 4 bytes per
    parameter while the call runs); pass a float32 model to avoid the copy.
    """
    lm = as_float32(lm)
    prompts, batches = plan_batches(examples, cfg)
    means = None
    if "mean_ablation" in cfg.methods and prompts:
        means = head_means(lm, prompts, max(b.layer for b in batches), cfg.batch_examples)
    att = Attributor(lm, cfg, means)
    done = shards.done() if shards is not None else set()
    parts: list[pa.Table] = []
    for i, eb in enumerate(batches):
        if i in done and shards is not None:
            parts.append(shards.read(i))
        else:
            table = attribute_batch(att, eb)
            if shards is not None:
                shards.write(i, table)
            parts.append(table)
        if on_progress is not None:
            on_progress(i + 1, len(batches))
    return concat_attributions(parts)


def concat_attributions(parts: list[pa.Table]) -> pa.Table:
    """The batches' tables as one `attributions` table, sorted as the store writes it
    (by neuron, example, head and method: `lookuplens.store.TABLE_SORT`)."""
    if not parts:
        return pa.table(
            {
                k: pa.array([], t)
                for k, t in (
                    ("example_id", pa.int64()),
                    ("layer", pa.int64()),
                    ("neuron", pa.int64()),
                    ("head_layer", pa.int64()),
                    ("head", pa.int64()),
                    ("method", pa.string()),
                    ("value", pa.float64()),
                )
            }
        )
    out = pa.concat_tables(parts)
    order = pa.compute.sort_indices(
        out, sort_keys=[(k, "ascending") for k in TABLE_SORT["attributions"]]
    )
    return out.take(order)
