"""What a stage does, counted: groups of forward (and backward) passes, host-side work
items, and the rows of the tables it writes. `lookuplens.plan.stages` fills these in per
stage from the run's settings; `lookuplens.plan.estimate` turns them into time, memory
and disk.

Where the work depends on what the model does (how many prompts survive trimming, how
long they are, how many pairs are kept, how many cues a prompt has), the counts use the
`Rates` below: typical values measured on the bundled runs, stated in the plan's
assumptions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Item", "Pass", "Rates", "StageWork", "Table"]


@dataclass(frozen=True)
class Rates:
    """Data-dependent rates the counts assume (the bundled storyworld and tripworld runs
    and the bundled English model's run on its held-out text, on this code)."""

    top_kept: float = 0.9
    """Share of the scan's top firings that become top prompts (the rest are dropped as
    too long, never passing the trim, or duplicates): 0.95 storyworld, 0.88 tripworld."""
    contrast_found: float = 0.7
    """Share of the wanted contrast prompts found: 0.74 storyworld, 0.72 tripworld."""
    trim_keep: float = 0.8
    """Trimmed prompt length over the untrimmed one: 0.88 storyworld, 0.87 tripworld, 0.3
    on the English model's natural text (its look-ups read close by)."""
    contrast_length: float = 0.55
    """Contrast prompt length over the top prompts' (cut by the document's start):
    0.55 storyworld, 0.5 tripworld."""
    kept_pairs_per_neuron: float = 1.7
    """Kept (neuron, head) pairs per tracked neuron: 2.2 storyworld, 1.7 tripworld,
    0.1 English."""
    cue_rate: float = 0.6
    """Top prompts with a cue that the cue swap finds: 0.70 storyworld, 0.48 tripworld."""
    on_token_found: float = 0.6
    """Share of the wanted on-token firings found (`ScanConfig.on_token`): 0.59
    storyworld (0.78 of the selected neurons', 0.40 of the random ones')."""
    moved_read_word: float = 0.3
    """Trimmed prompts moved left to keep the top head's word (measured again)."""


@dataclass(frozen=True)
class Pass:
    """A group of forward passes (optionally with a backward pass) through `layers`
    consecutive decoder layers each."""

    what: str
    calls: float
    """Forward (or replay) calls: batches."""
    rows: float
    """Prompts (batch rows) in all."""
    tokens: float
    """Padded tokens in all (rows x their batch's width)."""
    seq: float
    """Mean padded width seen by attention (the positions each token attends over)."""
    layers: float
    """Decoder layers each call runs (a mean where the calls differ)."""
    backward: bool = False
    unembed: float = 0.0
    """Positions put through the LM head."""
    fp32: bool = False
    """Runs on the float32 copy of the model (the attribute stage)."""
    replay: bool = False
    """A replay of recorded layer calls (prefix reuse): no embedding, no model wrapper."""

    @property
    def layer_calls(self) -> float:
        return self.calls * self.layers

    @property
    def layer_tokens(self) -> float:
        return self.tokens * self.layers


@dataclass(frozen=True)
class Item:
    """Host-side work outside the model: `count` times a cost in seconds, measured on the
    reference machine (scaled by `Machine.python_scale`)."""

    what: str
    count: float
    seconds_each: float


@dataclass(frozen=True)
class Table:
    """A table (or file) the stage writes."""

    name: str
    rows: float
    bytes_per_row: float
    """Uncompressed: 8 bytes per number, strings and lists at their mean length."""
    note: str = ""

    @property
    def bytes(self) -> float:
        return self.rows * self.bytes_per_row


@dataclass
class StageWork:
    """One stage, counted."""

    stage: str
    passes: list[Pass] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    flops_extra: float = 0.0
    """FLOPs outside the decoder layers and the LM head (weight products, einsums)."""
    host_bytes: float = 0.0
    """Bytes of host memory traffic outside the model (elementwise work on big arrays)."""
    activation_bytes: float = 0.0
    """Peak memory of the stage's largest batch, beyond the weights."""
    knobs: list[str] = field(default_factory=list)
    """What decides the cost, in words ("640 neurons x 50 prompts x 16 candidate heads")."""
    fp32_copy: bool = False
    """Needs the float32 copy of the model alongside a bf16/fp16 one."""
    llm_requests: float = 0.0
    llm_tokens: float = 0.0
