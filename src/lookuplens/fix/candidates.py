"""The candidate edits of `lookuplens fix`, proposed from the `why` decomposition of the
prompts and, with a run directory, that run's verified (neuron, head) findings.

On each prompt (at most `decompose` of them) `explain_prediction` splits the target's
logit (or the logit difference against the contrast token) into every neuron's direct
contribution and attributes the top neurons' activations to upstream heads. Averaged
over the prompts (a neuron outside a prompt's top list counts 0 there), the neurons that
push the target most and, for each, the heads that drive it most (mean `direct`
attribution) give the candidates: a neuron edit for each neuron, a path edit for each
(head, neuron), a head edit for each head; and, for a prediction that many neurons
carry together, groups: the top 2, 4, 8, ... neurons, and each head's paths into its
top 2, 4, 8, ... neurons; and logit edits of the top 1, 2, 4, ... neurons (their writes
along the target's logit direction against its alternatives, removed or reversed). A
run's findings add their pairs when the neuron is one of those or predicts the target.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

from lookuplens.fix.edits import Edit
from lookuplens.fix.measure import PromptSet
from lookuplens.model import LoadedModel

log = logging.getLogger(__name__)

__all__ = ["Evidence", "propose"]


@dataclass
class Evidence:
    """Why each candidate was proposed: the decomposition it came from."""

    prompts_decomposed: int = 0
    neurons: list[dict[str, object]] = field(default_factory=list)
    """Per proposed neuron: mean direct contribution to the target, mean activation, its
    top token, the share of decomposed prompts where it was among the top, its heads."""
    run_findings: list[dict[str, object]] = field(default_factory=list)
    """The run's findings that added candidates (neuron, head, cue, share removed)."""

    def to_dict(self) -> dict[str, object]:
        return {
            "prompts_decomposed": self.prompts_decomposed,
            "neurons": self.neurons,
            "run_findings": self.run_findings,
        }


def propose(
    lm: LoadedModel,
    prompts: PromptSet,
    scale: float,
    *,
    decompose: int = 16,
    n_neurons: int = 16,
    n_heads: int = 2,
    run_findings: list[dict[str, object]] | None = None,
    alternatives: tuple[tuple[int, float], ...] = (),
    logit_scales: tuple[float, ...] = (),
) -> tuple[list[tuple[Edit, ...]], Evidence]:
    """Candidate edits (each a group of edits with `scale`: single edits first, then the
    groups) and the evidence."""
    from lookuplens.why import WhyConfig, explain_prediction

    cfg = WhyConfig(
        target=prompts.target,
        contrast=prompts.contrast,
        top_neurons=n_neurons,
        top_heads=n_heads,
        causal_check=False,
    )
    texts = prompts.texts[:decompose]
    contrib: dict[tuple[int, int], float] = defaultdict(float)
    act: dict[tuple[int, int], float] = defaultdict(float)
    seen: dict[tuple[int, int], int] = defaultdict(int)
    top_token: dict[tuple[int, int], str] = {}
    head_direct: dict[tuple[int, int], dict[tuple[int, int], float]] = defaultdict(
        lambda: defaultdict(float)
    )
    for text in texts:
        r = explain_prediction(lm, text, cfg)
        for nf in r.neurons:
            key = (nf.layer, nf.neuron)
            contrib[key] += nf.contribution
            act[key] += nf.activation
            seen[key] += 1
            top_token[key] = nf.top_token
            for hf in nf.heads:
                head_direct[key][(hf.layer, hf.head)] += hf.direct
    n = max(len(texts), 1)
    # neurons absent from a prompt's top list count as 0 there: the mean is over all prompts
    ranked = sorted((k for k in contrib if contrib[k] > 0), key=lambda k: -contrib[k])
    chosen = ranked[:n_neurons]
    ev = Evidence(prompts_decomposed=len(texts))
    out: list[tuple[Edit, ...]] = []

    def add(group: list[Edit]) -> None:
        key = tuple(sorted(set(group)))
        if key and key not in out:
            out.append(key)

    drives: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for key in chosen:
        heads = sorted(
            (h for h, v in head_direct[key].items() if v > 0), key=lambda h: -head_direct[key][h]
        )[:n_heads]
        for h in heads:
            drives[h].append(key)
        ev.neurons.append(
            {
                "layer": key[0],
                "neuron": key[1],
                "top_token": top_token[key],
                "mean_contribution": contrib[key] / n,
                "mean_activation": act[key] / max(seen[key], 1),
                "top_share": seen[key] / n,
                "heads": [
                    {"head_layer": h[0], "head": h[1], "mean_direct": head_direct[key][h] / n}
                    for h in heads
                ],
            }
        )
    for f in run_findings or []:
        key = (int(f["layer"]), int(f["neuron"]))  # type: ignore[call-overload]
        h = (int(f["head_layer"]), int(f["head"]))  # type: ignore[call-overload]
        if key not in chosen and f.get("token") != prompts.target:
            continue
        ev.run_findings.append(dict(f))
        if key not in drives[h]:
            drives[h].append(key)
        if key not in chosen:
            chosen.append(key)

    def neuron(k: tuple[int, int]) -> Edit:
        return Edit("neuron", scale, layer=k[0], neuron=k[1])

    def path(h: tuple[int, int], k: tuple[int, int]) -> Edit:
        return Edit("path", scale, layer=k[0], neuron=k[1], head_layer=h[0], head=h[1])

    # single edits: each neuron, each (head, neuron) path, each head
    for k in chosen:
        add([neuron(k)])
        for h, ks in drives.items():
            if k in ks:
                add([path(h, k)])
    for h in drives:
        add([Edit("head", scale, head_layer=h[0], head=h[1])])
    # groups for a prediction carried by many neurons: the top k neurons, and each head's
    # paths into its top k neurons (k = 2, 4, 8, ...)
    size = 2
    while size <= len(chosen):
        add([neuron(x) for x in chosen[:size]])
        for h, ks in drives.items():
            if len(ks) >= size:
                add([path(h, x) for x in ks[:size]])
        size *= 2
    if len(chosen) > 2:
        add([neuron(x) for x in chosen])
    # the neurons' writes along the target's logit direction, removed or reversed: the
    # top 1, 2, 4, ... neurons and all of them, at each scale
    for sc in logit_scales:
        logits = [
            Edit(
                "logit",
                sc,
                layer=x[0],
                neuron=x[1],
                token=prompts.target_id,
                alternatives=alternatives,
                token_text=prompts.target,
            )
            for x in chosen
        ]
        size = 1
        while size < len(logits):
            add(logits[:size])
            size *= 2
        add(logits)
    for h, ks in drives.items():
        if len(ks) > 2:
            add([path(h, x) for x in ks])
    edits = out
    log.info(
        "%d candidates from %d decomposed prompts%s",
        len(edits),
        len(texts),
        f" and {len(ev.run_findings)} run findings" if ev.run_findings else "",
    )
    return edits, ev
