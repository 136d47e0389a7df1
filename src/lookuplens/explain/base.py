"""Records shared by explainers and simulators, and the interfaces they implement.

A `Task` is one thing to explain: a (neuron, head) pair (when is the head driving the
neuron?) or a neuron alone (when does it fire?), with its labelled training prompts
(shown to the explainer) and held-out test prompts (simulated by the scorer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from lookuplens.explain.usage import Usage

if TYPE_CHECKING:
    from lookuplens.explain.client import LLMClient
    from lookuplens.explain.config import LLMConfig, OfflineConfig, ScoreConfig, TaskConfig
    from lookuplens.model import LoadedModel
    from lookuplens.store import RunDir

Status = Literal[
    "ok",
    "malformed",
    "request_failed",
    "budget",
    "one_class",
    "no_explanation",
    "unsupported",
    "silent",
]
"""Outcome of explaining or scoring one task. Only ``ok`` rows carry an explanation or a
score; the others say why not (``note`` has the detail). ``silent``: the neuron never
fires on its prompts (`silent_note`), so there is nothing to explain."""


@dataclass(frozen=True)
class Item:
    """One prompt of a task with its label."""

    example_id: int
    """Row of ``examples.parquet`` the prompt comes from (another neuron's, for the
    non-firing contexts of a neuron task)."""
    tokens: tuple[int, ...]
    """The prompt's token ids, BOS first, ending at the firing token."""
    text: str
    """The prompt as text (without BOS)."""
    active: bool
    """Pair task: the head drives the neuron; neuron task: the neuron fires."""
    activation: float | None = None
    """The neuron's activation at the prompt's last token (None where not measured)."""


@dataclass(frozen=True)
class Task:
    """A pair (``head_layer``, ``head`` set) or a neuron alone (both ``None``)."""

    layer: int
    neuron: int
    head_layer: int | None
    head: int | None
    token_id: int
    """The token the neuron predicts."""
    token: str
    """That token as text."""
    baseline: bool
    """The neuron belongs to the random-neuron baseline."""
    train: tuple[Item, ...]
    test: tuple[Item, ...]

    @property
    def kind(self) -> Literal["pair", "neuron"]:
        return "neuron" if self.head is None else "pair"

    @property
    def key(self) -> tuple[int, int, int | None, int | None]:
        return (self.layer, self.neuron, self.head_layer, self.head)

    @property
    def label(self) -> str:
        """``L11N2034`` or ``L11N2034/L9H3``."""
        name = f"L{self.layer}N{self.neuron}"
        return name if self.head is None else f"{name}/L{self.head_layer}H{self.head}"


def silent_note(task: Task) -> str | None:
    """Why `task` has nothing to explain, or None: its neuron's activation is at most 0
    on every prompt where it was measured (its strongest firings included), so the
    neuron never fires on them. Scale-free: a layer whose neurons fire at 1e-4 still
    fires."""
    acts = [it.activation for it in (*task.train, *task.test) if it.activation is not None]
    if not acts or max(acts) > 0:
        return None
    top = max(acts)
    shown = "0" if top == 0 else f"{top:.3g}"  # -0.0 reads as 0
    return (
        f"the neuron never fires on its strongest prompts (largest activation {shown}"
        " <= 0): nothing to explain"
    )


@dataclass(frozen=True)
class ExplanationResult:
    """What an explainer returns for one task."""

    text: str | None
    """The explanation; ``None`` unless status is ``ok``."""
    status: Status
    note: str | None = None
    """Why it failed, or remarks (never the explanation itself)."""
    features: str | None = None
    """JSON of machine-usable cues (offline explainer), for the offline simulator."""
    llm_model: str | None = None
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class StoredExplanation:
    """An explanation as read back from ``explanations.parquet``."""

    explainer: str
    text: str
    features: str | None


@dataclass(frozen=True)
class SimulationResult:
    """What a simulator returns for one task: a prediction per test prompt, in order."""

    predicted: tuple[bool, ...] | None
    """``None`` unless status is ``ok``."""
    scores: tuple[float, ...] | None
    """Graded belief that each prompt is active (for AUROC); ``None`` when not graded."""
    status: Status
    note: str | None = None
    llm_model: str | None = None
    usage: Usage = field(default_factory=Usage)


class Explainer(Protocol):
    """Explains one task from its training prompts."""

    def explain(self, task: Task) -> ExplanationResult: ...


class Simulator(Protocol):
    """Predicts, from an explanation alone, which test prompts of a task are active."""

    def simulate(self, task: Task, explanation: StoredExplanation) -> SimulationResult: ...


@dataclass
class Env:
    """What explainers and simulators may use; made by `explain_run` and `score_run`."""

    lm: LoadedModel
    run: RunDir
    tasks: TaskConfig
    offline: OfflineConfig
    llm: LLMConfig
    score: ScoreConfig | None = None
    _client: LLMClient | None = None

    @property
    def client_if_made(self) -> LLMClient | None:
        """The LLM client if something used it, else ``None``."""
        return self._client

    @property
    def client(self) -> LLMClient:
        """The LLM client, made on first use (reads the key from the environment then)."""
        if self._client is None:
            from lookuplens.explain.client import LLMClient

            cache = self.llm.cache_dir or str(self.run.path / "llm_cache")
            self._client = LLMClient(self.llm, cache_dir=cache if self.llm.use_cache else None)
        return self._client
