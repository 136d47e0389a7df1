"""Write MODEL_CARD.md for a storyworld checkpoint from its recipe and measurements."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from lookuplens.zoo.evaluate import Evaluation
from lookuplens.zoo.mechanism import HeadFinding, NeuronFinding

logger = logging.getLogger(__name__)


def _pct(correct: int, total: int) -> str:
    return f"{100 * correct / total:.1f}% ({correct}/{total})" if total else "n/a (0 examples)"


def render_model_card(
    recipe: Mapping[str, object],
    evaluation: Evaluation | None,
    neurons: Sequence[NeuronFinding],
    heads: Sequence[HeadFinding],
) -> str:
    """The model card's Markdown text."""
    cfg = recipe.get("config", {})
    assert isinstance(cfg, Mapping)
    corpus = recipe.get("corpus", {})
    assert isinstance(corpus, Mapping)
    n_params = recipe.get("parameters", "?")
    lines = [
        "# storyworld-gpt2: the lookuplens demo model",
        "",
        "A small GPT-2 (`GPT2LMHeadModel`) trained from scratch on the storyworld, a synthetic",
        "corpus of short stories with planted context look-ups (`lookuplens.zoo.storyworld`).",
        "",
        "## What it is, and what it is not",
        "",
        "- A stand-in for real language models: it loads the same way "
        "(`AutoModelForCausalLM.from_pretrained`,",
        "  `AutoTokenizer.from_pretrained`), so every lookuplens stage runs on it offline, and",
        "  its planted mechanisms are known, so the pipeline's findings can be checked.",
        "- Not a language model of English: it has only seen a few hundred word types in a few",
        "  sentence shapes, and it knows nothing outside the storyworld.",
        "- Convention: the BOS token `<|endoftext|>` is prepended to every document "
        "(token index 0);",
        "  the tokenizer does not add it by itself.",
        "",
        "## Architecture",
        "",
        f"- GPT-2, {cfg.get('n_layer')} layers, {cfg.get('n_head')} heads, "
        f"d_model {cfg.get('d_model')}, d_mlp {cfg.get('d_mlp')} (neurons per layer), "
        f"context {cfg.get('n_positions')}, GELU (`gelu_new`), tied embeddings.",
        f"- {n_params} parameters; vocabulary {corpus.get('vocab')} tokens "
        "(byte-level BPE trained on the storyworld, GPT-2 style: tokens carry their "
        "leading space, e.g. `Ġan`).",
        "",
        "## Training recipe",
        "",
        f"- Corpus: {corpus.get('train_docs')} generated stories (split `train`, seed "
        f"{recipe.get('seed')}), {corpus.get('train_tokens')} tokens with BOS.",
        f"- AdamW, lr {cfg.get('lr')} (warm-up {cfg.get('warmup_steps')} steps, cosine to "
        f"{cfg.get('min_lr_ratio')}x), betas ({cfg.get('beta1')}, {cfg.get('beta2')}), "
        f"weight decay {cfg.get('weight_decay')}, grad clip {cfg.get('grad_clip')}.",
        f"- {cfg.get('steps')} steps of {cfg.get('batch_size')} stories; dropout "
        f"{cfg.get('dropout')}, attention dropout {cfg.get('attn_dropout')}.",
        f"- Loss: next-token cross-entropy on every token, with the planted targets weighted "
        f"{cfg.get('planted_weight')}x (a curriculum: the look-ups are about 2% of tokens",
        "  and need attention circuits to form; without it they do not form within a CPU",
        "  budget). The model still predicts every token.",
        f"- Training time: {recipe.get('training_seconds')} s of optimisation "
        f"({recipe.get('total_seconds')} s with corpus, tokenizer and evaluation) on "
        f"{recipe.get('torch_threads')} CPU threads.",
        "- Full configuration, corpus sizes and package versions: `recipe.json`. Re-train with",
        f"  `lookuplens zoo train --out DIR --seed {recipe.get('seed')}` (defaults are this "
        "recipe).",
        "",
        "## Held-out evaluation",
        "",
    ]
    if evaluation is None:
        lines += ["Not measured.", ""]
    else:
        a, an = evaluation.by_target.get(" a", (0, 0)), evaluation.by_target.get(" an", (0, 0))
        lines += [
            f"Top-1 accuracy of the next-token prediction at each planted target, on "
            f"{evaluation.n_docs} held-out stories (split `heldout`):",
            "",
            "| look-up | target | accuracy |",
            "| --- | --- | --- |",
            f"| article | ` a` / ` an` | {_pct(*evaluation.accuracy['article'])} |",
            f"| article | ` a` only | {_pct(*a)} |",
            f"| article | ` an` only | {_pct(*an)} |",
            f"| topic | place's item | {_pct(*evaluation.accuracy['topic'])} |",
            f"| name | character's name | {_pct(*evaluation.accuracy['name'])} |",
            "",
            f"Mean loss on ordinary (non-planted) tokens: {evaluation.ordinary_loss:.4f} nats "
            f"over {evaluation.ordinary_tokens} tokens.",
            "",
        ]
    lines += ["## The planted mechanism", ""]
    if neurons:
        lines += [
            "MLP neurons whose top token by congruence is ` an` (W_out row against the",
            "unembedding with ln_f's scale folded in, centred over the vocabulary). Activation",
            "is post-GELU at the position just before the article:",
            "",
            "| neuron | congruence | rank in layer (among word tokens) | act. before ` an` "
            "| act. before ` a` | act. elsewhere | top in layer |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for n in neurons[:5]:
            lines.append(
                f"| {n.label} | {n.congruence:.3f} | {n.rank_in_layer} ({n.word_rank}) | "
                f"{n.mean_act_target:.3f} | {n.mean_act_other_article:.3f} | "
                f"{n.mean_act_elsewhere:.3f} | {100 * n.top_rate:.0f}% |"
            )
        lines.append("")
    else:
        lines += ["No MLP neuron has ` an` as its top congruent token.", ""]
    for kind, what in (
        ("article", "the earlier object noun"),
        ("topic", "the place"),
        ("name", "the earlier names (the role's gender decides which)"),
    ):
        top = [h for h in heads if h.kind == kind][:3]
        if not top:
            continue
        parts = []
        for h in top:
            extra = (
                f", attribution to {neurons[0].label} {h.attribution:+.2f}"
                if (h.attribution is not None and neurons)
                else ""
            )
            parts.append(f"{h.label} ({h.cue_attention:.2f}{extra})")
        lines.append(
            f"- {kind}: heads attending from the position before the target to {what} "
            f"(mean attention on the cue): {', '.join(parts)}."
        )
    lines += [
        "",
        "Measured with `lookuplens.zoo.mechanism.find_mechanism` on held-out stories; "
        "refresh this card with `lookuplens zoo card DIR`.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(
    out_dir: Path,
    recipe: Mapping[str, object],
    evaluation: Evaluation | None,
    neurons: Sequence[NeuronFinding],
    heads: Sequence[HeadFinding],
) -> Path:
    """Write ``out_dir/MODEL_CARD.md`` and return its path."""
    path = Path(out_dir) / "MODEL_CARD.md"
    path.write_text(render_model_card(recipe, evaluation, neurons, heads))
    logger.info("wrote %s", path)
    return path


def read_recipe(checkpoint: Path) -> dict[str, object]:
    """The checkpoint's ``recipe.json`` (empty if it has none)."""
    path = Path(checkpoint) / "recipe.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}
