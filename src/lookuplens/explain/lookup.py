"""Which tokens would a head, by looking them up, make drive a neuron? (the OV view)

A context look-up head moves information from the token it attends to into the
neuron's input. Through the head's value and output weights, every vocabulary token
``t`` has a *look-up score*: the head's output if it attended to ``t`` alone, read
along the neuron's input direction (``v(t) W_O[h] . w_eff``). ``v(t)`` is the head's
value vector of ``t`` as the only token of a prompt (exact for a layer-0 head up to the
position embedding; for later layers the context's contribution to ``v`` is left out),
and ``w_eff`` is the neuron's input weights through its norm's gain and centring (the
direction `direct` attribution reads; its per-prompt scale does not change the ranking).

The tokens with the highest scores are what the head must find in the context to drive
the neuron, including tokens no training prompt contained: for the storyworld's " an"
neuron, every vowel-initial object. The offline explainer offers the set as one cue
("the prompt contains one of these tokens").
"""

from __future__ import annotations

import torch

from lookuplens.attribute import norm_readout
from lookuplens.model import LoadedModel, hook_name


class LookupScores:
    """Look-up scores of every vocabulary token, computed once per head layer."""

    def __init__(self, lm: LoadedModel, batch: int = 4096) -> None:
        self.lm = lm
        self.batch = batch
        self._values: dict[int, torch.Tensor] = {}  # layer -> [vocab, n_heads, d_head]

    def _value_vectors(self, layer: int) -> torch.Tensor:
        if layer not in self._values:
            self._values.clear()  # one layer at a time bounds memory on large vocabularies
            n_vocab = int(self.lm.W_E.shape[0])
            name = hook_name(layer, "attn.hook_z")
            parts = []
            for start in range(0, n_vocab, self.batch):
                ids = torch.arange(start, min(start + self.batch, n_vocab))[:, None]
                # a one-token prompt attends only to itself: its z is its value vector
                _, cache = self.lm.run_with_cache(ids, [name], stop_after_layer=layer)
                parts.append(cache[name][:, 0].float().cpu())
            self._values[layer] = torch.cat(parts)
        return self._values[layer]

    def scores(self, head_layer: int, head: int, layer: int, neuron: int) -> torch.Tensor:
        """``[vocab]``: each token's look-up score for (head, neuron), float64."""
        lm = self.lm
        w = norm_readout(lm, layer, lm.W_in(layer)[neuron].detach()).cpu()
        out = (lm.W_O(head_layer)[head].detach().double().cpu() @ w).float()  # [d_head]
        s = (self._value_vectors(head_layer)[:, head] @ out).double()
        # attention weights sum to one, so what every token writes alike (the value bias,
        # the position) says nothing about which token is looked up: centre on the median
        return s - s.median()

    def top_tokens(
        self,
        head_layer: int,
        head: int,
        layer: int,
        neuron: int,
        fraction: float,
        max_tokens: int,
    ) -> tuple[list[int], list[float]]:
        """The tokens scoring at least ``fraction`` of the best score (best first, at most
        ``max_tokens``); empty if none is positive."""
        s = self.scores(head_layer, head, layer, neuron)
        best = float(s.max())
        if not best > 0:
            return [], []
        order = torch.argsort(s, descending=True)[:max_tokens]
        keep = [int(i) for i in order if float(s[i]) >= fraction * best]
        return keep, [float(s[i]) for i in keep]
