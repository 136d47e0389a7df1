"""`RunConfig`: everything a run depends on, and how one is built: the built-in defaults,
then a preset (``PRESETS``), then a TOML file, then dotted overrides (`build_config`),
each value checked against its choices before anything runs."""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lookuplens.attribute import AttributeConfig
from lookuplens.choices import check_choices, check_value, field_choices
from lookuplens.corpus import CorpusSpec
from lookuplens.distributed.config import RayConfig
from lookuplens.errors import UserError
from lookuplens.examples import ExamplesConfig
from lookuplens.explain import ExplainConfig, ScoreConfig
from lookuplens.model.loading import DtypeName
from lookuplens.neurons import NeuronsConfig
from lookuplens.report import ReportConfig
from lookuplens.scan import ScanConfig
from lookuplens.verify import VerifyConfig

__all__ = [
    "PRESETS",
    "RunConfig",
    "build_config",
    "bundled_model",
    "check_setting",
    "load_toml",
    "set_path",
    "setting_choices",
]


def bundled_model() -> str:
    """The bundled storyworld model's folder."""
    from lookuplens.zoo import default_model_path

    return str(default_model_path())


@dataclass(frozen=True)
class RunConfig:
    """Everything a run depends on. Mirrors the CLI options and the TOML config file."""

    model: str = ""
    """Hub id or local folder; empty means the bundled storyworld model."""
    corpus: CorpusSpec = field(default_factory=lambda: CorpusSpec("storyworld"))
    """The corpus scanned for firing prompts."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    dtype: DtypeName = "float32"
    """float32, bfloat16, float16 or auto."""
    seed: int = 0
    """Seed of every random choice (baseline neurons, splits)."""
    neurons: NeuronsConfig = field(default_factory=NeuronsConfig)
    """Stage 1 settings."""
    scan: ScanConfig = field(default_factory=ScanConfig)
    """Stage 2 settings."""
    examples: ExamplesConfig = field(default_factory=ExamplesConfig)
    """Stage 3 settings."""
    attribute: AttributeConfig = field(default_factory=AttributeConfig)
    """Stage 4 settings (attribution methods, activity labels, pair filter)."""
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    """Stage 5 settings (interventions)."""
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    """Stage 6 settings (explainer, which pairs and neurons, the LLM endpoint)."""
    score: ScoreConfig = field(default_factory=ScoreConfig)
    """Stage 7 settings (simulator, batching). Its `tasks` must equal the explain stage's."""
    report: ReportConfig = field(default_factory=ReportConfig)
    """Report settings (how many neurons, pairs and prompts are shown)."""
    backend: Literal["local", "ray"] = "local"
    """Where the scan and attribution run: this process, or Ray workers (see
    `lookuplens.distributed`). Both give identical tables; a run may resume on the other."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Ray cluster settings (address, workers) for ``backend="ray"``."""

    def __post_init__(self) -> None:
        check_choices(self)
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N; got {self.device!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> RunConfig:
        """Rebuild a config from its `dataclasses.asdict` form (run.json, a TOML file).

        Unknown keys raise a `UserError` naming them; lists become tuples.
        """
        return _from_dict(cls, data, "config")

    @property
    def model_source(self) -> str:
        """The folder or hub id to load (``bundled:NAME`` resolved to its folder)."""
        if self.model.startswith("bundled:"):
            from lookuplens.zoo import bundled_model_path

            try:
                return str(bundled_model_path(self.model))
            except KeyError as e:
                raise UserError(str(e.args[0])) from None
        return self.model or bundled_model()

    def stage_configs(self) -> dict[str, object]:
        """The settings each stage's output depends on (for the resume guard)."""
        return {
            "neurons": {
                "model": self.model or "bundled:storyworld",
                "dtype": self.dtype,
                "neurons": dataclasses.asdict(self.neurons),
                "seed": self.seed,
            },
            "scan": {
                "corpus": dataclasses.asdict(self.corpus),
                "scan": dataclasses.asdict(self.scan),
            },
            "examples": {"examples": dataclasses.asdict(self.examples)},
            "attribute": {"attribute": dataclasses.asdict(self.attribute)},
            "verify": {"verify": dataclasses.asdict(self.verify)},
            "explain": {"explain": dataclasses.asdict(self.explain)},
            "score": {"score": dataclasses.asdict(self.score)},
            "report": {"report": dataclasses.asdict(self.report)},
        }


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        # Neo, Cohen & Barez (2024), see shared/PAPER.md
        "neurons": {"top_n": 20, "token_filter": "paper", "congruence": "folded"},
        "scan": {"k": 30, "one_per_doc": True, "on_token": 0},  # top 30 documents per neuron
        "examples": {
            "keep_fraction": 0.8,  # trim while the activation stays >= 0.8x
            "max_prompt_tokens": 100,  # prompts of 100 tokens or more dropped
            "split": "rank",  # the February version explains with the first 20 prompts
            "n_train": 20,
            "contrast": 0,  # top prompts only, no contrast prompts
            "keep_read_word": False,  # the 0.8x rule alone
            "keep_heads": 0,
        },
        "attribute": {
            "label_method": "raw",  # head result . W_in, no norm
            "label_rule": "mean_std",  # active above mean + 2 sd over candidate heads
            "label_std": 2.0,
            "min_active_rate": 0.25,  # pairs kept when active on 25% to 75%
            "max_active_rate": 0.75,
            "include_same_layer": False,  # the paper's code: earlier layers only
        },
    },
}
"""Named settings bundles: ``--preset paper`` reproduces the paper's settings."""


def load_toml(path: str | Path) -> dict[str, Any]:
    """A TOML settings file, or a `UserError` saying why it cannot be read."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"config file {path} is a directory; pass a TOML file") from None
    except UnicodeDecodeError:
        raise UserError(
            f"config file {path} is not UTF-8 text; save it as UTF-8 TOML (sections corpus, "
            "neurons, scan, ...)"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None


def build_config(
    preset: str = "",
    config_file: str | Path | None = None,
    overrides: Mapping[str, object] | None = None,
) -> RunConfig:
    """A `RunConfig` from the built-in defaults, then a preset, then a TOML file, then
    `overrides` (dotted paths such as ``"attribute.label_rule"``), each on top of the last.

    An override always wins, also when its value equals the built-in default. Every value
    is checked (closed sets of choices included) before anything is run or written.
    """
    base: dict[str, Any] = dataclasses.asdict(RunConfig())
    if preset:
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
        _merge(base, PRESETS[preset])
    if config_file:
        _merge(base, load_toml(config_file))
    for path, value in (overrides or {}).items():
        set_path(base, path, value)
    _bundled_corpus(base)
    return RunConfig.from_dict(base)


def _bundled_corpus(base: dict[str, Any]) -> None:
    """A bundled model other than the storyworld scans its own held-out text unless a
    corpus is named; ``bundled:NAME`` as a corpus is that text."""
    from lookuplens.zoo import bundled_corpus

    model = str(base.get("model") or "")
    corpus = base.get("corpus") or {}
    source = str(corpus.get("source") or "")
    try:
        if source.startswith("bundled:"):
            corpus["source"] = bundled_corpus(source)
        elif source == "storyworld" and model.startswith("bundled:"):
            corpus["source"] = bundled_corpus(model)
    except KeyError as e:
        raise UserError(str(e.args[0])) from None


def _owner(path: str) -> tuple[type, str]:
    """The config dataclass holding a dotted RunConfig setting, and the field's name."""
    cls: Any = RunConfig
    *parents, leaf = path.split(".")
    for p in parents:
        cls = typing.get_type_hints(cls)[p]
    return cls, leaf


def setting_choices(path: str) -> tuple[object, ...] | None:
    """The allowed values of a dotted RunConfig setting with a closed set of choices (from
    its ``Literal`` type), else None."""
    cls, leaf = _owner(path)
    found = field_choices(cls).get(leaf)
    return None if found is None else found[0]


def check_setting(path: str, value: object, shown: str | None = None) -> None:
    """A `UserError` naming `shown` (default: the path) when `value` is not one of a
    dotted setting's closed set of choices."""
    cls, leaf = _owner(path)
    try:
        check_value(leaf, value, cls, shown or path)
    except ValueError as e:
        raise UserError(str(e)) from None


def set_path(d: dict[str, Any], path: str, value: object) -> None:
    """Set ``d["a"]["b"] = value`` for ``path="a.b"``, making the tables on the way."""
    *parents, leaf = path.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[leaf] = value


def _merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def _from_dict(cls: type, data: Mapping[str, object], where: str) -> Any:
    if not isinstance(data, Mapping):
        raise UserError(f"{where} must be a table of settings, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(
            f"unknown setting(s) {', '.join(unknown)} in {where}; known: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, object] = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, value, f"{where}.{name}")  # type: ignore[arg-type]
            continue
        try:
            check_value(name, value, cls)
        except ValueError as e:
            raise UserError(f"{where}.{e}") from None
        kwargs[name] = tuple(value) if isinstance(value, list) else value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: {e}") from None
