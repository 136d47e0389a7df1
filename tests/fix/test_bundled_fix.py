"""`lookuplens fix` on the bundled planted models, measured (issue 22's done-when)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lookuplens.fix.run import FixInputs, run_fix
from lookuplens.fix.search import FixSettings
from lookuplens.zoo.prompts import planted_prompts


@pytest.fixture(autouse=True)
def _two_threads() -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _write(path: Path, rows: list[dict[str, object]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _inputs(tmp_path: Path, world: str, target: str, n: int, **kw: object) -> FixInputs:
    model = f"bundled:{world}"
    return FixInputs(
        model=model,
        target=target,
        prompts_file=_write(tmp_path / "p.jsonl", planted_prompts(world, n, 11, target=target)),
        check_prompts_file=_write(
            tmp_path / "c.jsonl", planted_prompts(world, n, 12, target=target)
        ),
        controls_file=_write(
            tmp_path / "ctl.jsonl", planted_prompts(world, 40, 13, exclude_target=target)
        ),
        out=str(tmp_path / "fix"),
        device="cpu",
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.slow
def test_article_fix_removes_the_an_lookup_on_held_out_prompts(tmp_path: Path) -> None:
    r = run_fix(_inputs(tmp_path, "storyworld", " an", 40), FixSettings())
    after = r["after"]
    assert after["meets_requirement"] and after["achieved"] >= 0.9
    # held-out look-ups the fix was not chosen on
    assert r["check_prompts"]["prob_removed"] >= 0.9
    assert after["side_effects"]["kl"] <= 0.01
    assert after["controls_accuracy"] == r["before"]["controls_accuracy"] == 1.0
    # zeroing the look-up head costs more than twice the side effect at equal effect
    head = next(n for n in r["naive"] if n["edit"]["kind"] == "head")
    assert (head["edit"]["head_layer"], head["edit"]["head"]) == (0, 2)
    assert head["kl_ratio"] >= 2.0


@pytest.mark.slow
def test_topic_fix_removes_one_objects_lookup_and_ranks_the_head_by_its_cost(
    tmp_path: Path,
) -> None:
    """The place -> " coffee" look-up: p(" coffee") is 1.00 on its prompts. The fix
    removes it on held-out prompts too; zeroing the look-up head L0H2 also removes it but
    breaks the other look-ups (controls), so it ranks below every candidate within the
    budget."""
    r = run_fix(
        _inputs(tmp_path, "storyworld", " coffee", 20, side_tokens=4096, naive=False),
        FixSettings(),
    )
    assert r["before"]["target"]["mean_prob"] > 0.9
    by_name = {c["name"]: c for c in r["candidates"]}
    head = by_name["L0H2 ×0"]
    assert head["achieved"] >= 0.9 and not head["within_budget"]
    assert head["controls_accuracy"] < r["before"]["controls_accuracy"]
    chosen = r["chosen"]
    assert chosen["within_budget"] and chosen["rank"] == 1
    assert head["rank"] > max(c["rank"] for c in r["candidates"] if c["within_budget"])
    assert r["after"]["controls_accuracy"] == r["before"]["controls_accuracy"]
    assert r["after"]["meets_requirement"] and r["check_prompts"]["prob_removed"] >= 0.9
    assert r["after"]["side_effects"]["kl"] <= 0.01
    assert r["reload_check"]["max_abs_prob_diff"] < 1e-5


def test_greedy_combination_meets_what_no_single_head_edit_does(tmp_path: Path) -> None:
    """The tripworld's " scarf" look-up is carried by several heads: no head zeroed
    alone removes 30% of p(" scarf"); the greedy combination of head edits does."""
    r = run_fix(
        _inputs(tmp_path, "tripworld", " scarf", 30, side_tokens=2048, naive=False),
        FixSettings(require=0.3, kinds=("head",), decompose=8),
    )
    singles = [c for c in r["candidates"] if c["origin"] == "single"]
    assert len(singles) >= 3
    assert not any(c["meets_requirement"] for c in singles)
    chosen = r["chosen"]
    assert chosen["origin"] == "greedy" and len(chosen["edits"]) >= 2
    assert chosen["meets_requirement"] and chosen["within_budget"]
    assert r["after"]["meets_requirement"]
