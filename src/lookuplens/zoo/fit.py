"""The training loop of the bundled models other than the storyworld: AdamW with linear
warm-up and cosine decay, length-bucketed batches, optional loss weights on planted
positions and an L1 penalty on MLP activations, resumable from a saved state.

The storyworld recipe (`lookuplens.zoo.storyworld_train`) keeps its own loop so that its shipped
checkpoint stays reproducible bit for bit.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from lookuplens.errors import UserError
from lookuplens.model.padding import pad_rows
from lookuplens.zoo.training import length_batches

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitSettings:
    """The optimisation part of a recipe."""

    steps: int
    batch_size: int
    lr: float
    min_lr_ratio: float
    warmup_steps: int
    weight_decay: float
    grad_clip: float
    seed: int
    log_every: int = 50
    planted_weight: float = 1.0
    """Loss weight of the planted positions (1.0: plain language modelling)."""
    act_l1: float = 0.0
    """L1 penalty on MLP activations (post-activation, summed over neurons)."""


def lr_at(step: int, s: FitSettings) -> float:
    """Linear warm-up to `lr`, then cosine decay to ``lr * min_lr_ratio``."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = min((step - s.warmup_steps) / max(s.steps - s.warmup_steps, 1), 1.0)
    cos = 0.5 * (1 + math.cos(math.pi * progress))
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * cos)


@dataclass(frozen=True)
class FitResult:
    seconds: float
    seen_tokens: int
    final_loss: float


def fit(
    model: Any,
    seqs: Sequence[Sequence[int]],
    pad_id: int,
    s: FitSettings,
    partial: Path,
    recipe: dict[str, object],
    planted: Sequence[Iterable[int]] | None = None,
    save_every: int = 250,
) -> FitResult:
    """Train `model` in place on `seqs` (BOS-prefixed token lists).

    `planted[i]` lists the positions ``t`` of sequence i whose next-token loss (predicting
    token ``t + 1``) gets `planted_weight`. Every `save_every` steps the state goes to
    ``partial/state.pt``; a later call with the same `recipe` resumes from it and gives
    the same weights as an uninterrupted run.
    """
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": s.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=s.lr, betas=(0.9, 0.98),
    )  # fmt: skip
    batches = length_batches([len(x) for x in seqs], s.batch_size, np.random.default_rng(s.seed))
    first_step, seen, window, prior = 0, 0, [], 0.0
    state_path = partial / "state.pt"
    if state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        if state["config"] != recipe:
            raise UserError(f"{partial} holds a training with another config; remove it")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        first_step, seen = int(state["step"]), int(state["seen"])
        window, prior = list(state["window"]), float(state["seconds"])
        for _ in range(first_step):
            next(batches)
        logger.info("resuming from step %d", first_step)
    acts: list[torch.Tensor] = []
    handles = []
    if s.act_l1 > 0:
        for block in cast("Iterable[Any]", model.transformer.h):
            handles.append(
                block.mlp.act.register_forward_hook(
                    lambda m, _i, out: acts.append(out) if m.training else None
                )
            )
    model.train()
    start = time.perf_counter()
    try:
        for step in range(first_step, s.steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, s)
            idx = next(batches)
            ids, mask = pad_rows([seqs[i] for i in idx], pad_id, torch.bool)
            acts.clear()
            logits = model(input_ids=ids, attention_mask=mask.long()).logits
            ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
            n_real = mask[:, 1:].sum()
            loss = (ce * mask[:, 1:]).sum() / n_real
            objective = loss
            if planted is not None and s.planted_weight != 1.0:
                weight = mask[:, 1:].float()
                for row, i in enumerate(idx):
                    weight[row, list(planted[i])] = s.planted_weight
                objective = (ce * weight).sum() / n_real
            if acts:
                l1 = sum((a.abs().sum(-1) * mask).sum() for a in acts) / mask.sum()
                objective = objective + s.act_l1 * l1
            opt.zero_grad(set_to_none=True)
            objective.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
            opt.step()
            seen += int(mask.sum())
            window = [*window, loss.item()][-s.log_every :]
            done = step + 1
            if done % s.log_every == 0 or done == s.steps:
                el = prior + time.perf_counter() - start
                eta = el / done * (s.steps - done)
                mean = sum(window) / len(window)
                logger.info(
                    "step %d/%d loss %.4f %.0f tok/s eta %.0fs", done, s.steps, mean, seen / el, eta
                )
            if save_every and done % save_every == 0 and done < s.steps:
                partial.mkdir(parents=True, exist_ok=True)
                state = {"config": recipe, "step": done, "model": model.state_dict(),
                         "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                         "seen": seen, "window": window,
                         "seconds": prior + time.perf_counter() - start}  # fmt: skip
                torch.save(state, partial / "state.pt.tmp")
                os.replace(partial / "state.pt.tmp", state_path)
    finally:
        for h in handles:
            h.remove()
    model.eval()
    return FitResult(prior + time.perf_counter() - start, seen, sum(window) / max(len(window), 1))
