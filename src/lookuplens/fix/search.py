"""Measure every candidate edit, combine them greedily, rank them, choose one.

Every candidate is applied to the weights and measured (not estimated): the target on
the prompts, the controls' answers and the side effects on held-out text. Its *effect*
is the change of the target score (mean log p(target), or mean logit difference against
the contrast token) in the goal's direction, so positive is wanted. Its *requirement*
figure says whether it does the job:

- decrease, no contrast: the share of p(target) removed, ``1 - mean p after / mean p before``;
- decrease, with contrast: the share of prompts where the contrast token wins;
- increase, no contrast: the share of prompts where the target is the top prediction;
- increase, with contrast: the share of prompts where the target beats the contrast.

A candidate is *within the budget* when its side effect (the mean per token of held-out
text of the KL between the original's and the edited model's next-token distributions
over every token but the target and the contrast token, renormalised: moving
probability into or out of the target is the fix, what the model predicts instead is a
side effect; the plain KL is reported too) is at most `max_kl`, and the controls'
accuracy drops by at most `max_control_drop`.

Greedy combinations start from the candidate of largest effect within the budget and
add, one at a time, the pool candidate that raises the effect most within the budget,
until the requirement is met, nothing helps, or `max_steps` were added: this is what
finds a look-up that several heads carry.

Ranking: first the candidates within the budget that meet the requirement, smallest
side effect first; then the other candidates within the budget, largest effect first;
then those over the budget, smallest side effect first. The chosen fix is the first;
when no candidate is within the budget there is none (`NoFixError`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from torch import Tensor

from lookuplens.errors import UserError
from lookuplens.fix.edits import Edit, applied, describe
from lookuplens.fix.measure import Controls, PromptSet, SideEffects, TargetResult, measure_target
from lookuplens.model import LoadedModel

log = logging.getLogger(__name__)

__all__ = ["Candidate", "FixSettings", "Goal", "NoFixError", "Search"]

Goal = Literal["decrease", "increase"]


class NoFixError(UserError):
    """No candidate stays within the side-effect budget."""


@dataclass(frozen=True)
class FixSettings:
    goal: Goal = "decrease"
    max_kl: float = 0.01
    """Side-effect budget: mean KL(original || edited) per token of held-out text, nats."""
    require: float = 0.9
    """The requirement figure (see the module docstring) a fix must reach."""
    amplify: float = 3.0
    """The scale of every edit when the goal is to increase (decrease: 0, removal)."""
    decompose: int = 16
    """Prompts decomposed with `why` to propose candidates."""
    n_neurons: int = 16
    """Neurons proposed (those that push the target most)."""
    n_heads: int = 2
    """Heads proposed per neuron (those that drive it most)."""
    max_control_drop: float = 0.0
    """How much the controls' accuracy may fall (0: no control may lose its answer)."""
    max_steps: int = 4
    """The most candidates a greedy combination joins."""
    pool: int = 8
    """The candidates (largest effect within the budget) the greedy search combines."""
    kinds: tuple[str, ...] = ("path", "neuron", "head", "logit")
    """The edit kinds proposed."""
    logit_scales: tuple[float, ...] = (0.0, -1.0, -3.0)
    """The scales of the logit edits when decreasing (0 removes the neurons' push towards
    the target, a negative scale reverses it); increasing uses `amplify`."""

    def __post_init__(self) -> None:
        if self.goal not in ("decrease", "increase"):
            raise ValueError(f"goal must be decrease or increase, got {self.goal!r}")
        if not self.max_kl > 0:
            raise ValueError("max_kl must be above 0 (nats per token)")
        if not 0 < self.require <= 1:
            raise ValueError("require must be in (0, 1]")
        if not self.amplify > 1:
            raise ValueError("amplify must be above 1")
        if min(self.decompose, self.n_neurons, self.n_heads, self.max_steps, self.pool) < 1:
            raise ValueError("decompose, n_neurons, n_heads, max_steps and pool must be at least 1")
        bad = sorted(set(self.kinds) - {"path", "neuron", "head", "logit"})
        if bad or not self.kinds:
            raise ValueError(
                f"kinds must be among path, neuron, head, logit; got {', '.join(self.kinds)}"
            )
        if not 0 <= self.max_control_drop <= 1:
            raise ValueError("max_control_drop must be in [0, 1]")

    @property
    def scale(self) -> float:
        return 0.0 if self.goal == "decrease" else self.amplify

    @property
    def scales_of_logit_edits(self) -> tuple[float, ...]:
        return self.logit_scales if self.goal == "decrease" else (self.amplify,)


@dataclass
class Candidate:
    edits: tuple[Edit, ...]
    target: TargetResult
    effect: float
    achieved: float
    meets: bool
    side: dict[str, float]
    controls_accuracy: float | None
    controls_answers: list[str]
    within_budget: bool
    origin: str
    """"single", "group", "greedy" or "baseline"."""
    rank: int = 0

    @property
    def name(self) -> str:
        return describe(self.edits)

    def to_dict(self) -> dict[str, object]:
        return {
            "rank": self.rank,
            "name": self.name,
            "origin": self.origin,
            "edits": [e.to_dict() for e in self.edits],
            "effect": self.effect,
            "achieved": self.achieved,
            "meets_requirement": self.meets,
            "within_budget": self.within_budget,
            "side_effects": self.side,
            "controls_accuracy": self.controls_accuracy,
            "controls_answers": self.controls_answers,
            "target": self.target.to_dict(),
        }


@dataclass
class Search:
    """The measurements shared by every candidate: the model before any edit."""

    lm: LoadedModel
    prompts: PromptSet
    side: SideEffects
    controls: Controls
    settings: FixSettings
    before: TargetResult = field(init=False)
    before_lp: Tensor = field(init=False, repr=False)
    controls_before: list[str] = field(init=False)
    measured: dict[tuple[Edit, ...], Candidate] = field(default_factory=dict)
    baselines: dict[tuple[Edit, ...], Candidate] = field(default_factory=dict)
    """Rescaled naive edits measured by `match_effect` (not ranked)."""
    progress: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        self.before, self.before_lp = measure_target(self.lm, self.prompts)
        self.controls_before = self.controls.answers(self.lm)
        self.side.prepare(self.lm)

    def effect(self, t: TargetResult) -> float:
        """The change of the target score in the goal's direction (positive is wanted)."""
        sign = 1.0 if self.settings.goal == "increase" else -1.0
        return sign * (t.score - self.before.score)

    def achieved(self, t: TargetResult) -> float:
        goal = self.settings.goal
        if self.prompts.contrast_id is not None:
            assert t.contrast_wins is not None
            wins = float(np.mean(t.contrast_wins))
            return wins if goal == "decrease" else 1.0 - wins
        if goal == "decrease":
            return 1.0 - t.mean_prob / max(self.before.mean_prob, 1e-300)
        return float(np.mean(t.top_is_target))

    def measure(self, edits: Sequence[Edit], origin: str = "single") -> Candidate:
        key = tuple(sorted(set(edits)))
        store = self.baselines if origin == "baseline" else self.measured
        for known in (self.measured, self.baselines):
            if key in known:
                return known[key]
        with applied(self.lm, key):
            t, _ = measure_target(self.lm, self.prompts, self.before_lp)
            answers = self.controls.answers(self.lm)
            side = self.side.measure(self.lm)
        ach = self.achieved(t)
        acc = self.controls.accuracy(answers)
        acc0 = self.controls.accuracy(self.controls_before)
        controls_ok = (
            acc is None or acc0 is None or acc >= acc0 - self.settings.max_control_drop - 1e-12
        )
        c = Candidate(
            edits=key,
            target=t,
            effect=self.effect(t),
            achieved=ach,
            meets=ach >= self.settings.require,
            side=side,
            controls_accuracy=acc,
            controls_answers=answers,
            within_budget=side["kl"] <= self.settings.max_kl and controls_ok,
            origin=origin,
        )
        store[key] = c
        if self.progress:
            self.progress(
                f"{c.name}: effect {c.effect:+.3f}, requirement {c.achieved:.2f}, "
                f"KL {side['kl']:.4f}"
            )
        return c

    def run(self, candidates: Sequence[tuple[Edit, ...]]) -> list[Candidate]:
        """Measure the candidates, grow the greedy combination, and rank everything."""
        for g in candidates:
            self.measure(g, origin="single" if len(g) == 1 else "group")
        self._greedy(candidates)
        return self.ranked()

    def _greedy(self, candidates: Sequence[tuple[Edit, ...]]) -> None:
        s = self.settings
        ok = [self.measured[tuple(sorted(set(g)))] for g in candidates]
        ok = sorted((c for c in ok if c.within_budget), key=lambda c: -c.effect)
        pool = [c.edits for c in ok[: s.pool]]
        if not pool:
            return
        current, steps = ok[0], 1
        while not current.meets and steps < s.max_steps:
            trials = [
                self.measure([*current.edits, *g], origin="greedy")
                for g in pool
                if not set(g) <= set(current.edits)
            ]
            trials = [t for t in trials if t.within_budget]
            if not trials:
                break
            best = max(trials, key=lambda c: c.effect)
            if best.effect <= current.effect + 1e-9:
                break
            current, steps = best, steps + 1

    def ranked(self) -> list[Candidate]:
        def key(c: Candidate) -> tuple[int, float]:
            if c.within_budget and c.meets:
                return (0, c.side["kl"])
            if c.within_budget:
                return (1, -c.effect)
            return (2, c.side["kl"])

        out = sorted(self.measured.values(), key=key)
        for i, c in enumerate(out, 1):
            c.rank = i
        return out

    def choose(self, ranked: list[Candidate]) -> Candidate:
        if not ranked:
            raise NoFixError("no candidate edit was found for this target on these prompts")
        best = ranked[0]
        if not best.within_budget:
            raise NoFixError(
                f"no candidate stays within the side-effect budget (max KL "
                f"{self.settings.max_kl:g}{', controls kept' if self.controls.texts else ''}): "
                f"the closest, {best.name}, has a mean KL of {best.side['kl']:.4g} nats per "
                f"token (effect {best.effect:+.3f}, controls "
                f"{best.controls_accuracy if best.controls_accuracy is not None else '-'}); "
                "raise the budget (--max-kl) or give other prompts"
            )
        return best

    def match_effect(
        self, edits: Sequence[Edit], effect: float, steps: int = 12
    ) -> Candidate | None:
        """The edits with their scales moved towards 1 (no change) by one factor, so that
        they give `effect` (bisection); None when even the full edits fall short."""
        full = self.measure(edits, origin="baseline")
        if full.effect < effect:
            return None
        lo, hi = 0.0, 1.0  # the share of each edit's change applied
        best = full
        for _ in range(steps):
            mid = (lo + hi) / 2
            c = self.measure([_rescaled(e, 1.0 + mid * (e.scale - 1.0)) for e in edits], "baseline")
            if c.effect >= effect:
                hi, best = mid, c
            else:
                lo = mid
        return best


def _rescaled(e: Edit, scale: float) -> Edit:
    import dataclasses

    return dataclasses.replace(e, scale=round(scale, 6))
