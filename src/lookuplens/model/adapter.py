"""`LoadedModel`: a supported Hugging Face causal LM whose heads and neurons can be read
or changed.

The model is never reimplemented: every activation is read or replaced through hooks on
the native modules, added inside `LoadedModel.hooks` and removed on exit, also when an
exception escapes. Capture-only hooks leave the logits bit-identical.

`load_model` (in `lookuplens.model.loading`) builds a `LoadedModel`.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from lookuplens.errors import ContextLengthError, ModelLoadError
from lookuplens.model.arch import ArchSpec
from lookuplens.model.hooks import HookFn, parse_hook_name
from lookuplens.model.vocab import Vocab

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

__all__ = ["LayerCall", "LoadedModel", "NormParams"]


class _StopForward(Exception):
    """Raised by a hook to end a forward pass early; caught by `LoadedModel.run_with_cache`."""


def _get(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class LayerCall:
    """How the native model called one decoder layer (recorded by a pre-hook)."""

    layer: int
    args: tuple
    kwargs: dict

    @property
    def hidden(self) -> Tensor:
        """The layer's input residual stream."""
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    @property
    def batch_size(self) -> int:
        return int(self.hidden.shape[0])


@dataclass(frozen=True)
class NormParams:
    """A norm's parameters: ``y = (x - mean if centred) / sqrt(var + eps) * weight + bias``."""

    kind: Literal["layernorm", "rmsnorm"]
    weight: Tensor
    bias: Tensor | None
    eps: float


class LoadedModel:
    """A causal LM with uniform access to its heads, neurons, norms and unembedding.

    Weight accessors return views in the model's dtype with these layouts:
    ``W_in(l)`` and ``W_out(l)`` are ``[d_mlp, d_model]`` (row n is neuron n's input
    direction and output vector), ``W_O(l)`` is ``[n_heads, d_head, d_model]``,
    ``W_U`` is ``[d_model, d_vocab]``.
    """

    def __init__(self, hf: PreTrainedModel, tokenizer: Any, spec: ArchSpec, name: str) -> None:
        self.hf = hf
        self.tokenizer = tokenizer
        self.spec = spec
        self.name = name
        cfg = hf.config
        self.config = cfg
        self.layers: nn.ModuleList = _get(hf, spec.layers)
        self.n_layers: int = len(self.layers)
        self.d_model: int = int(cfg.hidden_size)
        self.n_heads: int = int(cfg.num_attention_heads)
        head_dim = getattr(cfg, "head_dim", None)
        self.d_head: int = int(head_dim) if head_dim else self.d_model // self.n_heads
        self.n_kv_heads: int = (
            int(getattr(cfg, spec.n_kv_heads_attr) or self.n_heads)
            if spec.n_kv_heads_attr
            else self.n_heads
        )
        self.d_mlp: int = int(self.W_out(0).shape[0])
        self.d_vocab: int = int(self.W_U.shape[1])
        self.parallel_residual: bool = bool(
            spec.parallel_residual_attr and getattr(cfg, spec.parallel_residual_attr, False)
        )
        self.max_context: int = int(
            getattr(cfg, "max_position_embeddings", None)
            # cast: mypy would infer this getattr from the left operand (Any | None)
            or cast(int, getattr(cfg, "n_positions", 1024))
        )
        o_in = self.W_O(0).shape
        if o_in[0] * o_in[1] != self.n_heads * self.d_head:
            raise ModelLoadError(
                f"{name}: attention output projection has {o_in[0] * o_in[1]} inputs, expected "
                f"n_heads * d_head = {self.n_heads * self.d_head}; the architecture entry "
                f"{spec.name!r} does not fit this model"
            )

    # ------------------------------------------------------------------ modules
    def layer(self, layer: int) -> nn.Module:
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"layer {layer} out of range: the model has {self.n_layers} layers")
        return self.layers[layer]

    def module(self, layer: int, path: str) -> nn.Module:
        """A submodule of decoder layer `layer`, by a path from the architecture table."""
        return _get(self.layer(layer), path)

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def final_norm(self) -> nn.Module:
        return _get(self.hf, self.spec.final_norm)

    def mlp_norm(self, layer: int) -> nn.Module:
        return self.module(layer, self.spec.mlp_norm)

    def attn_norm(self, layer: int) -> nn.Module:
        return self.module(layer, self.spec.attn_norm)

    def norm_params(self, norm: nn.Module) -> NormParams:
        """Weight, bias and epsilon of a norm module of this model."""
        eps = getattr(norm, "eps", None)
        if eps is None:
            eps = getattr(norm, "variance_epsilon", None)
        if eps is None:
            raise ModelLoadError(f"cannot find the epsilon of norm {type(norm).__name__}")
        return NormParams(
            kind=self.spec.norm,
            weight=cast(Tensor, norm.weight),
            bias=getattr(norm, "bias", None),
            eps=float(eps),
        )

    def act_fn(self, layer: int) -> nn.Module:
        return self.module(layer, self.spec.mlp_act)

    # ------------------------------------------------------------------ weights
    def _linear_weight(self, mod: nn.Module) -> Float[Tensor, "d_out d_in"]:
        """Weight as ``[out, in]`` whatever the storage."""
        w = cast(Tensor, mod.weight)
        return w.T if self.spec.conv1d else w

    def W_in(self, layer: int) -> Float[Tensor, "d_mlp d_model"]:
        """Each neuron's input direction (the gate's for gated MLPs)."""
        return self._linear_weight(self.module(layer, self.spec.mlp_in))

    def b_in(self, layer: int) -> Float[Tensor, " d_mlp"] | None:
        return getattr(self.module(layer, self.spec.mlp_in), "bias", None)

    def W_up(self, layer: int) -> Float[Tensor, "d_mlp d_model"] | None:
        """The up projection of a gated MLP, ``None`` otherwise."""
        if self.spec.mlp_up is None:
            return None
        return self._linear_weight(self.module(layer, self.spec.mlp_up))

    def b_up(self, layer: int) -> Float[Tensor, " d_mlp"] | None:
        if self.spec.mlp_up is None:
            return None
        return getattr(self.module(layer, self.spec.mlp_up), "bias", None)

    def W_out(self, layer: int) -> Float[Tensor, "d_mlp d_model"]:
        """Each neuron's output vector."""
        return self._linear_weight(self.module(layer, self.spec.mlp_out)).T

    def b_out(self, layer: int) -> Float[Tensor, " d_model"] | None:
        return getattr(self.module(layer, self.spec.mlp_out), "bias", None)

    def W_O(self, layer: int) -> Float[Tensor, "n_heads d_head d_model"]:
        """Each head's output projection."""
        w = self._linear_weight(self.module(layer, self.spec.attn_out_proj)).T
        return w.reshape(self.n_heads, self.d_head, w.shape[-1])

    def b_O(self, layer: int) -> Float[Tensor, " d_model"] | None:
        return getattr(self.module(layer, self.spec.attn_out_proj), "bias", None)

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        head = self.hf.get_output_embeddings()
        return head.weight.T

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"] | None:
        return getattr(self.hf.get_output_embeddings(), "bias", None)

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return cast(Tensor, self.hf.get_input_embeddings().weight)

    # ------------------------------------------------------------------ hooks
    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str, HookFn]]) -> Iterator[None]:
        """Add hooks for the duration of the block; remove exactly those on exit.

        Several functions on one hook point run in the order given, each seeing the
        previous one's replacement. Pattern hooks switch attention to the eager
        implementation for the block (other implementations do not expose weights).
        """
        grouped: dict[str, list[HookFn]] = defaultdict(list)
        for name, fn in fwd_hooks:
            parse_hook_name(name, self.n_layers)
            grouped[name].append(fn)
        handles: list[torch.utils.hooks.RemovableHandle] = []
        need_eager = any(name.endswith("attn.hook_pattern") for name in grouped)
        old_impl = getattr(self.hf.config, "_attn_implementation", None)
        switched = False
        try:
            if need_eager and old_impl != "eager":
                self.hf.set_attn_implementation("eager")
                switched = True
            for name, fns in grouped.items():
                handles.extend(self._install(name, fns))
            yield
        finally:
            for h in handles:
                h.remove()
            if switched and old_impl is not None:
                self.hf.set_attn_implementation(old_impl)

    def _install(self, name: str, fns: list[HookFn]) -> list[torch.utils.hooks.RemovableHandle]:
        layer, point = parse_hook_name(name, self.n_layers)
        spec = self.spec

        def chain(x: Tensor) -> Tensor | None:
            changed = False
            for fn in fns:
                new = fn(x, name)
                if new is not None:
                    if new.shape != x.shape:
                        raise ValueError(
                            f"hook on {name} returned shape {tuple(new.shape)}, "
                            f"expected {tuple(x.shape)}"
                        )
                    x, changed = new, True
            return x if changed else None

        def on_input(mod: nn.Module) -> torch.utils.hooks.RemovableHandle:
            def pre(_m: nn.Module, args: tuple, kwargs: dict) -> Any:
                if args:
                    new = chain(args[0])
                    return None if new is None else ((new, *args[1:]), kwargs)
                new = chain(kwargs["hidden_states"])
                if new is None:
                    return None
                return args, {**kwargs, "hidden_states": new}

            return mod.register_forward_pre_hook(pre, with_kwargs=True)

        def on_output(
            mod: nn.Module, index: int | None = None
        ) -> torch.utils.hooks.RemovableHandle:
            def post(_m: nn.Module, _args: tuple, out: Any) -> Any:
                if index is None and isinstance(out, Tensor):
                    new = chain(out)
                    return new
                i = 0 if index is None else index
                new = chain(out[i])
                if new is None:
                    return None
                return (*out[:i], new, *out[i + 1 :])

            return mod.register_forward_hook(post)

        if point == "hook_resid_pre":
            return [on_input(self.layer(layer))]
        if point == "hook_resid_post":
            return [on_output(self.layer(layer))]
        if point == "hook_resid_mid":
            if self.parallel_residual:
                raise ValueError(
                    f"{name}: this model uses a parallel residual (attention and MLP read the "
                    "same stream), so there is no resid_mid; use hook_resid_pre"
                )
            return [on_input(self.mlp_norm(layer))]
        if point == "hook_attn_out":
            return [on_output(self.module(layer, spec.attn), 0)]
        if point == "hook_mlp_in":
            return [on_input(self.module(layer, spec.mlp))]
        if point == "hook_mlp_out":
            return [on_output(self.module(layer, spec.mlp))]
        if point == "attn.hook_pattern":

            def pattern(_m: nn.Module, _a: tuple, out: Any) -> None:
                weights = out[1] if isinstance(out, tuple) and len(out) > 1 else None
                if weights is None:
                    raise RuntimeError(
                        f"{name}: the attention module returned no weights; load the model "
                        "with attn_implementation='eager'"
                    )
                if chain(weights) is not None:
                    raise ValueError(
                        f"{name} is capture-only; to change what a head does, replace "
                        "attn.hook_z or attn.hook_result"
                    )

            return [self.module(layer, spec.attn).register_forward_hook(pattern)]
        if point == "mlp.hook_pre":
            return [on_output(self.module(layer, spec.mlp_in))]
        if point == "mlp.hook_pre_linear":
            if spec.mlp_up is None:
                raise ValueError(f"{name}: only gated MLPs have an up projection")
            return [on_output(self.module(layer, spec.mlp_up))]
        if point == "mlp.hook_post":
            return [on_input(self.module(layer, spec.mlp_out))]
        if point == "attn.hook_z":
            return [self._install_z(layer, chain)]
        if point == "attn.hook_result":
            return self._install_result(layer, chain)
        raise AssertionError(point)  # pragma: no cover - parse_hook_name validated it

    def _install_z(self, layer: int, chain: Any) -> torch.utils.hooks.RemovableHandle:
        H, dh = self.n_heads, self.d_head

        def pre(_m: nn.Module, args: tuple) -> Any:
            z = args[0]
            new = chain(z.view(*z.shape[:-1], H, dh))
            if new is None:
                return None
            return (new.reshape(z.shape), *args[1:])

        return self.module(layer, self.spec.attn_out_proj).register_forward_pre_hook(pre)

    def _install_result(self, layer: int, chain: Any) -> list[torch.utils.hooks.RemovableHandle]:
        proj = self.module(layer, self.spec.attn_out_proj)
        H, dh = self.n_heads, self.d_head
        pending: list[Tensor] = []

        def pre(_m: nn.Module, args: tuple) -> None:
            z = args[0]
            zh = z.view(*z.shape[:-1], H, dh)
            result = torch.einsum("...hd,hdm->...hm", zh, self.W_O(layer))
            new = chain(result)
            if new is not None:
                pending.append(new.sum(dim=-2))

        def post(_m: nn.Module, _a: tuple, out: Tensor) -> Tensor | None:
            if not pending:
                return None
            new = pending.pop()
            b = self.b_O(layer)
            return new if b is None else new + b

        return [proj.register_forward_pre_hook(pre), proj.register_forward_hook(post)]

    # ------------------------------------------------------------------ running
    def check_length(self, input_ids: Tensor) -> None:
        """Refuse inputs longer than the model's context window, with the fix."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, pos], got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.max_context:
            raise ContextLengthError(
                f"input of {input_ids.shape[1]} tokens is longer than the model's context "
                f"window of {self.max_context} tokens; shorten it"
            )

    def forward(
        self,
        input_ids: Int[Tensor, "batch pos"],
        attention_mask: Int[Tensor, "batch pos"] | None = None,
    ) -> Float[Tensor, "batch pos d_vocab"]:
        """Plain forward pass; returns the logits."""
        self.check_length(input_ids)
        with torch.no_grad():
            out = self.hf(
                input_ids=input_ids.to(self.device),
                attention_mask=None if attention_mask is None else attention_mask.to(self.device),
                use_cache=False,
            )
        return out.logits

    def run_with_cache(
        self,
        input_ids: Int[Tensor, "batch pos"],
        names: Iterable[str],
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        stop_after_layer: int | None = None,
        extra_hooks: Sequence[tuple[str, HookFn]] = (),
        grad: bool = False,
        stop_at: str | None = None,
    ) -> tuple[Tensor | None, dict[str, Tensor]]:
        """Run the model and capture the named activations.

        With `stop_after_layer`, the forward ends after that decoder layer: later layers,
        the final norm and the LM head are never computed, and the logits are ``None``.
        With `stop_at` (a hook point), it ends as soon as that point's hooks have run
        (logits ``None``), e.g. before an MLP whose output is not needed.
        `extra_hooks` (interventions) run before the captures on the same point.
        """
        self.check_length(input_ids)
        cache: dict[str, Tensor] = {}

        def capture(x: Tensor, name: str) -> None:
            cache[name] = x if grad else x.detach()

        def halt(_x: Tensor, _name: str) -> None:
            raise _StopForward

        hooks_list: list[tuple[str, HookFn]] = list(extra_hooks)
        hooks_list += [(n, capture) for n in names]
        if stop_at is not None:
            hooks_list.append((stop_at, halt))
        if stop_after_layer is not None:
            self.layer(stop_after_layer)  # validates the index
            handle_layer = stop_after_layer
        logits: Tensor | None = None
        ctx = torch.enable_grad() if grad else torch.no_grad()
        with ctx, self.hooks(hooks_list):
            stop_handle = None
            if stop_after_layer is not None:

                def stop(_m: nn.Module, _a: tuple, _o: Any) -> None:
                    raise _StopForward

                stop_handle = self.layer(handle_layer).register_forward_hook(stop)
            try:
                out = self.hf(
                    input_ids=input_ids.to(self.device),
                    attention_mask=(
                        None if attention_mask is None else attention_mask.to(self.device)
                    ),
                    use_cache=False,
                )
                logits = out.logits
            except _StopForward:
                logits = None
            finally:
                if stop_handle is not None:
                    stop_handle.remove()
        return logits, cache

    # ------------------------------------------------------------------ prefix reuse
    def capture_layer_calls(
        self,
        input_ids: Int[Tensor, "batch pos"],
        attention_mask: Int[Tensor, "batch pos"] | None,
        stop_after_layer: int,
        names: Iterable[str] = (),
    ) -> tuple[list[LayerCall], dict[str, Tensor]]:
        """Run layers 0..`stop_after_layer` once and record how each layer was called.

        Each `LayerCall` holds the arguments the native model passed to a decoder layer
        (its input residual stream, the attention mask, rotary embeddings, ...), so that
        `replay_layers` can run layers l..L again from a changed layer-l input without
        recomputing layers 0..l-1 (the prefix is reused).
        """
        self.check_length(input_ids)
        calls: list[LayerCall] = []
        handles = []

        def make(i: int) -> Any:
            def pre(_m: nn.Module, args: tuple, kwargs: dict) -> None:
                calls.append(LayerCall(i, args, dict(kwargs)))

            return pre

        for i in range(stop_after_layer + 1):
            handles.append(self.layer(i).register_forward_pre_hook(make(i), with_kwargs=True))
        try:
            _, cache = self.run_with_cache(
                input_ids, names, attention_mask=attention_mask, stop_after_layer=stop_after_layer
            )
        finally:
            for h in handles:
                h.remove()
        return calls, cache

    def replay_layers(
        self,
        calls: Sequence[LayerCall],
        start: int,
        stop: int,
        hidden: Float[Tensor, "rows pos d_model"],
        rows: Int[Tensor, " rows"],
        hooks: Sequence[tuple[str, HookFn]] = (),
    ) -> Tensor:
        """Run decoder layers `start`..`stop` on `hidden`, reusing recorded calls; return
        layer `stop`'s output.

        `rows[i]` says which row of the recorded batch row i of `hidden` stands for; the
        recorded per-row tensors (masks, position embeddings) are gathered accordingly.
        Use `hooks` to read activations (e.g. ``mlp.hook_post`` of layer `stop`).
        """
        by_layer = {c.layer: c for c in calls}
        b0 = by_layer[start].batch_size

        def expand(x: Any) -> Any:
            if isinstance(x, Tensor) and x.ndim >= 1 and x.shape[0] == b0 and b0 != 1:
                return x[rows.to(x.device)]
            if isinstance(x, Tensor) and x.ndim >= 1 and x.shape[0] == b0 == 1:
                return x.expand(len(rows), *x.shape[1:]) if x.ndim > 1 else x
            if isinstance(x, tuple):
                return tuple(expand(v) for v in x)
            if isinstance(x, list):
                return [expand(v) for v in x]
            return x

        h = hidden
        with torch.no_grad(), self.hooks(hooks):
            for i in range(start, stop + 1):
                call = by_layer[i]
                args = (h, *(expand(a) for a in call.args[1:]))
                kwargs = {k: expand(v) for k, v in call.kwargs.items() if k != "hidden_states"}
                if call.args == () and "hidden_states" in call.kwargs:
                    out = self.layer(i)(hidden_states=h, **kwargs)
                else:
                    out = self.layer(i)(*args, **kwargs)
                h = out[0] if isinstance(out, tuple) else out
        return h

    def unembed(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
        """Logits from the last layer's output: the final norm, then the LM head."""
        with torch.no_grad():
            return self.hf.get_output_embeddings()(self.final_norm(resid))

    def to_tokens(self, text: str, bos: bool = True) -> Int[Tensor, "1 pos"]:
        """Tokenise one text with the project-wide rule (BOS first, when the tokenizer has one)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        b = self.bos_token_id
        if bos and b is not None:
            ids = [b, *ids]
        return torch.tensor([ids], dtype=torch.long)

    @property
    def bos_token_id(self) -> int | None:
        tok = self.tokenizer
        b = getattr(tok, "bos_token_id", None)
        return b if b is not None else getattr(tok, "eos_token_id", None)

    @cached_property
    def vocab(self) -> Vocab:
        """The tokenizer's tokens as running text, under its convention (see `Vocab`)."""
        return Vocab(self.tokenizer, size=self.d_vocab)

    def token_str(self, token_id: int) -> str:
        """The text a token adds in running text: " an" for "Ġan" and "▁an" alike."""
        return self.vocab.text(token_id)

    def resolve_token(self, text: str, what: str = "token") -> int:
        """The token id of a string as people type it (" an", "an", "▁an"); see `Vocab`."""
        return self.vocab.resolve(text, what)
