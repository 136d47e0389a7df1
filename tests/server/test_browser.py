"""The dashboard in Debian's headless Chromium, driven by Playwright: overview -> neuron
-> pair, then the playground with the top head switched off. Screenshots of each page are
saved under the test's tmp_path."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dashboard_fixtures import Served

from lookuplens.attribute import decompose_neuron_input
from lookuplens.model import hook_name

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=60_000)
        yield b
        b.close()


class Console:
    """Console errors, page errors and failed requests of a page."""

    def __init__(self, page: object, base: str) -> None:
        self.problems: list[str] = []
        page.on(  # type: ignore[attr-defined]
            "console",
            lambda m: (
                self.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
            ),
        )
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))  # type: ignore[attr-defined]
        page.on(  # type: ignore[attr-defined]
            "requestfailed", lambda r: self.problems.append(f"request failed: {r.url}")
        )
        page.on(  # type: ignore[attr-defined]
            "request",
            lambda r: (
                None
                if r.url.startswith((base, "data:"))
                else self.problems.append(f"off-site request: {r.url}")
            ),
        )


@pytest.fixture
def page(browser, live_url: str) -> Iterator[tuple[object, Console]]:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    console = Console(pg, live_url)
    yield pg, console
    context.close()


def _shot(pg: object, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    pg.evaluate("() => window.scrollTo(0, 0)")  # the sticky header stays on top
    pg.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    print(f"screenshot: {path}")
    return path


def test_overview_neuron_pair(
    page: tuple[Any, Console], live_url: str, served: Served, tmp_path: Path
) -> None:
    pg, console = page
    layer, neuron, hl, h = served.kept_pair()
    pg.goto(live_url + "/")
    assert pg.title().startswith("run ")
    timing = pg.evaluate(
        "() => { const t = performance.getEntriesByType('navigation')[0];"
        " return [t.responseEnd - t.requestStart, t.domContentLoadedEventEnd - t.startTime]; }"
    )
    print(f"\noverview: response {timing[0]:.1f} ms, DOMContentLoaded {timing[1]:.1f} ms")
    rows = pg.locator("table.neurons tbody tr")
    assert rows.count() == len(served.run.read_df("neurons").query("selected or baseline"))
    # sort by layer through the header link, then filter by the neuron's name
    pg.click("table.neurons a.sort[data-col='layer']")
    pg.wait_for_url(re.compile(r"nsort=layer"))
    pg.fill("input[name=nq]", f"L{layer}N{neuron}")
    pg.press("input[name=nq]", "Enter")
    pg.wait_for_url(re.compile(r"nq=L"))
    assert pg.locator("table.neurons tbody tr").count() == 1
    _shot(pg, tmp_path, "overview")

    pg.click(f"table.neurons a[href='/neurons/{layer}/{neuron}']")
    pg.wait_for_url(f"**/neurons/{layer}/{neuron}")
    pg.wait_for_selector("#prompts[data-loaded='activation']")
    pg.wait_for_selector("#vocab[data-loaded='1']")
    shaded = pg.locator("#prompts .t.act")
    assert shaded.count() > 0
    assert "activation" in (shaded.first.get_attribute("title") or "")
    assert pg.locator("#vocab .tokpill").count() >= 2
    assert pg.locator("table.heads tbody tr").count() == (layer + 1) * served.lm.n_heads
    _shot(pg, tmp_path, "neuron")

    pg.click(f"table.heads a[href='/pairs/{layer}/{neuron}/{hl}/{h}']")
    pg.wait_for_url(f"**/pairs/{layer}/{neuron}/{hl}/{h}")
    pg.wait_for_selector("#prompts[data-loaded='attention']")
    explanation = pg.locator("blockquote.explanation").first
    assert explanation.is_visible() and len(explanation.inner_text()) > 10
    assert pg.locator("table.confusion").count() >= 1
    attn = pg.locator("#prompts .t.attn")
    assert attn.count() > 0
    strengths = [
        float(re.search(r"--a:\s*([0-9.]+)", s or "").group(1))  # type: ignore[union-attr]
        for s in attn.evaluate_all("els => els.map(e => e.getAttribute('style'))")
    ]
    assert max(strengths) == 1.0  # each prompt's largest weight after the first token
    assert pg.locator("#prompts .t.fire").count() == pg.locator("#prompts .prompt").count()
    _shot(pg, tmp_path, "pair")
    assert console.problems == []


def _activation(lm, ids, layer, neuron, off):  # type: ignore[no-untyped-def]
    hooks = []
    for hl, h in off:

        def zero(z, _n, h=h):  # type: ignore[no-untyped-def]
            z = z.clone()
            z[:, :, h] = 0
            return z

        hooks.append((hook_name(hl, "attn.hook_z"), zero))
    post = hook_name(layer, "mlp.hook_post")
    _, cache = lm.run_with_cache(ids, [post], extra_hooks=hooks)
    return float(cache[post][0, -1, neuron])


def _pick_case(served: Served) -> tuple[str, int, int, int, int, float, float]:
    """A prompt and neuron whose top head (largest direct contribution at the last token)
    contributes clearly positively, and whose ablation lowers the activation most."""
    lm = served.lm
    n = served.run.read_df("neurons")
    best = None
    for r in n[n.selected | n.baseline].itertuples():
        layer, neuron = int(r.layer), int(r.neuron)
        for prompt in served.lines[:6]:
            ids = lm.to_tokens(prompt)
            dec = decompose_neuron_input(lm, ids[0], layer, neuron, ids.shape[1] - 1)
            heads = [(v, k) for k, v in dec.terms.items() if re.fullmatch(r"L\d+H\d+", k)]
            direct, name = max(heads)
            hl, h = (int(x) for x in re.findall(r"\d+", name))
            clean = _activation(lm, ids, layer, neuron, [])
            ablated = _activation(lm, ids, layer, neuron, [(hl, h)])
            drop = clean - ablated
            if direct > 0 and drop > 0 and (best is None or drop > best[0]):
                best = (drop, (prompt, layer, neuron, hl, h, clean, ablated))
    assert best is not None and best[0] > 1e-3, best
    return best[1]


def test_playground_switch_off_top_head(
    page: tuple[Any, Console], live_url: str, served: Served, tmp_path: Path
) -> None:
    pg, console = page
    prompt, layer, neuron, hl, h, clean, ablated = _pick_case(served)
    pg.goto(live_url + f"/playground?layer={layer}&neuron={neuron}")
    pg.fill("#prompt", prompt)
    pg.click("#run")
    pg.wait_for_selector("#result[data-ready]")
    before = float(pg.get_attribute("#act-patched", "data-value") or "nan")
    assert before == pytest.approx(clean, rel=1e-4, abs=1e-6)
    first = pg.locator("#heads tbody tr").first
    assert first.get_attribute("data-head") == f"L{hl}H{h}"  # the top head is listed first
    ready = pg.get_attribute("#result", "data-ready")
    first.locator("button.off").click()
    pg.wait_for_function(
        "r => document.querySelector('#result').getAttribute('data-ready') !== r", arg=ready
    )
    after = float(pg.get_attribute("#act-patched", "data-value") or "nan")
    assert after < before
    assert after == pytest.approx(ablated, rel=1e-4, abs=1e-6)
    assert "delta-down" in (pg.get_attribute("#act-patched", "class") or "")
    assert float(pg.get_attribute("#act-clean", "data-value") or "nan") == pytest.approx(before)
    assert pg.locator(f"#heads tr[data-head='L{hl}H{h}'].head-off").count() == 1
    assert pg.locator("#toks-patched .t.act").count() == len(served.lm.to_tokens(prompt)[0]) - 1
    _shot(pg, tmp_path, "playground-head-off")
    # the neuron ablated: its activation is zero everywhere
    ready = pg.get_attribute("#result", "data-ready")
    pg.click("button[data-scale='0']")
    pg.wait_for_function(
        "r => document.querySelector('#result').getAttribute('data-ready') !== r", arg=ready
    )
    assert float(pg.get_attribute("#act-patched", "data-value") or "nan") == 0.0
    # a steered continuation and the "why this token" view
    pg.fill("#max-new", "4")
    pg.click("#generate")
    pg.wait_for_selector("#gen[data-ready]")
    assert pg.inner_text("#gen-clean").startswith(prompt)
    pg.click("#why")
    pg.wait_for_selector("#why-view[data-ready]")
    assert "Causal check" in (pg.text_content("#why-view") or "")
    _shot(pg, tmp_path, "playground")
    # a too-long prompt shows the server's message, not a crash
    pg.fill("#prompt", "The owl sat on an old oak tree near the river. " * 40)
    pg.click("#run")
    pg.wait_for_selector("#error:not([hidden])")
    assert "tokens" in pg.inner_text("#error")
    assert [p for p in console.problems if "422" not in p] == []


def test_playground_make_a_fix(
    page: tuple[Any, Console], live_url: str, served: Served, tmp_path: Path
) -> None:
    """Switch the top head off, open "Make this a fix", verify the path edit on three
    prompts, and follow the link to the written report."""
    pg, console = page
    prompt, layer, neuron, hl, h, _clean, _ablated = _pick_case(served)
    pg.goto(live_url + f"/playground?layer={layer}&neuron={neuron}")
    pg.fill("#prompt", prompt)
    pg.click("#run")
    pg.wait_for_selector("#result[data-ready]")
    ready = pg.get_attribute("#result", "data-ready")
    pg.locator(f"#heads tr[data-head='L{hl}H{h}'] button.off").click()
    pg.wait_for_function(
        "r => document.querySelector('#result').getAttribute('data-ready') !== r", arg=ready
    )
    assert not pg.is_visible("#fixform")
    pg.click("#fix-panel > summary")
    assert pg.is_visible("#fixform")
    assert pg.inner_text("#fix-edits") == f"L{hl}H{h}\u2192L{layer}N{neuron} \u00d70"
    assert pg.input_value("#fix-prompts") == prompt
    n = served.run.read_df("neurons")
    token_id = int(n[(n.layer == layer) & (n.neuron == neuron)].token_id.iloc[0])
    assert pg.input_value("#fix-target") == served.lm.token_str(token_id)
    assert pg.input_value("#fix-max-kl") == "0.01"
    pg.check("input[name=head_edit][value=head]")
    assert pg.inner_text("#fix-edits") == f"L{hl}H{h} \u00d70"
    pg.check("input[name=head_edit][value=path]")
    pg.fill("#fix-prompts", "\n".join([prompt, *served.lines[6:8]]))
    pg.fill("#fix-max-kl", "10")
    pg.click("#fix-verify")
    pg.wait_for_selector("#fix-result[data-ready]", timeout=120_000)
    assert pg.is_hidden("#fix-error")
    name = pg.get_attribute("#fix-result", "data-ready")
    folder = Path(pg.inner_text("#fix-folder"))
    assert folder == (served.run.path / "fixes" / str(name)).resolve()
    for f in ("fix.json", "model/config.json", "report.html"):
        assert (folder / f).is_file(), f
    assert pg.locator("#fix-numbers .number").count() == 6
    assert pg.locator("#fix-result table.data").first.locator("tbody tr").count() == 3
    assert f"L{hl}H{h}\u2192L{layer}N{neuron}" in pg.inner_text("#fix-result h3")
    pg.locator("#fix").scroll_into_view_if_needed()
    shot = tmp_path / "fix.png"
    pg.locator("#fix").screenshot(path=str(shot))
    print(f"screenshot: {shot}")
    href = pg.get_attribute("#fix-report", "href")
    assert href == f"/fixes/{name}/report.html"
    with pg.context.expect_page() as opened:
        pg.click("#fix-report")
    report = opened.value
    report.wait_for_load_state()
    assert report.url == live_url + href
    assert report.evaluate("() => document.body.innerText.length") > 0
    _shot(report, tmp_path, "fix-report")
    assert console.problems == []

    # a bad target: one message in the panel, nothing written
    before = sorted(p.name for p in (served.run.path / "fixes").iterdir())
    pg.fill("#fix-target", "Kzq xyz")
    pg.click("#fix-verify")
    pg.wait_for_selector("#fix-error:not([hidden])")
    assert "not a single token" in pg.inner_text("#fix-error")
    assert sorted(p.name for p in (served.run.path / "fixes").iterdir()) == before
    assert len(console.problems) == 1 and "status of 400" in console.problems[0]
