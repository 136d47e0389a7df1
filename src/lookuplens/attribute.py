"""Stage 4: which upstream attention heads drive each neuron's firing.

For every example (a trimmed prompt ending at the firing token) and every upstream head
of its neuron, several attribution methods measure the head's share:

``direct``
    The head's output at the firing position, passed through the MLP-input norm with
    its scale (and centring, for LayerNorm) frozen at the example's value, dotted with
    the neuron's input direction. Exact: the direct terms of every head, attention
    bias, earlier MLP, the embeddings, plus the norm bias and the neuron's bias, sum to
    the neuron's pre-activation (`decompose_neuron_input`). For gated MLPs the input
    direction is the gate's, so the terms sum to the gate's pre-activation.
``raw``
    The paper's: the head's output dotted with W_in, no norm.
``zero_ablation``, ``mean_ablation``, ``resample_ablation``
    Clean activation minus the activation with the head's output (its ``z``, at every
    position) replaced by zeros, by its mean over all positions of all examples, or by
    the ``z`` of another example (same position index, clipped to its length). Positive
    means the head drives the neuron. Only layers l..L are recomputed: the residual
    stream entering layer l is reused from the clean run (`LoadedModel.replay_layers`).
``attribution_patching``
    The first-order estimate of ``zero_ablation``: gradient of the activation with
    respect to the head's ``z`` times ``z`` (summed over positions); one backward pass
    for all heads of a batch.
``path_patching``
    The zero-ablation effect through the head's direct path to the neuron only: the
    neuron's input residual with the head's output removed at the firing position,
    everything else clean. Compare with ``zero_ablation`` (the total effect).

The activation measured is the neuron's post-activation (for gated MLPs,
``act(gate) * up``). Upstream heads are the heads of layers before the neuron's layer
and, by default, of its own layer (a block's attention runs before its MLP); for
parallel-residual models (Pythia) a layer's attention does not feed its own MLP, so its
heads are never upstream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from lookuplens.choices import check_choices
from lookuplens.model import HookFn, LoadedModel, hook_name, pad_right
from lookuplens.store import ShardStore

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = (
    "direct",
    "raw",
    "zero_ablation",
    "mean_ablation",
    "resample_ablation",
    "attribution_patching",
    "path_patching",
)
ABLATIONS = ("zero_ablation", "mean_ablation", "resample_ablation")
DEFAULT_METHODS: tuple[str, ...] = (
    "direct",
    "raw",
    "zero_ablation",
    "attribution_patching",
    "path_patching",
)


@dataclass(frozen=True)
class AttributeConfig:
    """How heads are attributed and labelled."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    """Attribution methods to compute (see the module docstring). The default leaves out
    mean and resample ablation, which cost as much as zero ablation each; add them here
    (or use ``METHODS``) to compare all seven."""
    include_same_layer: bool = True
    """Count the heads of the neuron's own layer as upstream (the paper's code did not)."""
    label_method: str = "direct"
    """The method whose values decide whether a head is active on an example."""
    label_rule: Literal[
        "mean_std", "top_k", "ablation_fraction", "ablation_typical", "ablation_share"
    ] = "ablation_share"
    """``ablation_share`` (the default): ``ablation_typical``'s test, or zero-ablating the
    head removes at least `label_fraction` of the drive of all heads on that prompt (the
    sum of their positive zero-ablation effects) and at least `label_floor` of the
    neuron's median activation over its top prompts, so a head that drives a neuron by 8%
    is a driver when the other heads drive it less (effects are spread over many heads on
    real text), while a silent prompt's small effects are not; ``ablation_typical``:
    zero-ablating the head lowers
    the activation by at least `label_fraction` of the neuron's median activation over its
    top prompts, a causal test with one yardstick for a neuron's top and contrast prompts;
    ``mean_std``: value above mean + `label_std` standard deviations over the candidate
    heads (the paper's, relative to the other heads, so a head that drives the neuron
    alongside another may count as inactive); ``top_k``: among the `label_top_k` largest
    positive values; ``ablation_fraction``: zero-ablating the head removes at least
    `label_fraction` of the example's own activation."""
    label_std: float = 2.0
    """Standard deviations above the mean for ``mean_std``."""
    label_top_k: int = 3
    """Heads per example for ``top_k`` (the paper's October version: 3)."""
    label_fraction: float = 0.2
    """Share of the activation for ``ablation_fraction``, of the median top activation for
    ``ablation_typical``, of the heads' total drive for ``ablation_share``."""
    label_floor: float = 0.05
    """For ``ablation_share``: the least effect counted, as a share of the neuron's median
    top activation."""
    min_active_rate: float = 0.25
    """A pair is kept when its head is active on at least this share of training examples."""
    max_active_rate: float = 0.75
    """... and at most this share (the paper: 25% to 75%)."""
    batch_examples: int = 32
    """Examples per batch (each ablation batch holds n_heads times as many rows)."""
    seed: int = 0
    """Seed of the resample ablation's choice of donor examples."""

    def __post_init__(self) -> None:
        check_choices(self)
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(
                f"unknown attribution methods {sorted(unknown)}; choose from {', '.join(METHODS)}"
            )
        if self.label_method not in self.methods:
            raise ValueError(f"label_method {self.label_method!r} must be one of the methods")
        if self.label_rule.startswith("ablation") and "zero_ablation" not in self.methods:
            raise ValueError(
                f"label_rule {self.label_rule} needs the zero_ablation method; add it to the "
                "methods or choose --label-rule mean_std"
            )
        if not 0 <= self.min_active_rate <= self.max_active_rate <= 1:
            raise ValueError("need 0 <= min_active_rate <= max_active_rate <= 1")
        if self.batch_examples < 1 or self.label_top_k < 1:
            raise ValueError("batch_examples and label_top_k must be positive")


def upstream_layers(lm: LoadedModel, layer: int, include_same_layer: bool = True) -> list[int]:
    """Layers whose heads can drive a neuron in `layer` (see the module docstring)."""
    same = include_same_layer and not lm.parallel_residual
    return list(range(layer + 1 if same else layer))


def mlp_stream_point(lm: LoadedModel, layer: int) -> str:
    """The hook point of the residual stream that layer `layer`'s MLP norm reads."""
    return hook_name(layer, "hook_resid_pre" if lm.parallel_residual else "hook_resid_mid")


def norm_readout(lm: LoadedModel, layer: int, w: Tensor) -> Tensor:
    """Read-out directions `w` ([..., d]) moved before the MLP norm's gain and (LayerNorm)
    centring, in float64: the direction up to the norm's per-position scale."""
    p = lm.norm_params(lm.mlp_norm(layer))
    g = p.weight.double().to(w.device) * w.double()
    if p.kind == "layernorm":
        g = g - g.mean(dim=-1, keepdim=True)  # centring, moved onto w
    return g


def frozen_norm_direction(
    lm: LoadedModel, layer: int, x: Tensor, w: Tensor
) -> tuple[Tensor, Tensor]:
    """Linearise the MLP norm at residual `x` ([b, d]) for read-out directions `w` ([b, d]).

    Returns ``(w_eff, const)`` with ``norm(y) . w == y . w_eff + const`` for every y that
    shares x's frozen scale (and, for LayerNorm, whose mean is removed by centring).
    """
    p = lm.norm_params(lm.mlp_norm(layer))
    x = x.double()
    if p.kind == "layernorm":
        scale = torch.sqrt(x.var(dim=-1, unbiased=False) + p.eps)
    else:
        scale = torch.sqrt((x * x).mean(dim=-1) + p.eps)
    w_eff = norm_readout(lm, layer, w) / scale[:, None]
    const = torch.zeros(x.shape[0], dtype=torch.float64)
    if p.bias is not None:
        const = const + (p.bias.double() * w.double()).sum(-1)
    return w_eff, const


@dataclass(frozen=True)
class Decomposition:
    """The direct terms of a neuron's (gate) pre-activation at one position."""

    terms: dict[str, float]
    """``embed``, ``L{l}H{h}`` (heads), ``L{l}.attn_bias``, ``L{l}.mlp``, ``bias`` (norm bias
    and the neuron's own bias)."""
    pre_activation: float
    """The measured pre-activation the terms sum to."""


def decompose_neuron_input(
    lm: LoadedModel, tokens: Tensor, layer: int, neuron: int, position: int
) -> Decomposition:
    """Exact direct decomposition of one neuron's pre-activation (see `direct`)."""
    ids = tokens.reshape(1, -1)
    names = [
        hook_name(0, "hook_resid_pre"),
        mlp_stream_point(lm, layer),
        hook_name(layer, "mlp.hook_pre"),
    ]
    head_layers = range(layer + (0 if lm.parallel_residual else 1))
    names += [hook_name(l_, "attn.hook_z") for l_ in head_layers]
    names += [hook_name(l_, "hook_mlp_out") for l_ in range(layer)]
    _, cache = lm.run_with_cache(ids, names, stop_after_layer=layer)
    x = cache[mlp_stream_point(lm, layer)][:, position]
    w = lm.W_in(layer)[neuron].detach()[None]
    w_eff, const = frozen_norm_direction(lm, layer, x, w)
    w_eff = w_eff[0]
    terms: dict[str, float] = {}
    emb = cache[hook_name(0, "hook_resid_pre")][0, position].double()
    terms["embed"] = float(emb @ w_eff)
    for l_ in head_layers:
        z = cache[hook_name(l_, "attn.hook_z")][0, position].double()  # [H, dh]
        w_o = lm.W_O(l_).double()  # [H, dh, d]
        per_head = torch.einsum("hd,hdm,m->h", z, w_o, w_eff)
        for h, v in enumerate(per_head.tolist()):
            terms[f"L{l_}H{h}"] = v
        b = lm.b_O(l_)
        if b is not None:
            terms[f"L{l_}.attn_bias"] = float(b.double() @ w_eff)
    for l_ in range(layer):
        terms[f"L{l_}.mlp"] = float(
            cache[hook_name(l_, "hook_mlp_out")][0, position].double() @ w_eff
        )
    b_in = lm.b_in(layer)
    terms["bias"] = float(const[0]) + (float(b_in[neuron]) if b_in is not None else 0.0)
    pre = float(cache[hook_name(layer, "mlp.hook_pre")][0, position, neuron])
    return Decomposition(terms=terms, pre_activation=pre)


@dataclass
class _Batch:
    example_ids: np.ndarray
    layer: int
    neurons: Tensor  # [B]
    ids: Tensor
    mask: Tensor
    pos: Tensor  # [B]


def neuron_act(lm: LoadedModel, layer: int, x_normed_pre: Tensor, neurons: Tensor) -> Tensor:
    """Post-activation of `neurons[i]` given the MLP norm's output rows ``[n, d]``."""
    w_in = lm.W_in(layer)[neurons]  # [n, d]
    pre = (x_normed_pre * w_in).sum(-1)
    b_in = lm.b_in(layer)
    if b_in is not None:
        pre = pre + b_in[neurons]
    post = lm.act_fn(layer)(pre)
    w_up = lm.W_up(layer)
    if w_up is not None:
        up = (x_normed_pre * w_up[neurons]).sum(-1)
        b_up = lm.b_up(layer)
        if b_up is not None:
            up = up + b_up[neurons]
        post = post * up
    return post


def head_means(
    lm: LoadedModel, prompts: list[list[int]], max_layer: int, batch: int = 32
) -> dict[int, Tensor]:
    """Each head's mean ``z`` over all positions of all prompts (for mean ablation)."""
    sums: dict[int, Tensor] = {}
    count = 0
    for j in range(0, len(prompts), batch):
        ids, mask = pad_right(lm, prompts[j : j + batch])
        names = [hook_name(l_, "attn.hook_z") for l_ in range(max_layer + 1)]
        _, cache = lm.run_with_cache(ids, names, attention_mask=mask, stop_after_layer=max_layer)
        m = mask.bool()
        for l_ in range(max_layer + 1):
            z = cache[names[l_]][m].double().sum(0)  # [H, dh]
            sums[l_] = sums.get(l_, 0) + z
        count += int(m.sum())
    return {l_: (v / max(count, 1)).to(lm.dtype) for l_, v in sums.items()}


class Attributor:
    """Computes every method for batches of examples of one neuron layer."""

    def __init__(self, lm: LoadedModel, cfg: AttributeConfig, means: dict[int, Tensor] | None):
        self.lm = lm
        self.cfg = cfg
        self.means = means or {}

    def run(self, b: _Batch) -> dict[str, Tensor]:
        """``{method: values [B, n_upstream_heads]}``, heads ordered by (layer, head)."""
        lm, cfg, L = self.lm, self.cfg, b.layer
        ups = upstream_layers(lm, L, cfg.include_same_layer)
        H = lm.n_heads
        B = len(b.pos)
        rows = torch.arange(B)
        stream = mlp_stream_point(lm, L)
        names = [hook_name(l_, "attn.hook_z") for l_ in ups]
        names += [stream, hook_name(L, "mlp.hook_post")]
        calls, cache = lm.capture_layer_calls(b.ids, b.mask, L, names)
        post = cache[hook_name(L, "mlp.hook_post")][rows, b.pos, b.neurons].double()
        x = cache[stream][rows, b.pos]  # [B, d]
        out: dict[str, Tensor] = {}
        methods = set(cfg.methods)
        if not ups:
            return {m: torch.zeros(B, 0, dtype=torch.float64) for m in cfg.methods}
        zs = {l_: cache[hook_name(l_, "attn.hook_z")] for l_ in ups}  # [B, p, H, dh]
        z_last = {l_: zs[l_][rows, b.pos].double() for l_ in ups}  # [B, H, dh]
        w_in = lm.W_in(L)[b.neurons].detach()  # [B, d]
        if "direct" in methods:
            w_eff, _ = frozen_norm_direction(lm, L, x, w_in)
            out["direct"] = torch.cat(
                [
                    torch.einsum("bhd,hdm,bm->bh", z_last[l_], lm.W_O(l_).double(), w_eff)
                    for l_ in ups
                ],
                dim=1,
            )
        if "raw" in methods:
            out["raw"] = torch.cat(
                [
                    torch.einsum("bhd,hdm,bm->bh", z_last[l_], lm.W_O(l_).double(), w_in.double())
                    for l_ in ups
                ],
                dim=1,
            )
        if "path_patching" in methods:
            vals = []
            norm = lm.mlp_norm(L)
            for l_ in ups:
                result = torch.einsum("bhd,hdm->bhm", z_last[l_].to(lm.dtype), lm.W_O(l_))
                x_abl = x[:, None, :] - result  # [B, H, d]
                a = neuron_act(
                    lm, L, norm(x_abl.reshape(B * H, -1)), b.neurons.repeat_interleave(H)
                )
                vals.append(post[:, None] - a.double().reshape(B, H))
            out["path_patching"] = torch.cat(vals, dim=1)
        for method in ABLATIONS:
            if method in methods:
                out[method] = self._ablate(b, calls, zs, post, ups, method)
        if "attribution_patching" in methods:
            out["attribution_patching"] = self._attribution_patching(b, ups)
        return out

    def _ablate(
        self,
        b: _Batch,
        calls: list,
        zs: dict[int, Tensor],
        post: Tensor,
        ups: list[int],
        method: str,
    ) -> Tensor:
        lm, L, H = self.lm, b.layer, self.lm.n_heads
        B = len(b.pos)
        vals = []
        donor = None
        if method == "resample_ablation":
            g = np.random.default_rng([self.cfg.seed, int(b.example_ids[0])])
            donor = torch.from_numpy((np.arange(B) + g.integers(1, max(B, 2), size=B)) % B)
            if B == 1:
                donor = torch.zeros(1, dtype=torch.long)
        lengths = b.mask.sum(1)
        for l_ in ups:
            rows = torch.arange(B).repeat(H)  # row r*B+i stands for example i, head r
            heads = torch.arange(H).repeat_interleave(B)
            hidden = calls[l_].hidden[rows]

            def replace(
                z: Tensor, _n: str, l_: int = l_, heads: Tensor = heads, rows: Tensor = rows
            ) -> Tensor:
                z = z.clone()
                idx = torch.arange(z.shape[0])
                if method == "zero_ablation":
                    z[idx, :, heads] = 0
                elif method == "mean_ablation":
                    z[idx, :, heads] = self.means[l_][heads][:, None, :].to(z.dtype)
                else:
                    assert donor is not None
                    src = donor[rows]
                    p = z.shape[1]
                    pos = torch.minimum(torch.arange(p)[None, :], (lengths[src] - 1)[:, None])
                    z[idx, :, heads] = zs[l_][src[:, None], pos, heads[:, None]].to(z.dtype)
                return z

            got: dict[str, Tensor] = {}

            def grab(x: Tensor, _n: str, got: dict[str, Tensor] = got) -> None:
                got["post"] = x

            lm.replay_layers(
                calls,
                l_,
                L,
                hidden,
                rows,
                hooks=[
                    (hook_name(l_, "attn.hook_z"), replace),
                    (hook_name(L, "mlp.hook_post"), grab),
                ],
            )
            a = got["post"][torch.arange(B * H), b.pos[rows], b.neurons[rows]].double()
            vals.append(post[rows].reshape(H, B).T - a.reshape(H, B).T)
        return torch.cat(vals, dim=1)

    def _attribution_patching(self, b: _Batch, ups: list[int]) -> Tensor:
        lm, L = self.lm, b.layer
        B = len(b.pos)
        leaves: dict[int, Tensor] = {}

        def track(l_: int) -> Callable[[Tensor, str], Tensor]:
            def fn(z: Tensor, _n: str) -> Tensor:
                # the returned tensor is what o_proj reads, so it is on every path downstream
                z = z.clone() if z.requires_grad else z.detach().requires_grad_(True)
                leaves[l_] = z
                return z

            return fn

        out: dict[str, Tensor] = {}

        def grab(x: Tensor, _n: str) -> None:
            out["post"] = x

        hooks: list[tuple[str, HookFn]] = [(hook_name(l_, "attn.hook_z"), track(l_)) for l_ in ups]
        hooks.append((hook_name(L, "mlp.hook_post"), grab))
        lm.run_with_cache(
            b.ids, [], attention_mask=b.mask, stop_after_layer=L, extra_hooks=hooks, grad=True
        )
        target = out["post"][torch.arange(B), b.pos, b.neurons].sum()
        grads = torch.autograd.grad(target, [leaves[l_] for l_ in ups], allow_unused=True)
        vals = []
        valid = b.mask.bool()[:, :, None, None]
        for l_, g in zip(ups, grads, strict=True):
            z = leaves[l_].detach()
            if g is None:
                vals.append(torch.zeros(B, lm.n_heads, dtype=torch.float64))
                continue
            vals.append((g.double() * z.double() * valid).sum(dim=(1, 3)))
        return torch.cat(vals, dim=1)


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
                )
            )
    return prompts, batches


def attribute_batch(att: Attributor, eb: ExampleBatch) -> pa.Table:
    """The `attributions` rows of one batch: every method, example and upstream head."""
    lm, cfg, layer = att.lm, att.cfg, eb.layer
    ids, mask = pad_right(lm, [list(t) for t in eb.tokens])
    batch = _Batch(
        example_ids=eb.example_ids,
        layer=layer,
        neurons=torch.tensor(eb.neurons),
        ids=ids,
        mask=mask,
        pos=mask.sum(1) - 1,
    )
    vals = att.run(batch)
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
        v = vals[m].numpy()
        cols["example_id"].append(np.repeat(batch.example_ids, n_up))
        cols["layer"].append(np.full(B * n_up, layer, dtype=np.int64))
        cols["neuron"].append(np.repeat(eb.neurons, n_up))
        cols["head_layer"].append(np.tile(head_layer, B))
        cols["head"].append(np.tile(head, B))
        cols["value"].append(v.reshape(-1))
        methods += [m] * (B * n_up)
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
    """The `attributions` table for every example and upstream head (resumable by shard)."""
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
    """The batches' tables as one `attributions` table, sorted by (method, example, head)."""
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
        out,
        sort_keys=[
            ("method", "ascending"),
            ("example_id", "ascending"),
            ("head_layer", "ascending"),
            ("head", "ascending"),
        ],
    )
    return out.take(order)


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
    elif cfg.label_rule == "ablation_fraction":
        eff = _zero_ablation_effects(df, val)
        act = ex.loc[val.example_id, "trimmed_activation"].to_numpy()
        active = (act > 0) & (eff >= cfg.label_fraction * act)
    else:  # ablation_typical, ablation_share
        eff = _zero_ablation_effects(df, val)
        top = ex if "kind" not in ex.columns else ex[ex.kind == "top"]
        typical = top.groupby(["layer", "neuron"]).trimmed_activation.median().clip(lower=0)
        ref = typical.reindex(pd_index_cols(val, ["layer", "neuron"])).to_numpy()
        if cfg.label_rule == "ablation_typical":
            active = (ref > 0) & (eff >= cfg.label_fraction * ref)
        else:
            import pandas as pd

            drive = (
                pd.Series(np.clip(eff, 0, None), index=val.index)
                .groupby(val.example_id.to_numpy())
                .transform("sum")
                .to_numpy()
            )
            typical_rule = eff >= cfg.label_fraction * ref
            share_rule = (eff >= cfg.label_floor * ref) & (eff >= cfg.label_fraction * drive)
            active = (ref > 0) & (typical_rule | share_rule)
    val["active"] = np.asarray(active, dtype=bool)
    val["split"] = ex.loc[val.example_id, "split"].to_numpy()
    val = val.sort_values(["example_id", "head_layer", "head"], kind="stable")
    return pa.Table.from_pandas(
        val[["example_id", "layer", "neuron", "head_layer", "head", "active", "split"]],
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
