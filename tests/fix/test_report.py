"""The offline report page of `lookuplens fix`, rendered from a synthetic fix.json."""

from __future__ import annotations

import copy
import html
import os
import re
from pathlib import Path
from typing import Any

import pytest

from lookuplens.fix.report import render_fix_report

EVIL = 'On a dark night <script>alert("x")</script> Tom & "Ann" wanted to eat'
PROMPTS = [
    "Once upon a time, Lily found a shiny egg near the old well. She wanted to eat",
    "In the morning, Max took his coat and went out to play. He saw",
    EVIL,
]


def _target(probs: list[float], tops: list[str]) -> dict[str, Any]:
    return {
        "score": -1.0,
        "mean_prob": sum(probs) / len(probs),
        "prob": probs,
        "logprob": [-1.0] * len(probs),
        "logit_diff": None,
        "top": tops,
        "top_is_target": [t == " an" for t in tops],
        "contrast_wins": None,
    }


def _edit(kind: str, **kw: int) -> dict[str, Any]:
    e: dict[str, Any] = {"kind": kind, "scale": 0.0, "layer": None, "neuron": None}
    e.update({"head_layer": None, "head": None})
    e.update(kw)
    head, neuron = f"L{e['head_layer']}H{e['head']}", f"L{e['layer']}N{e['neuron']}"
    e["name"] = {"path": f"{head}\u2192{neuron}", "neuron": neuron, "head": head}[kind] + " \u00d70"
    return e


def _candidate(
    rank: int, edits: list[dict[str, Any]], achieved: float, kl: float, answers: list[str]
) -> dict[str, Any]:
    return {
        "rank": rank,
        "name": " + ".join(e["name"] for e in edits),
        "origin": "single" if len(edits) == 1 else "group",
        "edits": edits,
        "effect": 2.0 * achieved,
        "achieved": achieved,
        "meets_requirement": achieved >= 0.9,
        "within_budget": kl <= 0.01,
        "side_effects": {
            "kl": kl,
            "kl_all": 2 * kl,
            "kl_p95": 3 * kl,
            "loss": 1.2,
            "loss_change": 0.01,
        },
        "controls_accuracy": None if not answers else sum(a == " a" for a in answers) / 2,
        "controls_answers": answers,
        "target": _target([0.01, 0.02, 0.03], [" the", " a", " for"]),
    }


def make_fix(
    *, check: bool = True, controls: bool = True, meets: bool = True, kl: float = 0.004
) -> dict[str, Any]:
    """A fix.json with the structure `run_fix` writes: 3 prompts, 2 candidates, 1 naive row
    (and, optionally, check prompts and controls, of which the second changes its answer)."""
    answers_before = [" a", " a"] if controls else []
    answers_after = [" a", " the"] if controls else []
    chosen_edits = [
        _edit("path", layer=1, neuron=7, head_layer=0, head=2),
        _edit("neuron", layer=2, neuron=5),
    ]
    chosen = _candidate(1, chosen_edits, 0.95 if meets else 0.5, kl, answers_after)
    other = _candidate(2, [_edit("head", head_layer=0, head=2)], 0.3, 0.2, answers_after)
    before = _target([0.8, 0.7, 0.9], [" an", " an", " an"])
    after = copy.deepcopy(chosen["target"])
    fix: dict[str, Any] = {
        "format": "lookuplens-fix/1",
        "model": "bundled:storyworld",
        "model_type": "gpt2",
        "target": {
            "token": " an",
            "id": 354,
            "contrast": None,
            "contrast_id": None,
            "goal": "decrease",
            "require": 0.9,
            "requirement": "at least 90% of p(target) removed on the prompts",
            "max_kl": 0.01,
        },
        "inputs": {
            "prompts_file": "an.jsonl",
            "controls_file": "controls.jsonl" if controls else None,
            "check_prompts_file": "check.jsonl" if check else None,
            "run_dir": None,
            "corpus": "storyworld",
            "side_tokens": 8000,
            "side_sequences": 80,
            "side_on_target_tokens": 40,
        },
        # one of the two controls changes its answer: allowed by max_control_drop
        "settings": {"goal": "decrease", "max_kl": 0.01, "require": 0.9, "max_control_drop": 0.5},
        "prompts": PROMPTS,
        "controls": [
            {"prompt": "Mia ate an apple and a pear. She had", "expected": " a"},
            {"prompt": "Ben saw <b>a</b> dog. It was", "expected": " a"},
        ]
        if controls
        else [],
        "evidence": {
            "prompts_decomposed": 3,
            "neurons": [
                {
                    "layer": 1,
                    "neuron": 7,
                    "top_token": " an",
                    "mean_contribution": 2.5,
                    "mean_activation": 4.0,
                    "top_share": 1.0,
                    "heads": [{"head_layer": 0, "head": 2, "mean_direct": 0.6}],
                }
            ],
            "run_findings": [],
        },
        "before": {
            "target": before,
            "controls_accuracy": 1.0 if controls else None,
            "controls_answers": answers_before,
            "loss": 1.19,
        },
        "candidates": [other, chosen],  # not in rank order: the page sorts them
        "chosen": chosen,
        "naive": [
            {
                "edit": _edit("head", head_layer=0, head=2),
                "full": other,
                "at_effect": None,
                "naive_matched": None,
                "fix_matched": None,
                "kl_ratio": None,
            }
        ],
        "after": {
            "target": after,
            "effect": chosen["effect"],
            "achieved": chosen["achieved"],
            "meets_requirement": chosen["meets_requirement"],
            "controls_accuracy": chosen["controls_accuracy"],
            "controls_answers": answers_after,
            "side_effects": dict(chosen["side_effects"]),
        },
        "reload_check": {"model_dir": "model", "max_abs_prob_diff": 0.0},
    }
    if check:
        fix["check_prompts"] = {
            "prompts": ["Held-out one: Sam wanted to eat", "Held-out two: Eve saw"],
            "before": _target([0.8, 0.6], [" an", " an"]),
            "after": _target([0.05, 0.05], [" a", " the"]),
            "prob_removed": 1 - 0.05 / 0.7,
        }
    return fix


def _section(page: str, anchor: str) -> str:
    start = page.index(f'id="{anchor}"')
    return page[start : page.index("</section>", start)]


def test_prompt_text_is_escaped() -> None:
    page = render_fix_report(make_fix())
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert f'title="{html.escape(EVIL, quote=True)}"' in page  # the whole prompt in a title
    assert "<b>a</b>" not in page and "&lt;b&gt;a&lt;/b&gt;" in page


def test_long_prompts_show_their_end() -> None:
    fix = make_fix()
    long = "x" * 200 + " The end of the prompt wanted to eat"
    fix["prompts"][0] = long
    page = render_fix_report(fix)
    assert "\u2026" + long[-80:] in page
    assert f'title="{long}"' in page


def test_verdict_met_within_budget() -> None:
    fix = make_fix()
    page = render_fix_report(fix)
    verdict = page[page.index('class="verdict') : page.index('class="numbers"')]
    assert "verdict ok" in verdict
    assert "meets the requirement and is within the budget" in verdict
    assert "95.0% of p(target) removed" in verdict
    assert html.escape(fix["chosen"]["name"]) in verdict
    assert "at least 90% of p(target) removed on the prompts" in page
    assert "0.0100" in page  # the budget, 4 decimals


def test_verdict_not_met() -> None:
    page = render_fix_report(make_fix(meets=False))
    assert "verdict bad" in page
    assert "does NOT meet the requirement and is within the budget" in page


def test_verdict_over_budget() -> None:
    page = render_fix_report(make_fix(kl=0.02))
    assert "meets the requirement and is OVER the budget" in page
    assert "the KL is above the budget" in page
    fix = make_fix()
    fix["settings"]["max_control_drop"] = 0.0
    page = render_fix_report(fix)
    assert (
        "is OVER the budget" in page and html.escape("the controls' accuracy fell too far") in page
    )


def test_changed_controls_are_listed() -> None:
    page = render_fix_report(make_fix())
    side = _section(page, "side-effects")
    assert "1 control(s) whose answer changed" in side
    assert "Ben saw &lt;b&gt;a&lt;/b&gt; dog. It was" in side
    assert "Mia ate an apple" not in side  # unchanged: not listed
    assert "100.0%" in side and "50.0%" in side


def test_sections_in_order_and_candidates_sorted() -> None:
    page = render_fix_report(make_fix())
    anchors = [
        "verdict",
        "changed",
        "why",
        "before-after",
        "side-effects",
        "naive",
        "candidates",
        "load",
    ]
    where = [page.index(f'id="{a}"') for a in anchors]
    assert where == sorted(where)
    cands = _section(page, "candidates")
    assert cands.index("L0H2\u2192L1N7") < cands.index(">L0H2 \u00d70<")
    assert '<tr class="chosen">' in cands
    changed = _section(page, "changed")
    assert "rank-one change of the head" in changed and "output weights" in changed
    assert "L2N5" in changed and "head\u2019s output projection" not in changed
    assert "no effect in the goal's direction to compare" in _section(page, "naive")
    assert 'AutoModelForCausalLM.from_pretrained("DIR/model")' in page.replace("&quot;", '"')
    assert "lookuplens-fix/1" in page


def test_before_after_and_check_prompts() -> None:
    page = render_fix_report(make_fix())
    ba = _section(page, "before-after")
    assert "Held-out check: 92.9% of p(target) removed" in ba
    assert "0.8000" in ba and "0.0100" in ba  # p before and after, 4 decimals
    assert "<svg" in ba and "<circle" in ba
    assert "0.8000 \u2192 0.0200" in page  # mean p before -> after in the header


def test_optional_parts_missing() -> None:
    fix = make_fix(check=False, controls=False)
    fix["naive"] = []
    del fix["evidence"]["run_findings"]
    page = render_fix_report(fix)
    assert "No held-out check prompts were given" in page
    assert "No control prompts were given" in page
    assert "No naive edit was compared" in page
    assert "No run findings were used" in page
    assert "controls accuracy" not in page


def test_contrast_findings_and_many_candidates() -> None:
    fix = make_fix()
    fix["target"]["contrast"] = " a"
    for t in (fix["before"]["target"], fix["after"]["target"]):
        t["logit_diff"] = [1.0, -0.5, 2.0]
    fix["evidence"]["run_findings"] = [{"layer": 1, "neuron": 7, "head_layer": 0, "head": 2}]
    base = fix["candidates"][0]
    fix["candidates"] += [{**base, "rank": r, "name": f"L9N{r} \u00d70"} for r in range(3, 51)]
    fix["candidates"][0]["name"] = "L0N1 \u00d70 + " * 20 + "L0N2 \u00d70"
    page = render_fix_report(fix)
    assert "logit difference against it" in page
    assert "logit diff before" in page
    assert "Findings of the run (1)" in page
    assert "10 more candidates are in fix.json" in page
    long = html.escape(fix["candidates"][0]["name"])
    assert f'title="{long}"' in page and f">{long}<" not in page


def test_self_contained() -> None:
    page = render_fix_report(make_fix())
    assert "http:" not in page and "https:" not in page and "//" not in page
    assert not re.search(r"<(script|link|img|iframe)\b", page)
    assert "Content-Security-Policy" in page and "default-src &#x27;none&#x27;" in page


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.browser
def test_page_in_headless_chromium(tmp_path: Path) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    fix = make_fix()
    fix["prompts"][1] = "averyveryverylongwordwithoutspaces" * 10 + " He saw"
    fix["chosen"]["name"] = fix["candidates"][1]["name"] = " + ".join(["L0N1 \u00d70"] * 60)
    page_path = tmp_path / "report.html"
    page_path.write_text(render_fix_report(fix), encoding="utf-8")
    shot = tmp_path / "report.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"], timeout=60_000
        )
        try:
            pg = browser.new_page(viewport={"width": 1280, "height": 900})
            offsite: list[str] = []
            pg.on(
                "request",
                lambda r: None if r.url.startswith("file:") else offsite.append(r.url),
            )
            pg.goto(page_path.resolve().as_uri())
            width = pg.evaluate("document.documentElement.scrollWidth")
            assert width <= pg.evaluate("window.innerWidth") <= 1280
            for name in (
                "What changed",
                "Why: the evidence",
                "Before and after",
                "Side effects",
                "Against the naive edits",
                "Candidates that lost",
            ):
                assert pg.get_by_role("heading", name=name).is_visible(), name
            assert pg.locator(".verdict").is_visible()
            pg.screenshot(path=str(shot), full_page=True)
            assert not offsite
        finally:
            browser.close()
    assert shot.is_file() and shot.stat().st_size > 20_000


def test_reload_difference_is_flagged() -> None:
    fix = make_fix()
    assert "differs from the measured edit" not in render_fix_report(fix)
    fix["reload_check"]["max_abs_prob_diff"] = 0.01
    assert "differs from the measured edit by up to 0.0100" in render_fix_report(fix)
