"""The attribute stage's settings: which attribution methods run and how heads are labelled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lookuplens.choices import check_choices

__all__ = ["ABLATIONS", "DEFAULT_METHODS", "METHODS", "AttributeConfig"]

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
    """Attribution methods to compute (see `lookuplens.attribute`). The default leaves out
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
    candidates: int = 6
    """The exact ablations run, per example, on the `candidates` upstream heads that
    ``attribution_patching`` (one backward pass for all heads: the linear estimate of
    each head's zero-ablation effect) ranks highest, on the `candidates_direct` that
    ``direct`` (one pass) ranks highest, and on every other head that `candidate_share`
    admits; the remaining heads get no ablation rows and are labelled inactive
    (`labels.candidate` False). 0 ablates every upstream head. A neuron layer with at
    most `sweep_heads` upstream heads is not pruned at all. Measured trade-off (speed
    against agreement with the full sweep): docs/performance.md."""
    sweep_heads: int = 32
    """Neuron layers with at most this many upstream heads are swept whole (every head
    ablated): there the candidates would be a large share of the heads, so pruning saves
    little and costs labels. The bundled models (at most 16) are never pruned."""
    candidate_share: float = 0.9
    """With an ablation label rule, a head beyond the top `candidates` is ablated too when
    its attribution-patching estimate reaches this share of the least effect the rule
    calls active on that example, so a head the full sweep would label active is pruned
    only when the estimate is off by more than 1/share. Where many heads drive a neuron
    a little each (random-weight models) this, not the top `candidates`, keeps the
    labels. 0: only the top `candidates` (and `candidates_direct`)."""
    batch_examples: int = 32
    """Examples per batch (each ablation batch holds n_heads times as many rows)."""
    seed: int = 0
    """Seed of the resample ablation's choice of donor examples."""

    @property
    def candidates_direct(self) -> int:
        """Heads per example that ``direct`` adds to the candidates: half of `candidates`,
        rounded up (it catches heads whose effect the linear estimate misses where an
        activation saturates; on the bundled storyworld model the estimate alone misses
        7% of the active heads at 8 candidates)."""
        return (self.candidates + 1) // 2

    @property
    def candidates_ranked(self) -> int:
        """Heads per example the two rankings pick at most (`candidates` plus
        `candidates_direct`; the two may overlap, the share adds more)."""
        return self.candidates + self.candidates_direct

    def prunes(self, n_upstream: int) -> bool:
        """Whether a neuron layer with `n_upstream` upstream heads is pruned (with an
        ablation method among the `methods`)."""
        return (
            any(m in ABLATIONS for m in self.methods)
            and 0 < self.candidates
            and n_upstream > max(self.sweep_heads, self.candidates_ranked)
        )

    def __post_init__(self) -> None:
        check_choices(self)
        if isinstance(self.candidates, bool) or not isinstance(self.candidates, int):
            raise ValueError(f"candidates must be an integer, got {self.candidates!r}")
        if self.sweep_heads < 0:
            raise ValueError(f"sweep_heads must be at least 0, got {self.sweep_heads}")
        if self.candidates < 0:
            raise ValueError("candidates must be at least 0 (0: ablate every upstream head)")
        if not 0 <= self.candidate_share <= 1:
            raise ValueError(
                f"candidate_share must be in [0, 1] (default 0.9), got {self.candidate_share}"
            )
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
