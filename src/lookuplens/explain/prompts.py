"""The messages sent to an LLM, and the strict parsing of its answers.

The explainer prompt follows the paper's: the neuron's token, the active and then the
inactive training examples each with that token appended, and a request for two to three
sentences on when the head is active. Simulation asks about many held-out prompts in one
request and wants a JSON object back::

    {"predictions": [{"id": 1, "active": true, "confidence": 0.8}, ...]}

An answer that is not JSON, has another shape, or whose ids are not exactly the ids asked
about raises `MalformedAnswerError`; nothing of it is used.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from lookuplens.explain.base import Item, Task
from lookuplens.explain.errors import MalformedAnswerError

Message = dict[str, str]

EXPLAIN_SYSTEM = (
    "You are an interpretability researcher studying a transformer language model. From "
    "examples, you explain when a part of the model is active. Answer in two to three plain "
    "sentences and name the specific words or patterns involved."
)
SIMULATE_SYSTEM = (
    "You predict, from an explanation, when a part of a language model is active. "
    "Follow the requested answer format exactly."
)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")


def clip(text: str, max_chars: int) -> str:
    """The text, or its last `max_chars` characters after an ellipsis (prompts end at the
    firing token, so the end matters)."""
    text = " ".join(text.split())
    return text if len(text) <= max_chars else "..." + text[-max_chars:]


def _name(task: Task) -> str:
    if task.kind == "pair":
        return f"attention head L{task.head_layer}H{task.head}"
    return f"neuron L{task.layer}N{task.neuron}"


def explain_messages(
    task: Task, active: Sequence[Item], inactive: Sequence[Item], max_chars: int
) -> list[Message]:
    """The explainer's request for one task."""
    token = json.dumps(task.token, ensure_ascii=False)
    if task.kind == "pair":
        on, off = "the head is active", "the head is inactive"
        intro = (
            f"Attention head L{task.head_layer}H{task.head} of a language model helps neuron "
            f"L{task.layer}N{task.neuron} predict the next token {token}. The head is active "
            "on some documents and not on others. Each document ends where the neuron fires; "
            "the token it predicts follows in double brackets."
        )
        suffix = f"[[{task.token}]]"
    else:
        on, off = "the neuron fires", "the neuron does not fire"
        intro = (
            f"Neuron L{task.layer}N{task.neuron} of a language model predicts the next token "
            f"{token}. Below are documents at whose last token it fires, and documents at whose "
            "last token it does not."
        )
        suffix = ""

    def listing(items: Sequence[Item]) -> str:
        return "\n".join(
            f"{i}. {clip(it.text, max_chars)}{suffix}" for i, it in enumerate(items, 1)
        )

    user = (
        f"{intro}\n\nDocuments where {on}:\n{listing(active)}\n\n"
        f"Documents where {off}:\n{listing(inactive)}\n\n"
        f"In two to three sentences, explain when {on}."
    )
    return [{"role": "system", "content": EXPLAIN_SYSTEM}, {"role": "user", "content": user}]


def parse_explanation(content: str) -> str:
    """The explanation in an answer: its text with whitespace collapsed and outer quotes
    removed. An empty answer is malformed."""
    text = " ".join(content.split()).strip().strip('"').strip()
    if not text:
        raise MalformedAnswerError("the explanation is empty")
    return text


def _header(task: Task, explanation: str) -> str:
    verb = "is active" if task.kind == "pair" else "fires"
    role = "helps predict" if task.kind == "pair" else "predicts"
    token = json.dumps(task.token, ensure_ascii=False)
    return f"Explanation of when {_name(task)} {verb} (it {role} {token}):\n{explanation}"


def simulate_batch_messages(
    task: Task, explanation: str, items: Sequence[Item], max_chars: int
) -> list[Message]:
    """One request asking about `items` (ids 1..len(items))."""
    question = "is the head active" if task.kind == "pair" else "does the neuron fire at the end"
    docs = "\n".join(f"{i}: {clip(it.text, max_chars)}" for i, it in enumerate(items, 1))
    user = (
        f"{_header(task, explanation)}\n\nDocuments (id: text):\n{docs}\n\n"
        f"For each id, {question} on that document? Reply with JSON only: "
        '{"predictions": [{"id": 1, "active": true, "confidence": 0.8}, ...]}, one entry per '
        "id; confidence (0.5 to 1) is how sure you are of that answer."
    )
    return [{"role": "system", "content": SIMULATE_SYSTEM}, {"role": "user", "content": user}]


def simulate_one_messages(
    task: Task, explanation: str, item: Item, max_chars: int
) -> list[Message]:
    """The paper's scheme: one request per prompt, answered Yes or No."""
    question = (
        "Is the head active on this document?"
        if task.kind == "pair"
        else "Does the neuron fire at the end of this document?"
    )
    user = (
        f"{_header(task, explanation)}\n\nDocument: {clip(item.text, max_chars)}\n\n"
        f"{question} Answer Yes or No."
    )
    return [{"role": "system", "content": SIMULATE_SYSTEM}, {"role": "user", "content": user}]


def parse_yes_no(content: str) -> bool:
    """``True`` for Yes, ``False`` for No; anything else is malformed."""
    words = re.findall(r"[A-Za-z]+", content)
    first = words[0].lower() if words else ""
    if first not in ("yes", "no"):
        raise MalformedAnswerError(f"expected Yes or No, got {content[:40]!r}")
    return first == "yes"


def _load_json(content: str) -> object:
    text = _FENCE.sub("", content.strip()).strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    start, end = text.find("{"), text.rfind("}")
    if start >= 0 and end > start:
        try:
            return json.loads(text[start : end + 1])
        except json.JSONDecodeError:
            pass
    raise MalformedAnswerError(f"the answer is not JSON: {content[:60]!r}")


def parse_predictions(content: str, n: int) -> list[tuple[bool, float | None]]:
    """Predictions for ids 1..n, in id order: (active, confidence or None).

    Raises `MalformedAnswerError` unless the answer is ``{"predictions": [...]}`` with one
    entry per id 1..n, each with an integer ``id``, a boolean ``active`` and, optionally,
    a ``confidence`` between 0 and 1.
    """
    obj = _load_json(content)
    if not isinstance(obj, dict) or not isinstance(obj.get("predictions"), list):
        raise MalformedAnswerError('the answer lacks a "predictions" list')
    found: dict[int, tuple[bool, float | None]] = {}
    for entry in obj["predictions"]:
        if not isinstance(entry, dict):
            raise MalformedAnswerError("a prediction is not an object")
        pid = entry.get("id")
        if isinstance(pid, str) and pid.strip().isdigit():
            pid = int(pid)
        if not isinstance(pid, int) or isinstance(pid, bool):
            raise MalformedAnswerError(f"prediction id {pid!r} is not an integer")
        active = entry.get("active")
        if not isinstance(active, bool):
            raise MalformedAnswerError(f"prediction {pid}: active must be true or false")
        conf = entry.get("confidence")
        if conf is not None:
            if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0 <= conf <= 1:
                raise MalformedAnswerError(f"prediction {pid}: confidence must be in [0, 1]")
            conf = float(conf)
        if pid in found:
            raise MalformedAnswerError(f"id {pid} is answered twice")
        found[pid] = (active, conf)
    wanted = set(range(1, n + 1))
    if set(found) != wanted:
        missing = sorted(wanted - set(found))
        extra = sorted(set(found) - wanted)
        raise MalformedAnswerError(f"wrong ids: missing {missing[:10]}, unknown {extra[:10]}")
    return [found[i] for i in range(1, n + 1)]
