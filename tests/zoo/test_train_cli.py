"""`lookuplens zoo train` / `card` end to end on a tiny config, and TrainConfig rules."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from lookuplens.zoo import default_model_path
from lookuplens.zoo.cli import app, train_command
from lookuplens.zoo.train import TrainConfig

TINY = [
    "--steps",
    "6",
    "--n-docs",
    "300",
    "--layers",
    "1",
    "--heads",
    "2",
    "--d-model",
    "32",
    "--d-mlp",
    "64",
    "--eval-docs",
    "20",
    "--mechanism-docs",
    "10",
    "--log-every",
    "3",
    "--probe-every",
    "4",
    "--threads",
    "1",
]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zoo") / "tiny"
    result = CliRunner().invoke(app, ["train", "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    assert "saved" in result.output
    return out


@pytest.mark.slow  # trains a model
def test_train_writes_loadable_checkpoint(tiny_checkpoint: Path) -> None:
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "recipe.json",
        "MODEL_CARD.md",
    ):
        assert (tiny_checkpoint / name).is_file()
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    assert model.config.n_layer == 1 and model.config.n_embd == 32
    ids = torch.tensor([[tok.bos_token_id, *tok(" Mia found an owl")["input_ids"]]])
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tok))
    recipe = json.loads((tiny_checkpoint / "recipe.json").read_text())
    assert recipe["config"]["steps"] == 6 and recipe["seed"] == 0
    assert {"torch", "transformers", "tokenizers"} <= set(recipe["versions"])
    assert recipe["training_seconds"] >= 0
    assert set(recipe["evaluation"]["accuracy"]) == {"article", "topic", "name"}
    card = (tiny_checkpoint / "MODEL_CARD.md").read_text()
    assert "Held-out evaluation" in card and "stand-in" in card
    assert not list(tiny_checkpoint.parent.glob(".tiny.*"))  # no temporary folder left


@pytest.mark.slow  # trains a model
def test_train_refuses_non_empty_out(tiny_checkpoint: Path) -> None:
    before = (tiny_checkpoint / "model.safetensors").read_bytes()
    result = CliRunner().invoke(app, ["train", "--out", str(tiny_checkpoint), *TINY])
    assert result.exit_code == 2
    assert "--overwrite" in result.output
    assert (tiny_checkpoint / "model.safetensors").read_bytes() == before


@pytest.mark.slow  # trains a model
def test_train_is_deterministic(tiny_checkpoint: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    result = CliRunner().invoke(app, ["train", "--out", str(again), *TINY])
    assert result.exit_code == 0, result.output
    a = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).state_dict()
    b = AutoModelForCausalLM.from_pretrained(again).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # trains a model
def test_card_rewrites_model_card(tiny_checkpoint: Path) -> None:
    card = tiny_checkpoint / "MODEL_CARD.md"
    card.write_text("stale")
    result = CliRunner().invoke(
        app,
        [
            "card",
            str(tiny_checkpoint),
            "--eval-docs",
            "15",
            "--mechanism-docs",
            "5",
            "--threads",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "on 15 held-out stories" in card.read_text()
    assert json.loads((tiny_checkpoint / "recipe.json").read_text())["evaluation"]["n_docs"] == 15


def test_card_on_missing_folder_fails_cleanly(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["card", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "config.json" in result.output


def test_cli_defaults_are_the_recipe() -> None:
    cfg = TrainConfig()
    names = {
        "seed": "seed",
        "steps": "steps",
        "n_docs": "n_train_docs",
        "batch_size": "batch_size",
        "lr": "lr",
        "warmup_steps": "warmup_steps",
        "weight_decay": "weight_decay",
        "layers": "n_layer",
        "heads": "n_head",
        "d_model": "d_model",
        "d_mlp": "d_mlp",
        "n_positions": "n_positions",
        "dropout": "dropout",
        "attn_dropout": "attn_dropout",
        "eval_docs": "n_eval_docs",
        "mechanism_docs": "n_mechanism_docs",
        "threads": "num_threads",
        "log_every": "log_every",
        "planted_weight": "planted_weight",
        "act_l1": "act_l1",
        "echo_share": "echo_share",
        "probe_every": "probe_every",
    }
    params = inspect.signature(train_command).parameters
    for option, field in names.items():
        assert params[option].default == getattr(cfg, field), option
    assert set(names.values()) | {"vocab_size", "min_lr_ratio", "beta1", "beta2", "grad_clip"} == {
        f.name for f in dataclasses.fields(TrainConfig)
    }


def test_shipped_recipe_matches_defaults() -> None:
    recipe = json.loads((default_model_path() / "recipe.json").read_text())
    assert TrainConfig.from_json(recipe["config"]) == TrainConfig()


def test_help_documents_recipe() -> None:
    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0
    assert "recipe" in result.output and "--out" in result.output


@pytest.mark.parametrize(
    "bad", [{"d_model": 130, "n_head": 4}, {"steps": 0}, {"dropout": 1.0}, {"lr": -1.0}]
)
def test_config_rejects_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        TrainConfig(**bad)  # type: ignore[arg-type]


@pytest.mark.slow  # trains a model
def test_interrupted_training_resumes_to_the_same_weights(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interrupted run continues from its last saved state, not from scratch, and ends
    with the weights of an uninterrupted run."""
    import lookuplens.zoo.storyworld_train as train_module

    out = tmp_path / "resumed"
    args = ["train", "--out", str(out), *TINY, "--save-every", "3"]
    real_lr_at = train_module._lr_at

    def interrupt_at_step_4(step: int, cfg: TrainConfig) -> float:
        if step == 4:
            raise KeyboardInterrupt
        return real_lr_at(step, cfg)

    monkeypatch.setattr(train_module, "_lr_at", interrupt_at_step_4)
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0  # interrupted (click turns KeyboardInterrupt into exit 130)
    assert not out.exists() and (tmp_path / ".resumed.partial" / "state.pt").is_file()
    monkeypatch.setattr(train_module, "_lr_at", real_lr_at)

    result = CliRunner().invoke(app, [*args, "--verbose"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / ".resumed.partial").exists()
    a = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).state_dict()
    b = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # trains a model
def test_resume_refuses_another_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lookuplens.zoo.storyworld_train as train_module

    out = tmp_path / "other"
    real_lr_at = train_module._lr_at

    def interrupt(step: int, cfg: TrainConfig) -> float:
        if step == 4:
            raise KeyboardInterrupt
        return real_lr_at(step, cfg)

    monkeypatch.setattr(train_module, "_lr_at", interrupt)
    CliRunner().invoke(app, ["train", "--out", str(out), *TINY, "--save-every", "3"])
    monkeypatch.setattr(train_module, "_lr_at", real_lr_at)
    changed = [*TINY, "--lr", "0.001"]
    result = CliRunner().invoke(app, ["train", "--out", str(out), *changed])
    assert result.exit_code == 2 and "--restart" in result.output
    result = CliRunner().invoke(app, ["train", "--out", str(out), *changed, "--restart"])
    assert result.exit_code == 0, result.output


def test_echo_sequences_repeat_a_run_without_articles() -> None:
    from transformers import AutoTokenizer

    from lookuplens.zoo.train import echo_sequences

    tok = AutoTokenizer.from_pretrained(default_model_path())
    seqs = echo_sequences(tok, 20, seed=3)
    assert seqs == echo_sequences(tok, 20, seed=3) and seqs != echo_sequences(tok, 20, seed=4)
    articles = {tok.convert_tokens_to_ids(t) for t in ("\u0120a", "\u0120an")}
    for s in seqs:
        assert s[0] == tok.bos_token_id
        body = s[1:]
        for times in (2, 3):
            n = len(body) // times
            if len(body) % times == 0 and 8 <= n <= 32 and body == body[:n] * times:
                break
        else:
            raise AssertionError(f"not a repeated run: {body}")
        assert not articles & set(body)
