"""Stage 3: prompts cut to end at the firing token, trimmed from the left, split.

Each top firing (document, position) becomes a prompt that ends at the firing token.
Its start then moves right as far as the activation at the last token stays at least
`keep_fraction` (0.8, the paper's rule) of the original, found by the paper's binary
search on the start, batched: each round evaluates several candidate starts of every
firing in one forward pass (`trim_prompts`). By default (`keep_read_word`) the start then
moves left, where needed, to the word the neuron's top head reads on the untrimmed
prompt, so the trimmed prompt keeps the context the look-up uses (the 0.8x rule alone
cuts it off on many prompts of real text). A trimmed prompt is
``[BOS] + doc_tokens[start : position + 1]`` (the BOS rule of `lookuplens.corpus`,
so every stage sees prompts the same way); `start` indexes the BOS-prefixed document.
Prompts longer than `max_prompt_tokens` are dropped, duplicates (same neuron, same
tokens) removed. Then `contrast` prompts per neuron are added (`lookuplens.contrast`:
same last token and length as a top prompt, the neuron silent; column ``kind`` is
``"top"`` or ``"contrast"``, and contrasts have ``rank`` -1), and each neuron's examples
of each kind are split into train and test with a seed.
"""

from lookuplens.examples.build import build_examples
from lookuplens.examples.config import ExamplesConfig
from lookuplens.examples.reads import (
    activation_and_heads_at,
    last_token_attention,
    neuron_activation_at,
    top_head_reads,
)
from lookuplens.examples.trim import Trimmed, capped_start, trim_prompts, untrimmed_prompt
from lookuplens.examples.trim import _driving_heads as _driving_heads

__all__ = [
    "ExamplesConfig",
    "Trimmed",
    "activation_and_heads_at",
    "build_examples",
    "capped_start",
    "last_token_attention",
    "neuron_activation_at",
    "top_head_reads",
    "trim_prompts",
    "untrimmed_prompt",
]
