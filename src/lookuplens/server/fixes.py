"""The playground's "Make this a fix": its interventions as weight edits, verified as
`lookuplens fix` verifies a fix, and exported under the run folder.

- `playground_edits` maps the interventions to `lookuplens.fix.edits.Edit`: a head scaled
  by s (0: switched off) becomes ``Edit("path", s)`` of that head into the neuron being
  viewed (only what it writes into the neuron's input changes; the default, and the fix
  `lookuplens fix` recommends) or ``Edit("head", s)`` (its whole output); the neuron
  scaled by s becomes ``Edit("neuron", s)``. A head or neuron edit does exactly what the
  playground does (it scales the head's ``z`` or the neuron's activation at every
  position, and so does scaling their output weights). A weight edit scales: it cannot
  set an activation to a value, so only scales are accepted.
- `FixRunner.verify` runs `lookuplens.fix.run.run_fix` with those edits on the model
  thread (`ModelWorker.call`; one fix at a time, a second request gets a 409 while one
  runs) and writes ``<run>/fixes/<name>/`` (``fix.json``, ``model/``, ``report.html``;
  `run_fix` renames a finished temporary folder into place) beside the prompts it was
  given (``<name>.prompts.jsonl``, and ``<name>.controls.jsonl``). A request that fails
  leaves nothing under ``fixes/``.
- `add_fix_routes`: ``POST /api/fix``, ``GET /api/fix/status``, and the written report
  and ``fix.json`` at ``/fixes/<name>/report.html`` and ``/fixes/<name>/fix.json``
  (read-only; the name is checked and the resolved path must lie inside ``fixes/``).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi import Path as PathParam
from fastapi.responses import Response

from lookuplens.errors import UserError
from lookuplens.fix.edits import Edit, check_edit
from lookuplens.fix.search import FixSettings
from lookuplens.server.data import NotFound
from lookuplens.server.responses import dumps, error, json_body
from lookuplens.server.schemas import FixIn
from lookuplens.server.worker import LimitError, ModelWorker
from lookuplens.store import RunDir

log = logging.getLogger(__name__)

__all__ = [
    "FIXES_DIR",
    "FixBusyError",
    "FixRunner",
    "add_fix_routes",
    "fix_summary",
    "playground_edits",
]

FIXES_DIR = "fixes"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

REPORT_CSP = (
    "sandbox allow-scripts allow-popups; default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; img-src data:; font-src data:; frame-ancestors 'none'"
)
"""The written report is a self-contained offline page: its inline scripts may run, but
sandboxed (an opaque origin: it cannot call the dashboard's API) and with no network."""


FixName = Annotated[str, PathParam(max_length=128)]


class FixBusyError(UserError):
    """A fix is being verified already (HTTP 409)."""


# ------------------------------------------------------------------ edits


def playground_edits(req: FixIn, max_interventions: int, max_scale: float) -> tuple[Edit, ...]:
    """The weight edits that the playground's interventions in `req` make (see the module
    docstring); heads at scale 1 and a neuron scale of 1 change nothing and are left out."""
    if len(req.heads) > max_interventions:
        raise LimitError(
            f"{len(req.heads)} head interventions; the dashboard accepts at most "
            f"{max_interventions}"
        )
    seen: set[tuple[int, int]] = set()
    edits: list[Edit] = []
    for h in req.heads:
        name = f"L{h.layer}H{h.head}"
        if (h.layer, h.head) in seen:
            raise UserError(f"{name} is listed twice; give each head once")
        seen.add((h.layer, h.head))
        _check_scale(h.scale, name, max_scale)
        if h.scale == 1.0:
            continue
        if req.head_edit == "head":
            edits.append(Edit("head", float(h.scale), head_layer=h.layer, head=h.head))
            continue
        if h.layer > req.layer:
            raise UserError(
                f"{name} comes after L{req.layer}N{req.neuron}, so it writes nothing into the "
                "neuron's input and a path edit cannot change it; choose whole-head edits "
                "or switch that head back on"
            )
        edits.append(
            Edit(
                "path",
                float(h.scale),
                layer=req.layer,
                neuron=req.neuron,
                head_layer=h.layer,
                head=h.head,
            )
        )
    _check_scale(req.neuron_scale, f"L{req.layer}N{req.neuron}", max_scale)
    if req.neuron_scale != 1.0:
        edits.append(Edit("neuron", float(req.neuron_scale), layer=req.layer, neuron=req.neuron))
    if not edits:
        raise UserError(
            "nothing to make a fix of: switch a head off or scale it, or scale the neuron, "
            "then verify"
        )
    return tuple(edits)


def _check_scale(s: float, name: str, max_scale: float) -> None:
    if not abs(s) <= max_scale:
        raise LimitError(
            f"the scale of {name}, {s:g}, is out of range; use a value between "
            f"-{max_scale:g} and {max_scale:g}"
        )


# ------------------------------------------------------------------ the summary


def fix_summary(result: dict[str, Any], name: str, folder: Path) -> dict[str, Any]:
    """What the dashboard shows of a verified fix (``fix.json`` holds everything)."""
    t, before, after, chosen = result["target"], result["before"], result["after"], result["chosen"]
    naive = []
    for n in result["naive"]:
        nm, fm = n["naive_matched"], n["fix_matched"]
        naive.append(
            {
                "edit": n["edit"]["name"],
                "full_effect": n["full"]["effect"],
                "full_kl": n["full"]["side_effects"]["kl"],
                "at_effect": n["at_effect"],
                "naive_kl": None if nm is None else nm["side_effects"]["kl"],
                "fix_kl": None if fm is None else fm["side_effects"]["kl"],
                "kl_ratio": n["kl_ratio"],
            }
        )
    bt, at = before["target"], after["target"]
    per_prompt = zip(result["prompts"], bt["prob"], at["prob"], at["top"], strict=True)
    expected = [c["expected"] for c in result["controls"]]
    return {
        "name": name,
        "folder": str(folder),
        "model_dir": str(folder / "model"),
        "report_url": f"/{FIXES_DIR}/{name}/report.html",
        "fix_json_url": f"/{FIXES_DIR}/{name}/fix.json",
        "fix": chosen["name"],
        "edits": chosen["edits"],
        "target": {
            "token": t["token"],
            "id": t["id"],
            "goal": t["goal"],
            "requirement": t["requirement"],
            "require": t["require"],
            "max_kl": t["max_kl"],
        },
        "p_target": {"before": bt["mean_prob"], "after": at["mean_prob"]},
        "effect": after["effect"],
        "achieved": after["achieved"],
        "meets_requirement": after["meets_requirement"],
        "within_budget": chosen["within_budget"],
        "side_effects": after["side_effects"],
        "controls": {
            "n": len(expected),
            "before": before["controls_accuracy"],
            "after": after["controls_accuracy"],
            "expected": expected,
            "answers_before": before["controls_answers"],
            "answers_after": after["controls_answers"],
        },
        "prompts": [
            {"prompt": p, "before": b, "after": a, "top_after": top} for p, b, a, top in per_prompt
        ],
        "naive": naive,
        "reload_max_abs_prob_diff": result["reload_check"]["max_abs_prob_diff"],
        "side_tokens": result["inputs"]["side_tokens"],
        "corpus": result["inputs"]["corpus"],
    }


# ------------------------------------------------------------------ running it


@dataclass
class _Job:
    started: float = field(default_factory=time.monotonic)
    name: str | None = None
    message: str = "starting"


class FixRunner:
    """Verifies and exports the playground's fixes of one run (see the module docstring)."""

    def __init__(self, run: RunDir, worker: ModelWorker) -> None:
        self.run = run
        self.root = run.path / FIXES_DIR
        self.worker = worker
        self._job: _Job | None = None

    def status(self) -> dict[str, object]:
        job = self._job
        if job is None:
            return {"running": False}
        return {
            "running": True,
            "name": job.name,
            "message": job.message,
            "elapsed_s": round(time.monotonic() - job.started, 1),
        }

    async def verify(self, req: FixIn) -> dict[str, Any]:
        cfg = self.worker.cfg
        edits = playground_edits(req, cfg.max_interventions, cfg.max_scale)
        prompts = [p.rstrip("\r") for p in req.prompts]
        prompts = [p for p in prompts if p.strip()]
        if not prompts:
            raise UserError("give at least one prompt (one per line) to measure the fix on")
        for i, p in enumerate([*prompts, *(c.prompt for c in req.controls)], 1):
            if len(p) > cfg.max_prompt_chars:
                raise LimitError(
                    f"prompt {i} has {len(p)} characters; the dashboard accepts at most "
                    f"{cfg.max_prompt_chars}"
                )
        try:
            settings = FixSettings(goal=req.goal, max_kl=req.max_kl, require=req.require)
        except ValueError as e:
            raise UserError(str(e)) from None
        if self._job is not None:
            raise FixBusyError(
                "a fix is being verified already; wait until it is done, then verify again"
            )
        job = self._job = _Job()
        try:
            return await self.worker.call(self._run, job, req, edits, prompts, settings)
        finally:
            self._job = None

    def _run(
        self,
        job: _Job,
        req: FixIn,
        edits: tuple[Edit, ...],
        prompts: list[str],
        settings: FixSettings,
    ) -> dict[str, Any]:
        """On the model thread: quick checks with the dashboard's model, then `run_fix`."""
        from lookuplens.fix.run import FixInputs, run_fix

        lm = self.worker.model()
        for e in edits:
            check_edit(lm, e)
        lm.resolve_token(req.target, "target")
        for i, c in enumerate(req.controls, 1):
            lm.resolve_token(c.expected, f"the expected token of control {i}")
        made_root = not self.root.exists()
        try:
            self.root.mkdir(exist_ok=True)
        except OSError as e:
            raise UserError(
                f"cannot create {self.root} ({e.strerror}); the run folder must be writable "
                "to export a fix"
            ) from None
        name = self._new_name(req.target)
        job.name = name
        folder = self.root / name
        written = [self.root / f"{name}.prompts.jsonl"]
        if req.controls:
            written.append(self.root / f"{name}.controls.jsonl")

        def progress(msg: str) -> None:
            job.message = msg
            log.info("fix %s: %s", name, msg)

        try:
            _write_jsonl(written[0], [{"prompt": p} for p in prompts])
            if req.controls:
                _write_jsonl(written[1], [c.model_dump() for c in req.controls])
            inputs = FixInputs(
                model=self.worker.source,
                target=req.target,
                prompts_file=str(written[0]),
                out=str(folder),
                controls_file=str(written[1]) if req.controls else None,
                run_dir=str(self.run.path),
                side_tokens=req.side_tokens,
                device=self.worker.cfg.device,
                dtype=self.worker.dtype,
                naive=True,
                edits=edits,
            )
            result = run_fix(inputs, settings, progress=progress, lm=lm)
        except BaseException:
            for f in written:
                f.unlink(missing_ok=True)
            if made_root:
                try:
                    self.root.rmdir()
                except OSError:
                    pass
            raise
        return fix_summary(result, name, folder.resolve())

    def _new_name(self, target: str) -> str:
        slug = "-".join(re.findall(r"[A-Za-z0-9]+", target))[:24] or "fix"
        base = f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}"
        name, i = base, 1
        while any(p.exists() for p in (self.root / name, self.root / f"{name}.prompts.jsonl")):
            i += 1
            name = f"{base}-{i}"
        return name

    def file(self, name: str, filename: str) -> Path:
        """``fixes/<name>/<filename>``, only when `name` is a plain folder name and the
        file, links resolved, lies inside ``fixes/``."""
        if not _NAME.fullmatch(name) or ".." in name:
            raise NotFound(f"no fix named {name[:40]!r}")
        base = self.root.resolve()
        path = (base / name / filename).resolve()
        if not path.is_relative_to(base) or not path.is_file():
            raise NotFound(f"no {filename} for a fix named {name!r} in {FIXES_DIR}/")
        return path


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")


# ------------------------------------------------------------------ routes


def add_fix_routes(app: FastAPI, runner: FixRunner) -> None:
    """The fix API and the written reports (see the module docstring)."""

    @app.exception_handler(FixBusyError)
    async def _busy(request: Request, exc: FixBusyError) -> Response:
        return error(request, 409, str(exc))

    @app.post("/api/fix", tags=["fix"], response_model=dict[str, Any])
    async def api_fix(req: FixIn) -> Response:
        """Turn the playground's interventions into weight edits, measure them as
        `lookuplens fix` does (the target on the prompts, the controls, side effects on
        the run's held-out text, the naive edits at equal effect) and export the edited
        model, ``fix.json`` and ``report.html`` to ``<run>/fixes/<name>/``. Bad input, or
        edits over the side-effect budget, give a 400 with one message and write nothing."""
        return json_body(dumps(await runner.verify(req)))

    @app.get("/api/fix/status", tags=["fix"], response_model=dict[str, Any])
    def api_fix_status() -> Response:
        """Whether a fix is being verified, and its last progress message."""
        return json_body(dumps(runner.status()))

    @app.get(f"/{FIXES_DIR}/{{name}}/report.html", include_in_schema=False)
    def fix_report(name: FixName) -> Response:
        body = runner.file(name, "report.html").read_bytes()
        return Response(
            body,
            media_type="text/html; charset=utf-8",
            headers={"content-security-policy": REPORT_CSP},
        )

    @app.get(f"/{FIXES_DIR}/{{name}}/fix.json", include_in_schema=False)
    def fix_json(name: FixName) -> Response:
        return json_body(runner.file(name, "fix.json").read_bytes())
