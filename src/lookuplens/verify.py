"""Stage 5: causal verification. Does the neuron matter, and does the head drive it?

``effects.parquet`` rows, one per example and intervention, measured at the firing
position (the prompt's last token) on the neuron's target token:

- neuron interventions over every position of the prompt: ``neuron_zero`` (activation
  set to 0), ``neuron_mean`` (set to its mean over the scanned corpus),
  ``neuron_scale_{k}`` (multiplied by k, amplification);
- ``head_zero_ablation`` of each kept (neuron, head) pair's head, and of each neuron's
  top ``top_heads`` heads by mean ``direct`` attribution whether kept or not, on every
  example of the neuron (the head's output zeroed at every position, as the paper's
  value-vector ablation), with ``head_layer`` and ``head`` set. The top heads are
  verified too because the 25-75% filter drops a head that drives its neuron on nearly
  every example, and that is the head a user most needs checked.
- ``cue_swap`` and ``head_source_swap``, on the neuron's top prompts only
  (`lookuplens.cueswap`): the prompt's cue, an earlier word whose replacement by another
  filler of its slot removes at least ``swap_min_drop`` of the activation, is swapped
  (``cue_swap``: the whole swap), and for every head upstream of the neuron only that
  head's output from the swapped run is patched into the clean run (``head_source_swap``
  with ``head_layer`` and ``head``). Zero ablation asks what the neuron does with the
  head silent, a state the model never sees; the swap asks what the head carries of the
  word (a resample ablation of the head's input word, the kind recommended over zeroing
  for causal claims). ``swap_position`` (index in the prompt's tokens) and
  ``swap_token_id`` (the replacement) say what was swapped.

``delta_logprob`` is log p(token) after minus before; ``kl`` is KL(clean || intervened)
of the next-token distribution; ``delta_prob`` and ``delta_activation`` (the neuron's
activation at the firing position, after minus before) are extra columns.

For every ablated pair (kept or top head), a two-sample Kolmogorov-Smirnov test
compares the drop in p(token) under the head's ablation on examples where the head is
active against those where it is not (the paper: D = 0.24 to 0.33 on GPT-2); the
statistic and p-value are written into ``pairs.parquet``. The agreement between
attribution methods (Spearman correlation over all (example, head) values) goes to
run.json.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)
from scipy import stats
from torch import Tensor

from lookuplens import cueswap
from lookuplens.interventions import Row as _Row
from lookuplens.interventions import forward as _forward
from lookuplens.interventions import head_edit as _head_edit
from lookuplens.interventions import kl as _kl
from lookuplens.interventions import neuron_edit as _neuron_edit
from lookuplens.model import LoadedModel, pad_right

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyConfig:
    """Which interventions are measured."""

    scales: tuple[float, ...] = (2.0,)
    """Amplification factors of the neuron (``neuron_scale_{k}`` rows)."""
    neuron_interventions: bool = True
    """Measure zero, mean and scale interventions on each neuron."""
    head_ablations: bool = True
    """Ablate the head of every kept pair on its neuron's examples (and run the KS test)."""
    source_swap: bool = True
    """Measure ``cue_swap`` and ``head_source_swap`` on the neurons' top prompts
    (`lookuplens.cueswap`); the headline findings rest on them."""
    swap_fillers: int = 16
    """Replacement words tried per position: the slot's most frequent fillers."""
    swap_screen: int = 4
    """Positions per top prompt swapped for real, after the gradient screen."""
    swap_min_drop: float = 0.2
    """A swap is a cue of the prompt when it removes at least this share of the activation."""
    swap_max_cues: int = 1
    """Cues per top prompt whose heads are patched (the strongest)."""
    swap_skip_last: int = 3
    """The prompt's last tokens (the firing token and its trigger) are never cues."""
    swap_heads: int = 0
    """Heads patched per cue, by a first-order estimate of what each carries; 0: all."""
    swap_attended: bool = True
    """Also swap, per top prompt, the position each head verify ablates for the neuron
    (its kept pairs and top heads) attends to most from the firing token: a far-back word
    a head reads can escape the gradient screen."""
    top_heads: int = 1
    """Also ablate (and KS-test) each neuron's top heads by mean ``direct`` attribution,
    kept or not; 0: kept pairs only."""
    top_heads_total: int = 1
    """... and its top heads by mean zero-ablation effect on its top prompts (the total
    effect, through later layers too: a head that drives the neuron through an earlier
    neuron); 0: none."""
    batch_rows: int = 64
    """Prompts per forward batch."""

    def __post_init__(self) -> None:
        if self.top_heads < 0 or self.top_heads_total < 0:
            raise ValueError("top_heads and top_heads_total must be 0 or more")
        if self.batch_rows < 1:
            raise ValueError(f"batch_rows must be positive, got {self.batch_rows}")
        if self.swap_skip_last < 1:
            raise ValueError("swap_skip_last must be at least 1 (the firing token is no cue)")
        if min(self.swap_fillers, self.swap_screen, self.swap_max_cues) < 1:
            raise ValueError("swap_fillers, swap_screen and swap_max_cues must be positive")
        if not 0 < self.swap_min_drop <= 1:
            raise ValueError(f"swap_min_drop must be in (0, 1], got {self.swap_min_drop}")


def verify_run(
    lm: LoadedModel,
    examples: pa.Table,
    neurons: pa.Table,
    stats_table: pa.Table,
    labels: pa.Table,
    pairs: pa.Table,
    cfg: VerifyConfig,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[pa.Table, pa.Table]:
    """The `effects` table and the `pairs` table with the KS columns filled in."""
    ex = examples.to_pandas().sort_values("example_id")
    nt = neurons.to_pandas().set_index(["layer", "neuron"])
    target = nt.target_token_id if "target_token_id" in nt else nt.token_id
    rows = [
        _Row(
            int(r.example_id),
            int(r.layer),
            int(r.neuron),
            list(r.tokens),
            int(target[(r.layer, r.neuron)]),
        )
        for r in ex.itertuples()
    ]
    # batches of similar length pad little; the table is sorted back at the end
    rows.sort(key=lambda r: (r.layer, len(r.tokens), r.example_id))
    means = {
        (int(a), int(b)): float(m)
        for a, b, m in zip(
            stats_table.column("layer").to_pylist(),
            stats_table.column("neuron").to_pylist(),
            stats_table.column("act_mean").to_pylist(),
            strict=True,
        )
    }
    out: dict[str, list] = {
        k: []
        for k in (
            "example_id",
            "layer",
            "neuron",
            "intervention",
            "delta_logprob",
            "kl",
            "delta_prob",
            "delta_activation",
            "head_layer",
            "head",
            "swap_position",
            "swap_token_id",
        )
    }
    interventions: list[tuple[str, Callable | None]] = []
    if cfg.neuron_interventions:
        interventions.append(("neuron_zero", _neuron_edit("set", 0.0)))
        interventions.append(("neuron_mean", _neuron_edit("set", means)))
        for k in cfg.scales:
            interventions.append((f"neuron_scale_{k:g}", _neuron_edit("scale", float(k))))
    head_jobs: list[tuple[_Row, tuple[int, int]]] = []
    # each neuron's ablated heads: the head ablations, and the cue swaps' readers
    ablated: dict[tuple[int, int], list[tuple[int, int]]] = {}
    if cfg.head_ablations:
        for layer, neuron, hl, h in ablated_pairs(pairs, cfg.top_heads, cfg.top_heads_total):
            ablated.setdefault((layer, neuron), []).append((hl, h))
        for r in rows:
            head_jobs += [(r, head) for head in ablated.get((r.layer, r.neuron), [])]
    head_jobs.sort(key=lambda j: (len(j[0].tokens), j[0].example_id, j[1]))
    total = len(rows) * (1 + len(interventions)) + len(head_jobs)
    done = 0
    clean: dict[int, tuple[Tensor, float]] = {}
    for j in range(0, len(rows), cfg.batch_rows):
        part = rows[j : j + cfg.batch_rows]
        ids, mask = pad_right(lm, [r.tokens for r in part])
        calls, _ = lm.capture_layer_calls(ids, mask, lm.n_layers - 1)
        lp, act = _forward(lm, part, None, calls)
        for i, r in enumerate(part):
            clean[r.example_id] = (lp[i], float(act[i]))
        done += len(part)
        for name, edit in interventions:
            lp2, act2 = _forward(lm, part, edit, calls)
            for i, r in enumerate(part):
                c_lp, c_act = clean[r.example_id]
                _append(out, r, name, c_lp, lp2[i], c_act, float(act2[i]), None)
            done += len(part)
            if on_progress is not None:
                on_progress(done, total)
    for j in range(0, len(head_jobs), cfg.batch_rows):
        part_h = head_jobs[j : j + cfg.batch_rows]
        part_rows = [r for r, _ in part_h]
        lp2, act2 = _forward(lm, part_rows, _head_edit([h for _, h in part_h]))
        for i, (r, head) in enumerate(part_h):
            c_lp, c_act = clean[r.example_id]
            _append(out, r, "head_zero_ablation", c_lp, lp2[i], c_act, float(act2[i]), head)
        done += len(part_h)
        if on_progress is not None:
            on_progress(done, total)
    if cfg.head_ablations and cfg.source_swap:
        done = _cue_swaps(lm, ex, rows, clean, ablated, cfg, out, done, total, on_progress)
    effects = pa.table(
        {
            "example_id": pa.array(out["example_id"], pa.int64()),
            "layer": pa.array(out["layer"], pa.int64()),
            "neuron": pa.array(out["neuron"], pa.int64()),
            "intervention": pa.array(out["intervention"], pa.string()),
            "delta_logprob": pa.array(out["delta_logprob"], pa.float64()),
            "kl": pa.array(out["kl"], pa.float64()),
            "delta_prob": pa.array(out["delta_prob"], pa.float64()),
            "delta_activation": pa.array(out["delta_activation"], pa.float64()),
            "head_layer": pa.array(out["head_layer"], pa.int64()),
            "head": pa.array(out["head"], pa.int64()),
            "swap_position": pa.array(out["swap_position"], pa.int64()),
            "swap_token_id": pa.array(out["swap_token_id"], pa.int64()),
        }
    )
    order = pa.compute.sort_indices(
        effects,
        sort_keys=[
            ("example_id", "ascending"),
            ("intervention", "ascending"),
            ("head_layer", "ascending"),
            ("head", "ascending"),
        ],
    )
    effects = effects.take(order)
    return effects, ks_tests(effects, labels, pairs)


def _cue_swaps(
    lm: LoadedModel,
    ex: pd.DataFrame,
    rows: list[_Row],
    clean: dict[int, tuple[Tensor, float]],
    readers: dict[tuple[int, int], list[tuple[int, int]]],
    cfg: VerifyConfig,
    out: dict[str, list],
    done: int,
    total: int,
    on_progress: Callable[[int, int], None] | None,
) -> int:
    """``cue_swap`` and ``head_source_swap`` rows of the neurons' top prompts
    (`lookuplens.cueswap`); `readers` are each neuron's ablated heads, whose most attended
    positions are swapped too (`VerifyConfig.swap_attended`)."""
    kind = dict(zip(ex.example_id.astype(int), ex.kind, strict=True)) if "kind" in ex else {}
    tops = [
        r for r in rows if kind.get(r.example_id, "top") == "top" and clean[r.example_id][1] > 0
    ]
    if not tops:
        return done
    special = getattr(lm.tokenizer, "all_special_ids", None) or []
    slots = cueswap.SlotIndex(ex.tokens, skip=special)
    settings = cueswap.SwapSettings(
        cfg.swap_fillers,
        cfg.swap_screen,
        cfg.swap_min_drop,
        cfg.swap_max_cues,
        cfg.swap_skip_last,
        cfg.swap_heads,
        cfg.batch_rows,
        cfg.swap_attended,
    )
    base = done

    def tick(n: int, of: int) -> None:
        if on_progress is not None:
            on_progress(base + n, total + of)

    for c, head, lp, act2 in cueswap.cue_swaps(lm, tops, slots, settings, tick, readers):
        c_lp, c_act = clean[c.row.example_id]
        name = "cue_swap" if head is None else "head_source_swap"
        _append(out, c.row, name, c_lp, lp, c_act, act2, head, (c.position, c.replacement))
    return base + len(tops)


def ablated_pairs(
    pairs: pa.Table, top_heads: int, top_heads_total: int = 0
) -> list[tuple[int, int, int, int]]:
    """(layer, neuron, head_layer, head) of the pairs whose head verify ablates: the kept
    pairs, each neuron's ``top_heads`` heads by ``mean_direct`` and its
    ``top_heads_total`` heads by ``mean_zero_ablation`` (when the columns are there), in
    table order without repeats."""
    df = pairs.to_pandas()
    chosen = df.kept.to_numpy(dtype=bool).copy()
    for column, k in (("mean_direct", top_heads), ("mean_zero_ablation", top_heads_total)):
        if k <= 0 or column not in df or not len(df):
            continue
        ranked = df.assign(_i=np.arange(len(df))).sort_values(
            ["layer", "neuron", column, "head_layer", "head"],
            ascending=[True, True, False, True, True],
        )
        top = ranked.groupby(["layer", "neuron"], sort=False).head(k)
        chosen[top._i.to_numpy()] = True
    sel = df[chosen]
    return [
        (int(a), int(b), int(c), int(d))
        for a, b, c, d in zip(sel.layer, sel.neuron, sel.head_layer, sel["head"], strict=True)
    ]


def _append(
    out: dict[str, list],
    r: _Row,
    name: str,
    c_lp: Tensor,
    lp: Tensor,
    c_act: float,
    act: float,
    head: tuple[int, int] | None,
    swap: tuple[int, int] | None = None,
) -> None:
    out["example_id"].append(r.example_id)
    out["layer"].append(r.layer)
    out["neuron"].append(r.neuron)
    out["intervention"].append(name)
    out["delta_logprob"].append(float(lp[r.token_id] - c_lp[r.token_id]))
    out["kl"].append(float(_kl(c_lp[None], lp[None])[0]))
    out["delta_prob"].append(float(lp[r.token_id].exp() - c_lp[r.token_id].exp()))
    out["delta_activation"].append(act - c_act)
    out["head_layer"].append(None if head is None else head[0])
    out["head"].append(None if head is None else head[1])
    out["swap_position"].append(None if swap is None else swap[0])
    out["swap_token_id"].append(None if swap is None else swap[1])


def ks_tests(effects: pa.Table, labels: pa.Table, pairs: pa.Table) -> pa.Table:
    """Fill `ks_stat`/`ks_pvalue` of every pair whose head was ablated: the drop in
    p(token) on examples where the head is active against those where it is not (NaN
    when one side is empty)."""
    eff = effects.to_pandas()
    eff = eff[eff.intervention == "head_zero_ablation"]
    lab = labels.to_pandas().set_index(["example_id", "head_layer", "head"]).active
    df = pairs.to_pandas()
    ks = np.full(len(df), np.nan)
    pv = np.full(len(df), np.nan)
    n_act = np.zeros(len(df), dtype=np.int64)
    n_inact = np.zeros(len(df), dtype=np.int64)
    groups = {k: g for k, g in eff.groupby(["layer", "neuron", "head_layer", "head"])}
    for i, p in enumerate(df.itertuples()):
        g = groups.get((p.layer, p.neuron, p.head_layer, p.head))
        if g is None:
            continue
        act = lab.reindex(list(zip(g.example_id, g.head_layer, g["head"], strict=True))).to_numpy()
        drop = -g.delta_prob.to_numpy()
        a, b = drop[act == True], drop[act == False]  # noqa: E712
        n_act[i], n_inact[i] = len(a), len(b)
        if len(a) and len(b):
            res = stats.ks_2samp(a, b)
            ks[i], pv[i] = float(res.statistic), float(res.pvalue)
    table = pairs
    for name, arr in (("ks_stat", ks), ("ks_pvalue", pv)):
        table = table.set_column(
            table.schema.get_field_index(name), name, pa.array(arr, from_pandas=False)
        )
    for name, arr in (("ks_n_active", n_act), ("ks_n_inactive", n_inact)):
        if name in table.schema.names:
            table = table.drop_columns([name])
        table = table.append_column(name, pa.array(arr))
    return table


def method_agreement(attributions: pa.Table) -> dict[str, dict[str, float]]:
    """Spearman correlation between every two methods over all (example, head) values."""
    df = attributions.to_pandas()
    wide = df.pivot_table(
        index=["example_id", "head_layer", "head"], columns="method", values="value"
    )
    methods = list(wide.columns)
    out: dict[str, dict[str, float]] = {}
    for a in methods:
        out[a] = {}
        for b in methods:
            if a == b:
                out[a][b] = 1.0
                continue
            both = wide[[a, b]].dropna()
            if len(both) < 3:
                out[a][b] = float("nan")
                continue
            rho = stats.spearmanr(both[a], both[b]).statistic
            out[a][b] = round(float(rho), 4)
    return out
