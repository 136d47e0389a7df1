"""Model adapter: load a Hugging Face causal LM and hook its heads and neurons."""

from lookuplens.model.adapter import LayerCall, LoadedModel, NormParams
from lookuplens.model.arch import (
    ArchSpec,
    register_architecture,
    spec_for,
    supported_model_types,
)
from lookuplens.model.hooks import POINTS, HookFn, hook_name, parse_hook_name
from lookuplens.model.loading import as_float32, from_hf, load_model, resolve_device
from lookuplens.model.padding import pad_id, pad_right, pad_rows

__all__ = [
    "POINTS",
    "ArchSpec",
    "HookFn",
    "LayerCall",
    "LoadedModel",
    "NormParams",
    "as_float32",
    "from_hf",
    "hook_name",
    "load_model",
    "pad_id",
    "pad_right",
    "pad_rows",
    "parse_hook_name",
    "register_architecture",
    "resolve_device",
    "spec_for",
    "supported_model_types",
]
