"""The run's shape before it runs: which layers hold how many tracked neurons, how many
prompts each neuron gets and how long they are, from the settings, the model's shape,
the corpus profile and the `Rates`."""

from __future__ import annotations

from dataclasses import dataclass

from lookuplens.errors import UserError
from lookuplens.plan.corpus import CorpusProfile
from lookuplens.plan.shape import ModelShape
from lookuplens.plan.work import Rates
from lookuplens.run_config import RunConfig

__all__ = ["Layout", "PROMPT_PADDING", "make_layout"]

PROMPT_PADDING = 1.05
"""Padded over real tokens for batches of prompts sorted by length (every stage after the
scan sorts them so)."""


@dataclass(frozen=True)
class Layout:
    """Per searched layer: tracked neurons and their prompts."""

    layers: tuple[int, ...]
    selected: tuple[int, ...]
    """Selected neurons per entry of `layers`."""
    baseline: tuple[int, ...]
    """Random-baseline neurons per entry of `layers`."""
    firings: float
    """Firings kept per neuron: the top k (at most one per document, at most the
    documents) and the on-token firings expected (`Rates.on_token_found`)."""
    untrimmed: float
    """Mean untrimmed prompt length (BOS included) at a firing."""
    top_len: float
    """Mean trimmed top prompt length."""
    contrast_len: float
    """Mean contrast prompt length."""
    top_per_neuron: float
    contrast_per_neuron: float
    upstream: tuple[int, ...]
    """Upstream layers (whose heads can drive the neuron) per entry of `layers`."""
    n_heads: int

    def tracked(self, i: int) -> int:
        return self.selected[i] + self.baseline[i]

    @property
    def n_selected(self) -> int:
        return sum(self.selected)

    @property
    def n_tracked(self) -> int:
        return sum(self.selected) + sum(self.baseline)

    @property
    def last_layer(self) -> int:
        return max(self.layers)

    def up_heads(self, i: int) -> int:
        return self.upstream[i] * self.n_heads

    def examples(self, i: int) -> float:
        """Examples (top and contrast prompts) of layer entry `i`."""
        return self.tracked(i) * (self.top_per_neuron + self.contrast_per_neuron)

    @property
    def n_top(self) -> float:
        return self.n_tracked * self.top_per_neuron

    @property
    def n_contrast(self) -> float:
        return self.n_tracked * self.contrast_per_neuron

    @property
    def n_examples(self) -> float:
        return self.n_top + self.n_contrast

    @property
    def mean_len(self) -> float:
        """Mean prompt length over top and contrast prompts."""
        n = self.n_top + self.n_contrast
        return (self.n_top * self.top_len + self.n_contrast * self.contrast_len) / max(n, 1e-9)

    def weighted(self, per_layer: list[float]) -> float:
        """Sum over layer entries of per-entry values."""
        return float(sum(per_layer))


def make_layout(cfg: RunConfig, shape: ModelShape, corpus: CorpusProfile, rates: Rates) -> Layout:
    """The `Layout` of a run of `cfg` on a model of `shape` over `corpus`."""
    n = shape.n_layers
    if cfg.neurons.layers is None:
        layers = list(range(n))
    else:
        layers = []
        for layer in cfg.neurons.layers:
            idx = layer + n if layer < 0 else layer
            if not 0 <= idx < n:
                raise UserError(
                    f"layer {layer} is out of range: the model has {n} layers "
                    f"(0 to {n - 1}, or negative to count from the end)"
                )
            layers.append(idx)
        layers = sorted(set(layers))
    per_token = max(len(cfg.neurons.tokens), 1)
    sel = min(cfg.neurons.top_n * per_token, shape.d_mlp)
    base = sel if cfg.neurons.n_baseline is None else cfg.neurons.n_baseline
    base = max(0, min(base, shape.d_mlp - sel))
    ex = cfg.examples
    top = min(cfg.scan.k, corpus.docs) if cfg.scan.one_per_doc else cfg.scan.k
    firings = top + cfg.scan.on_token * rates.on_token_found
    untrimmed = _untrimmed_length(corpus.lengths, ex.max_prompt_tokens)
    top_len = max(2.0, rates.trim_keep * untrimmed)
    same = cfg.attribute.include_same_layer and not shape.parallel_residual
    upstream = tuple(layer + 1 if same else layer for layer in layers)
    return Layout(
        layers=tuple(layers),
        selected=(sel,) * len(layers),
        baseline=(base,) * len(layers),
        firings=firings,
        untrimmed=untrimmed,
        top_len=top_len,
        contrast_len=max(2.0, rates.contrast_length * top_len),
        top_per_neuron=firings * rates.top_kept,
        # a contrast comes from a document other than the neuron's own top ones
        contrast_per_neuron=min(
            ex.contrast, max(min(ex.contrast_search_docs, corpus.docs) - top, 0)
        )
        * rates.contrast_found,
        upstream=upstream,
        n_heads=shape.n_heads,
    )


def _untrimmed_length(lengths: tuple[int, ...], max_prompt_tokens: int) -> float:
    """Mean length of the untrimmed prompt at a firing: BOS plus the document up to the
    firing position, at most ``max_prompt_tokens - 1`` tokens. Positions are taken as
    uniform within a document and documents weighted by their length (a longer
    document has more chances to hold a neuron's strongest firing)."""
    cap = max_prompt_tokens - 2  # body tokens the cap allows, BOS aside
    num = den = 0.0
    for n in lengths:
        body = max(n - 1, 1)
        # mean of 1 + min(p, cap) for p = 1..body
        if body <= cap:
            mean = 1 + (body + 1) / 2
        else:
            mean = 1 + (cap * (cap + 1) / 2 + cap * (body - cap)) / body
        num += n * mean
        den += n
    return num / den if den else float(max_prompt_tokens // 2)
