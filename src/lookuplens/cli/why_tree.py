"""``lookuplens why``'s answer as a tree on the terminal."""

from __future__ import annotations

from typing import Any

from rich.console import Console


def print_why(r: Any) -> None:
    """`explain_prediction`'s result as a tree: the target, its neurons and their heads,
    the causal checks."""
    from rich.tree import Tree

    from lookuplens.why import curve_text, diff_change

    what = repr(r.target) + (f" vs {r.contrast!r}" if r.contrast else "")
    shown = "".join(r.tokens[: r.position + 1])
    root = Tree(
        f"[bold]{what}[/] after {shown!r}: "
        f"{'logit difference' if r.contrast else 'logit'} {r.logit:+.3f}, p={r.prob:.3f} "
        f"(top prediction {r.top_prediction!r})"
    )
    others = sorted(r.terms.items(), key=lambda kv: -abs(kv[1]))[:4]
    root.add(
        f"all neurons together {r.neuron_total:+.3f}; largest other terms: "
        + ", ".join(f"{k} {v:+.3f}" for k, v in others)
    )
    for nf in r.neurons:
        node = root.add(
            f"[bold cyan]{nf.name}[/] contributes {nf.contribution:+.3f} "
            f"(activation {nf.activation:.3f}, top token {nf.top_token!r})"
        )
        for h in nf.heads:
            src = ", ".join(f"{s.token!r}@{s.position} ({s.attention:.2f})" for s in h.sources)
            node.add(
                f"[magenta]{h.name}[/] direct {h.direct:+.3f}, ablation removes "
                f"{h.zero_ablation:+.3f}; looks at {src}"
            )
    for a in r.ablations:
        root.add(
            f"[yellow]causal check[/]: {a.what}: p({r.target!r}) {a.prob_before:.3f} -> "
            f"{a.prob_after:.3f}; top prediction {a.top_before!r} -> {a.top_after!r}"
            + diff_change(a)
        )
    if r.curve:
        root.add(f"p({r.target!r}) with the top k ranked neurons zeroed: {curve_text(r.curve)}")
    if r.carrying:
        root.add(
            f"the {len(r.carrying)} neurons that carry it: "
            + ", ".join(f"{n.name} ({n.top_token!r}, {n.contribution:+.2f})" for n in r.carrying)
        )
    Console().print(root, highlight=False)
