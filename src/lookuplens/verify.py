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
- ``head_source_swap`` of the same heads, on the neuron's top prompts only: a
  counterfactual patch. The word the head reads (its most attended position from the
  firing position, BOS and the firing token itself left out, if it gets at least
  ``swap_min_attention``) is replaced by a word the same head reads on one of the
  neuron's contrast prompts (prompts ending on the same token where the neuron is
  silent, as stored; taken in turn), the swapped prompt is run, and the head's output
  from that run is patched into the clean run at every position. Zero ablation asks what
  the neuron does with the head silent, a state the model never sees; the swap asks what
  it does when the head reads what it reads when the neuron stays off (a resample
  ablation of the head's input word, the kind recommended over zeroing for causal
  claims). ``swap_position`` (index in the prompt's tokens) and ``swap_token_id`` (the
  replacement) say what was swapped. Needs contrast prompts (none under ``--preset
  paper``); without them there are no such rows.

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
import torch
from scipy import stats
from torch import Tensor

from lookuplens.attribute import _pad
from lookuplens.contrast import silent_limit
from lookuplens.model import HookFn, LayerCall, LoadedModel, hook_name

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
    """Measure ``head_source_swap`` on the ablated heads (needs contrast prompts)."""
    swap_silent_fraction: float = 0.2
    """A contrast prompt lends the swap its word when the neuron's activation on it, as
    stored, is at most this share of the median over the top prompts (a contrast is
    chosen silent with its whole document as context; cut to length, some fire)."""
    swap_min_attention: float = 0.5
    """The head reads a word when it puts at least this much attention on it from the
    firing position: top prompts where it reads none get no swap, and contrasts where it
    reads none lend no word (a diffuse head on a silent contrast reads nothing the
    neuron's silence can be blamed on)."""
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


@dataclass(frozen=True)
class _Row:
    example_id: int
    layer: int
    neuron: int
    tokens: list[int]
    token_id: int


def _forward(
    lm: LoadedModel,
    rows: list[_Row],
    edit: Callable[[list[_Row]], list[tuple[str, HookFn]]] | None,
    calls: list[LayerCall] | None = None,
) -> tuple[Tensor, Tensor]:
    """Log-probs of the next token at each prompt's last position, and the neuron's activation.

    With `calls` (the batch's recorded layer calls), only the layers from the rows' first
    neuron layer on are run again.
    """
    ids, mask = _pad(lm, [r.tokens for r in rows])
    pos = mask.sum(1) - 1
    acts = torch.empty(len(rows), dtype=torch.float64)
    by_layer: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_layer.setdefault(r.layer, []).append(i)
    hooks = list(edit(rows)) if edit is not None else []
    for layer, idx in by_layer.items():
        sel = torch.tensor(idx)
        cols = torch.tensor([rows[i].neuron for i in idx])

        def grab(x: Tensor, _n: str, sel: Tensor = sel, cols: Tensor = cols) -> None:
            acts[sel] = x[sel, pos[sel], cols].double().cpu()

        hooks.append((hook_name(layer, "mlp.hook_post"), grab))
    if calls is None:
        logits, _ = lm.run_with_cache(ids, [], attention_mask=mask, extra_hooks=hooks)
        assert logits is not None
    else:
        # prefix reuse: layers before the first edited one are the same as in the clean run
        start = min(r.layer for r in rows)
        out = lm.replay_layers(
            calls, start, lm.n_layers - 1, calls[start].hidden, torch.arange(len(rows)), hooks=hooks
        )
        logits = lm.unembed(out)
    last = logits[torch.arange(len(rows)), pos].double()
    return torch.log_softmax(last, dim=-1).cpu(), acts


def _neuron_edit(kind: str, value: dict[tuple[int, int], float] | float) -> Callable:
    def make(rows: list[_Row]) -> list[tuple[str, HookFn]]:
        hooks: list[tuple[str, HookFn]] = []
        for layer in sorted({r.layer for r in rows}):
            idx = [i for i, r in enumerate(rows) if r.layer == layer]
            sel = torch.tensor(idx)
            cols = torch.tensor([rows[i].neuron for i in idx])
            if isinstance(value, dict):
                vals = torch.tensor([value[(layer, rows[i].neuron)] for i in idx])
            else:
                vals = torch.full((len(idx),), float(value))

            def fn(
                x: Tensor, _n: str, sel: Tensor = sel, cols: Tensor = cols, vals: Tensor = vals
            ) -> Tensor:
                x = x.clone()
                cur = x[sel, :, cols]  # [n, p]
                new = (
                    cur * vals[:, None].to(x.dtype)
                    if kind == "scale"
                    else (vals[:, None].to(x.dtype).expand_as(cur))
                )
                x[sel[:, None], torch.arange(x.shape[1])[None, :], cols[:, None]] = new
                return x

            hooks.append((hook_name(layer, "mlp.hook_post"), fn))
        return hooks

    return make


def _head_edit(heads: list[tuple[int, int]], donor: dict[int, Tensor] | None = None) -> Callable:
    """Zero the head ``heads[i]`` for row i at every position, or with `donor` (``z`` of
    each head layer from another run of the same batch shape) patch in its value there."""

    def make(rows: list[_Row]) -> list[tuple[str, HookFn]]:
        hooks: list[tuple[str, HookFn]] = []
        for hl in sorted({h[0] for h in heads}):
            idx = [i for i, h in enumerate(heads) if h[0] == hl]
            sel = torch.tensor(idx)
            hs = torch.tensor([heads[i][1] for i in idx])

            new = None if donor is None else donor[hl][sel, :, hs]

            def fn(
                z: Tensor, _n: str, sel: Tensor = sel, hs: Tensor = hs, new: Tensor | None = new
            ) -> Tensor:
                z = z.clone()
                z[sel, :, hs] = 0 if new is None else new.to(z.dtype)
                return z

            hooks.append((hook_name(hl, "attn.hook_z"), fn))
        return hooks

    return make


def _kl(clean: Tensor, new: Tensor) -> np.ndarray:
    return (clean.exp() * (clean - new)).sum(-1).clamp_min(0).numpy()


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
    if cfg.head_ablations:
        by_neuron: dict[tuple[int, int], list[_Row]] = {}
        for r in rows:
            by_neuron.setdefault((r.layer, r.neuron), []).append(r)
        for layer, neuron, hl, h in ablated_pairs(pairs, cfg.top_heads, cfg.top_heads_total):
            for r in by_neuron.get((layer, neuron), []):
                head_jobs.append((r, (hl, h)))
    head_jobs.sort(key=lambda j: (len(j[0].tokens), j[0].example_id, j[1]))
    total = len(rows) * (1 + len(interventions)) + len(head_jobs)
    done = 0
    clean: dict[int, tuple[Tensor, float]] = {}
    for j in range(0, len(rows), cfg.batch_rows):
        part = rows[j : j + cfg.batch_rows]
        ids, mask = _pad(lm, [r.tokens for r in part])
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
    swap_jobs = (
        _source_swaps(
            lm,
            ex,
            rows,
            {k: v[1] for k, v in clean.items()},
            ablated_pairs(pairs, cfg.top_heads, cfg.top_heads_total),
            cfg,
        )
        if cfg.head_ablations and cfg.source_swap
        else []
    )
    total += len(swap_jobs)
    for j in range(0, len(swap_jobs), cfg.batch_rows):
        part_s = swap_jobs[j : j + cfg.batch_rows]
        swapped = [r.tokens[:s] + [t] + r.tokens[s + 1 :] for r, _, (s, t) in part_s]
        ids, mask = _pad(lm, swapped)
        hls = sorted({h[0] for _, h, _ in part_s})
        names = {hl: hook_name(hl, "attn.hook_z") for hl in hls}
        _, donor = lm.run_with_cache(
            ids, list(names.values()), attention_mask=mask, stop_after_layer=max(hls)
        )
        edit = _head_edit([h for _, h, _ in part_s], {hl: donor[n] for hl, n in names.items()})
        lp2, act2 = _forward(lm, [r for r, _, _ in part_s], edit)
        for i, (r, head, sw) in enumerate(part_s):
            c_lp, c_act = clean[r.example_id]
            _append(out, r, "head_source_swap", c_lp, lp2[i], c_act, float(act2[i]), head, sw)
        done += len(part_s)
        if on_progress is not None:
            on_progress(done, total)
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


def _most_read(
    lm: LoadedModel, rows: list[_Row], layers: list[int], batch: int, min_attention: float
) -> dict[int, dict[int, Tensor]]:
    """Per example and head layer, the position each head reads from the prompt's last
    token (``[n_heads]``): its most attended one, leaving out a leading BOS and the last
    position itself, if it gets at least `min_attention`; -1 otherwise."""
    names = {hl: hook_name(hl, "attn.hook_pattern") for hl in layers}
    bos = lm.bos_token_id
    out: dict[int, dict[int, Tensor]] = {}
    for j in range(0, len(rows), batch):
        part = rows[j : j + batch]
        ids, mask = _pad(lm, [r.tokens for r in part])
        _, cache = lm.run_with_cache(
            ids, list(names.values()), attention_mask=mask, stop_after_layer=max(layers)
        )
        for i, r in enumerate(part):
            p = len(r.tokens) - 1
            first = 1 if bos is not None and r.tokens[0] == bos else 0
            reads = {}
            for hl, n in names.items():
                pat = cache[n][i, :, p, first:p]  # [H, candidates]
                if not pat.shape[-1]:
                    reads[hl] = torch.full((pat.shape[0],), -1, dtype=torch.long)
                    continue
                top, at = pat.max(-1)
                reads[hl] = torch.where(top >= min_attention, at + first, -1)
            out[r.example_id] = reads
    return out


def _source_swaps(
    lm: LoadedModel,
    ex: pd.DataFrame,
    rows: list[_Row],
    acts: dict[int, float],
    heads: list[tuple[int, int, int, int]],
    cfg: VerifyConfig,
) -> list[tuple[_Row, tuple[int, int], tuple[int, int]]]:
    """(top prompt, head, (position, replacement token)) of every ``head_source_swap``:
    the word the head reads on the prompt, replaced by the word it reads on one of the
    neuron's contrast prompts that are silent as stored (`acts`: the clean activation of
    every example; silent: at most ``swap_silent_fraction`` of the median over the top
    prompts, `contrast.silent_limit`, the contrast search's rule), taken in turn, skipping
    the same word."""
    if "kind" not in ex or not heads:
        return []
    kind = dict(zip(ex.example_id.astype(int), ex.kind, strict=True))
    tops: dict[tuple[int, int], list[_Row]] = {}
    cons: dict[tuple[int, int], list[_Row]] = {}
    for r in rows:
        side = tops if kind[r.example_id] == "top" else cons
        side.setdefault((r.layer, r.neuron), []).append(r)
    for k, rs in cons.items():
        if k in tops:
            limit = silent_limit(cfg.swap_silent_fraction, [acts[r.example_id] for r in tops[k]])
            cons[k] = [r for r in rs if acts[r.example_id] <= limit]
    heads = [h for h in heads if cons.get((h[0], h[1])) and tops.get((h[0], h[1]))]
    if not heads:
        return []
    need = {(h[0], h[1]) for h in heads}
    todo = [r for k in sorted(need) for r in sorted(tops[k] + cons[k], key=lambda r: r.example_id)]
    reads = _most_read(
        lm, todo, sorted({h[2] for h in heads}), cfg.batch_rows, cfg.swap_min_attention
    )
    jobs = []
    for layer, neuron, hl, h in heads:
        pool = []
        for c in sorted(cons[(layer, neuron)], key=lambda r: r.example_id):
            s = int(reads[c.example_id][hl][h])
            if s >= 0:
                pool.append(c.tokens[s])
        if not pool:
            continue
        for i, r in enumerate(sorted(tops[(layer, neuron)], key=lambda r: r.example_id)):
            s = int(reads[r.example_id][hl][h])
            if s < 0:
                continue
            for off in range(len(pool)):
                t = pool[(i + off) % len(pool)]
                if t != r.tokens[s]:
                    jobs.append((r, (hl, h), (s, t)))
                    break
    jobs.sort(key=lambda j: (len(j[0].tokens), j[0].example_id, j[1]))
    return jobs


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
