"""How the offline explainer says its rule in words: the explanation's one to three
sentences from the chosen cues, the tokens the head attends to and the modulators, with
quoted examples kept few (`MAX_QUOTED` per list, `MAX_QUOTED_TOTAL` in all)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lookuplens.explain.base import Task
    from lookuplens.model import LoadedModel

__all__ = ["MAX_QUOTED", "MAX_QUOTED_TOTAL", "OfflineWording", "name_list", "token_class"]

_WORD = r"[\w'\u2019-]*"


MAX_QUOTED = 5
"""Quoted examples shown per list in an offline explanation (the rest are counted)."""
MAX_QUOTED_TOTAL = 8
"""Quoted examples in a whole explanation: a second or third sentence that would pass it
is left out (the first is always kept)."""


def token_class(core: str) -> str | None:
    """The class a cue's text falls in, for naming a list of them: number, punctuation,
    capitalised word; None for anything else."""
    if not core:
        return None
    if core.replace(",", "").replace(".", "").isdigit():
        return "number"
    if not any(ch.isalnum() for ch in core):
        return "punctuation mark"
    if core[0].isupper() and core[0].isalpha():
        return "capitalised word"
    return None


def name_list(names: Sequence[str], cores: Sequence[str], target: str = "") -> str:
    """Quoted cues as a short phrase: at most `MAX_QUOTED` shown, the rest counted; a list
    of one class named by it ('a number ("19", "200", "32")'); the predicted token itself
    said so."""
    shown = [
        f"the predicted token itself ({n})" if target and c == target else n
        for n, c in zip(names, cores, strict=True)
    ]
    more = len(shown) - MAX_QUOTED
    head = shown[:MAX_QUOTED]
    classes = {token_class(c) for c in cores}
    if len(shown) > 2 and len(classes) == 1 and None not in classes:
        rest = f", and {more} more" if more > 0 else ""
        return f"a {classes.pop()} ({', '.join(head)}{rest})"
    if more > 0:
        return ", ".join(head) + f" or one of {more} more"
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]


class OfflineWording:
    """The sentences of an offline explanation (`lookuplens.explain.offline.OfflineExplainer`
    inherits them); tokens are quoted as `lm` writes them."""

    lm: LoadedModel

    def _show(self, text: str, kind: str, texts: Sequence[str]) -> str:
        core = text.strip()
        if not core:
            return repr(text)
        shown = f'"{core}"'
        if kind != "contains":
            return shown
        words = Counter(
            m.group(0) for t in texts for m in re.finditer(_WORD + re.escape(core) + _WORD, t)
        )
        if core in words or not words:
            return shown
        examples = ", ".join(f'"{w}"' for w, _ in words.most_common(3))
        return f"{shown} (as in {examples})"

    def _looked_name(self, f: dict[str, object], texts: Sequence[str]) -> str:
        """A looked-at cue as quoted text; a token set shows its first `MAX_QUOTED`
        members the prompts held and counts the rest."""
        if f["kind"] != "any_of":
            return self._show(str(f["text"]), "", texts)
        shown, n = self._members(f)
        return shown + (f" (of {n} such tokens)" if n > MAX_QUOTED else "")

    def _members(self, f: dict[str, object]) -> tuple[str, int]:
        """A token set's first `MAX_QUOTED` members the training prompts held (all its
        members when they held none), quoted, and the set's size."""
        ids = list(f["ids"])  # type: ignore[call-overload]
        seen = list(f.get("seen_ids") or ids)  # type: ignore[arg-type]
        return ", ".join(f'"{self.lm.token_str(t).strip()}"' for t in seen[:MAX_QUOTED]), len(ids)

    def _conditions(
        self, feats: Sequence[dict[str, object]], texts: Sequence[str], target: str = ""
    ) -> str:
        parts = []
        for f in feats:
            if f["kind"] == "any_of":
                shown, n = self._members(f)
                parts.append(
                    f"contains a word the head looks up to drive the neuron ({shown}; "
                    f"{n} such tokens)"
                )
        for kind, verb in (("contains", "contains"), ("ends_with", "ends with")):
            chosen = [f for f in feats if f["kind"] == kind]
            if chosen:
                cores = [str(f["text"]).strip() for f in chosen]
                names = [self._show(str(f["text"]), kind, texts) for f in chosen]
                parts.append(f"{verb} {name_list(names, cores, target.strip())}")
        return ", or ".join(parts)

    def _render(
        self,
        task: Task,
        feats: Sequence[dict[str, object]],
        attended_tokens: Sequence[dict[str, object]],
        texts: Sequence[str],
        train_ba: float,
        modulators: dict[str, object] | None = None,
    ) -> str:
        pair = task.kind == "pair"
        subject = "The head is active" if pair else "The neuron fires"
        pos = [f for f in feats if float(f["weight"]) > 0]  # type: ignore[arg-type]
        neg = [f for f in feats if float(f["weight"]) <= 0]  # type: ignore[arg-type]
        sentences = []
        if pos:
            sentences.append(
                f"{subject} when the prompt {self._conditions(pos, texts, task.token)}."
            )
        elif neg:
            sentences.append(
                f"{subject} unless the prompt {self._conditions(neg, texts, task.token)}."
            )
        else:
            what = "the head is active" if pair else "the neuron fires"
            sentences.append(
                f"No word or phrase of the prompts tells when {what} (training balanced "
                f"accuracy {train_ba:.2f})."
            )
        if pair:
            looked = [f for f in pos if f["attended"]]
            if looked:
                names = ", ".join(self._looked_name(f, texts) for f in looked)
                mean = float(np.mean([float(f["attention_active"]) for f in looked]))  # type: ignore[arg-type]
                sentences.append(
                    f"From the last token the head attends to {names} "
                    f"(mean attention {mean:.2f} on active prompts)."
                )
            elif attended_tokens:
                names = ", ".join(self._show(str(t["text"]), "", texts) for t in attended_tokens)
                sentences.append(
                    f"From the last token the head attends more to {names} on active prompts."
                )
        if modulators:
            sentences.insert(1, self._modulation_sentence(modulators))
        if pos and neg:
            off = "inactive" if pair else "silent"
            cond = self._conditions(neg, texts, task.token)
            sentences.append(f"It is {off} when the prompt {cond}.")
        kept = sentences[:1]
        for extra in sentences[1:3]:  # later sentences only while the quotes stay few
            if sum(s.count('"') for s in [*kept, extra]) // 2 <= MAX_QUOTED_TOTAL:
                kept.append(extra)
        return " ".join(kept)

    def _modulation_sentence(self, m: dict[str, object]) -> str:
        triggers = [f'"{str(t).strip()}"' for t in m["triggers"]][:2]  # type: ignore[attr-defined]
        words = [str(w).strip() for w in m["words"]]  # type: ignore[attr-defined]
        names = name_list([f'"{w}"' for w in words], words)
        rise = ""
        if m.get("mean_with") is not None and m.get("mean_without") is not None:
            rise = f" ({float(m['mean_with']):.2f} against {float(m['mean_without']):.2f})"  # type: ignore[arg-type]
        return f"After {' or '.join(triggers)} it fires more when {names} came earlier{rise}."
