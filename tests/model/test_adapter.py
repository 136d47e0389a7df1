"""Invariants of the model adapter, for every architecture family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from lookuplens.errors import ModelLoadError, UnsupportedArchitectureError
from lookuplens.model import LoadedModel, hook_name, load_model, parse_hook_name

PROMPTS = ["An owl sat on an old oak tree near the river.", "She bought an apple at the market."]


@pytest.fixture
def lm(tiny_dirs: dict[str, Path], family: str) -> LoadedModel:
    return load_model(tiny_dirs[family], device="cpu")


def batch(lm: LoadedModel) -> tuple[Tensor, Tensor]:
    """Two prompts, right-padded, with their attention mask."""
    rows = [lm.to_tokens(p)[0] for p in PROMPTS]
    n = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), n, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


def all_points(lm: LoadedModel) -> list[str]:
    points = [
        "hook_resid_pre",
        "hook_resid_post",
        "hook_attn_out",
        "hook_mlp_in",
        "hook_mlp_out",
        "attn.hook_z",
        "attn.hook_result",
        "mlp.hook_pre",
        "mlp.hook_post",
    ]
    if not lm.parallel_residual:
        points.append("hook_resid_mid")
    if lm.spec.mlp_up is not None:
        points.append("mlp.hook_pre_linear")
    return [hook_name(layer, p) for layer in range(lm.n_layers) for p in points]


def count_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_capture_hooks_leave_logits_identical(lm: LoadedModel) -> None:
    ids, mask = batch(lm)
    plain = lm.forward(ids, mask)
    logits, cache = lm.run_with_cache(ids, all_points(lm), attention_mask=mask)
    assert logits is not None
    assert torch.equal(plain, logits)
    assert set(cache) == set(all_points(lm))


def test_head_results_sum_to_attention_output(lm: LoadedModel) -> None:
    ids, mask = batch(lm)
    names = [
        hook_name(layer, p)
        for layer in range(lm.n_layers)
        for p in ("attn.hook_result", "hook_attn_out")
    ]
    _, cache = lm.run_with_cache(ids, names, attention_mask=mask)
    for layer in range(lm.n_layers):
        result = cache[hook_name(layer, "attn.hook_result")]
        assert result.shape == (*ids.shape, lm.n_heads, lm.d_model)
        total = result.sum(dim=2)
        b = lm.b_O(layer)
        if b is not None:
            total = total + b
        torch.testing.assert_close(
            total, cache[hook_name(layer, "hook_attn_out")], atol=1e-5, rtol=0
        )


def test_neuron_activations_recompute_from_normed_input(lm: LoadedModel) -> None:
    ids, mask = batch(lm)
    _, cache = lm.run_with_cache(ids, all_points(lm), attention_mask=mask)
    for layer in range(lm.n_layers):
        x = cache[hook_name(layer, "hook_mlp_in")]
        # the MLP input is the MLP norm of the stream the MLP reads
        stream = cache[
            hook_name(layer, "hook_resid_pre" if lm.parallel_residual else "hook_resid_mid")
        ]
        torch.testing.assert_close(lm.mlp_norm(layer)(stream), x, atol=1e-6, rtol=0)
        pre = x @ lm.W_in(layer).T
        if lm.b_in(layer) is not None:
            pre = pre + lm.b_in(layer)
        torch.testing.assert_close(pre, cache[hook_name(layer, "mlp.hook_pre")], atol=1e-5, rtol=0)
        post = lm.act_fn(layer)(pre)
        up = lm.W_up(layer)
        if up is not None:
            lin = x @ up.T
            if lm.b_up(layer) is not None:
                lin = lin + lm.b_up(layer)
            post = post * lin
        torch.testing.assert_close(
            post, cache[hook_name(layer, "mlp.hook_post")], atol=1e-5, rtol=0
        )
        out = post @ lm.W_out(layer)
        if lm.b_out(layer) is not None:
            out = out + lm.b_out(layer)
        torch.testing.assert_close(out, cache[hook_name(layer, "hook_mlp_out")], atol=1e-5, rtol=0)


@pytest.mark.parametrize("via", ["attn.hook_z", "attn.hook_result"])
def test_zeroing_a_head_matches_hand_computation(lm: LoadedModel, via: str) -> None:
    ids, mask = batch(lm)
    last, head = lm.n_layers - 1, 1
    names = [hook_name(last, p) for p in ("attn.hook_result", "hook_resid_post")]
    if not lm.parallel_residual:
        names.append(hook_name(last, "hook_resid_mid"))
    _, cache = lm.run_with_cache(ids, names, attention_mask=mask)
    removed = cache[hook_name(last, "attn.hook_result")][:, :, head]
    if lm.parallel_residual:
        # the MLP reads resid_pre, so only the head's own term leaves the stream
        resid = cache[hook_name(last, "hook_resid_post")] - removed
    else:
        mid = cache[hook_name(last, "hook_resid_mid")] - removed
        mlp = lm.module(last, lm.spec.mlp)
        resid = mid + mlp(lm.mlp_norm(last)(mid))
    with torch.no_grad():
        expected = lm.hf.get_output_embeddings()(lm.final_norm(resid))

    def zero(x: Tensor, _name: str) -> Tensor:
        x = x.clone()
        x[:, :, head] = 0
        return x

    logits, _ = lm.run_with_cache(
        ids, [], attention_mask=mask, extra_hooks=[(hook_name(last, via), zero)]
    )
    assert logits is not None
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(logits, lm.forward(ids, mask), atol=1e-4)


def test_scaling_a_neuron_changes_mlp_output_by_its_vector(lm: LoadedModel) -> None:
    ids, mask = batch(lm)
    layer, n, k = 0, 5, 3.0
    names = [hook_name(layer, "mlp.hook_post"), hook_name(layer, "hook_mlp_out")]
    _, base = lm.run_with_cache(ids, names, attention_mask=mask)

    def scale(x: Tensor, _name: str) -> Tensor:
        x = x.clone()
        x[..., n] *= k
        return x

    _, new = lm.run_with_cache(ids, names, attention_mask=mask, extra_hooks=[(names[0], scale)])
    act = base[names[0]][..., n : n + 1]
    expected = base[names[1]] + (k - 1) * act * lm.W_out(layer)[n]
    torch.testing.assert_close(new[names[1]], expected, atol=1e-5, rtol=0)


def test_no_hook_remains_after_exit_or_exception(lm: LoadedModel) -> None:
    ids, mask = batch(lm)
    before = count_hooks(lm.hf)
    lm.run_with_cache(ids, all_points(lm), attention_mask=mask, stop_after_layer=0)
    assert count_hooks(lm.hf) == before

    def boom(_x: Tensor, _name: str) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        lm.run_with_cache(
            ids, all_points(lm), extra_hooks=[(hook_name(lm.n_layers - 1, "mlp.hook_post"), boom)]
        )
    assert count_hooks(lm.hf) == before
    with pytest.raises(ValueError), lm.hooks([(hook_name(0, "mlp.hook_post"), boom)]):
        assert count_hooks(lm.hf) > before
        raise ValueError("escaping")
    assert count_hooks(lm.hf) == before


def test_attention_pattern_capture(lm: LoadedModel) -> None:
    ids, mask = batch(lm)
    impl = lm.hf.config._attn_implementation
    name = hook_name(0, "attn.hook_pattern")
    _, cache = lm.run_with_cache(ids, [name], attention_mask=mask)
    pat = cache[name]
    assert pat.shape == (ids.shape[0], lm.n_heads, ids.shape[1], ids.shape[1])
    valid = mask.bool()
    rows = pat.sum(-1)[valid.unsqueeze(1).expand(-1, lm.n_heads, -1)]
    torch.testing.assert_close(rows, torch.ones_like(rows), atol=1e-5, rtol=0)
    assert torch.all(pat.triu(diagonal=1) == 0)  # causal
    assert lm.hf.config._attn_implementation == impl


def test_stop_after_layer_skips_the_rest(lm: LoadedModel) -> None:
    ids, mask = batch(lm)
    n0 = hook_name(0, "mlp.hook_post")
    full_logits, full = lm.run_with_cache(ids, [n0], attention_mask=mask)
    logits, part = lm.run_with_cache(
        ids,
        [n0, hook_name(lm.n_layers - 1, "mlp.hook_post")],
        attention_mask=mask,
        stop_after_layer=0,
    )
    assert logits is None and full_logits is not None
    assert torch.equal(part[n0], full[n0])
    assert hook_name(lm.n_layers - 1, "mlp.hook_post") not in part


def test_weight_shapes(lm: LoadedModel) -> None:
    assert lm.W_in(0).shape == (lm.d_mlp, lm.d_model)
    assert lm.W_out(0).shape == (lm.d_mlp, lm.d_model)
    assert lm.W_O(0).shape == (lm.n_heads, lm.d_head, lm.d_model)
    assert lm.W_U.shape == (lm.d_model, lm.d_vocab)
    assert (lm.W_up(0) is None) == (lm.spec.mlp_up is None)


def test_hook_names_are_validated() -> None:
    assert parse_hook_name("blocks.3.mlp.hook_post") == (3, "mlp.hook_post")
    with pytest.raises(ValueError, match="known points"):
        hook_name(0, "mlp.hook_nope")
    with pytest.raises(ValueError, match="out of range"):
        parse_hook_name("blocks.9.mlp.hook_post", n_layers=2)


def test_missing_directory_is_one_clear_error() -> None:
    with pytest.raises(ModelLoadError, match="no model directory at ./no-such-model"):
        load_model("./no-such-model", device="cpu")


def test_uncached_hub_id_offline_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="cannot be fetched.*--model DIR"):
        load_model("lookuplens-test/not-a-model", device="cpu")


def test_unsupported_architecture_lists_supported(tmp_path: Path) -> None:
    from transformers import BertConfig

    BertConfig(
        vocab_size=10,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
    ).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "bert"
    with pytest.raises(UnsupportedArchitectureError, match="gpt2.*gpt_neox.*llama"):
        load_model(tmp_path, device="cpu")


def test_file_instead_of_directory(tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="not a model directory"):
        load_model(f, device="cpu")
