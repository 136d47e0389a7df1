"""Debug one prediction: which neurons pushed the token, which heads switched them on.

`explain_prediction` decomposes the target token's logit at one position (or the logit
difference against a contrast token) into direct contributions through the final norm
with its scale frozen: every MLP neuron (activation times W_out[n] read along the
unembedding), every attention head, the attention and MLP biases, the embeddings and a
constant; they sum to the logit. The top neurons' activations are then attributed to
upstream heads with the attribute stage's `direct` method and zero ablation (the same
code, `lookuplens.attribute.Attributor`), each top head's attention from the position
shows which earlier tokens it looks up, and ablations check the story causally, each
reporting the change in p(target) and in the top prediction: the shown neurons zeroed;
the ranked neurons zeroed best first until p(target) falls to a given share of its value
(by default half), which names the fewest of them that carry the prediction (a model can
spread a prediction over many neurons and repair the loss of a few downstream, so the top
five alone need not move it); as many neurons drawn at random from the same layers,
zeroed as a control; and the shown neurons' top heads zeroed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from lookuplens.attribute import AttributeConfig, Attributor, _Batch, upstream_layers
from lookuplens.errors import UserError
from lookuplens.model import LoadedModel, hook_name


@dataclass(frozen=True)
class WhyConfig:
    """What to explain and how much of it to show."""

    target: str | None = None
    """The token to explain, as typed (" an", "▁an", see `Vocab.resolve`); None: the
    model's top prediction."""
    contrast: str | None = None
    """Explain the logit difference target minus this token instead."""
    position: int = -1
    """Position in the prompt's tokens (BOS not counted); negative counts from the end."""
    top_neurons: int = 5
    """Neurons shown (by direct contribution)."""
    top_heads: int = 3
    """Heads shown under each neuron, and ablated in the causal check."""
    top_sources: int = 3
    """Attended tokens shown per head."""
    ablate_until: float = 0.5
    """The causal check zeroes the ranked neurons, best first, until p(target) is at most
    this share of its value (with a contrast token whose logit is below the target's: the
    logit difference); the fewest that get there are the neurons it names."""
    max_ablated: int = 64
    """Give up (and say so) when this many ranked neurons do not get there."""
    control_draws: int = 5
    """Random same-layer neuron sets zeroed as the control (their mean p is shown)."""
    seed: int = 0
    causal_check: bool = True
    """Run the ablations (False: the decomposition and the head attribution only, as
    `lookuplens fix` uses them to propose edits)."""

    def __post_init__(self) -> None:
        if min(self.top_neurons, self.top_heads, self.top_sources, self.max_ablated) < 1:
            raise ValueError(
                "top_neurons, top_heads, top_sources and max_ablated must be at least 1"
            )
        if not 0 < self.ablate_until < 1:
            raise ValueError("ablate_until must be between 0 and 1 (0.5: until p is halved)")
        if self.control_draws < 0:
            raise ValueError("control_draws must be at least 0")


@dataclass(frozen=True)
class Source:
    position: int
    token: str
    attention: float


@dataclass(frozen=True)
class HeadFinding:
    layer: int
    head: int
    direct: float
    zero_ablation: float
    sources: list[Source]

    @property
    def name(self) -> str:
        return f"L{self.layer}H{self.head}"


@dataclass(frozen=True)
class NeuronFinding:
    layer: int
    neuron: int
    contribution: float
    activation: float
    top_token: str
    heads: list[HeadFinding]

    @property
    def name(self) -> str:
        return f"L{self.layer}N{self.neuron}"


@dataclass(frozen=True)
class RankedNeuron:
    """A neuron of the ranking that the causal check zeroed."""

    layer: int
    neuron: int
    contribution: float
    top_token: str

    @property
    def name(self) -> str:
        return f"L{self.layer}N{self.neuron}"


@dataclass(frozen=True)
class Ablation:
    what: str
    prob_before: float
    prob_after: float
    top_before: str
    top_after: str
    diff_before: float | None = None
    """With a contrast token: the logit difference target minus contrast, before."""
    diff_after: float | None = None


@dataclass(frozen=True)
class CurvePoint:
    """p(target) with the first `k` ranked neurons zeroed."""

    k: int
    prob: float
    top: str
    logit_diff: float | None = None
    """With a contrast token: the logit difference target minus contrast."""


@dataclass(frozen=True)
class WhyResult:
    """Everything `lookuplens why` shows."""

    prompt: str
    tokens: list[str]
    position: int
    target: str
    target_id: int
    contrast: str | None
    logit: float
    prob: float
    top_prediction: str
    terms: dict[str, float]
    """Direct contributions of the non-neuron components (heads grouped per layer)."""
    neuron_total: float
    neurons: list[NeuronFinding]
    ablations: list[Ablation] = field(default_factory=list)
    curve: list[CurvePoint] = field(default_factory=list)
    """The prefixes of the ranking the causal check zeroed, by k."""
    carrying: list[RankedNeuron] = field(default_factory=list)
    """The fewest ranked neurons whose zeroing brings p(target) (or the logit difference,
    see `WhyConfig.ablate_until`) to `ablate_until` of its value; empty when
    `max_ablated` of them do not."""
    contrast_id: int | None = None

    def to_dict(self) -> dict[str, object]:
        import dataclasses

        return dataclasses.asdict(self)


def _final_direction(lm: LoadedModel, x: Tensor, w: Tensor) -> tuple[Tensor, float]:
    """Final norm frozen at residual x: norm(y) . w == y . w_eff + const."""
    p = lm.norm_params(lm.final_norm)
    x = x.double()
    gamma = p.weight.double()
    if p.kind == "layernorm":
        scale = torch.sqrt(x.var(unbiased=False) + p.eps)
        w_eff = gamma * w / scale
        w_eff = w_eff - w_eff.mean()
    else:
        scale = torch.sqrt((x * x).mean() + p.eps)
        w_eff = gamma * w / scale
    const = float(p.bias.double() @ w) if p.bias is not None else 0.0
    return w_eff, const


def text_token_ids(lm: LoadedModel, prompt: str) -> list[int]:
    """The prompt's token ids after BOS, as `explain_prediction` numbers positions:
    ``ids[i]`` is the token of `WhyResult.tokens` ``[i]`` (for the HTML's shading)."""
    return [int(t) for t in lm.to_tokens(prompt, bos=False)[0].tolist()]


def explain_prediction(lm: LoadedModel, prompt: str, cfg: WhyConfig) -> WhyResult:
    """Decompose, attribute and check one prediction (see the module docstring)."""
    if not prompt.strip():
        raise UserError("the prompt is empty; pass the text whose next token you want explained")
    ids = lm.to_tokens(prompt)
    n_bos = 1 if lm.bos_token_id is not None else 0
    n_text = ids.shape[1] - n_bos
    if ids.shape[1] > lm.max_context:
        raise UserError(
            f"the prompt is {ids.shape[1]} tokens long, more than the model's context window of "
            f"{lm.max_context}; shorten it"
        )
    pos = cfg.position if cfg.position >= 0 else n_text + cfg.position
    if not 0 <= pos < n_text:
        raise UserError(
            f"position {cfg.position} is out of range: the prompt has {n_text} tokens "
            f"(0 to {n_text - 1}, or -1 to -{n_text} from the end)"
        )
    ids = ids[:, : n_bos + pos + 1]  # the prediction at `pos` sees nothing after it
    p = ids.shape[1] - 1
    L = lm.n_layers
    names = [hook_name(0, "hook_resid_pre"), hook_name(L - 1, "hook_resid_post")]
    names += [hook_name(l_, "mlp.hook_post") for l_ in range(L)]
    names += [hook_name(l_, "attn.hook_z") for l_ in range(L)]
    logits, cache = lm.run_with_cache(ids, names)
    assert logits is not None
    logp = torch.log_softmax(logits[0, p].double(), -1)
    top_id = int(logp.argmax())
    target_id = lm.resolve_token(cfg.target, "target") if cfg.target else top_id
    w = lm.W_U[:, target_id].double()
    contrast_id = None
    if cfg.contrast:
        contrast_id = lm.resolve_token(cfg.contrast, "contrast token")
        w = w - lm.W_U[:, contrast_id].double()
    x = cache[hook_name(L - 1, "hook_resid_post")][0, p]
    w_eff, const = _final_direction(lm, x, w)
    terms: dict[str, float] = {"embed": float(cache[names[0]][0, p].double() @ w_eff)}
    neuron_contrib = []
    head_contrib: dict[tuple[int, int], float] = {}
    for l_ in range(L):
        z = cache[hook_name(l_, "attn.hook_z")][0, p].double()
        per_head = torch.einsum("hd,hdm,m->h", z, lm.W_O(l_).double(), w_eff)
        for h, v in enumerate(per_head.tolist()):
            head_contrib[(l_, h)] = v
        terms[f"L{l_}.heads"] = float(per_head.sum())
        if (b_o := lm.b_O(l_)) is not None:
            terms[f"L{l_}.attn_bias"] = float(b_o.double() @ w_eff)
        post = cache[hook_name(l_, "mlp.hook_post")][0, p].double()
        neuron_contrib.append(post * (lm.W_out(l_).double() @ w_eff))
        if (b_out := lm.b_out(l_)) is not None:
            terms[f"L{l_}.mlp_bias"] = float(b_out.double() @ w_eff)
    b_u = lm.b_U
    terms["constant"] = const + (float(b_u[target_id]) if b_u is not None else 0.0)
    if contrast_id is not None and b_u is not None:
        terms["constant"] -= float(b_u[contrast_id])
    allc = torch.stack(neuron_contrib)  # [L, d_mlp]
    flat = allc.flatten()
    ranking = torch.argsort(flat, descending=True)
    order = ranking[: cfg.top_neurons]
    logit = float(logits[0, p, target_id])
    if contrast_id is not None:
        logit -= float(logits[0, p, contrast_id])

    # attribute each top neuron's activation to upstream heads (the attribute stage's code)
    att = Attributor(
        lm, AttributeConfig(methods=("direct", "zero_ablation"), label_method="direct"), None
    )
    pattern_names = [hook_name(l_, "attn.hook_pattern") for l_ in range(L)]
    _, patterns = lm.run_with_cache(ids, pattern_names)
    tok_strs = [lm.token_str(int(t)) for t in ids[0]]
    neurons: list[NeuronFinding] = []
    top_tokens = _top_tokens(lm, order.tolist())
    for idx, top_token in zip(order.tolist(), top_tokens, strict=True):
        layer, n = divmod(idx, lm.d_mlp)
        ups = upstream_layers(lm, layer)
        heads: list[HeadFinding] = []
        if ups:
            batch = _Batch.on_device(
                lm, np.array([0]), layer, torch.tensor([n]), ids, torch.ones_like(ids)
            )
            vals = {m: v.cpu() for m, v in att.run(batch).items()}
            d = vals["direct"][0]
            za = vals["zero_ablation"][0]
            for j in torch.argsort(d, descending=True)[: cfg.top_heads].tolist():
                hl, h = ups[j // lm.n_heads], j % lm.n_heads
                pat = patterns[hook_name(hl, "attn.hook_pattern")][0, h, p]
                src = torch.argsort(pat, descending=True)[: cfg.top_sources].tolist()
                heads.append(
                    HeadFinding(
                        layer=hl,
                        head=h,
                        direct=float(d[j]),
                        zero_ablation=float(za[j]),
                        sources=[Source(int(s) - n_bos, tok_strs[s], float(pat[s])) for s in src],
                    )
                )
        neurons.append(
            NeuronFinding(
                layer=layer,
                neuron=n,
                contribution=float(flat[idx]),
                activation=float(cache[hook_name(layer, "mlp.hook_post")][0, p, n]),
                top_token=top_token,
                heads=heads,
            )
        )
    result = WhyResult(
        prompt=prompt,
        tokens=tok_strs[n_bos:],
        position=pos,
        target=lm.token_str(target_id),
        target_id=target_id,
        contrast=None if contrast_id is None else lm.token_str(contrast_id),
        contrast_id=contrast_id,
        logit=logit,
        prob=float(logp[target_id].exp()),
        top_prediction=lm.token_str(top_id),
        terms=terms,
        neuron_total=float(allc.sum()),
        neurons=neurons,
    )
    if not cfg.causal_check:
        return result
    return _with_ablations(lm, ids, p, result, ranking, flat, cfg)


def _top_tokens(lm: LoadedModel, flat_ids: list[int]) -> list[str]:
    """The top token (folded W_out . W_U) of each neuron, given as an index into the
    flattened [layer, d_mlp] grid; the unembedding is folded once, each layer's W_out once."""
    from lookuplens.neurons import out_matrix, unembed_matrix

    if not flat_ids:
        return []
    w_u = unembed_matrix(lm, "folded")
    by_layer: dict[int, Tensor] = {}
    out = []
    for i in flat_ids:
        layer, n = divmod(i, lm.d_mlp)
        if layer not in by_layer:
            by_layer[layer] = out_matrix(lm, layer, "folded")
        out.append(lm.token_str(int((by_layer[layer][n] @ w_u).argmax())))
    return out


def curve_text(curve: list[CurvePoint]) -> str:
    """The causal check's curve on one line: ``k=1 0.707 (difference +0.89), ...`` (the
    difference only with a contrast token)."""
    return ", ".join(
        f"k={c.k} {c.prob:.3f}"
        + (f" (difference {c.logit_diff:+.2f})" if c.logit_diff is not None else "")
        for c in curve
    )


def diff_change(a: Ablation) -> str:
    """``"; logit difference +1.059 -> +0.414"`` with a contrast token, else ``""``."""
    if a.diff_before is None or a.diff_after is None:
        return ""
    return f"; logit difference {a.diff_before:+.3f} -> {a.diff_after:+.3f}"


def _zero_neurons_hooks(lm: LoadedModel, flat_ids: list[int]) -> list:  # type: ignore[type-arg]
    """Hooks zeroing the given neurons (indices into the flattened [layer, d_mlp] grid)."""
    by_layer: dict[int, list[int]] = {}
    for i in flat_ids:
        layer, n = divmod(i, lm.d_mlp)
        by_layer.setdefault(layer, []).append(n)

    def zero(cols: list[int]):  # type: ignore[no-untyped-def]
        def fn(x: Tensor, _n: str) -> Tensor:
            x = x.clone()
            x[..., cols] = 0
            return x

        return fn

    return [(hook_name(l_, "mlp.hook_post"), zero(c)) for l_, c in sorted(by_layer.items())]


def _with_ablations(
    lm: LoadedModel,
    ids: Tensor,
    p: int,
    r: WhyResult,
    ranking: Tensor,
    flat: Tensor,
    cfg: WhyConfig,
) -> WhyResult:
    c_id = r.contrast_id

    def run(hooks: list) -> tuple[float, str, float | None]:  # type: ignore[type-arg]
        logits, _ = lm.run_with_cache(ids, [], extra_hooks=hooks)
        assert logits is not None
        lg = logits[0, p].double()
        probs = torch.softmax(lg, -1)
        diff = None if c_id is None else float(lg[r.target_id] - lg[c_id])
        return float(probs[r.target_id]), lm.token_str(int(probs.argmax())), diff

    before, top_before, diff_before = run([])

    def ablation(what: str, after: tuple[float, str, float | None]) -> Ablation:
        return Ablation(what, before, after[0], top_before, after[1], diff_before, after[2])

    out = []
    shown = [nf.layer * lm.d_mlp + nf.neuron for nf in r.neurons]
    first = run(_zero_neurons_hooks(lm, shown))
    out.append(ablation(f"the {len(shown)} shown neurons zeroed", first))

    # the ranked neurons zeroed best first: doubling k, then bisection between the last
    # prefix that misses the goal and the first that reaches it; every point is measured.
    # With a contrast token the goal is on the logit difference when it is positive.
    on_diff = diff_before is not None and diff_before > 0
    goal = cfg.ablate_until * (diff_before if on_diff else before)  # type: ignore[operator]
    ranked = ranking[: cfg.max_ablated].tolist()
    curve: dict[int, tuple[float, str, float | None]] = {len(shown): first}

    def at(k: int) -> tuple[float, str, float | None]:
        if k not in curve:
            curve[k] = run(_zero_neurons_hooks(lm, ranked[:k]))
        return curve[k]

    def reached(k: int) -> bool:
        pt = at(k)
        return (pt[2] if on_diff else pt[0]) <= goal  # type: ignore[operator]

    lo, hi, k = 0, None, 1
    while True:
        if reached(k):
            hi = k
            break
        lo = k
        if k >= len(ranked):
            break
        k = min(2 * k, len(ranked))
    if hi is not None:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if reached(mid):
                hi = mid
            else:
                lo = mid
    n_zeroed = hi if hi is not None else len(ranked)
    carrying = (
        [
            RankedNeuron(i // lm.d_mlp, i % lm.d_mlp, float(flat[i]), tok)
            for i, tok in zip(ranked[:n_zeroed], _top_tokens(lm, ranked[:n_zeroed]), strict=True)
        ]
        if hi is not None
        else []
    )
    measure = "the logit difference" if on_diff else "p"
    goal_txt = (
        f"halve {measure}"
        if cfg.ablate_until == 0.5
        else f"bring {measure} to {cfg.ablate_until:g} of its value"
    )
    what = (
        f"the top {n_zeroed} ranked neurons zeroed (the fewest that {goal_txt})"
        if hi is not None
        else f"the top {n_zeroed} ranked neurons zeroed (not even these {goal_txt})"
    )
    out.append(ablation(what, at(n_zeroed)))

    # control: as many neurons from the same layers, drawn at random outside the ranked set
    if cfg.control_draws:
        gen = torch.Generator().manual_seed(cfg.seed)
        per_layer: dict[int, int] = {}
        for i in ranked[:n_zeroed]:
            per_layer[i // lm.d_mlp] = per_layer.get(i // lm.d_mlp, 0) + 1
        excluded = set(ranked[:n_zeroed])
        pools = {
            layer: torch.tensor(
                [i for i in range(layer * lm.d_mlp, (layer + 1) * lm.d_mlp) if i not in excluded]
            )
            for layer in per_layer
        }
        probs: list[float] = []
        tops: list[str] = []
        diffs: list[float] = []
        n_drawn = 0
        for _ in range(cfg.control_draws):
            draw: list[int] = []
            for layer, count in per_layer.items():  # without replacement; all if too few
                pool = pools[layer]
                pick = torch.randperm(len(pool), generator=gen)[:count]
                draw += pool[pick].tolist()
            n_drawn = len(draw)
            pr, tp, df = run(_zero_neurons_hooks(lm, draw))
            probs.append(pr)
            tops.append(tp)
            if df is not None:
                diffs.append(df)
        out.append(
            Ablation(
                f"control: {n_drawn} random neurons from the same layers zeroed "
                f"(mean of {cfg.control_draws} draws)",
                before,
                float(np.mean(probs)),
                top_before,
                max(tops, key=tops.count),  # the most frequent; ties: the first drawn
                diff_before,
                float(np.mean(diffs)) if diffs else None,
            )
        )

    heads = sorted({(h.layer, h.head) for nf in r.neurons for h in nf.heads})
    head_layers: dict[int, list[int]] = {}
    for hl, h in heads:
        head_layers.setdefault(hl, []).append(h)

    def zero_heads(cols: list[int]):  # type: ignore[no-untyped-def]
        def fn(z: Tensor, _n: str) -> Tensor:
            z = z.clone()
            z[:, :, cols] = 0
            return z

        return fn

    head_hooks = [(hook_name(l_, "attn.hook_z"), zero_heads(c)) for l_, c in head_layers.items()]
    if head_hooks:
        out.append(ablation(f"the {len(heads)} heads zeroed", run(head_hooks)))
    points = [CurvePoint(k, pr, tp, df) for k, (pr, tp, df) in sorted(curve.items())]
    return WhyResult(**{**r.__dict__, "ablations": out, "curve": points, "carrying": carrying})


__all__ = ["WhyConfig", "WhyResult", "curve_text", "diff_change", "explain_prediction"]
