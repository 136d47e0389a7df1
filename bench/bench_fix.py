"""The chosen fix against the naive ones, as side effect at equal target effect (issue 22).

    .venv/bin/python bench/bench_fix.py [--model bundled:storyworld] [--target " an"]
        [--n 40] [--json out.json]

Writes the planted prompts of the target (held-out stories, seed 11; held-out check
prompts, seed 12; controls: the other planted targets, seed 13), runs `lookuplens fix`
with its defaults, and for each naive edit (zeroing the look-up head, the head that
drives the proposed neurons most, and the second one; zeroing the top neuron) reports
the side effect (mean KL per held-out token where the original does not predict the
target) of the naive edit and of the chosen fix at the same effect on the prompts (the
naive edit rescaled to the fix's effect, or, when it cannot get there, the fix rescaled
to the naive edit's full effect): the ratio is naive KL / fix KL, above 1 when the fix is
the cleaner change. Also the fix's effect on the held-out check prompts, and the time of
the whole command against one plain forward pass over the same held-out text (the
baseline of this machine's speed).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    import torch

    from lookuplens.fix.run import FixInputs, run_fix
    from lookuplens.fix.search import FixSettings
    from lookuplens.model import load_model
    from lookuplens.zoo.prompts import planted_prompts

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="bundled:storyworld")
    ap.add_argument("--world", default="storyworld")
    ap.add_argument("--target", default=" an")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp(prefix="bench-fix-"))

    def write(name: str, rows: list[dict[str, object]]) -> str:
        p = tmp / name
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(p)

    prompts = write("prompts.jsonl", planted_prompts(args.world, args.n, 11, target=args.target))
    check = write("check.jsonl", planted_prompts(args.world, args.n, 12, target=args.target))
    controls = write(
        "controls.jsonl", planted_prompts(args.world, 60, 13, exclude_target=args.target)
    )
    t0 = time.perf_counter()
    r = run_fix(
        FixInputs(
            model=args.model,
            target=args.target,
            prompts_file=prompts,
            out=str(tmp / "fix"),
            controls_file=controls,
            check_prompts_file=check,
            device="cpu",
        ),
        FixSettings(),
    )
    seconds = time.perf_counter() - t0
    # baseline: one plain forward pass of the model over the held-out text
    from lookuplens.fix.run import _side_corpus, _side_effects

    lm = load_model(args.model, device="cpu")
    inputs = FixInputs(model=args.model, target=args.target, prompts_file="", out="")
    side = _side_effects(lm, *_side_corpus(inputs, None), inputs, (lm.resolve_token(args.target),))
    t1 = time.perf_counter()
    side.prepare(lm)
    forward = time.perf_counter() - t1

    after = r["after"]
    print(f"model {args.model}, target {args.target!r}: chosen fix {r['chosen']['name']}")
    print(
        f"  p(target) {r['before']['target']['mean_prob']:.4f} -> "
        f"{after['target']['mean_prob']:.4f} on the prompts; held-out check prompts: "
        f"{r['check_prompts']['prob_removed']:.1%} removed"
    )
    se = after["side_effects"]
    print(
        f"  side effects: KL {se['kl']:.4f} (without the target), {se['kl_all']:.4f} (every "
        f"position), loss {se['loss_change']:+.4f}; controls {after['controls_accuracy']}"
    )
    print("  naive edit            at effect   naive KL    fix KL   ratio")
    for row in r["naive"]:
        if row["kl_ratio"] is None:
            print(f"  {row['edit']['name']:<20}  no effect in the goal's direction")
            continue
        print(
            f"  {row['edit']['name']:<20}  {row['at_effect']:+9.3f}  "
            f"{row['naive_matched']['side_effects']['kl']:9.4f}  "
            f"{row['fix_matched']['side_effects']['kl']:8.4f}  {row['kl_ratio']:6.1f}x"
        )
    print(
        f"  time: {seconds:.1f} s for the whole fix = {seconds / forward:.0f}x one plain "
        f"forward pass over the {side.n_tokens} held-out tokens ({forward:.2f} s)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "model": args.model,
                    "target": args.target,
                    "chosen": r["chosen"]["name"],
                    "after": after,
                    "check_prompts_removed": r["check_prompts"]["prob_removed"],
                    "naive": [
                        {k: row[k] for k in ("at_effect", "kl_ratio")} | {"edit": row["edit"]}
                        for row in r["naive"]
                    ],
                    "seconds": seconds,
                    "forward_seconds": forward,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
