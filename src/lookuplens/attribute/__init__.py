"""Stage 4: which upstream attention heads drive each neuron's firing.

For every example (a trimmed prompt ending at the firing token) and every upstream head
of its neuron, several attribution methods measure the head's share:

``direct``
    The head's output at the firing position, passed through the MLP-input norm with
    its scale (and centring, for LayerNorm) frozen at the example's value, dotted with
    the neuron's input direction. Exact: the direct terms of every head, attention
    bias, earlier MLP, the embeddings, plus the norm bias and the neuron's bias, sum to
    the neuron's pre-activation (`decompose_neuron_input`). For gated MLPs the input
    direction is the gate's, so the terms sum to the gate's pre-activation.
``raw``
    The paper's: the head's output dotted with W_in, no norm.
``zero_ablation``, ``mean_ablation``, ``resample_ablation``
    Clean activation minus the activation with the head's output (its ``z``, at every
    position) replaced by zeros, by its mean over all positions of all examples, or by
    the ``z`` of another example (same position index, clipped to its length). Positive
    means the head drives the neuron. Only layers l..L are recomputed: the residual
    stream entering layer l is reused from the clean run (`LoadedModel.replay_layers`).
``attribution_patching``
    The first-order estimate of ``zero_ablation``: gradient of the activation with
    respect to the head's ``z`` times ``z`` (summed over positions); one backward pass
    for all heads of a batch.
``path_patching``
    The zero-ablation effect through the head's direct path to the neuron only: the
    neuron's input residual with the head's output removed at the firing position,
    everything else clean. Compare with ``zero_ablation`` (the total effect).

The activation measured is the neuron's post-activation (for gated MLPs,
``act(gate) * up``). Upstream heads are the heads of layers before the neuron's layer
and, by default, of its own layer (a block's attention runs before its MLP); for
parallel-residual models (Pythia) a layer's attention does not feed its own MLP, so its
heads are never upstream.
"""

from lookuplens.attribute.config import ABLATIONS, DEFAULT_METHODS, METHODS, AttributeConfig
from lookuplens.attribute.labels import (
    build_pairs,
    label_examples,
    mechanism_label,
    pd_index,
    pd_index_cols,
)
from lookuplens.attribute.methods import Attributor, head_means
from lookuplens.attribute.methods import _Batch as _Batch
from lookuplens.attribute.readout import (
    Decomposition,
    decompose_neuron_input,
    frozen_norm_direction,
    mlp_stream_point,
    neuron_act,
    norm_readout,
    upstream_layers,
)
from lookuplens.attribute.stage import (
    AttributionResult,
    ExampleBatch,
    attribute_batch,
    attribute_examples,
    concat_attributions,
    plan_batches,
)

__all__ = [
    "ABLATIONS",
    "DEFAULT_METHODS",
    "METHODS",
    "AttributeConfig",
    "AttributionResult",
    "Attributor",
    "Decomposition",
    "ExampleBatch",
    "attribute_batch",
    "attribute_examples",
    "build_pairs",
    "concat_attributions",
    "decompose_neuron_input",
    "frozen_norm_direction",
    "head_means",
    "label_examples",
    "mechanism_label",
    "mlp_stream_point",
    "neuron_act",
    "norm_readout",
    "pd_index",
    "pd_index_cols",
    "plan_batches",
    "upstream_layers",
]
