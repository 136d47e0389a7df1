"""The run commands' options as `RunConfig` settings.

`lookuplens run` (and `neurons`, `scan`) take one option per entry of `OPTIONS`; each sets
one or more dotted RunConfig fields. `config_from_options` builds the RunConfig the CLI
runs: defaults < ``--preset`` < ``--config`` file < the options given on the command line.
Nothing here parses a command line: the CLI passes the option values and the names the
user gave, so tests and scripts can build the same config without it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lookuplens.errors import UserError

if TYPE_CHECKING:
    from lookuplens.run_config import RunConfig

__all__ = [
    "OPTIONS",
    "Option",
    "config_from_options",
    "default_run_name",
    "option_default",
    "run_overrides",
]


def _csv_ints(value: str) -> tuple[int, ...] | None:
    if not value.strip():
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise UserError(
            f"--layers takes comma-separated integers such as 9,10,11; got {value!r}"
        ) from None


def _csv_tokens(value: str) -> tuple[str, ...]:
    """Split on commas, keeping each token's leading space (" an, juniper" -> " an", " juniper")."""
    if not value:
        return ()
    return tuple(t.rstrip() for t in value.split(",") if t.strip())


def _none_if_zero(v: object) -> object:
    return v or None


@dataclass(frozen=True)
class Option:
    """A run option: the RunConfig fields it sets (dotted) and how its value converts."""

    paths: tuple[str, ...]
    to_config: Callable[[Any], object] = lambda v: v
    """The command-line value as the config's value."""
    to_cli: Callable[[Any], object] = lambda v: v
    """The config's default as the command line shows it."""


def _join(v: object) -> str:
    return ",".join(str(x) for x in v) if v else ""  # type: ignore[attr-defined]


OPTIONS: dict[str, Option] = {
    "model": Option(("model",), str),
    "corpus": Option(("corpus.source",), str),
    "text_field": Option(("corpus.text_field",), str),
    "max_docs": Option(("corpus.max_docs",), _none_if_zero, lambda v: v or 0),
    "max_tokens": Option(("corpus.max_tokens",), _none_if_zero, lambda v: v or 0),
    "max_context": Option(("corpus.max_context",), _none_if_zero, lambda v: v or 0),
    "storyworld_docs": Option(("corpus.storyworld_docs",), int),
    "device": Option(("device",), str),
    "dtype": Option(("dtype",), str),
    "seed": Option(("seed", "neurons.seed", "examples.seed", "attribute.seed"), int),
    "layers": Option(("neurons.layers",), lambda v: _csv_ints(str(v)), _join),
    "top_n": Option(("neurons.top_n",), int),
    "tokens": Option(("neurons.tokens",), lambda v: _csv_tokens(str(v)), _join),
    "token_filter": Option(("neurons.token_filter",), str),
    "k": Option(("scan.k",), int),
    "batch_tokens": Option(("scan.batch_tokens",), int),
    "shard_docs": Option(("scan.shard_docs",), int),
    "methods": Option(
        ("attribute.methods",), lambda v: tuple(m.strip() for m in str(v).split(",")), _join
    ),
    "label_rule": Option(("attribute.label_rule",), str),
    "candidates": Option(("attribute.candidates",), int),
    "candidate_share": Option(("attribute.candidate_share",), float),
    "backend": Option(("backend",), str),
    "ray_address": Option(("ray.address",), lambda v: str(v) or None, lambda v: v or ""),
    "workers": Option(("ray.workers",), lambda v: int(v) or None, lambda v: v or 0),
}
"""CLI option -> the RunConfig fields it sets. Its default is read from `RunConfig`, and a
value given on the command line always wins over a preset and a config file."""


def run_overrides(opts: dict[str, object], given: Iterable[str]) -> dict[str, object]:
    """The dotted RunConfig settings of the given options, each checked against its choices."""
    from lookuplens.run_config import check_setting

    out: dict[str, object] = {}
    for name in given:
        opt = OPTIONS[name]
        value = opt.to_config(opts[name])
        for path in opt.paths:
            check_setting(path, value, "--" + name.replace("_", "-"))
            out[path] = value
    return out


def config_from_options(opts: dict[str, object], given: Iterable[str]) -> RunConfig:
    """RunConfig: defaults < --preset < --config file < the options given on the command line.

    `opts` maps option names (those of `OPTIONS`, plus ``preset`` and ``config``) to their
    values; `given` names the options the user set (only those override).
    """
    from lookuplens.run_config import build_config as build

    return build(
        preset=str(opts.get("preset") or ""),
        config_file=str(opts["config"]) if opts.get("config") else None,
        overrides=run_overrides(opts, given),
    )


@functools.cache
def _config_defaults() -> dict[str, Any]:
    """`RunConfig`'s defaults as nested dicts (read once)."""
    import dataclasses

    from lookuplens.run_config import RunConfig

    return dataclasses.asdict(RunConfig())


def option_default(name: str) -> object:
    """An option's default as the command line shows it, read from `RunConfig`."""
    opt = OPTIONS[name]
    value: Any = _config_defaults()
    for part in opt.paths[0].split("."):
        value = value[part]
    return opt.to_cli(value)


def default_run_name(model: str, corpus: str) -> str:
    """The run directory's name under runs/ when none is given: MODEL__CORPUS."""
    m = Path(model.rstrip("/")).name if model else "storyworld"
    c = "storyworld" if corpus == "storyworld" else Path(corpus.rstrip("/")).stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{m}__{c}")
