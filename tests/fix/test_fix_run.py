"""`lookuplens fix` end to end on tiny random-weight models: the export reproduces the
measured figures under plain `transformers`, and bad input is one line, exit 2, nothing
written."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from cli_helpers import cli as run_cli
from lookuplens.fix.edits import Edit
from lookuplens.fix.run import FixInputs, run_fix
from lookuplens.fix.search import FixSettings

PROMPTS = [
    "She bought",
    "An owl sat on",
    "Tom and Anna walked to the harbour to buy",
    "The quick brown fox jumps over",
]
SIDE_TEXT = (
    "The quick brown fox jumps over the lazy dog.\n"
    "She bought an apple and a pear at the market.\n"
    "An owl sat on an old oak tree near the river.\n"
    "Tom and Anna walked to the harbour to buy fish.\n"
)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    side = tmp_path / "side.txt"
    side.write_text(SIDE_TEXT)
    controls = tmp_path / "controls.jsonl"
    controls.write_text(json.dumps({"prompt": "Numbers like 12 and", "expected": " the"}) + "\n")
    return {"prompts": prompts, "side": side, "controls": controls}


def _plain_probs(folder: Path, prompts: list[str], target: str) -> list[float]:
    """p(target) at each prompt's last position with plain transformers (BOS first when
    the tokenizer has one, as lookuplens tokenises)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    (tid,) = tok(target, add_special_tokens=False)["input_ids"]
    out = []
    for p in prompts:
        ids = tok(p, add_special_tokens=False)["input_ids"]
        ids = ([bos] if bos is not None else []) + ids
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].double()
        out.append(float(torch.softmax(logits, -1)[tid]))
    return out


@pytest.mark.parametrize("fam", ["gpt2", "gpt_neox", "llama"])
def test_export_reproduces_the_measured_target_under_plain_transformers(
    tiny_dirs: dict[str, Path], files: dict[str, Path], tmp_path: Path, fam: str
) -> None:
    out = tmp_path / "fix"
    result = run_fix(
        FixInputs(
            model=str(tiny_dirs[fam]),
            target=" an",
            prompts_file=str(files["prompts"]),
            out=str(out),
            controls_file=str(files["controls"]),
            corpus=str(files["side"]),
            device="cpu",
        ),
        FixSettings(max_kl=10.0, decompose=2, n_neurons=4, max_steps=2),
    )
    assert {p.name for p in out.iterdir()} == {"fix.json", "model", "report.html"}
    assert json.loads((out / "fix.json").read_text()) == json.loads(json.dumps(result))
    assert result["candidates"][0]["rank"] == 1 and result["chosen"]["rank"] == 1
    plain = _plain_probs(out / "model", PROMPTS, " an")
    assert plain == pytest.approx(result["after"]["target"]["prob"], abs=1e-5)
    # the edit did something: the reloaded model differs from the original
    assert plain != pytest.approx(result["before"]["target"]["prob"], abs=1e-6)
    assert result["reload_check"]["max_abs_prob_diff"] < 1e-5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fix.")]


def test_given_edits_are_measured_and_exported(
    tiny_dirs: dict[str, Path], files: dict[str, Path], tmp_path: Path
) -> None:
    edit = Edit("head", 0.0, head_layer=0, head=1)
    result = run_fix(
        FixInputs(
            model=str(tiny_dirs["gpt2"]),
            target=" an",
            prompts_file=str(files["prompts"]),
            out=str(tmp_path / "f"),
            corpus=str(files["side"]),
            device="cpu",
            edits=(edit,),
            naive=False,
        ),
        FixSettings(max_kl=10.0, decompose=1),
    )
    assert [c["name"] for c in result["candidates"]] == [edit.name]
    assert result["chosen"]["edits"] == [edit.to_dict()]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, columns=200)


@pytest.mark.slow
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    tiny_dirs: dict[str, Path], files: dict[str, Path], tmp_path: Path
) -> None:
    model = str(tiny_dirs["gpt2"])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    long = tmp_path / "long.txt"
    long.write_text("the " * 400 + "\n")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    out = tmp_path / "out"
    base = ["fix", "--model", model, "--corpus", str(files["side"])]
    cases = {
        "not a single token": [
            *base,
            "--target",
            " harbour owl",
            "--prompts",
            str(files["prompts"]),
        ],
        "does not exist": [*base, "--target", " an", "--prompts", str(tmp_path / "nope.txt")],
        "is empty": [*base, "--target", " an", "--prompts", str(empty)],
        "context": [*base, "--target", " an", "--prompts", str(long)],
        "max-kl": [
            *base,
            "--target",
            " an",
            "--prompts",
            str(files["prompts"]),
            "--max-kl",
            "1e-12",
        ],
    }
    for needle, args in cases.items():
        r = cli(*args, "--out", str(out))
        assert r.returncode == 2, (needle, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error")]
        assert len(lines) == 1 and needle in r.stderr, (needle, r.stderr)
        assert "Traceback" not in r.stderr
        assert not out.exists(), needle
    r = cli(*base, "--target", " an", "--prompts", str(files["prompts"]), "--out", str(existing))
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["prompts.txt", "side.txt", "controls.jsonl", "empty.txt", "long.txt", "existing"]
    )


def test_increase_goal_amplifies_and_measures_the_share_on_top(
    tiny_dirs: dict[str, Path], files: dict[str, Path], tmp_path: Path
) -> None:
    r = run_fix(
        FixInputs(
            model=str(tiny_dirs["gpt2"]),
            target=" an",
            prompts_file=str(files["prompts"]),
            out=str(tmp_path / "up"),
            corpus=str(files["side"]),
            device="cpu",
            naive=False,
        ),
        FixSettings(goal="increase", max_kl=10.0, decompose=2, n_neurons=4, max_steps=2),
    )
    chosen = r["chosen"]
    assert all(e["scale"] == 3.0 for e in chosen["edits"])
    assert chosen["effect"] > 0
    assert r["after"]["target"]["mean_prob"] > r["before"]["target"]["mean_prob"]
    share = sum(r["after"]["target"]["top_is_target"]) / len(PROMPTS)
    assert r["after"]["achieved"] == pytest.approx(share)
