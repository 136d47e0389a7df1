"""`run_fix`: from a target on a set of prompts to an edited model with its evidence.

Reads the inputs (every check before anything is written), proposes candidates
(`candidates.propose`), measures and ranks them (`search.Search`), compares the chosen
fix with the naive edits (zeroing a whole head or neuron, rescaled to the same effect),
and writes ``fix.json``, ``model/`` and ``report.html`` into a temporary folder beside
``out``: the edited model is saved with ``save_pretrained``, loaded again and measured
again, and the figures written are those of the reloaded model. The folder is renamed to
``out`` only when everything is written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from lookuplens.errors import UserError
from lookuplens.fix.candidates import Evidence, propose
from lookuplens.fix.edits import Edit, applied
from lookuplens.fix.measure import (
    Controls,
    PromptSet,
    SideEffects,
    encode_prompts,
    measure_target,
)
from lookuplens.fix.search import Candidate, FixSettings, Search
from lookuplens.model import LoadedModel

log = logging.getLogger(__name__)

__all__ = ["FIX_FORMAT", "FixInputs", "check_out_dir", "read_controls", "read_prompts", "run_fix"]

FIX_FORMAT = "lookuplens-fix/1"


@dataclass(frozen=True)
class FixInputs:
    model: str
    target: str
    prompts_file: str
    out: str
    contrast: str | None = None
    controls_file: str | None = None
    corpus: str | None = None
    run_dir: str | None = None
    check_prompts_file: str | None = None
    """Held-out prompts of the same look-up: measured before and after, never used to
    choose the fix."""
    overwrite: bool = False
    side_tokens: int = 8192
    """Tokens of held-out text for the side effects."""
    side_context: int = 128
    """Each held-out document is cut at this many tokens."""
    device: str = "auto"
    dtype: str = "float32"
    naive: bool = True
    """Compare with zeroing the look-up head and the top neuron at equal effect."""
    edits: tuple[Edit, ...] | None = None
    """Measure and export these edits (e.g. the dashboard's interventions) instead of
    proposing candidates."""


def check_out_dir(out: str, overwrite: bool) -> Path:
    p = Path(out)
    if p.exists() and not overwrite:
        raise UserError(
            f"{out} already exists; pass --overwrite to replace it or choose another --out"
        )
    if p.exists() and not p.is_dir():
        raise UserError(f"{out} exists and is not a folder; choose another --out")
    if not p.parent.exists():
        raise UserError(f"the folder {p.parent} does not exist; create it or choose another --out")
    return p


def _read_lines(path: str, what: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} file {path} does not exist; pass a text or JSONL file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{what} file {path} is not UTF-8 text") from None
    lines = [ln.rstrip("\r") for ln in text.split("\n")]
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        raise UserError(f"{what} file {path} is empty; put one prompt per line")
    return lines


def _json_rows(path: str, lines: list[str], fields: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = []
    for i, ln in enumerate(lines, 1):
        try:
            row = json.loads(ln)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} line {i} is not JSON ({e.msg}); one object per line") from None
        if not isinstance(row, dict) or any(not isinstance(row.get(f), str) for f in fields):
            raise UserError(f"{path} line {i} needs the string field(s) {', '.join(fields)}")
        rows.append(row)
    return rows


def read_prompts(path: str, what: str = "prompts") -> list[str]:
    """One prompt per line, or JSONL with a ``prompt`` field (``.jsonl``, or every line an
    object)."""
    lines = _read_lines(path, what)
    if path.endswith(".jsonl") or all(_is_prompt_object(ln) for ln in lines):
        return [r["prompt"] for r in _json_rows(path, lines, ("prompt",))]
    return lines


def _is_prompt_object(line: str) -> bool:
    if not line.lstrip().startswith("{"):
        return False
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(row, dict) and isinstance(row.get("prompt"), str)


def read_controls(path: str) -> list[tuple[str, str]]:
    lines = _read_lines(path, "controls")
    return [(r["prompt"], r["expected"]) for r in _json_rows(path, lines, ("prompt", "expected"))]


def _side_corpus(inputs: FixInputs, run_meta: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """The held-out text's source and its corpus options."""
    if inputs.corpus:
        return inputs.corpus, {}
    if run_meta is not None:
        corpus = run_meta.get("config", {}).get("corpus") or run_meta.get("corpus")
        if isinstance(corpus, dict) and corpus.get("source"):
            keep = (
                "source",
                "text_field",
                "split",
                "txt_mode",
                "storyworld_docs",
                "storyworld_seed",
            )
            opts = {k: corpus[k] for k in keep if k in corpus and k != "source"}
            return str(corpus["source"]), opts
    if inputs.model.startswith("bundled:"):
        from lookuplens.zoo import bundled_corpus

        return bundled_corpus(inputs.model), {}
    return "storyworld", {}


def _side_effects(
    lm: LoadedModel, source: str, opts: dict[str, Any], inputs: FixInputs, exclude: tuple[int, ...]
) -> SideEffects:
    from lookuplens.corpus import CorpusSpec, iter_tokenized

    try:
        spec = CorpusSpec(
            source=source,
            max_tokens=inputs.side_tokens,
            max_context=inputs.side_context,
            **opts,
        )
    except ValueError as e:
        raise UserError(f"--corpus: {e}") from None
    seqs = [[int(x) for x in d.tokens] for d in iter_tokenized(spec, lm.tokenizer, lm.max_context)]
    seqs = [s for s in seqs if len(s) >= 2]
    if not seqs:
        raise UserError(f"the side-effect corpus {source} has no text; pass another --corpus")
    return SideEffects(seqs, exclude)


def _run_findings(run_dir: str) -> tuple[list[dict[str, object]], dict[str, Any]]:
    from lookuplens.store import RunDir

    run = RunDir.open(run_dir)
    meta = run.meta
    if not run.has_table("findings"):
        log.warning("%s has no findings.parquet (verify not run): no run findings added", run_dir)
        return [], meta
    df = run.read_df("findings")
    df = df.drop_duplicates(["layer", "neuron", "head_layer", "head"])
    # as JSON data: the list column (cue_token_ids) and missing values (ks_stat) go into
    # fix.json, which json.dumps(allow_nan=False) refuses as numpy arrays and NaN
    rows = json.loads(df.to_json(orient="records", double_precision=15))
    return rows, meta


def run_fix(
    inputs: FixInputs,
    settings: FixSettings,
    progress: Callable[[str], None] | None = None,
    lm: LoadedModel | None = None,
) -> dict[str, Any]:
    """Do it all (see the module docstring); returns what ``fix.json`` holds.

    `lm`: the model of `inputs.model`, already loaded (e.g. the dashboard's); it is left
    as it was (every edit is undone)."""
    from lookuplens.model import load_model

    say = progress or (lambda _m: None)
    out = check_out_dir(inputs.out, inputs.overwrite)
    texts = read_prompts(inputs.prompts_file)
    controls_raw = read_controls(inputs.controls_file) if inputs.controls_file else []
    check_texts = (
        read_prompts(inputs.check_prompts_file, "check prompts")
        if inputs.check_prompts_file
        else []
    )
    findings, run_meta = _run_findings(inputs.run_dir) if inputs.run_dir else ([], None)

    if lm is None:
        lm = load_model(inputs.model, device=inputs.device, dtype=inputs.dtype)  # type: ignore[arg-type]
    target_id = lm.resolve_token(inputs.target, "target")
    contrast_id = lm.resolve_token(inputs.contrast, "contrast token") if inputs.contrast else None
    if contrast_id == target_id:
        raise UserError("--contrast is the same token as --target; pass another contrast token")
    prompts = PromptSet(
        texts=texts,
        ids=encode_prompts(lm, texts, "prompt"),
        target_id=target_id,
        target=lm.token_str(target_id),
        contrast_id=contrast_id,
        contrast=None if contrast_id is None else lm.token_str(contrast_id),
    )
    controls = Controls(
        texts=[p for p, _ in controls_raw],
        ids=encode_prompts(lm, [p for p, _ in controls_raw], "control"),
        expected_ids=(eids := [lm.resolve_token(e, "expected answer") for _, e in controls_raw]),
        expected=[lm.token_str(i) for i in eids],
    )
    check = (
        PromptSet(
            texts=check_texts,
            ids=encode_prompts(lm, check_texts, "check prompt"),
            target_id=target_id,
            target=prompts.target,
            contrast_id=contrast_id,
            contrast=prompts.contrast,
        )
        if check_texts
        else None
    )
    source, opts = _side_corpus(inputs, run_meta)
    exclude = (target_id,) if contrast_id is None else (target_id, contrast_id)
    side = _side_effects(lm, source, opts, inputs, exclude)
    say(f"{len(texts)} prompts, {len(controls.texts)} controls, {side.n_tokens} held-out tokens")

    search = Search(lm, prompts, side, controls, settings, progress=say)
    if inputs.edits is not None:
        # the given edits only: no candidates to propose
        candidates, evidence = [tuple(sorted(set(inputs.edits)))], Evidence()
        # the run's findings behind them: those of their heads or neurons, or of the target
        neurons = {(e.layer, e.neuron) for e in inputs.edits if e.neuron is not None}
        heads = {(e.head_layer, e.head) for e in inputs.edits if e.head is not None}
        evidence.run_findings = [
            f
            for f in findings
            if (f["layer"], f["neuron"]) in neurons
            or (f["head_layer"], f["head"]) in heads
            or f.get("token") == prompts.target
        ]
    else:
        candidates, evidence = propose(
            lm,
            prompts,
            settings.scale,
            decompose=settings.decompose,
            n_neurons=settings.n_neurons,
            n_heads=settings.n_heads,
            run_findings=findings,
            alternatives=_alternatives(search.before_lp, prompts),
            logit_scales=settings.scales_of_logit_edits,
        )
        candidates = [g for g in candidates if all(e.kind in settings.kinds for e in g)]
    if not candidates:
        raise UserError(
            f"no neuron pushes {prompts.target!r} on these prompts, so there is nothing to "
            "edit; check the target and the prompts"
        )
    ranked = search.run(candidates)
    chosen = search.choose(ranked)
    say(f"chosen: {chosen.name}")
    naive = _naive(search, chosen, evidence.to_dict()) if inputs.naive else []

    result: dict[str, Any] = {
        "format": FIX_FORMAT,
        "model": inputs.model,
        "model_type": lm.config.model_type,
        "target": {
            "token": prompts.target,
            "id": target_id,
            "contrast": prompts.contrast,
            "contrast_id": contrast_id,
            "goal": settings.goal,
            "require": settings.require,
            "requirement": _requirement_text(settings, contrast_id is not None),
            "max_kl": settings.max_kl,
        },
        "inputs": {
            "prompts_file": inputs.prompts_file,
            "controls_file": inputs.controls_file,
            "check_prompts_file": inputs.check_prompts_file,
            "run_dir": inputs.run_dir,
            "corpus": source,
            "side_tokens": side.n_tokens,
            "side_sequences": len(side.seqs),
            "side_on_target_tokens": side.on_target_tokens,
        },
        "settings": asdict(settings),
        "prompts": texts,
        "controls": [
            {"prompt": p, "expected": e}
            for p, e in zip(controls.texts, controls.expected, strict=True)
        ],
        "evidence": evidence.to_dict(),
        "before": {
            "target": search.before.to_dict(),
            "controls_accuracy": controls.accuracy(search.controls_before),
            "controls_answers": search.controls_before,
            "loss": side.base_loss,
        },
        "candidates": [c.to_dict() for c in ranked],
        "chosen": chosen.to_dict(),
        "naive": naive,
    }
    _export(lm, inputs, out, chosen, result, prompts, controls, side, check, settings, search)
    return result


def _alternatives(
    before_lp: Tensor, prompts: PromptSet, top: int = 20
) -> tuple[tuple[int, float], ...]:
    """What the target is weighed against in a logit edit: the contrast token; else what
    the unedited model predicts instead of the target on the prompts (`before_lp`: its
    next-token log-probs there; its distribution without the target, averaged over the
    prompts, the top `top` tokens renormalised)."""
    if prompts.contrast_id is not None:
        return ((prompts.contrast_id, 1.0),)
    p = before_lp.exp()
    p[:, prompts.target_id] = 0
    q = (p / p.sum(-1, keepdim=True).clamp_min(1e-30)).mean(0)
    w, ids = q.topk(min(top, len(q)))
    w = w / w.sum()
    return tuple(
        (int(i), round(float(x), 6)) for i, x in zip(ids.tolist(), w.tolist(), strict=True)
    )


def _requirement_text(s: FixSettings, contrast: bool) -> str:
    r = f"{s.require:.0%}"
    if s.goal == "decrease":
        return (
            f"the contrast token wins on at least {r} of the prompts"
            if contrast
            else f"at least {r} of p(target) removed on the prompts"
        )
    return (
        f"the target beats the contrast token on at least {r} of the prompts"
        if contrast
        else f"the target is the top prediction on at least {r} of the prompts"
    )


def _naive(search: Search, chosen: Candidate, evidence: dict[str, Any]) -> list[dict[str, Any]]:
    """The naive edits, compared with the chosen fix at equal effect: zeroing (increasing:
    scaling) the look-up heads (the two that drive the proposed neurons most, by summed
    mean `direct` attribution) and the top neuron. The naive edit is rescaled to the
    fix's effect, or, when it cannot get there, the fix to the naive edit's."""
    if chosen.effect <= 0:
        return []  # nothing in the goal's direction to match
    drive: dict[tuple[int, int], float] = {}
    for nrow in evidence["neurons"]:
        for h in nrow["heads"]:
            key = (int(h["head_layer"]), int(h["head"]))
            drive[key] = drive.get(key, 0.0) + float(h["mean_direct"])
    heads = sorted(drive, key=lambda k: -drive[k])[:2]
    neurons = [(int(n["layer"]), int(n["neuron"])) for n in evidence["neurons"][:1]]
    if not evidence["neurons"]:  # given edits: their own heads and neurons
        heads = sorted(
            {(int(e.head_layer or 0), e.head) for e in chosen.edits if e.head is not None}
        )
        neurons = sorted(
            {(int(e.layer or 0), e.neuron) for e in chosen.edits if e.neuron is not None}
        )
        neurons = neurons[:1]
    scale = search.settings.scale
    naive = [Edit("head", scale, head_layer=h[0], head=h[1]) for h in heads]
    naive += [Edit("neuron", scale, layer=n[0], neuron=n[1]) for n in neurons]
    out = []
    for e in naive:
        if chosen.edits == (e,):
            continue
        full = search.measure([e], origin="baseline")
        row: dict[str, Any] = {"edit": e.to_dict(), "full": full.to_dict()}
        naive_eq: Candidate | None
        fix_eq: Candidate | None
        if full.effect >= chosen.effect:
            naive_eq, fix_eq = search.match_effect([e], chosen.effect), chosen
        elif full.effect > 0:
            naive_eq, fix_eq = full, search.match_effect(chosen.edits, full.effect)
        else:
            naive_eq = fix_eq = None
        row["at_effect"] = None if naive_eq is None else naive_eq.effect
        row["naive_matched"] = None if naive_eq is None else naive_eq.to_dict()
        row["fix_matched"] = None if fix_eq is None else fix_eq.to_dict()
        row["kl_ratio"] = (
            naive_eq.side["kl"] / max(fix_eq.side["kl"], 1e-12)
            if naive_eq is not None and fix_eq is not None
            else None
        )
        out.append(row)
    return out


def _export(
    lm: LoadedModel,
    inputs: FixInputs,
    out: Path,
    chosen: Candidate,
    result: dict[str, Any],
    prompts: PromptSet,
    controls: Controls,
    side: SideEffects,
    check: PromptSet | None,
    settings: FixSettings,
    search: Search,
) -> None:
    from lookuplens.fix.report import render_fix_report
    from lookuplens.model import load_model

    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        check_before, check_lp = measure_target(lm, check) if check is not None else (None, None)
        with applied(lm, chosen.edits):
            lm.hf.save_pretrained(tmp / "model")
            lm.tokenizer.save_pretrained(tmp / "model")
        # the figures written are the reloaded model's
        edited = load_model(str(tmp / "model"), device=inputs.device, dtype=inputs.dtype)  # type: ignore[arg-type]
        t, _ = measure_target(edited, prompts, search.before_lp)
        answers = controls.answers(edited)
        sfx = side.measure(edited, original=lm)
        ach = search.achieved(t)
        result["after"] = {
            "target": t.to_dict(),
            "effect": search.effect(t),
            "achieved": ach,
            "meets_requirement": ach >= settings.require,
            "controls_accuracy": controls.accuracy(answers),
            "controls_answers": answers,
            "side_effects": sfx,
        }
        result["reload_check"] = {
            "model_dir": "model",
            "max_abs_prob_diff": max(
                abs(a - b) for a, b in zip(t.prob, chosen.target.prob, strict=True)
            ),
        }
        if check is not None and check_before is not None:
            ca, _ = measure_target(edited, check, check_lp)
            result["check_prompts"] = {
                "prompts": check.texts,
                "before": check_before.to_dict(),
                "after": ca.to_dict(),
                "prob_removed": 1.0 - ca.mean_prob / max(check_before.mean_prob, 1e-300),
            }
        del edited
        (tmp / "fix.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
        (tmp / "report.html").write_text(render_fix_report(result), encoding="utf-8")
        if out.exists():
            trash = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out, trash)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
