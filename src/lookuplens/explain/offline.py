"""The offline explainer and simulator: no network, no LLM.

The explainer contrasts a task's active and inactive *training* prompts:

1. every token n-gram (and every suffix) of the prompts is a candidate cue, ranked by its
   smoothed log-odds z-score (`lookuplens.explain.features`);
2. for a pair, the head's attention from the last (firing) position over the source
   tokens is read (``blocks.{hl}.attn.hook_pattern``); attention-weighted token counts get
   the same log-odds, and tokens the head looks up more on active prompts join the
   candidates;
3. cues are chosen greedily while they raise the training balanced accuracy of the rule
   ``sum of the weights (log-odds) of the cues present > threshold``;
4. each chosen cue records whether the head attends to it (mean attention from the last
   token on active prompts against a uniform share).

The rule (cues, weights, threshold) is stored as JSON in the ``features`` column; the
explanation renders it in one to three sentences. The simulator applies the stored rule
to held-out prompts; its score is graded (the weighted sum), so AUROC is defined.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lookuplens.examples.reads import last_token_attention
from lookuplens.explain.base import (
    Env,
    ExplanationResult,
    SimulationResult,
    StoredExplanation,
    Task,
)
from lookuplens.explain.features import (
    Background,
    Cue,
    cue_positions,
    log_odds,
    prompt_cues,
    strip_bos,
)
from lookuplens.explain.lookup import LookupScores
from lookuplens.explain.metrics import best_threshold
from lookuplens.explain.wording import (
    MAX_QUOTED,
    MAX_QUOTED_TOTAL,
    OfflineWording,
    name_list,
    token_class,
)

log = logging.getLogger(__name__)

__all__ = [
    "FEATURES_SCHEMA",
    "MAX_QUOTED",
    "MAX_QUOTED_TOTAL",
    "OfflineExplainer",
    "OfflineSimulator",
    "last_token_attention",
    "name_list",
    "token_class",
]

FEATURES_SCHEMA = 1


@dataclass(frozen=True)
class _Chosen:
    cue: Cue
    weight: float
    z: float
    active_rate: float
    inactive_rate: float


class OfflineExplainer(OfflineWording):
    """Explains a task by the token cues that separate its active and inactive prompts."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.cfg = env.offline
        self.lm = env.lm
        self.bos = env.lm.bos_token_id
        self._background: Background | None = None
        self._lookup: LookupScores | None = None

    def lookup_cue(self, task: Task) -> Cue | None:
        """The pair's look-up token set as an ``any_of`` cue (None: off, or no token)."""
        if task.head is None or task.head_layer is None or self.cfg.lookup_fraction <= 0:
            return None
        if self._lookup is None:
            self._lookup = LookupScores(self.lm)
        ids, _ = self._lookup.top_tokens(
            task.head_layer,
            task.head,
            task.layer,
            task.neuron,
            self.cfg.lookup_fraction,
            self.cfg.lookup_max_tokens,
        )
        return ("any_of", tuple(ids)) if ids else None

    def background(self) -> Background:
        """Cue rates over every example prompt of the run (the prior), computed once."""
        if self._background is None:
            tokens = self.env.run.read_table("examples").column("tokens").to_pylist()
            self._background = Background(
                (strip_bos(t, self.bos) for t in tokens), self.cfg.max_ngram
            )
        return self._background

    def explain(self, task: Task) -> ExplanationResult:
        cfg = self.cfg
        y = np.array([it.active for it in task.train], dtype=bool)
        if not y.any() or y.all():
            what = "active" if y.any() else "inactive"
            return ExplanationResult(
                None,
                "one_class",
                note=f"all {len(y)} training prompts are {what}; there is nothing to contrast",
            )
        bodies = [strip_bos(it.tokens, self.bos) for it in task.train]
        cues = [prompt_cues(b, cfg.max_ngram) for b in bodies]
        n_a, n_i = int(y.sum()), int((~y).sum())
        attn: list[np.ndarray] | None = None
        if task.head is not None and task.head_layer is not None:
            full = last_token_attention(
                self.lm,
                [it.tokens for it in task.train],
                task.head_layer,
                task.head,
                self.env.tasks.batch_tokens,
            )
            attn = [a[len(a) - len(b) :] for a, b in zip(full, bodies, strict=True)]
        group = self.lookup_cue(task)
        if group is not None and attn is not None:
            group = self._prune_unattended(group, bodies, attn)
        if group is not None:
            members = set(group[1])
            for b, c in zip(bodies, cues, strict=True):
                if not members.isdisjoint(b):
                    c.add(group)
        cnt_a: Counter[Cue] = Counter()
        cnt_i: Counter[Cue] = Counter()
        for c, act in zip(cues, y, strict=True):
            (cnt_a if act else cnt_i).update(c)
        keys = sorted(k for k in set(cnt_a) | set(cnt_i) if cnt_a[k] + cnt_i[k] >= cfg.min_count)
        bg = self.background()
        ya = np.array([cnt_a[k] for k in keys], dtype=np.float64)
        yi = np.array([cnt_i[k] for k in keys], dtype=np.float64)
        prior = np.array([bg.rate(k) for k in keys])
        delta, z = log_odds(ya, n_a, yi, n_i, prior, cfg.prior_strength)
        index = {k: j for j, k in enumerate(keys)}

        attended_tokens: list[dict[str, object]] = []
        extra: list[int] = []
        if attn is not None:
            attended_tokens, extra = self._attended(bodies, attn, y, index)

        order = sorted(
            (j for j in range(len(keys)) if abs(z[j]) >= cfg.min_z),
            key=lambda j: (-abs(z[j]), len(keys[j][1]), keys[j]),
        )
        pool = order[: cfg.max_candidates]
        pool += [j for j in extra if j not in pool]
        if group is not None and group in index and index[group] not in pool:
            pool.append(index[group])  # always offered: it generalises past seen tokens
        chosen, threshold, train_ba = self._select(pool, keys, delta, cues, y)
        picks = [
            _Chosen(keys[j], float(delta[j]), float(z[j]), ya[j] / n_a, yi[j] / n_i) for j in chosen
        ]
        feats = [self._feature(c, bodies, attn, y) for c in picks]
        named = {t for c in picks if c.weight > 0 and c.cue[0] != "any_of" for t in c.cue[1]}
        modulators = self._modulators(task, bodies, named) if task.kind == "neuron" else {}
        texts_active = [it.text for it in task.train if it.active]
        spec = {
            "schema": FEATURES_SCHEMA,
            "rule": "weighted_sum",
            "target": task.kind,
            "threshold": threshold,
            "train_balanced_accuracy": train_ba,
            "n_train_active": n_a,
            "n_train_inactive": n_i,
            "features": feats,
            "attended_tokens": attended_tokens,
            "modulators": modulators,
        }
        text = self._render(task, feats, attended_tokens, texts_active, train_ba, modulators)
        return ExplanationResult(
            text,
            "ok",
            note=None if feats else "no cue separates the training prompts",
            features=json.dumps(spec, ensure_ascii=False, sort_keys=True),
        )

    # ------------------------------------------------------------------ pieces
    def _modulators(
        self, task: Task, bodies: Sequence[tuple[int, ...]], named: set[int]
    ) -> dict[str, object]:
        """Words that raise the activation among firing prompts that share their trigger.

        The neuron's own training prompts (its top prompts and its contrast prompts, which
        end in the same token with the neuron silent) are grouped by their last token (the
        trigger); in each group of at least `modulation_min_group` the prompts above the
        group's median activation are contrasted with the rest by the same smoothed
        log-odds as the cues, the counts pooled over the groups. Earlier words (not the
        last `modulation_skip_last` tokens, the trigger phrase, nor words the explanation
        already names) with a z-score of at least `modulation_min_z`, held by at least a
        quarter of the higher prompts, are the modulators, strongest first (at most
        `modulation_max_words`).
        """
        cfg = self.cfg
        groups: dict[int, list[int]] = defaultdict(list)
        for i, (it, b) in enumerate(zip(task.train, bodies, strict=True)):
            if it.activation is not None and len(b) > 1:
                groups[b[-1]].append(i)
        used = {t: ix for t, ix in groups.items() if len(ix) >= cfg.modulation_min_group}
        if not used:
            return {}
        hi: Counter[int] = Counter()
        lo: Counter[int] = Counter()
        n_hi = n_lo = 0
        for trigger, ix in used.items():
            acts = np.array([float(task.train[i].activation or 0.0) for i in ix])
            median = float(np.median(acts))
            for i, a in zip(ix, acts, strict=True):
                earlier = bodies[i][: -cfg.modulation_skip_last]
                words = set(earlier) - {trigger} - named
                if a > median:
                    hi.update(words)
                    n_hi += 1
                else:
                    lo.update(words)
                    n_lo += 1
        if not n_hi or not n_lo:
            return {}
        keys = sorted(k for k in hi if hi[k] >= max(2, 0.25 * n_hi))
        if not keys:
            return {}
        bg = self.background()
        prior = np.array([bg.rate(("contains", (k,))) for k in keys])
        ya = np.array([hi[k] for k in keys], dtype=np.float64)
        yi = np.array([lo[k] for k in keys], dtype=np.float64)
        delta, z = log_odds(ya, n_hi, yi, n_lo, prior, cfg.prior_strength)
        order = sorted(
            (j for j in range(len(keys)) if z[j] >= cfg.modulation_min_z and delta[j] > 0),
            key=lambda j: (-z[j], keys[j]),
        )[: cfg.modulation_max_words]
        if not order:
            return {}
        chosen = [keys[j] for j in order]
        with_any: list[float] = []
        without: list[float] = []
        prompts = [i for ix in used.values() for i in ix]
        for i in prompts:
            held = not set(chosen).isdisjoint(bodies[i][: -cfg.modulation_skip_last])
            (with_any if held else without).append(float(task.train[i].activation or 0.0))
        return {
            "triggers": [self.lm.token_str(t) for t in sorted(used, key=lambda t: -len(used[t]))],
            "ids": chosen,
            "words": [self.lm.token_str(w) for w in chosen],
            "z": [float(z[j]) for j in order],
            "mean_with": float(np.mean(with_any)) if with_any else None,
            "mean_without": float(np.mean(without)) if without else None,
            "n_prompts": len(prompts),
        }

    def _prune_unattended(
        self, group: Cue, bodies: Sequence[tuple[int, ...]], attn: Sequence[np.ndarray]
    ) -> Cue | None:
        """Drop the look-up tokens that the head, as observed on the training prompts,
        does not attend to from the last position (mean attention below
        `lookup_min_attention` where present): its weights would carry them to the
        neuron, but its queries do not pick them. Tokens no training prompt holds stay."""
        seen: dict[int, list[float]] = defaultdict(list)
        members = set(group[1])
        for b, a in zip(bodies, attn, strict=True):
            for tok, m in zip(b, a, strict=True):
                if tok in members:
                    seen[tok].append(float(m))
        keep = tuple(
            t
            for t in group[1]
            if t not in seen or float(np.mean(seen[t])) >= self.cfg.lookup_min_attention
        )
        return ("any_of", keep) if keep else None

    def _attended(
        self,
        bodies: Sequence[tuple[int, ...]],
        attn: Sequence[np.ndarray],
        y: np.ndarray,
        index: dict[Cue, int],
    ) -> tuple[list[dict[str, object]], list[int]]:
        """Tokens the head looks up more on active prompts (attention-weighted log-odds),
        and the candidate indices of those that pass `min_z`."""
        mass_a: dict[int, float] = defaultdict(float)
        mass_i: dict[int, float] = defaultdict(float)
        tot = [0.0, 0.0]
        for b, a, act in zip(bodies, attn, y, strict=True):
            target = mass_a if act else mass_i
            for tok, m in zip(b, a, strict=True):
                target[tok] += float(m)
            tot[0 if act else 1] += float(a.sum())
        toks = sorted(set(mass_a) | set(mass_i))
        if not toks or min(tot) <= 0:
            return [], []
        ma = np.array([mass_a.get(t, 0.0) for t in toks])
        mi = np.array([mass_i.get(t, 0.0) for t in toks])
        prior = (ma + mi) / (tot[0] + tot[1])
        _, z = log_odds(ma, tot[0], mi, tot[1], prior, self.cfg.prior_strength)
        n_a, n_i = int(y.sum()), int((~y).sum())
        ranked = sorted((j for j in range(len(toks)) if z[j] > 0), key=lambda j: (-z[j], toks[j]))
        top = [
            {
                "id": int(toks[j]),
                "text": self.lm.token_str(int(toks[j])),
                "mean_attention_active": float(ma[j] / n_a),
                "mean_attention_inactive": float(mi[j] / n_i),
                "z": float(z[j]),
            }
            for j in ranked[: self.cfg.n_attended_tokens]
        ]
        extra = [
            index[("contains", (toks[j],))]
            for j in ranked
            if z[j] >= self.cfg.min_z and ("contains", (toks[j],)) in index
        ]
        return top, extra

    def _select(
        self,
        pool: list[int],
        keys: list[Cue],
        delta: np.ndarray,
        cues: list[set[Cue]],
        y: np.ndarray,
    ) -> tuple[list[int], float, float]:
        """Greedy forward selection on the training balanced accuracy."""
        x = np.array([[keys[j] in c for j in pool] for c in cues], dtype=np.float64)
        x = x.reshape(len(cues), len(pool))
        w = delta[pool] if pool else np.empty(0)
        chosen: list[int] = []
        best_ba = 0.5
        threshold = -1.0 if y.mean() > 0.5 else 0.0  # no cue: predict the majority
        for _ in range(self.cfg.max_features):
            best: tuple[int, float, float] | None = None
            for p in range(len(pool)):
                if p in chosen:
                    continue
                cols = [*chosen, p]
                t, ba = best_threshold(x[:, cols] @ w[cols], y)
                if best is None or ba > best[1] + 1e-12:
                    best = (p, ba, t)
            if best is None or best[1] < best_ba + self.cfg.min_gain:
                break
            chosen.append(best[0])
            best_ba, threshold = best[1], best[2]
        return [pool[p] for p in chosen], float(threshold), float(best_ba)

    def _feature(
        self,
        c: _Chosen,
        bodies: Sequence[tuple[int, ...]],
        attn: Sequence[np.ndarray] | None,
        y: np.ndarray,
    ) -> dict[str, object]:
        kind, gram = c.cue
        text = (
            ", ".join(self.lm.token_str(t).strip() for t in gram)
            if kind == "any_of"
            else self.lm.vocab.join(gram)
        )
        out: dict[str, object] = {
            "kind": kind,
            "ids": list(gram),
            "text": text,
            "weight": c.weight,
            "z": c.z,
            "active_rate": c.active_rate,
            "inactive_rate": c.inactive_rate,
            "attended": None,
            "attention_active": None,
            "attention_inactive": None,
            "attention_uniform": None,
        }
        if kind == "any_of":  # the members an active training prompt held, to name them
            held = set().union(*(b for b, act in zip(bodies, y, strict=True) if act))
            out["seen_ids"] = [t for t in gram if t in held]
        if attn is None:
            return out
        per: dict[bool, list[float]] = {True: [], False: []}
        uniform: list[float] = []
        for b, a, act in zip(bodies, attn, y, strict=True):
            pos = cue_positions(b, c.cue)
            if not pos:
                continue
            per[bool(act)].append(float(a[pos].sum()))
            if act:
                uniform.append(len(pos) / max(len(b), 1))
        if per[True]:
            att = float(np.mean(per[True]))
            uni = float(np.mean(uniform))
            out["attention_active"] = att
            out["attention_uniform"] = uni
            out["attended"] = bool(
                att >= self.cfg.attention_min_mass and att >= self.cfg.attention_min_ratio * uni
            )
        if per[False]:
            out["attention_inactive"] = float(np.mean(per[False]))
        return out


class OfflineSimulator:
    """Applies an offline explanation's stored rule to held-out prompts."""

    def __init__(self, env: Env) -> None:
        self.bos = env.lm.bos_token_id

    def simulate(self, task: Task, explanation: StoredExplanation) -> SimulationResult:
        if explanation.features is None:
            return SimulationResult(
                None,
                None,
                "unsupported",
                note=(
                    f"the {explanation.explainer!r} explanation has no machine-usable features; "
                    "score it with the llm scorer"
                ),
            )
        try:
            spec = json.loads(explanation.features)
            if spec.get("schema") != FEATURES_SCHEMA:
                raise ValueError(f"features schema {spec.get('schema')!r}")
            rule = [
                ((str(f["kind"]), tuple(int(i) for i in f["ids"])), float(f["weight"]))
                for f in spec["features"]
            ]
            threshold = float(spec["threshold"])
        except (ValueError, KeyError, TypeError) as e:
            return SimulationResult(
                None,
                None,
                "unsupported",
                note=f"unreadable features ({e}); rerun the explain stage",
            )
        scores = []
        for it in task.test:
            body = strip_bos(it.tokens, self.bos)
            scores.append(sum(w for cue, w in rule if cue_positions(body, cue)))
        return SimulationResult(
            tuple(s > threshold for s in scores), tuple(float(s) for s in scores), "ok"
        )
