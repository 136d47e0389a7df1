"""The shipped storyworld checkpoint: loads, is small, solves the planted look-ups, and
carries the " an" neuron later pipeline stages rely on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2LMHeadModel,
    PreTrainedTokenizerBase,
)

from lookuplens.model import load_model
from lookuplens.neurons import NeuronsConfig, find_neurons
from lookuplens.zoo import default_model_path, generate_corpus, token_positions
from lookuplens.zoo.evaluate import Evaluation, evaluate
from lookuplens.zoo.mechanism import find_mechanism, layer_ranks, word_tokens
from lookuplens.zoo.storyworld import check_tokenizer, encode_document, single_token_words

THRESHOLDS = {"article": 0.95, "topic": 0.90, "name": 0.90}


@pytest.fixture(scope="module")
def path() -> Path:
    p = default_model_path()
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "recipe.json",
        "MODEL_CARD.md",
    ):
        assert (p / name).is_file(), f"shipped checkpoint lacks {name}"
    return p


@pytest.fixture(scope="module")
def tokenizer(path: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def model(path: Path) -> GPT2LMHeadModel:
    torch.set_num_threads(2)
    m = AutoModelForCausalLM.from_pretrained(path).eval()
    assert isinstance(m, GPT2LMHeadModel)
    return m


def test_checkpoint_is_small(path: Path) -> None:
    total = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    assert total <= 20 * 1024 * 1024


def test_tokenizer_is_gpt2_style(tokenizer: PreTrainedTokenizerBase) -> None:
    assert tokenizer.is_fast
    check_tokenizer(tokenizer)  # every target and cue word is one token
    assert tokenizer.convert_ids_to_tokens(tokenizer(" an")["input_ids"]) == ["Ġan"]
    assert tokenizer.bos_token == tokenizer.eos_token == "<|endoftext|>"
    # no BOS added by the tokenizer itself: the caller prepends it
    assert tokenizer("the owl")["input_ids"][0] != tokenizer.bos_token_id
    assert all(len(tokenizer(w)["input_ids"]) == 1 for w in single_token_words())


def test_token_positions_with_shipped_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    docs = generate_corpus(100, seed=11, split="heldout")
    n = 0
    for doc in docs:
        ids = encode_document(doc, tokenizer)
        assert ids[0] == tokenizer.convert_tokens_to_ids("<|endoftext|>")
        positions = token_positions(doc, tokenizer)
        assert len(positions) == len(doc.annotations)
        for ann, tp in zip(doc.annotations, positions, strict=True):
            assert ids[tp.target_index] == tp.target_token_id
            assert tokenizer.decode([ids[tp.target_index]]) == ann.target
            assert tp.predict_index == tp.target_index - 1 >= 1
            cue_text = "".join(tokenizer.decode([ids[i]]) for i in tp.cue_indices)
            assert ann.cue_word in cue_text
            assert max(tp.cue_indices) < tp.predict_index
            if tp.kind == "name":
                assert len(tp.cue_indices) == 2  # name and role, one token each
            n += 1
    assert n > 100


@pytest.fixture(scope="module")
def heldout_eval(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerBase) -> Evaluation:
    return evaluate(model, tokenizer, generate_corpus(300, seed=20240, split="heldout"))


@pytest.mark.slow  # heldout_eval: the bundled model on 300 held-out stories (about 7 s)
@pytest.mark.parametrize("kind", ["article", "topic", "name"])
def test_planted_accuracy_on_fresh_heldout(heldout_eval: Evaluation, kind: str) -> None:
    correct, total = heldout_eval.accuracy[kind]
    assert total > 50, kind
    assert correct / total >= THRESHOLDS[kind], (kind, correct, total)


@pytest.mark.slow  # heldout_eval, as above
def test_article_accuracy_by_target_and_ordinary_loss(heldout_eval: Evaluation) -> None:
    ev = heldout_eval
    for target in (" a", " an"):
        correct, total = ev.by_target[target]
        assert total >= 15 and correct / total >= THRESHOLDS["article"], (target, correct, total)
    assert ev.ordinary_loss < 3.0


@pytest.mark.slow  # the mechanism search and the neurons stage on the bundled model (about 6 s)
def test_an_neuron_exists_and_fires(
    model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerBase, path: Path
) -> None:
    """An MLP neuron whose top token is " an", in the pipeline's default selection (top 20
    word-token neurons of its layer), fires before " an" and not before " a"; a head
    attends from the same position to the object noun and drives it."""
    an_id = tokenizer.convert_tokens_to_ids("Ġan")
    words = word_tokens(tokenizer, model.config.vocab_size)
    found = []
    for layer in range(model.config.n_layer):
        r = layer_ranks(model, layer, words)
        found += [(layer, n) for n in torch.nonzero(r.top_token == an_id).flatten().tolist()]
    assert found, "no MLP neuron has ' an' as its top congruent token"
    neurons, heads = find_mechanism(model, tokenizer, generate_corpus(150, 99, "heldout"))
    best = neurons[0]
    assert (best.layer, best.neuron) in found
    # the pipeline's default neurons stage selects it
    table = find_neurons(load_model(str(path)), NeuronsConfig()).to_pandas()
    row = table[(table.layer == best.layer) & (table.neuron == best.neuron)]
    assert bool(row.selected.iloc[0]) and row.token.iloc[0] == " an"
    assert best.mean_act_target > 1.0
    assert best.mean_act_target > 4 * max(best.mean_act_other_article, best.mean_act_elsewhere)
    # the model card and recipe name the same neuron
    recipe = json.loads((path / "recipe.json").read_text())
    assert recipe["mechanism"]["neurons"][0]["neuron"] == best.label
    assert best.label in (path / "MODEL_CARD.md").read_text()
    # the look-up head reads the object noun and writes into the neuron's input
    head = [h for h in heads if h.kind == "article"][0]
    assert head.cue_attention > 0.5
    assert head.layer <= best.layer
    assert head.attribution is not None and head.attribution > 0
