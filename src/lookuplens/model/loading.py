"""Load a Hugging Face causal LM (a local folder, a hub id or a bundled model) as a
`LoadedModel`, or wrap one already loaded; the device and dtype names they take."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from lookuplens.errors import ModelLoadError
from lookuplens.model.adapter import LoadedModel
from lookuplens.model.arch import spec_for

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

__all__ = ["DeviceName", "DtypeName", "as_float32", "from_hf", "load_model", "resolve_device"]

DeviceName = Literal["auto", "cpu", "cuda"]
DtypeName = Literal["auto", "float32", "bfloat16", "float16"]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(
            f"device {device!r} was asked for but CUDA is not available here; "
            "use --device cpu or --device auto"
        )
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ModelLoadError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


_TOKENIZER_PACKAGES = {
    "sentencepiece": "sentencepiece",
    "protobuf": "protobuf",
    "google.protobuf": "protobuf",
    "tiktoken": "tiktoken",
    "blobfile": "blobfile",
}


def _needed_package(message: str) -> str | None:
    """The pip package a tokenizer's loading error asks for, if it names one."""
    low = message.lower()
    for needle, package in _TOKENIZER_PACKAGES.items():
        if needle in low and ("install" in low or "no module" in low or "requires" in low):
            return package
    return None


def _missing_package_message(name: str, e: BaseException) -> str:
    package = _needed_package(str(e)) or getattr(e, "name", None)
    if package:
        return (
            f"cannot load the tokenizer of {name!r}: it needs the Python package {package!r}; "
            f"install it (pip install {package}) and run again"
        )
    return f"cannot load the tokenizer of {name!r}: {e}".splitlines()[0]


def _names_local_dir(name: str) -> bool:
    """Whether a model name that is not an existing folder was meant as one (so a missing
    folder is reported as such, not looked up on the hub as a model id).

    A leading ``.``, ``/`` or ``~``, a trailing separator, or a doubled one. Neither a slash
    (hub ids are ``org/name``) nor a suffix (``Qwen/Qwen2.5-0.5B``) counts. The rule
    differs from `lookuplens.corpus.sources._names_local_file`, which does count data-file
    suffixes and backslashes: a corpus is one file, a model a folder.
    """
    return (
        name.startswith((".", "/", "~")) or name.endswith(("/", os.sep)) or os.sep + os.sep in name
    )


def load_model(
    name_or_path: str | Path,
    device: str = "auto",
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
) -> LoadedModel:
    """Load a causal LM and its tokenizer from a local directory or a hub id.

    A local directory is used when it exists. A hub id is first looked up in the local
    cache only; the hub is asked only when that fails and ``HF_HUB_OFFLINE`` is unset.
    The architecture is checked against the table before any weight is loaded.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    name = str(name_or_path)
    if name.startswith("bundled:"):
        from lookuplens.zoo import bundled_model_path

        try:
            name = str(bundled_model_path(name))
        except KeyError as e:
            raise ModelLoadError(str(e.args[0])) from None
    path = Path(name).expanduser()
    if dtype not in _DTYPES and dtype != "auto":
        raise ModelLoadError(f"unknown dtype {dtype!r}; use float32, bfloat16, float16 or auto")
    dev = resolve_device(device)
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{name} is not a model directory (no config.json in it); pass a folder "
                "written by save_pretrained, or a hub id such as gpt2"
            )
        source, local_only = str(path), True
    elif _names_local_dir(name):
        raise ModelLoadError(
            f"no model directory at {name}; pass an existing folder written by save_pretrained "
            "or a hub id such as gpt2"
        )
    else:
        source, local_only = name, True

    def load_config(local: bool) -> Any:
        return AutoConfig.from_pretrained(source, local_files_only=local)

    try:
        try:
            config = load_config(local_only)
        except OSError:
            if source != name or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
                raise
            log.info("%s not in the local cache; asking the hub", name)
            config = load_config(False)
            local_only = False
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"cannot load model {name!r}: it is not a local directory and its weights cannot be "
            "fetched (offline or not cached); download it where you have network "
            f"(huggingface-cli download {name} --local-dir DIR) and pass --model DIR"
        ) from e

    spec = spec_for(config.model_type)
    torch_dtype = "auto" if dtype == "auto" else _DTYPES[dtype]
    try:
        hf = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=torch_dtype,
            attn_implementation=attn_implementation,
            local_files_only=local_only,
        )
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    except ImportError as e:
        raise ModelLoadError(_missing_package_message(name, e)) from e
    except (OSError, ValueError) as e:
        if _needed_package(str(e)):
            raise ModelLoadError(_missing_package_message(name, e)) from e
        raise ModelLoadError(f"cannot load model {name!r}: {e}".splitlines()[0]) from e
    # transformers wraps PreTrainedModel.to in functools.wraps, whose stub (_Wrapped) does
    # not bind self, so mypy takes `dev` for the model
    hf.to(dev)  # type: ignore[arg-type]
    hf.eval()
    hf.requires_grad_(False)
    log.debug("loaded %s (%s) on %s", name, spec.name, dev)
    return LoadedModel(hf, tokenizer, spec, name)


def from_hf(hf: PreTrainedModel, tokenizer: Any, name: str = "in-memory") -> LoadedModel:
    """Wrap an already loaded model (for notebooks and tests)."""
    spec = spec_for(hf.config.model_type)
    hf.eval()
    hf.requires_grad_(False)
    return LoadedModel(hf, tokenizer, spec, name)


def as_float32(lm: LoadedModel) -> LoadedModel:
    """`lm` itself when it is in float32, else a float32 copy of it on the same device.

    For the computations that must close exactly (the attribute stage's decompositions):
    the copy's weights are the reduced-precision ones upcast, so it is the same model run
    at full precision. It costs 4 bytes per parameter beside the original, which is kept.
    Loading the checkpoint with ``load_model(..., dtype="float32")`` instead gives the
    stored weights (what the pipeline and the Ray workers do).
    """
    import copy

    if lm.dtype == torch.float32:
        return lm
    # deepcopy with every floating tensor pre-copied as float32: no reduced-precision
    # duplicate is made on the way, and tied weights stay tied
    memo: dict[int, object] = {}
    for p in lm.hf.parameters():
        if p.is_floating_point() and id(p) not in memo:
            memo[id(p)] = torch.nn.Parameter(p.detach().to(torch.float32), requires_grad=False)
    for b in lm.hf.buffers():
        if b.is_floating_point() and id(b) not in memo:
            memo[id(b)] = b.detach().to(torch.float32)
    hf = copy.deepcopy(lm.hf, memo)
    hf.config.dtype = torch.float32
    log.info("made a float32 copy of %s (loaded in %s)", lm.name, lm.dtype)
    return LoadedModel(hf, lm.tokenizer, lm.spec, lm.name)
