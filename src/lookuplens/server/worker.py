"""The dashboard's model: loaded on first use, run by one worker thread.

Every model call goes through `ModelWorker.call`, which runs it on a single-thread
executor: calls queue up one after another (the model is never used by two threads at
once) while the event loop keeps answering page requests. The model is loaded lazily
by the first call, from ``--model``, else the run's ``config.model``, else the bundled
storyworld model. Results of the neuron and pair pages (per-prompt activations and
attention) are cached.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

import numpy as np
import torch
from torch import Tensor

from lookuplens.attribute import decompose_neuron_input, upstream_layers
from lookuplens.errors import UserError
from lookuplens.model import LoadedModel, hook_name
from lookuplens.server.config import ServeConfig

if TYPE_CHECKING:
    from lookuplens.why import WhyResult

log = logging.getLogger(__name__)

__all__ = [
    "GenerateResult",
    "HeadContribution",
    "HeadEdit",
    "Intervention",
    "LimitError",
    "ModelWorker",
    "PlaygroundResult",
    "Prediction",
    "TokenValues",
]

T = TypeVar("T")


class LimitError(UserError):
    """A request asks for more than the server's limits allow (HTTP 422)."""


@dataclass(frozen=True)
class HeadEdit:
    """Scale one head's output (its ``z``) at every position; 0 switches it off."""

    layer: int
    head: int
    scale: float


@dataclass(frozen=True)
class Intervention:
    """What the playground changes: heads scaled, and the chosen neuron scaled."""

    heads: tuple[HeadEdit, ...] = ()
    neuron_scale: float = 1.0
    """The neuron's activation is multiplied by this at every position (0 ablates it,
    2 doubles it)."""

    @property
    def is_empty(self) -> bool:
        return self.neuron_scale == 1.0 and all(e.scale == 1.0 for e in self.heads)


@dataclass(frozen=True)
class Prediction:
    token_id: int
    token: str
    prob: float


@dataclass(frozen=True)
class HeadContribution:
    """One upstream head's direct contribution to the neuron's input (pre-activation)."""

    layer: int
    head: int
    direct: float
    scale: float
    """The scale the intervention applies to it (1: unchanged)."""

    @property
    def name(self) -> str:
        return f"L{self.layer}H{self.head}"


@dataclass(frozen=True)
class PlaygroundResult:
    """The neuron on a typed prompt, before and after an intervention."""

    prompt: str
    layer: int
    neuron: int
    position: int
    """Position of the chosen token (BOS not counted)."""
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    """The prompt's tokens (BOS not counted)."""
    activations: tuple[float, ...]
    """The neuron's activation at every token, clean."""
    patched_activations: tuple[float, ...]
    """... and under the intervention (equal to the clean ones when there is none)."""
    activation: float
    patched_activation: float
    pre_activation: float
    """The neuron's (gate) pre-activation at the position, which the direct terms sum to."""
    heads: tuple[HeadContribution, ...]
    """Every upstream head, largest direct contribution first."""
    other_terms: dict[str, float]
    """The other direct terms: embeddings, earlier MLPs, attention biases, the bias."""
    top: tuple[Prediction, ...]
    patched_top: tuple[Prediction, ...]
    neuron_token: Prediction | None
    """The neuron's own token (the run's), with its probability, clean ..."""
    patched_neuron_token: Prediction | None
    """... and under the intervention."""
    intervened: bool


@dataclass(frozen=True)
class GenerateResult:
    """Greedy continuations, clean and under the intervention (steering)."""

    prompt: str
    max_new_tokens: int
    clean: str
    steered: str
    clean_tokens: tuple[str, ...]
    steered_tokens: tuple[str, ...]
    intervened: bool


@dataclass(frozen=True)
class TokenValues:
    """One prompt's tokens with a value per token (activation or attention)."""

    example_id: int
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    values: tuple[float, ...]


class ModelWorker:
    """Loads the model on first use and runs every model call on one thread."""

    def __init__(
        self,
        source: str,
        run_model_meta: object,
        cfg: ServeConfig,
        lm: LoadedModel | None = None,
        dtype: str = "float32",
    ) -> None:
        self.source = source
        self.cfg = cfg
        self.dtype = dtype
        self._meta = run_model_meta if isinstance(run_model_meta, dict) else {}
        self._lm = lm
        if lm is not None:
            self._check(lm)
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        self._cache: OrderedDict[tuple[object, ...], np.ndarray] = OrderedDict()
        self._strings: dict[int, str] = {}
        self._load_lock = threading.Lock()

    # ------------------------------------------------------------------ plumbing

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` on the model thread and wait for it without blocking the loop."""
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="lookuplens-model"
                )
            executor = self._executor
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, functools.partial(fn, *args))

    def close(self) -> None:
        """Stop the model thread (queued calls are cancelled); a later call starts a new one."""
        with self._executor_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    @property
    def loaded(self) -> bool:
        return self._lm is not None

    def status(self) -> dict[str, object]:
        lm = self._lm
        out: dict[str, object] = {
            "loaded": lm is not None,
            "source": self.source,
            "limits": {
                "max_prompt_tokens": self.cfg.max_prompt_tokens,
                "max_prompt_chars": self.cfg.max_prompt_chars,
                "max_new_tokens": self.cfg.max_new_tokens,
                "default_new_tokens": self.cfg.default_new_tokens,
                "max_interventions": self.cfg.max_interventions,
                "max_scale": self.cfg.max_scale,
            },
        }
        if lm is not None:
            out.update(
                n_layers=lm.n_layers,
                n_heads=lm.n_heads,
                d_mlp=lm.d_mlp,
                d_vocab=lm.d_vocab,
                max_context=lm.max_context,
                device=str(lm.device),
            )
        else:
            for k in ("n_layers", "n_heads", "d_mlp", "d_vocab"):
                if isinstance(self._meta.get(k), int):
                    out[k] = self._meta[k]
        return out

    def _check(self, lm: LoadedModel) -> None:
        for key in ("n_layers", "n_heads", "d_mlp", "d_vocab"):
            want = self._meta.get(key)
            have = getattr(lm, key)
            if isinstance(want, int) and want != have:
                raise UserError(
                    f"the dashboard's model has {key}={have}, but the run was made with "
                    f"{key}={want} ({self._meta.get('name')}); start it with the run's model "
                    "(--model)"
                )

    def model(self) -> LoadedModel:
        """The model, loaded on first use (call on the model thread)."""
        with self._load_lock:
            if self._lm is None:
                from lookuplens.model import load_model

                log.info("dashboard: loading model %s", self.source)
                lm = load_model(self.source, device=self.cfg.device, dtype=self.dtype)
                self._check(lm)
                self._lm = lm
            return self._lm

    def _token(self, lm: LoadedModel, token_id: int) -> str:
        s = self._strings.get(token_id)
        if s is None:
            s = lm.token_str(token_id)
            self._strings[token_id] = s
        return s

    def strings(self, ids: Sequence[int]) -> tuple[str, ...]:
        lm = self.model()
        return tuple(self._token(lm, int(i)) for i in ids)

    def _cached(self, key: tuple[object, ...]) -> np.ndarray | None:
        v = self._cache.get(key)
        if v is not None:
            self._cache.move_to_end(key)
        return v

    def _store(self, key: tuple[object, ...], value: np.ndarray) -> np.ndarray:
        self._cache[key] = value
        while len(self._cache) > self.cfg.cache_entries:
            self._cache.popitem(last=False)
        return value

    # ------------------------------------------------------------------ run pages

    def prompt_activations(
        self, layer: int, neuron: int, prompts: Sequence[tuple[int, Sequence[int]]]
    ) -> list[TokenValues]:
        """The neuron's activation at every token of each (example_id, token ids)."""
        from lookuplens.report.compute import neuron_activations

        lm = self.model()
        values: dict[int, np.ndarray] = {}
        todo = []
        for i, t in prompts:
            hit = self._cached(("act", i, layer, neuron))
            if hit is None:
                todo.append((i, t))
            else:
                values[i] = hit
        if todo:
            acts = neuron_activations(lm, [t for _, t in todo], [(layer, neuron)] * len(todo))
            for (i, _), act in zip(todo, acts, strict=True):
                values[i] = self._store(("act", i, layer, neuron), act)
        return [
            TokenValues(i, tuple(int(x) for x in t), self.strings(t), tuple(values[i].tolist()))
            for i, t in prompts
        ]

    def prompt_attention(
        self, head_layer: int, head: int, prompts: Sequence[tuple[int, Sequence[int]]]
    ) -> list[TokenValues]:
        """The head's attention from the last token (the firing position) of each prompt."""
        from lookuplens.report.compute import last_position_attention

        lm = self.model()
        if not 0 <= head < lm.n_heads or not 0 <= head_layer < lm.n_layers:
            raise UserError(f"the model has no head L{head_layer}H{head}")
        patterns: dict[int, np.ndarray] = {}
        todo = []
        for i, t in prompts:
            hit = self._cached(("attn", i, head_layer))
            if hit is None:
                todo.append((i, t))
            else:
                patterns[i] = hit
        if todo:
            pats = last_position_attention(lm, [t for _, t in todo], head_layer)
            for (i, _), pat in zip(todo, pats, strict=True):
                patterns[i] = self._store(("attn", i, head_layer), pat)
        return [
            TokenValues(
                i, tuple(int(x) for x in t), self.strings(t), tuple(patterns[i][head].tolist())
            )
            for i, t in prompts
        ]

    def vocab(
        self, layer: int, neuron: int, k: int, mode: Literal["folded", "raw"]
    ) -> dict[str, list[tuple[int, str, float]]]:
        """The tokens the neuron's output promotes and suppresses most."""
        from lookuplens.report.compute import vocab_tokens

        lm = self.model()
        v = vocab_tokens(lm, [(layer, neuron)], k, mode)[(layer, neuron)]
        return {
            "promoted": [(i, self._token(lm, i), c) for i, c in v.promoted],
            "suppressed": [(i, self._token(lm, i), c) for i, c in v.suppressed],
        }

    # ------------------------------------------------------------------ playground

    def _tokens(self, lm: LoadedModel, prompt: str, extra: int = 0) -> Tensor:
        if len(prompt) > self.cfg.max_prompt_chars:
            raise LimitError(
                f"the prompt has {len(prompt)} characters; the dashboard accepts at most "
                f"{self.cfg.max_prompt_chars}"
            )
        ids = lm.to_tokens(prompt)
        n = ids.shape[1]
        cap = min(self.cfg.max_prompt_tokens, lm.max_context)
        if n > cap:
            raise LimitError(
                f"the prompt is {n} tokens long (with BOS); the dashboard accepts at most {cap} "
                "tokens: shorten it"
            )
        if n + extra > lm.max_context:
            raise LimitError(
                f"the prompt ({n} tokens) and {extra} new tokens exceed the model's context of "
                f"{lm.max_context} tokens; ask for fewer new tokens or shorten the prompt"
            )
        if n - self._n_bos(lm) < 1:
            raise LimitError("the prompt has no tokens; type some text")
        return ids

    @staticmethod
    def _n_bos(lm: LoadedModel) -> int:
        return 1 if lm.bos_token_id is not None else 0

    def _validate(self, lm: LoadedModel, layer: int, neuron: int, iv: Intervention) -> None:
        if not 0 <= layer < lm.n_layers or not 0 <= neuron < lm.d_mlp:
            raise UserError(
                f"the model has no neuron L{layer}N{neuron} ({lm.n_layers} layers of "
                f"{lm.d_mlp} neurons)"
            )
        if len(iv.heads) > self.cfg.max_interventions:
            raise LimitError(
                f"{len(iv.heads)} head interventions; the dashboard accepts at most "
                f"{self.cfg.max_interventions}"
            )
        for e in iv.heads:
            if not 0 <= e.layer < lm.n_layers or not 0 <= e.head < lm.n_heads:
                raise UserError(
                    f"the model has no head L{e.layer}H{e.head} ({lm.n_layers} layers of "
                    f"{lm.n_heads} heads)"
                )
        for s in (iv.neuron_scale, *(e.scale for e in iv.heads)):
            if not abs(s) <= self.cfg.max_scale:
                raise LimitError(
                    f"scale {s} is out of range; use a value between -{self.cfg.max_scale:g} "
                    f"and {self.cfg.max_scale:g}"
                )

    @staticmethod
    def _hooks(
        layer: int, neuron: int, iv: Intervention
    ) -> list[tuple[str, Callable[[Tensor, str], Tensor]]]:
        by_layer: dict[int, dict[int, float]] = {}
        for e in iv.heads:
            if e.scale != 1.0:
                by_layer.setdefault(e.layer, {})[e.head] = e.scale
        hooks: list[tuple[str, Callable[[Tensor, str], Tensor]]] = []
        for hl, scales in sorted(by_layer.items()):
            heads = torch.tensor(list(scales))
            factors = torch.tensor(list(scales.values()))

            def scale_heads(
                z: Tensor, _n: str, heads: Tensor = heads, factors: Tensor = factors
            ) -> Tensor:
                z = z.clone()
                idx = heads.to(z.device)
                f = factors.to(device=z.device, dtype=z.dtype)
                z[:, :, idx] = z[:, :, idx] * f[None, None, :, None]
                return z

            hooks.append((hook_name(hl, "attn.hook_z"), scale_heads))
        if iv.neuron_scale != 1.0:
            s = iv.neuron_scale

            def scale_neuron(x: Tensor, _n: str) -> Tensor:
                x = x.clone()
                x[..., neuron] = x[..., neuron] * s
                return x

            hooks.append((hook_name(layer, "mlp.hook_post"), scale_neuron))
        return hooks

    def _top(self, lm: LoadedModel, probs: Tensor) -> tuple[Prediction, ...]:
        k = min(self.cfg.top_k, probs.shape[-1])
        v, i = probs.topk(k)
        return tuple(
            Prediction(int(t), self._token(lm, int(t)), float(p))
            for t, p in zip(i.tolist(), v.tolist(), strict=True)
        )

    def playground(
        self,
        prompt: str,
        layer: int,
        neuron: int,
        position: int,
        iv: Intervention,
        neuron_token_id: int | None,
    ) -> PlaygroundResult:
        """The neuron's activation at every token, the upstream heads' direct
        contributions at `position`, and the next-token predictions there, clean and
        under `iv`."""
        lm = self.model()
        self._validate(lm, layer, neuron, iv)
        ids = self._tokens(lm, prompt)
        n_bos = self._n_bos(lm)
        n_text = ids.shape[1] - n_bos
        pos = position if position >= 0 else n_text + position
        if not 0 <= pos < n_text:
            raise UserError(
                f"position {position} is out of range: the prompt has {n_text} tokens "
                f"(0 to {n_text - 1}, or -1 for the last)"
            )
        p = n_bos + pos
        post = hook_name(layer, "mlp.hook_post")
        logits, cache = lm.run_with_cache(ids, [post])
        assert logits is not None
        clean = cache[post][0, :, neuron].double()
        probs = torch.softmax(logits[0, p].double(), -1)
        hooks = self._hooks(layer, neuron, iv)
        if hooks:
            logits2, cache2 = lm.run_with_cache(ids, [post], extra_hooks=hooks)
            assert logits2 is not None
            patched = cache2[post][0, :, neuron].double()
            probs2 = torch.softmax(logits2[0, p].double(), -1)
        else:
            patched, probs2 = clean, probs
        dec = decompose_neuron_input(lm, ids[0], layer, neuron, p)
        scales = {(e.layer, e.head): e.scale for e in iv.heads}
        heads = []
        for hl in upstream_layers(lm, layer):
            for h in range(lm.n_heads):
                v = dec.terms.get(f"L{hl}H{h}")
                if v is not None:
                    heads.append(HeadContribution(hl, h, float(v), scales.get((hl, h), 1.0)))
        heads.sort(key=lambda c: (-c.direct, c.layer, c.head))
        head_names = {c.name for c in heads}
        other = {k: float(v) for k, v in dec.terms.items() if k not in head_names}
        text_ids = tuple(int(t) for t in ids[0, n_bos:].tolist())

        def tok(probs_: Tensor) -> Prediction | None:
            if neuron_token_id is None or not 0 <= neuron_token_id < probs_.shape[-1]:
                return None
            t = int(neuron_token_id)
            return Prediction(t, self._token(lm, t), float(probs_[t]))

        return PlaygroundResult(
            prompt=prompt,
            layer=layer,
            neuron=neuron,
            position=pos,
            token_ids=text_ids,
            tokens=tuple(self._token(lm, t) for t in text_ids),
            activations=tuple(clean[n_bos:].tolist()),
            patched_activations=tuple(patched[n_bos:].tolist()),
            activation=float(clean[p]),
            patched_activation=float(patched[p]),
            pre_activation=float(dec.pre_activation),
            heads=tuple(heads),
            other_terms=other,
            top=self._top(lm, probs),
            patched_top=self._top(lm, probs2),
            neuron_token=tok(probs),
            patched_neuron_token=tok(probs2),
            intervened=bool(hooks),
        )

    def generate(
        self, prompt: str, layer: int, neuron: int, iv: Intervention, max_new_tokens: int
    ) -> GenerateResult:
        """Greedy continuations of `prompt`, clean and with `iv` applied at every step."""
        if not 0 <= max_new_tokens <= self.cfg.max_new_tokens:
            raise LimitError(
                f"max_new_tokens is {max_new_tokens}; the dashboard generates between 0 and "
                f"{self.cfg.max_new_tokens} tokens"
            )
        lm = self.model()
        self._validate(lm, layer, neuron, iv)
        ids = self._tokens(lm, prompt, extra=max_new_tokens)
        hooks = self._hooks(layer, neuron, iv)
        clean = self._greedy(lm, ids, [], max_new_tokens)
        steered = self._greedy(lm, ids, hooks, max_new_tokens) if hooks else clean
        return GenerateResult(
            prompt=prompt,
            max_new_tokens=max_new_tokens,
            clean=str(lm.tokenizer.decode(list(clean))),
            steered=str(lm.tokenizer.decode(list(steered))),
            clean_tokens=tuple(self._token(lm, t) for t in clean),
            steered_tokens=tuple(self._token(lm, t) for t in steered),
            intervened=bool(hooks),
        )

    @staticmethod
    def _greedy(
        lm: LoadedModel,
        ids: Tensor,
        hooks: list[tuple[str, Callable[[Tensor, str], Tensor]]],
        n: int,
    ) -> tuple[int, ...]:
        eos = getattr(lm.tokenizer, "eos_token_id", None)
        cur = ids
        out: list[int] = []
        for _ in range(n):
            logits, _ = lm.run_with_cache(cur, [], extra_hooks=hooks)
            assert logits is not None
            nxt = int(logits[0, -1].argmax())
            if eos is not None and nxt == eos:
                break
            out.append(nxt)
            cur = torch.cat([cur, torch.tensor([[nxt]], dtype=cur.dtype)], dim=1)
        return tuple(out)

    def why(
        self, prompt: str, target: str | None, position: int, top_neurons: int, top_heads: int
    ) -> tuple[WhyResult, tuple[int, ...]]:
        """`lookuplens.why.explain_prediction` on the typed prompt, with the prompt's
        token ids (BOS not counted) for shading."""
        from lookuplens.why import WhyConfig, explain_prediction

        lm = self.model()
        ids = self._tokens(lm, prompt)
        cfg = WhyConfig(
            target=target or None, position=position, top_neurons=top_neurons, top_heads=top_heads
        )
        result = explain_prediction(lm, prompt, cfg)
        text_ids = tuple(int(t) for t in ids[0, self._n_bos(lm) :].tolist())
        for t in text_ids:
            self._token(lm, t)
        return result, text_ids
