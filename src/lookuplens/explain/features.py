"""Token cues of prompts and their smoothed log-odds between two groups of prompts.

A cue is ``("contains", ngram)`` (the n-gram of token ids occurs in the prompt),
``("ends_with", ngram)`` (the prompt ends with it) or ``("any_of", tokens)`` (one of a set
of tokens occurs: the tokens a head looks up to drive a neuron, `lookuplens.explain.lookup`).
Prompts are token ids without BOS.

The log-odds of a cue between active and inactive prompts use an informative Beta prior
(the two-class case of the Dirichlet prior of Monroe, Colaresi & Quinn 2008, "Fightin'
Words"): each class's rate of prompts with the cue is smoothed toward the cue's rate over
a background set of prompts (all prompts of the run), with `strength` pseudo-prompts::

    r_c   = (y_c + s * p) / (n_c + s)
    delta = logit(r_active) - logit(r_inactive)
    var   = sum over classes of 1 / (y_c + s p) + 1 / (n_c - y_c + s (1 - p))
    z     = delta / sqrt(var)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

Ngram = tuple[int, ...]
Cue = tuple[str, Ngram]
KINDS = ("contains", "ends_with", "any_of")


def strip_bos(tokens: Sequence[int], bos: int | None) -> tuple[int, ...]:
    """The prompt without its leading BOS (if it has one)."""
    t = tuple(int(x) for x in tokens)
    return t[1:] if bos is not None and t and t[0] == bos else t


def prompt_cues(body: Sequence[int], max_n: int) -> set[Cue]:
    """Every cue of a prompt: its n-grams (n <= max_n) and its suffixes."""
    out: set[Cue] = set()
    length = len(body)
    for n in range(1, max_n + 1):
        for i in range(length - n + 1):
            out.add(("contains", tuple(body[i : i + n])))
        if length >= n:
            out.add(("ends_with", tuple(body[length - n :])))
    return out


def cue_positions(body: Sequence[int], cue: Cue) -> list[int]:
    """Positions (indices into `body`) covered by the cue's occurrences."""
    kind, gram = cue
    n, length = len(gram), len(body)
    if kind == "any_of":
        members = set(gram)
        return [i for i, t in enumerate(body) if t in members]
    if kind == "ends_with":
        return list(range(length - n, length)) if tuple(body[length - n :]) == gram else []
    covered: set[int] = set()
    for i in range(length - n + 1):
        if tuple(body[i : i + n]) == gram:
            covered.update(range(i, i + n))
    return sorted(covered)


class Background:
    """How many of a set of prompts contain each cue (the prior's mean)."""

    def __init__(self, bodies: Iterable[Sequence[int]], max_n: int) -> None:
        self.max_n = max_n
        self.counts: Counter[Cue] = Counter()
        self.n = 0
        self.token_sets: list[frozenset[int]] = []
        for b in bodies:
            self.counts.update(prompt_cues(b, max_n))
            self.token_sets.append(frozenset(b))
            self.n += 1

    def rate(self, cue: Cue) -> float:
        """Share of prompts with the cue, smoothed (add one half)."""
        if cue[0] == "any_of":
            members = set(cue[1])
            hits = sum(1 for ts in self.token_sets if not members.isdisjoint(ts))
            return (hits + 0.5) / (self.n + 1.0)
        return (self.counts.get(cue, 0) + 0.5) / (self.n + 1.0)


def log_odds(
    y_a: np.ndarray,
    n_a: float,
    y_i: np.ndarray,
    n_i: float,
    prior: np.ndarray,
    strength: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed log-odds ratio and its z-score (see the module docstring), vectorised.

    ``y_*`` count (or weigh) the prompts of each class with the cue, ``n_*`` the prompts
    of each class, ``prior`` the background rate of each cue.
    """
    p = np.clip(np.asarray(prior, dtype=np.float64), 1e-6, 1 - 1e-6)
    a, b = strength * p, strength * (1 - p)
    ya, yi = np.asarray(y_a, dtype=np.float64), np.asarray(y_i, dtype=np.float64)
    ra = (ya + a) / (n_a + strength)
    ri = (yi + a) / (n_i + strength)
    delta = np.log(ra / (1 - ra)) - np.log(ri / (1 - ri))
    var = 1 / (ya + a) + 1 / (n_a - ya + b) + 1 / (yi + a) + 1 / (n_i - yi + b)
    return delta, delta / np.sqrt(var)
