"""``lookuplens inspect``: a model's architecture as lookuplens sees it."""

from __future__ import annotations

from rich.console import Console

from lookuplens.cli.params import DeviceOpt, DtypeOpt, ModelOpt, default_model


def inspect_cmd(
    model: ModelOpt = "",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
) -> None:
    """Load a model and print its architecture as lookuplens sees it."""
    from rich.table import Table

    from lookuplens.model import load_model

    lm = load_model(model or default_model(), device=device, dtype=dtype)
    t = Table(title=f"{lm.name}", show_header=False)
    rows = {
        "family": lm.spec.name,
        "model_type": lm.config.model_type,
        "layers": lm.n_layers,
        "heads (kv heads)": f"{lm.n_heads} ({lm.n_kv_heads})",
        "d_model / d_head": f"{lm.d_model} / {lm.d_head}",
        "d_mlp (neurons per layer)": lm.d_mlp,
        "vocabulary": lm.d_vocab,
        "context": lm.max_context,
        "parallel residual": lm.parallel_residual,
        "norm": lm.spec.norm,
        "gated MLP": lm.spec.mlp_up is not None,
        "device / dtype": f"{lm.device} / {str(lm.dtype).removeprefix('torch.')}",
    }
    for k, v in rows.items():
        t.add_row(k, str(v))
    Console().print(t)
