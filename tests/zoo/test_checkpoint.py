"""The shipped storyworld checkpoint: loads, is small, solves the planted look-ups, and
carries the " an" neuron later pipeline stages rely on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from lookuplens.zoo import default_model_path, generate_corpus, token_positions
from lookuplens.zoo.evaluate import evaluate
from lookuplens.zoo.mechanism import congruence, find_mechanism
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
def model(path: Path) -> torch.nn.Module:
    torch.set_num_threads(2)
    return AutoModelForCausalLM.from_pretrained(path).eval()


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


NAME_XFAIL = pytest.mark.xfail(
    strict=True,
    reason="known gap (issue 3 open): the shipped checkpoint recalls names at chance (51% on "
    "2000 held-out stories, see MODEL_CARD.md), short of the 90% target",
)


@pytest.fixture(scope="module")
def heldout_eval(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase):  # type: ignore[no-untyped-def]
    return evaluate(model, tokenizer, generate_corpus(300, seed=20240, split="heldout"))


@pytest.mark.parametrize("kind", ["article", "topic", pytest.param("name", marks=NAME_XFAIL)])
def test_planted_accuracy_on_fresh_heldout(heldout_eval, kind: str) -> None:  # type: ignore[no-untyped-def]
    correct, total = heldout_eval.accuracy[kind]
    assert total > 50, kind
    assert correct / total >= THRESHOLDS[kind], (kind, correct, total)


def test_article_accuracy_by_target_and_ordinary_loss(heldout_eval) -> None:  # type: ignore[no-untyped-def]
    ev = heldout_eval
    for target in (" a", " an"):
        correct, total = ev.by_target[target]
        assert total > 20 and correct / total >= THRESHOLDS["article"], (target, correct, total)
    assert ev.ordinary_loss < 3.0


@pytest.mark.xfail(
    strict=True,
    reason="known gap (issue 3 open): in the shipped checkpoint the ' an'-congruent neurons "
    "fire as much before ' a' as before ' an' (the vowel look-up is done by head L3H1 "
    "writing the logits directly), and none ranks in its layer's top 20",
)
def test_an_neuron_exists_and_fires(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, path: Path
) -> None:
    an_id = tokenizer.convert_tokens_to_ids("Ġan")
    found = []
    for layer in range(model.config.n_layer):
        best_val, best_tok = congruence(model, layer).max(dim=1)
        for n in torch.nonzero(best_tok == an_id).flatten().tolist():
            rank = int((best_val > best_val[n]).sum())
            found.append((layer, n, rank))
    assert found, "no MLP neuron has ' an' as its top congruent token"
    neurons, heads = find_mechanism(model, tokenizer, generate_corpus(150, 99, "heldout"))
    best = neurons[0]
    assert best.rank_in_layer < 20
    assert best.mean_act_target > 4 * max(
        best.mean_act_other_article, best.mean_act_elsewhere, 0.05
    )
    # the model card names the same neuron
    recipe = json.loads((path / "recipe.json").read_text())
    assert recipe["mechanism"]["neurons"][0]["neuron"] == best.label
    article_heads = [h for h in heads if h.kind == "article"]
    assert article_heads[0].cue_attention > 0.3
