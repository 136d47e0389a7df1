"""The attribution methods (see `lookuplens.attribute`): every method for a batch of
examples of one neuron layer (`Attributor`), and the heads' mean outputs that mean
ablation puts in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lookuplens.attribute.config import ABLATIONS, AttributeConfig
from lookuplens.attribute.labels import active_floor
from lookuplens.attribute.readout import (
    frozen_norm_direction,
    mlp_stream_point,
    neuron_act,
    upstream_layers,
)
from lookuplens.model import HookFn, LoadedModel, hook_name, pad_right

__all__ = ["Attributor", "candidate_heads", "head_means"]


def candidate_heads(
    direct: Tensor, patching: Tensor, k: int, k_direct: int, floor: Tensor | None = None
) -> Tensor:
    """``[B, n]`` mask of the heads to ablate per example: the `k` that
    ``attribution_patching`` ranks highest (the linear estimate of the zero-ablation
    effect), the `k_direct` (`AttributeConfig.candidates_direct`) that ``direct`` ranks
    highest, ties broken by the lower head index; and, given ``floor`` ``[B]``, every head
    whose ``attribution_patching`` estimate reaches its example's floor."""

    def top(v: Tensor, n: int) -> Tensor:
        mask = torch.zeros_like(v, dtype=torch.bool)
        if n > 0:
            keep = torch.argsort(v, dim=1, descending=True, stable=True)[:, :n]
            mask.scatter_(1, keep, True)
        return mask

    mask = top(patching, k) | top(direct, k_direct)
    if floor is not None:
        mask |= patching >= floor.to(patching.dtype)[:, None]
    return mask


@dataclass
class _Batch:
    """One batch's tensors, all on the model's device."""

    example_ids: np.ndarray
    layer: int
    neurons: Tensor  # [B]
    ids: Tensor
    mask: Tensor
    pos: Tensor  # [B]
    reference: np.ndarray | None = None  # [B] the label rule's reference activation

    @classmethod
    def on_device(
        cls,
        lm: LoadedModel,
        example_ids: np.ndarray,
        layer: int,
        neurons: Tensor,
        ids: Tensor,
        mask: Tensor,
        reference: np.ndarray | None = None,
    ) -> _Batch:
        """A batch of right-padded prompts, moved to `lm`'s device (`reference` stays on the
        host); each example is read at its last unpadded position."""
        dev = lm.device
        mask = mask.to(dev)
        return cls(
            example_ids, layer, neurons.to(dev), ids.to(dev), mask, mask.sum(1) - 1, reference
        )


def head_means(
    lm: LoadedModel, prompts: list[list[int]], max_layer: int, batch: int = 32
) -> dict[int, Tensor]:
    """Each head's mean ``z`` over all positions of all prompts (for mean ablation)."""
    sums: dict[int, Tensor] = {}
    count = 0
    for j in range(0, len(prompts), batch):
        ids, mask = pad_right(lm, prompts[j : j + batch])
        names = [hook_name(l_, "attn.hook_z") for l_ in range(max_layer + 1)]
        _, cache = lm.run_with_cache(ids, names, attention_mask=mask, stop_after_layer=max_layer)
        m = mask.bool()
        for l_ in range(max_layer + 1):
            z = cache[names[l_]][m].double().sum(0)  # [H, dh]
            sums[l_] = sums.get(l_, 0) + z
        count += int(m.sum())
    return {l_: (v / max(count, 1)).to(lm.dtype) for l_, v in sums.items()}


class Attributor:
    """Computes every method for batches of examples of one neuron layer."""

    def __init__(self, lm: LoadedModel, cfg: AttributeConfig, means: dict[int, Tensor] | None):
        self.lm = lm
        self.cfg = cfg
        self.means = means or {}

    def run(self, b: _Batch) -> dict[str, Tensor]:
        """``{method: values [B, n_upstream_heads]}``, heads ordered by (layer, head)."""
        lm, cfg, L = self.lm, self.cfg, b.layer
        ups = upstream_layers(lm, L, cfg.include_same_layer)
        H = lm.n_heads
        B = len(b.pos)
        dev = b.pos.device
        rows = torch.arange(B, device=dev)
        stream = mlp_stream_point(lm, L)
        names = [hook_name(l_, "attn.hook_z") for l_ in ups]
        names += [stream, hook_name(L, "mlp.hook_post")]
        calls, cache = lm.capture_layer_calls(b.ids, b.mask, L, names)
        post = cache[hook_name(L, "mlp.hook_post")][rows, b.pos, b.neurons].double()
        x = cache[stream][rows, b.pos]  # [B, d]
        out: dict[str, Tensor] = {}
        methods = set(cfg.methods)
        if not ups:
            return {m: torch.zeros(B, 0, dtype=torch.float64, device=dev) for m in cfg.methods}
        zs = {l_: cache[hook_name(l_, "attn.hook_z")] for l_ in ups}  # [B, p, H, dh]
        z_last = {l_: zs[l_][rows, b.pos].double() for l_ in ups}  # [B, H, dh]
        w_in = lm.W_in(L)[b.neurons].detach()  # [B, d]
        ablations = [m for m in ABLATIONS if m in methods]
        prune = cfg.prunes(len(ups) * H)
        if "direct" in methods or prune:
            w_eff, _ = frozen_norm_direction(lm, L, x, w_in)
            out["direct"] = torch.cat(
                [
                    torch.einsum("bhd,hdm,bm->bh", z_last[l_], lm.W_O(l_).double(), w_eff)
                    for l_ in ups
                ],
                dim=1,
            )
        if "attribution_patching" in methods or prune:
            out["attribution_patching"] = self._attribution_patching(b, ups)
        if "raw" in methods:
            out["raw"] = torch.cat(
                [
                    torch.einsum("bhd,hdm,bm->bh", z_last[l_], lm.W_O(l_).double(), w_in.double())
                    for l_ in ups
                ],
                dim=1,
            )
        if "path_patching" in methods:
            vals = []
            norm = lm.mlp_norm(L)
            for l_ in ups:
                result = torch.einsum("bhd,hdm->bhm", z_last[l_].to(lm.dtype), lm.W_O(l_))
                x_abl = x[:, None, :] - result  # [B, H, d]
                a = neuron_act(
                    lm, L, norm(x_abl.reshape(B * H, -1)), b.neurons.repeat_interleave(H)
                )
                vals.append(post[:, None] - a.double().reshape(B, H))
            out["path_patching"] = torch.cat(vals, dim=1)
        chosen = None
        if prune:
            patching = out["attribution_patching"]
            floor = None
            if cfg.candidate_share > 0 and b.reference is not None:
                drive = patching.clamp(min=0).sum(dim=1).cpu().numpy()
                least = active_floor(cfg, b.reference, drive)  # the rule on the estimates
                floor = cfg.candidate_share * torch.from_numpy(least).to(patching.device)
            chosen = candidate_heads(
                out["direct"], patching, cfg.candidates, cfg.candidates_direct, floor
            )
        for method in ablations:
            out[method] = self._ablate(b, calls, zs, post, ups, method, chosen)
        return {m: out[m] for m in cfg.methods}

    def _ablate(
        self,
        b: _Batch,
        calls: list,
        zs: dict[int, Tensor],
        post: Tensor,
        ups: list[int],
        method: str,
        chosen: Tensor | None = None,
    ) -> Tensor:
        """The method's effect ``[B, n_upstream]``; with `chosen` (a mask of the same
        shape) only the chosen (example, head) cells are computed, the rest are NaN."""
        lm, L, H = self.lm, b.layer, self.lm.n_heads
        B = len(b.pos)
        dev = b.pos.device
        vals = []
        donor = None
        if method == "resample_ablation":
            g = np.random.default_rng([self.cfg.seed, int(b.example_ids[0])])
            donor = torch.from_numpy((np.arange(B) + g.integers(1, max(B, 2), size=B)) % B)
            if B == 1:
                donor = torch.zeros(1, dtype=torch.long)
            donor = donor.to(dev)
        lengths = b.mask.sum(1)
        for j, l_ in enumerate(ups):
            if chosen is None:
                rows = torch.arange(B, device=dev).repeat(H)  # row r*B+i: example i, head r
                heads = torch.arange(H, device=dev).repeat_interleave(B)
            else:
                ex_idx, head_idx = chosen[:, j * H : (j + 1) * H].nonzero(as_tuple=True)
                rows, heads = ex_idx, head_idx
            cell = torch.full((B, H), float("nan"), dtype=torch.float64, device=dev)
            if len(rows) == 0:
                vals.append(cell)
                continue
            hidden = calls[l_].hidden[rows]

            def replace(
                z: Tensor, _n: str, l_: int = l_, heads: Tensor = heads, rows: Tensor = rows
            ) -> Tensor:
                z = z.clone()
                idx = torch.arange(z.shape[0], device=z.device)
                if method == "zero_ablation":
                    z[idx, :, heads] = 0
                elif method == "mean_ablation":
                    z[idx, :, heads] = self.means[l_][heads][:, None, :].to(z.dtype)
                else:
                    assert donor is not None
                    src = donor[rows]
                    p = z.shape[1]
                    pos = torch.arange(p, device=z.device)[None, :]
                    pos = torch.minimum(pos, (lengths[src] - 1)[:, None])
                    z[idx, :, heads] = zs[l_][src[:, None], pos, heads[:, None]].to(z.dtype)
                return z

            got: dict[str, Tensor] = {}

            def grab(x: Tensor, _n: str, got: dict[str, Tensor] = got) -> None:
                got["post"] = x

            lm.replay_layers(
                calls,
                l_,
                L,
                hidden,
                rows,
                hooks=[
                    (hook_name(l_, "attn.hook_z"), replace),
                    (hook_name(L, "mlp.hook_post"), grab),
                ],
            )
            n = len(rows)
            a = got["post"][torch.arange(n, device=dev), b.pos[rows], b.neurons[rows]].double()
            cell[rows, heads] = post[rows] - a
            vals.append(cell)
        return torch.cat(vals, dim=1)

    def _attribution_patching(self, b: _Batch, ups: list[int]) -> Tensor:
        lm, L = self.lm, b.layer
        B = len(b.pos)
        leaves: dict[int, Tensor] = {}

        def track(l_: int) -> Callable[[Tensor, str], Tensor]:
            def fn(z: Tensor, _n: str) -> Tensor:
                # the returned tensor is what o_proj reads, so it is on every path downstream
                z = z.clone() if z.requires_grad else z.detach().requires_grad_(True)
                leaves[l_] = z
                return z

            return fn

        out: dict[str, Tensor] = {}

        def grab(x: Tensor, _n: str) -> None:
            out["post"] = x

        hooks: list[tuple[str, HookFn]] = [(hook_name(l_, "attn.hook_z"), track(l_)) for l_ in ups]
        hooks.append((hook_name(L, "mlp.hook_post"), grab))
        lm.run_with_cache(
            b.ids, [], attention_mask=b.mask, stop_after_layer=L, extra_hooks=hooks, grad=True
        )
        target = out["post"][torch.arange(B, device=b.pos.device), b.pos, b.neurons].sum()
        grads = torch.autograd.grad(target, [leaves[l_] for l_ in ups], allow_unused=True)
        vals = []
        valid = b.mask.bool()[:, :, None, None]
        for l_, g in zip(ups, grads, strict=True):
            z = leaves[l_].detach()
            if g is None:
                vals.append(torch.zeros(B, lm.n_heads, dtype=torch.float64, device=z.device))
                continue
            vals.append((g.double() * z.double() * valid).sum(dim=(1, 3)))
        return torch.cat(vals, dim=1)
