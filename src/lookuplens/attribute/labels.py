"""From attributions to labels and pairs: whether each upstream head is active on each
example (`label_examples`), and per (neuron, head) its active rate, whether the pair is
kept, and the neuron's mechanism label (`build_pairs`)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from lookuplens.attribute.config import ABLATIONS, AttributeConfig

__all__ = [
    "active_floor",
    "build_pairs",
    "label_examples",
    "label_reference",
    "mechanism_label",
    "pd_index",
    "pd_index_cols",
]


def typical_activation(examples):  # type: ignore[no-untyped-def]
    """Per (layer, neuron) the median trimmed activation of its top prompts (0 if negative):
    the reference of the ``ablation_typical`` and ``ablation_share`` rules."""
    top = examples if "kind" not in examples.columns else examples[examples.kind == "top"]
    return top.groupby(["layer", "neuron"]).trimmed_activation.median().clip(lower=0)


def label_reference(examples, cfg: AttributeConfig) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Per row of the ``examples`` frame, the activation an ablation label rule measures
    effects against: the neuron's typical activation (``ablation_typical``,
    ``ablation_share``), the example's own (``ablation_fraction``); 0 where no head can be
    active, NaN for the rules that do not read ablations or examples without activations."""
    rule = cfg.label_rule
    if not rule.startswith("ablation") or "trimmed_activation" not in examples.columns:
        return np.full(len(examples), np.nan)
    if rule == "ablation_fraction":
        act = examples.trimmed_activation.to_numpy(dtype=float)
    else:
        act = (
            typical_activation(examples)
            .reindex(pd_index_cols(examples, ["layer", "neuron"]))
            .fillna(0)
            .to_numpy(dtype=float)
        )
    return np.clip(act, 0, None)


def active_floor(cfg: AttributeConfig, ref: np.ndarray, drive: np.ndarray) -> np.ndarray:
    """``[B]`` the least zero-ablation effect with which the label rule calls a head active
    on each example: the rule itself, which `label_examples` applies to the exact effects
    and the attribute stage's candidate pruning to their attribution-patching estimates.
    ``ref`` ``[B]``: the reference activations (`label_reference`); ``drive`` ``[B]``: the
    sum of the positive effects of all heads on the example (``ablation_share`` compares an
    effect with it). ``inf`` where no head can be active or the rule does not read
    ablations."""
    ref = np.asarray(ref, dtype=np.float64)
    if cfg.label_rule in ("ablation_typical", "ablation_fraction"):
        floor = cfg.label_fraction * ref
    elif cfg.label_rule == "ablation_share":
        drive = np.asarray(drive, dtype=np.float64)
        share = np.maximum(cfg.label_floor * ref, cfg.label_fraction * drive)
        floor = np.minimum(cfg.label_fraction * ref, share)
    else:
        return np.full(ref.shape, np.inf)
    with np.errstate(invalid="ignore"):
        return np.where(ref > 0, floor, np.inf)


def label_examples(attributions: pa.Table, examples: pa.Table, cfg: AttributeConfig) -> pa.Table:
    """Whether each candidate head is active on each example (the `labels` table)."""
    df = attributions.to_pandas()
    ex = examples.to_pandas().set_index("example_id")
    val = df[df.method == cfg.label_method].copy()
    g = val.groupby("example_id").value
    if cfg.label_rule == "mean_std":
        thr = g.transform("mean") + cfg.label_std * g.transform(
            lambda v: v.std(ddof=1) if len(v) > 1 else 0.0
        )
        active = val.value > thr
    elif cfg.label_rule == "top_k":
        rank = g.rank(ascending=False, method="first")
        active = (rank <= cfg.label_top_k) & (val.value > 0)
    else:  # the ablation rules
        import pandas as pd

        if "trimmed_activation" not in ex.columns:
            raise ValueError(
                f"label_rule {cfg.label_rule} needs the examples' trimmed_activation column"
            )
        eff = _zero_ablation_effects(df, val)
        ref = pd.Series(label_reference(ex, cfg), index=ex.index)
        drive = (
            pd.Series(np.clip(eff, 0, None), index=val.index)
            .groupby(val.example_id.to_numpy())
            .transform("sum")
            .to_numpy()
        )
        active = eff >= active_floor(cfg, ref.loc[val.example_id].to_numpy(), drive)
    val["active"] = np.asarray(active, dtype=bool)
    val["split"] = ex.loc[val.example_id, "split"].to_numpy()
    # a head whose ablations were pruned (not among the example's candidates) has no
    # ablation row; the ablation rules label it inactive, and `candidate` says why
    ablated = df[df.method.isin(ABLATIONS)]
    if len(ablated):
        have = pd_index(ablated).unique()
        val["candidate"] = pd_index(val).isin(have)
    else:
        val["candidate"] = True
    val = val.sort_values(["example_id", "head_layer", "head"], kind="stable")
    return pa.Table.from_pandas(
        val[
            ["example_id", "layer", "neuron", "head_layer", "head", "active", "split", "candidate"]
        ],
        preserve_index=False,
    )


def _zero_ablation_effects(df, val):  # type: ignore[no-untyped-def]
    """The zero-ablation value of each row of ``val`` (same example and head)."""
    za = df[df.method == "zero_ablation"].set_index(["example_id", "head_layer", "head"]).value
    return za.reindex(pd_index(val)).to_numpy()


def pd_index(val):  # type: ignore[no-untyped-def]
    import pandas as pd

    return pd.MultiIndex.from_arrays([val["example_id"], val["head_layer"], val["head"]])


def mechanism_label(top1: float, top3: float) -> str:
    """One head carries most of the activation, a few heads share it, or it is distributed."""
    if top1 >= 0.5:
        return "single"
    if top3 >= 0.6:
        return "few"
    return "distributed"


def build_pairs(
    attributions: pa.Table,
    labels: pa.Table,
    neurons: pa.Table,
    cfg: AttributeConfig,
    examples: pa.Table | None = None,
) -> pa.Table:
    """The `pairs` table: per (neuron, upstream head) its active rate and whether it is kept.

    `mean_zero_ablation` (when that method ran) is the mean drop of the neuron's
    activation with the head zeroed: its total effect, through later layers too.
    Also per neuron a mechanism label from the mean positive `direct` attributions:
    ``single`` when the top head carries at least half of them, ``few`` when the top three
    carry 60%, else ``distributed``; `top1_share` and `top3_share` give the fractions.
    `ks_stat` and `ks_pvalue` are filled by the verify stage (NaN until then). Given
    ``examples``, the shares and `mean_direct` use the top prompts only (what drives the
    neuron when it fires), not its contrast prompts; the active rate uses both.
    """
    lab = labels.to_pandas()
    train = lab[lab.split == "train"]
    rate = train.groupby(["layer", "neuron", "head_layer", "head"]).active.agg(["mean", "size"])
    allr = lab.groupby(["layer", "neuron", "head_layer", "head"]).active.mean()
    pairs = rate.rename(columns={"mean": "active_rate", "size": "n_train"}).reset_index()
    pairs["active_rate_all"] = allr.reindex(
        pd_index_cols(pairs, ["layer", "neuron", "head_layer", "head"])
    ).to_numpy()
    pairs["kept"] = (pairs.active_rate >= cfg.min_active_rate) & (
        pairs.active_rate <= cfg.max_active_rate
    )
    pairs["ks_stat"] = np.nan
    pairs["ks_pvalue"] = np.nan
    att = attributions.to_pandas()
    method = "direct" if "direct" in set(att.method) else cfg.label_method
    d = att[att.method == method]
    if examples is not None and "kind" in examples.column_names:
        kinds = examples.select(["example_id", "kind"]).to_pandas()
        d = d[d.example_id.isin(kinds.example_id[kinds.kind == "top"])]
    mean = d.groupby(["layer", "neuron", "head_layer", "head"]).value.mean().reset_index()
    mean["pos"] = mean.value.clip(lower=0)
    shares = {}
    for (layer, neuron), g in mean.groupby(["layer", "neuron"]):
        tot = g.pos.sum()
        s = np.sort(g.pos.to_numpy())[::-1]
        t1 = float(s[:1].sum() / tot) if tot > 0 else 0.0
        t3 = float(s[:3].sum() / tot) if tot > 0 else 0.0
        shares[(layer, neuron)] = (t1, t3)
    key = list(zip(pairs.layer, pairs.neuron, strict=True))
    pairs["top1_share"] = [shares.get(k, (0.0, 0.0))[0] for k in key]
    pairs["top3_share"] = [shares.get(k, (0.0, 0.0))[1] for k in key]
    pairs["mechanism"] = [mechanism_label(*shares.get(k, (0.0, 0.0))) for k in key]
    mean_by = mean.set_index(["layer", "neuron", "head_layer", "head"]).value
    pairs["mean_direct"] = mean_by.reindex(
        pd_index_cols(pairs, ["layer", "neuron", "head_layer", "head"])
    ).to_numpy()
    if "zero_ablation" in set(att.method):
        z = att[att.method == "zero_ablation"]
        if examples is not None and "kind" in examples.column_names:
            z = z[z.example_id.isin(kinds.example_id[kinds.kind == "top"])]
        mean_z = z.groupby(["layer", "neuron", "head_layer", "head"]).value.mean()
        pairs["mean_zero_ablation"] = mean_z.reindex(
            pd_index_cols(pairs, ["layer", "neuron", "head_layer", "head"])
        ).to_numpy()
    nt = neurons.to_pandas().set_index(["layer", "neuron"])
    idx = pd_index_cols(pairs, ["layer", "neuron"])
    pairs["baseline"] = nt.baseline.reindex(idx).fillna(False).to_numpy(dtype=bool)
    pairs["token"] = nt.token.reindex(idx).to_numpy()
    pairs = pairs.sort_values(["layer", "neuron", "head_layer", "head"], kind="stable")
    table = pa.Table.from_pandas(pairs, preserve_index=False)
    for col in ("ks_stat", "ks_pvalue"):  # NaN until verify, not null
        table = table.set_column(
            table.schema.get_field_index(col),
            col,
            pa.array(pairs[col].to_numpy(), from_pandas=False),
        )
    return table


def pd_index_cols(df, cols):  # type: ignore[no-untyped-def]
    import pandas as pd

    return pd.MultiIndex.from_arrays([df[c] for c in cols])
