"""The second planted world (`lookuplens.zoo.tripworld`), its trainer and its shipped model."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from lookuplens.model.vocab import Vocab
from lookuplens.zoo import tripworld
from lookuplens.zoo.tripworld import (
    ITEMS,
    OBJECTS,
    SEASONS,
    TRIGGERS,
    generate_corpus,
    item_for,
    token_positions,
)
from lookuplens.zoo.tripworld_train import TripConfig, build_tokenizer, train_tripworld


def test_trips_are_reproducible_and_the_splits_differ() -> None:
    a = generate_corpus(50, 3)
    assert [d.text for d in a] == [d.text for d in generate_corpus(50, 3)]
    held = generate_corpus(50, 3, "heldout")
    assert not {d.text for d in a} & {d.text for d in held}
    with pytest.raises(ValueError, match="split"):
        generate_corpus(1, 0, "test")


def test_the_cue_is_far_back_and_decides_the_item_only_in_part() -> None:
    docs = generate_corpus(3000, 0)
    cued = [d for d in docs if d.cue is not None]
    share = sum(d.item == item_for(str(d.cue), d.trigger) for d in cued) / len(cued)
    expected = tripworld.CUE_P + (1 - tripworld.CUE_P) / len(ITEMS)
    assert abs(share - expected) < 0.03
    uncued = Counter(d.item for d in docs if d.cue is None)
    assert set(uncued) == set(ITEMS) and min(uncued.values()) > 0.15 * sum(uncued.values())
    for d in cued[:200]:
        words = d.text.split()
        cue_at, item_at = words.index(str(d.cue)), words.index(d.trigger) + 2
        assert words[cue_at - 1] == "in" and words[item_at] == d.item
        assert words[cue_at:item_at].count(".") >= 3, d.text  # sentences between them
        assert d.text[d.item_char :].startswith(f" {d.item} ")


def test_the_item_is_a_conjunction_of_trigger_and_season() -> None:
    for mapping in TRIGGERS.values():
        assert sorted(mapping.values()) == sorted(ITEMS)  # each trigger a bijection
    # no trigger bonus plus season bonus reproduces the table: for two seasons and both
    # triggers the items differ in a crossed pattern
    a = [item_for("winter", t) for t in TRIGGERS]
    b = [item_for("summer", t) for t in TRIGGERS]
    assert a[0] != a[1] and b[0] != b[1] and a[0] != b[0]
    docs = generate_corpus(1000, 4)
    assert {d.trigger for d in docs} == set(TRIGGERS)


def test_distractors_are_seasons_of_other_items_and_near_misses_never_name_an_item() -> None:
    docs = generate_corpus(2000, 1)
    with_d = [d for d in docs if d.distractors]
    assert 0.4 < len(with_d) / len(docs) < 0.6
    for d in with_d:
        assert d.distractors[0] in d.text.split()
        if d.cue is not None:
            assert SEASONS[d.distractors[0]] != SEASONS[d.cue]
    for d in docs:
        if d.near_miss:
            sold = d.text.split(" sold ")[1].split()[1]
            assert sold in OBJECTS and sold not in ITEMS


def test_annotations_map_to_word_level_tokens() -> None:
    docs = generate_corpus(300, 2)
    tok = build_tokenizer(docs)
    vocab = Vocab(tok)
    assert vocab.convention == "word_level"
    n = 0
    for d in docs:
        ids = tripworld.encode_document(d, tok)
        for a in token_positions(d, tok):
            n += 1
            assert ids[a.target_index] == a.target_token_id
            assert vocab.text(a.target_token_id) == a.target
            assert [vocab.text(ids[i]).strip() for i in a.cue_indices] == [a.cue_word]
            assert a.cue_indices[0] < a.predict_index - 15
    assert n > 100


@pytest.mark.slow  # trains a model
def test_training_resumes_to_the_same_weights_and_writes_the_card(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lookuplens.zoo.fit as fit

    cfg = TripConfig(n_train_docs=200, n_eval_docs=40, steps=6, batch_size=8, n_layer=2,
                     n_head=2, d_model=16, d_mlp=32, num_threads=1, warmup_steps=2,
                     log_every=2)  # fmt: skip
    whole = train_tripworld(cfg, tmp_path / "whole", save_every=2)
    card = (whole / "MODEL_CARD.md").read_text()
    assert "Tripworld model" in card and "season" in card
    rec = json.loads((whole / "recipe.json").read_text())
    assert rec["evaluation"]["n_trips"] == 40 and len(rec["evaluation"]["neurons"]) == 4
    assert len((whole / "heldout.jsonl").read_text().splitlines()) == 40

    real_save = torch.save
    calls = {"n": 0}

    def stop_after_first(obj: object, path: object) -> None:
        real_save(obj, path)  # type: ignore[arg-type]
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(fit.torch, "save", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        train_tripworld(cfg, tmp_path / "again", save_every=2)
    assert not (tmp_path / "again").exists()
    monkeypatch.setattr(fit.torch, "save", real_save)
    again = train_tripworld(cfg, tmp_path / "again", save_every=2)
    from safetensors.torch import load_file

    w1, w2 = load_file(whole / "model.safetensors"), load_file(again / "model.safetensors")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_the_bundled_tripworld_model_learned_the_planted_look_up() -> None:
    """`bundled:tripworld` loads by name, scans its shipped held-out trips by default, and
    swapping the season changes its prediction (the causal truth's first half)."""
    from lookuplens.model import load_model
    from lookuplens.pipeline import build_config
    from lookuplens.zoo import bundled_corpus
    from lookuplens.zoo.ground_truth import WORLDS, GroundTruthConfig, causal_truth

    lm = load_model("bundled:tripworld", device="cpu")
    assert lm.vocab.convention == "word_level"
    cfg = build_config(overrides={"model": "bundled:tripworld"})
    assert cfg.corpus.source == bundled_corpus("tripworld")
    assert cfg.corpus.source.endswith("heldout.jsonl")
    truth = causal_truth(lm, {}, GroundTruthConfig(n_docs=60), WORLDS["tripworld"])
    assert truth["n_swaps"] > 20
    assert truth["cue_decides"]["season"] >= 0.9  # type: ignore[index]
