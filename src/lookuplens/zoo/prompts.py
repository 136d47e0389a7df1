"""Prompts cut from a planted world's held-out documents, ending right before a planted
target: the inputs of `lookuplens fix` (``--prompts``, ``--check-prompts``,
``--controls``) on the bundled models.

Each prompt is the document's text up to the target's leading space, so the model's
next token at its last position is the planted prediction; ``expected`` is that target.
"""

from __future__ import annotations

from typing import Any

from lookuplens.errors import UserError

__all__ = ["planted_prompts"]


def planted_prompts(
    world: str,
    n: int,
    seed: int,
    *,
    target: str | None = None,
    kind: str | None = None,
    cue: str | None = None,
    exclude_target: str | None = None,
    max_docs: int = 20_000,
) -> list[dict[str, Any]]:
    """Up to `n` prompts of `world`'s held-out split (seed `seed`), filtered by target,
    kind and cue word; one per document, in document order."""
    from lookuplens.zoo.ground_truth import WORLDS

    if world not in WORLDS:
        raise UserError(f"no planted world {world!r}; worlds: {', '.join(WORLDS)}")
    if n < 1:
        raise UserError("--n must be at least 1")
    w = WORLDS[world]
    if target is not None and target not in w.targets:
        known = ", ".join(repr(t) for t in sorted(w.targets))
        raise UserError(f"{target!r} is not a planted target of the {world}; targets: {known}")
    out: list[dict[str, Any]] = []
    chunk = max(4 * n, 200)
    offset = 0
    while len(out) < n and offset < max_docs:
        docs = w.heldout(offset + chunk, seed)[offset:]
        offset += chunk
        for doc in docs:
            for a in doc.annotations:
                if target is not None and a.target != target:
                    continue
                if exclude_target is not None and a.target == exclude_target:
                    continue
                if kind is not None and a.kind != kind:
                    continue
                if cue is not None and a.cue_word != cue:
                    continue
                out.append(
                    {
                        "prompt": doc.text[: a.target_char],
                        "expected": a.target,
                        "kind": a.kind,
                        "cue": a.cue_word,
                        "doc_id": int(doc.doc_id),
                    }
                )
                break
            if len(out) >= n:
                break
    if not out:
        raise UserError(
            f"no held-out {world} document has such a planted target; loosen the filters"
        )
    return out
