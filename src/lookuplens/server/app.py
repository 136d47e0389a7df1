"""The dashboard application: `create_app` builds it, pages and JSON API together.

Pages (HTML): ``/`` (overview), ``/neurons/{layer}/{neuron}``,
``/pairs/{layer}/{neuron}/{head_layer}/{head}``, ``/playground``, and the reports of the
fixes made in the playground (``/fixes/{name}/report.html``, `lookuplens.server.fixes`).
The JSON API lives under ``/api/`` and is described by ``/api/openapi.json`` (the
interactive docs are off: they load scripts from a CDN, and the dashboard works offline).

The run's tables are read once, when the app is built. The neuron and pair pages shade
their prompts and list vocabulary from the run's views table (`DashboardViews`); the model
is loaded by the first request that needs it (the playground, or what that table lacks)
and is only ever run by one worker thread (`ModelWorker`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from lookuplens.errors import LookuplensError, UserError
from lookuplens.model import LoadedModel
from lookuplens.report.views import congruence_mode
from lookuplens.server import fragments, pages
from lookuplens.server.config import ServeConfig
from lookuplens.server.data import NotFound, RunData
from lookuplens.server.fixes import FixRunner, add_fix_routes
from lookuplens.server.records import Page, jsonable
from lookuplens.server.responses import (
    ResponseCache,
    assets,
    dumps,
    error,
    html_body,
    is_api,
    json_body,
)
from lookuplens.server.schemas import (
    HARD_MAX_PROMPT_CHARS,
    MAX_ID,
    GenerateIn,
    GenerateOut,
    HtmlOut,
    PlaygroundIn,
    PlaygroundOut,
    PromptsOut,
    PromptView,
    TableOut,
    WhyIn,
)
from lookuplens.server.security import (
    AccessGuard,
    BodyLimitMiddleware,
    SecurityMiddleware,
    resolve_token,
)
from lookuplens.server.views import DashboardViews
from lookuplens.server.worker import (
    HeadEdit,
    Intervention,
    LimitError,
    ModelWorker,
    TokenValues,
)
from lookuplens.store import RunDir

log = logging.getLogger(__name__)

__all__ = ["create_app"]

Id = Annotated[int, PathParam(ge=0, le=MAX_ID)]


# ------------------------------------------------------------------------ helpers


def _opt_int(value: str, name: str) -> int | None:
    v = value.strip()
    if not v:
        return None
    if not v.isdigit() or len(v) > 9:
        raise UserError(f"{name} must be a non-negative integer, got {value[:20]!r}")
    return int(v)


def _parse_off(value: str) -> list[tuple[int, int]]:
    """``"0.1,1.3"`` -> [(0, 1), (1, 3)]: heads to switch off in the playground link."""
    out = []
    for part in value.split(",")[:64]:
        a, _, b = part.strip().partition(".")
        if a.isdigit() and b.isdigit() and len(a) < 6 and len(b) < 6:
            out.append((int(a), int(b)))
    return out


def _table(p: Page) -> dict[str, object]:
    return {
        "rows": p.rows,
        "total": p.total,
        "page": p.page,
        "per_page": p.per_page,
        "pages": p.pages,
        "sort": p.sort,
        "order": p.order,
    }


def _views(got: Sequence[TokenValues], marked: Sequence[str]) -> list[PromptView]:
    return [
        PromptView(example_id=g.example_id, tokens=list(g.tokens), values=list(g.values), html=h)
        for g, h in zip(got, marked, strict=True)
    ]


def _intervention(req: PlaygroundIn) -> Intervention:
    return Intervention(
        heads=tuple(HeadEdit(h.layer, h.head, float(h.scale)) for h in req.heads),
        neuron_scale=float(req.neuron_scale),
    )


def _model_source(run: RunDir, model: str | None) -> tuple[str, str]:
    config = run.meta.get("config")
    cfg = config if isinstance(config, dict) else {}
    dtype = str(cfg.get("dtype") or "float32")
    if model:
        return model, dtype
    source = cfg.get("model")
    if isinstance(source, str) and source:
        return source, dtype
    from lookuplens.zoo import default_model_path

    return str(default_model_path()), dtype


# ------------------------------------------------------------------------ the app


def create_app(
    run_dir: str | Path,
    *,
    model: str | None = None,
    token: str | None = None,
    host: str = "127.0.0.1",
    lm: LoadedModel | None = None,
    config: ServeConfig | None = None,
) -> FastAPI:
    """The dashboard of `run_dir` as an ASGI app.

    `model` overrides the run's model (a hub id or folder); `lm` injects an already
    loaded one (tests, notebooks). Binding a non-loopback `host` requires a token: the
    one given, or a generated one (``app.state.token``; the CLI prints it).
    """
    cfg = config or ServeConfig()
    run = RunDir.open(run_dir)
    secret = resolve_token(host, token)
    data = RunData(run, cfg)
    source, dtype = _model_source(run, model)
    worker = ModelWorker(source, data.meta.get("model"), cfg, lm=lm, dtype=dtype)
    views = DashboardViews(data, worker, congruence_mode(data.meta))
    static_files = assets()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            worker.close()

    from lookuplens import __version__

    app = FastAPI(
        title="lookuplens dashboard",
        version=__version__,
        description="Explore a lookuplens run and intervene on its model live.",
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.token = secret
    app.state.data = data
    app.state.worker = worker
    app.state.config = cfg
    app.state.fixes = fixes = FixRunner(run, worker)
    # the last one added runs first: the access check comes before anything else
    app.add_middleware(BodyLimitMiddleware)  # type: ignore[arg-type]
    app.add_middleware(SecurityMiddleware, guard=AccessGuard(secret))  # type: ignore[arg-type]

    # -------------------------------------------------------------- errors

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> Response:
        return error(request, 404, str(exc))

    @app.exception_handler(LimitError)
    async def _limit(request: Request, exc: LimitError) -> Response:
        return error(request, 422, str(exc))

    @app.exception_handler(LookuplensError)
    async def _user(request: Request, exc: LookuplensError) -> Response:
        return error(request, 400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        message = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'] if x != 'body')}: {e['msg']}" for e in errors
        )
        if not is_api(request):
            return error(request, 422, message)
        return JSONResponse({"detail": errors, "message": message}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404:
            detail = "no such page" if not is_api(request) else "no such API route"
        return error(request, exc.status_code, detail)

    # -------------------------------------------------------------- assets

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        asset = static_files.get(name)
        if asset is None:
            raise NotFound(f"no asset {name[:40]!r}")
        body, kind = asset
        return Response(body, media_type=kind, headers={"cache-control": "max-age=3600"})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    # -------------------------------------------------------------- pages

    cache = ResponseCache(cfg.response_cache_entries)

    def cached(key: tuple[object, ...], build: Callable[[], bytes]) -> bytes:
        body = cache.get(key)
        return body if body is not None else cache.put(key, build())

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def overview(
        nq: Annotated[str, Query(max_length=200)] = "",
        nlayer: Annotated[str, Query(max_length=12)] = "",
        ngroup: Literal["tracked", "selected", "baseline", "all"] = "tracked",
        nsort: Annotated[str, Query(max_length=40)] = "congruence",
        norder: Literal["asc", "desc"] = "desc",
        npage: Annotated[int, Query(ge=1, le=MAX_ID)] = 1,
        pq: Annotated[str, Query(max_length=200)] = "",
        player: Annotated[str, Query(max_length=12)] = "",
        pkept: Literal["kept", "all"] = "kept",
        psort: Annotated[str, Query(max_length=40)] = "e",
        porder: Literal["asc", "desc"] = "desc",
        ppage: Annotated[int, Query(ge=1, le=MAX_ID)] = 1,
    ) -> Response:
        params: dict[str, object] = dict(
            nq=nq, nlayer=nlayer, ngroup=ngroup, nsort=nsort, norder=norder, npage=npage,
            pq=pq, player=player, pkept=pkept, psort=psort, porder=porder, ppage=ppage,
        )  # fmt: skip

        def build() -> bytes:
            npg = data.neuron_page(nq, _opt_int(nlayer, "nlayer"), ngroup, nsort, norder, npage)
            ppg = data.pair_page(pq, _opt_int(player, "player"), pkept, psort, porder, ppage)
            return pages.overview_page(data, npg, ppg, params).encode("utf-8")

        return html_body(cached(("overview", *params.values()), build))

    @app.get("/neurons/{layer}/{neuron}", response_class=HTMLResponse, include_in_schema=False)
    def neuron_html(layer: Id, neuron: Id) -> Response:
        return html_body(
            cached(
                ("neuron", layer, neuron),
                lambda: pages.neuron_page(data, layer, neuron).encode("utf-8"),
            )
        )

    @app.get(
        "/pairs/{layer}/{neuron}/{head_layer}/{head}",
        response_class=HTMLResponse,
        include_in_schema=False,
    )
    def pair_html(layer: Id, neuron: Id, head_layer: Id, head: Id) -> Response:
        return html_body(
            cached(
                ("pair", layer, neuron, head_layer, head),
                lambda: pages.pair_page(data, layer, neuron, head_layer, head).encode("utf-8"),
            )
        )

    @app.get("/playground", response_class=HTMLResponse, include_in_schema=False)
    def playground_html(
        layer: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
        neuron: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
        example: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
        prompt: Annotated[str, Query(max_length=HARD_MAX_PROMPT_CHARS)] = "",
        off: Annotated[str, Query(max_length=400)] = "",
    ) -> Response:
        def build() -> bytes:
            text, lay, neu = prompt, layer, neuron
            if example is not None:
                ex = data.example(example)
                text = str(ex.get("text") or "")
                if lay is None or neu is None:
                    lay, neu = int(ex["layer"]), int(ex["neuron"])  # type: ignore[call-overload]
            limits = worker.status()["limits"]
            page = pages.playground_page(data, lay, neu, text, _parse_off(off), limits)  # type: ignore[arg-type]
            return page.encode("utf-8")

        if len(prompt) > 2000:  # long typed prompts are not worth keeping
            return html_body(build())
        return html_body(cached(("playground", layer, neuron, example, prompt, off), build))

    # -------------------------------------------------------------- API: tables

    @app.get(
        "/api/run",
        tags=["run"],
        summary="Run metadata (run.json, secrets redacted) and headline numbers",
        response_model=dict[str, Any],
    )
    def api_run() -> Response:
        return json_body(cached(("api", "run"), lambda: dumps(data.run_info())))

    @app.get(
        "/api/model",
        tags=["model"],
        summary="The model: loaded yet, sizes, limits",
        response_model=dict[str, Any],
    )
    def api_model() -> Response:
        return json_body(dumps(worker.status()))

    @app.get("/api/neurons", tags=["neurons"], response_model=TableOut)
    def api_neurons(
        q: Annotated[str, Query(max_length=200)] = "",
        layer: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
        group: Literal["tracked", "selected", "baseline", "all"] = "tracked",
        sort: Annotated[str, Query(max_length=40)] = "congruence",
        order: Literal["asc", "desc"] = "desc",
        page: Annotated[int, Query(ge=1, le=MAX_ID)] = 1,
        per_page: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    ) -> Response:
        """The neuron table, sorted, filtered (`q`: a name like L1N5, or part of the
        token) and paginated."""

        def build() -> bytes:
            return dumps(_table(data.neuron_page(q, layer, group, sort, order, page, per_page)))

        return json_body(
            cached(("api", "neurons", q, layer, group, sort, order, page, per_page), build)
        )

    @app.get("/api/pairs", tags=["pairs"], response_model=TableOut)
    def api_pairs(
        q: Annotated[str, Query(max_length=200)] = "",
        layer: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
        kept: Literal["kept", "all"] = "kept",
        sort: Annotated[str, Query(max_length=40)] = "e",
        order: Literal["asc", "desc"] = "desc",
        page: Annotated[int, Query(ge=1, le=MAX_ID)] = 1,
        per_page: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    ) -> Response:
        """The (neuron, head) pair table, sorted, filtered (`q`: neuron or head name, token
        or words of the explanation) and paginated."""

        def build() -> bytes:
            return dumps(_table(data.pair_page(q, layer, kept, sort, order, page, per_page)))

        key = ("api", "pairs", q, layer, kept, sort, order, page, per_page)
        return json_body(cached(key, build))

    @app.get("/api/neurons/{layer}/{neuron}", tags=["neurons"], response_model=dict[str, Any])
    def api_neuron(layer: Id, neuron: Id) -> Response:
        """A neuron: its row, statistics, top prompts, upstream heads under every
        attribution method, interventions, explanations and scores."""
        return json_body(
            cached(
                ("api", "neuron", layer, neuron),
                lambda: dumps(data.neuron_detail(layer, neuron)),
            )
        )

    @app.get(
        "/api/pairs/{layer}/{neuron}/{head_layer}/{head}",
        tags=["pairs"],
        response_model=dict[str, Any],
    )
    def api_pair(layer: Id, neuron: Id, head_layer: Id, head: Id) -> Response:
        """A pair: its statistics, explanation and score (with the confusion matrix
        counts), and its prompts with the head active and inactive."""
        return json_body(
            cached(
                ("api", "pair", layer, neuron, head_layer, head),
                lambda: dumps(data.pair_detail(layer, neuron, head_layer, head)),
            )
        )

    @app.get("/api/examples/{example_id}", tags=["run"], response_model=dict[str, Any])
    def api_example(example_id: Id) -> Response:
        """One prompt of the examples table (its token ids included)."""
        return json_body(dumps(data.example(example_id)))

    @app.get("/api/scores/distribution", tags=["run"], response_model=dict[str, Any])
    def api_distribution() -> Response:
        """E of the selected rows against the random-neuron baseline."""
        return json_body(cached(("api", "distribution"), lambda: dumps(data.e_distribution())))

    # -------------------------------------------------------------- API: the model

    @app.get(
        "/api/neurons/{layer}/{neuron}/activations", tags=["neurons"], response_model=PromptsOut
    )
    async def api_activations(
        layer: Id, neuron: Id, limit: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None
    ) -> Response:
        """The neuron's activation at every token of its top prompts (from the run's views
        table; runs the model for what it lacks)."""
        data.require_neuron(layer, neuron)
        cap = min(limit or cfg.max_prompts, cfg.max_prompts)
        key = ("api", "activations", layer, neuron, cap)
        body = cache.get(key)
        if body is None:
            got = await views.activations(layer, neuron, data.neuron_examples(layer, neuron, cap))
            scale, marked = fragments.activation_prompts(got)
            out = PromptsOut(kind="activation", scale=scale, prompts=_views(got, marked))
            body = cache.put(key, out.model_dump_json().encode("utf-8"))
        return json_body(body)

    @app.get("/api/neurons/{layer}/{neuron}/vocab", tags=["neurons"], response_model=HtmlOut)
    async def api_vocab(
        layer: Id, neuron: Id, k: Annotated[int, Query(ge=1, le=100)] = 10
    ) -> Response:
        """The tokens the neuron's output promotes and suppresses most (from the run's views
        table; reads the weights for what it lacks)."""
        data.require_neuron(layer, neuron)
        key = ("api", "vocab", layer, neuron, k)
        body = cache.get(key)
        if body is None:
            vocab = await views.vocab(layer, neuron, k)
            out = {
                name: [{"token_id": i, "token": t, "congruence": c} for i, t, c in items]
                for name, items in vocab.items()
            }
            body = cache.put(key, dumps({"data": out, "html": fragments.vocab_html(vocab)}))
        return json_body(body)

    @app.get(
        "/api/pairs/{layer}/{neuron}/{head_layer}/{head}/attention",
        tags=["pairs"],
        response_model=PromptsOut,
    )
    async def api_attention(layer: Id, neuron: Id, head_layer: Id, head: Id) -> Response:
        """The head's attention from the firing position of each prompt shown on the
        pair page (active ones first; from the run's views table, runs the model for what
        it lacks)."""
        data.require_pair(layer, neuron, head_layer, head)
        key = ("api", "attention", layer, neuron, head_layer, head)
        body = cache.get(key)
        if body is None:
            active, inactive = data.pair_examples(layer, neuron, head_layer, head)
            ids = active[: cfg.max_prompts] + inactive[: cfg.max_prompts]
            got = await views.attention((layer, neuron, head_layer, head), ids)
            marked = fragments.attention_prompts(got)
            out = PromptsOut(kind="attention", scale=None, prompts=_views(got, marked))
            body = cache.put(key, out.model_dump_json().encode("utf-8"))
        return json_body(body)

    def _check_prompt(prompt: str) -> None:
        if len(prompt) > cfg.max_prompt_chars:
            raise LimitError(
                f"the prompt has {len(prompt)} characters; the dashboard accepts at most "
                f"{cfg.max_prompt_chars}"
            )

    def _neuron_token(layer: int, neuron: int) -> int | None:
        n = data.tables.get("neurons")
        if n is None or not data.has_neuron(layer, neuron):
            return None
        row = n[(n.layer == layer) & (n.neuron == neuron)]
        return int(row.token_id.iloc[0]) if len(row) else None

    @app.post("/api/playground", tags=["playground"])
    async def api_playground(req: PlaygroundIn) -> PlaygroundOut:
        """Run the model on a typed prompt: the neuron's activation at every token, each
        upstream head's direct contribution at `position`, and the top next-token
        probabilities there, clean and with heads scaled or switched off and the neuron
        ablated or amplified."""
        _check_prompt(req.prompt)
        result = await worker.call(
            worker.playground,
            req.prompt,
            req.layer,
            req.neuron,
            req.position,
            _intervention(req),
            _neuron_token(req.layer, req.neuron),
        )
        scale = max([abs(v) for v in result.activations + result.patched_activations] + [0.0])
        return PlaygroundOut(
            result=result,
            scale=scale,
            html_clean=fragments.playground_tokens(
                result.token_ids, result.tokens, result.activations, scale
            ),
            html_patched=fragments.playground_tokens(
                result.token_ids, result.tokens, result.patched_activations, scale
            ),
        )

    @app.post("/api/generate", tags=["playground"])
    async def api_generate(req: GenerateIn) -> GenerateOut:
        """Greedy continuation of the prompt, clean and with the intervention applied at
        every step (steering); at most the server's max_new_tokens."""
        _check_prompt(req.prompt)
        n_new = cfg.default_new_tokens if req.max_new_tokens is None else req.max_new_tokens
        if n_new > cfg.max_new_tokens:
            raise LimitError(
                f"max_new_tokens is {n_new}; the dashboard generates at most "
                f"{cfg.max_new_tokens} tokens"
            )
        result = await worker.call(
            worker.generate,
            req.prompt,
            req.layer,
            req.neuron,
            _intervention(req),
            n_new,
        )
        return GenerateOut(result=result)

    @app.post("/api/why", tags=["playground"])
    async def api_why(req: WhyIn) -> HtmlOut:
        """Why the model predicts a token after the prompt (`lookuplens why`): the
        neurons that push it, the heads that switch them on, and the ablation check."""
        _check_prompt(req.prompt)
        result, ids = await worker.call(
            worker.why, req.prompt, req.target, req.position, req.top_neurons, req.top_heads
        )
        out = jsonable(dataclasses.asdict(result))  # type: ignore[call-overload]
        assert isinstance(out, dict)
        return HtmlOut(data=out, html=fragments.why_html(result, ids, data.has_neuron))

    add_fix_routes(app, fixes)
    return app
