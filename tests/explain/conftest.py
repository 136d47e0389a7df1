"""A synthetic run directory with planted labels, and a local OpenAI-compatible server.

Run directory (tiny GPT-2, layer 1): neurons 3 and 7 are selected, 11 is a random
baseline neuron. Every example is "The <subj> saw the <obj> and the <obj> by the <place>";
neuron 11's all end with "river", the others' never do. Kept pairs:

* L1N3/L0H1:  active iff the prompt mentions "owl" or "apple" (planted rule)
* L1N3/L1H2:  active at random (seeded coin)
* L1N7/L0H2:  planted rule on train, all test prompts inactive (test lacks a class)
* L1N11/L1H0: planted rule (a baseline neuron's pair)
* L1N7/L1H3:  not kept (must not be explained)
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lookuplens import store
from lookuplens.model import LoadedModel, load_model
from lookuplens.model.tiny import build_tiny_model
from lookuplens.store import RunDir

SUBJECTS = ["cat", "dog", "boy", "girl", "man", "fox"]
OBJECTS = ["owl", "apple", "pear", "fish", "boat", "hat", "cup", "kite"]
PLACES = ["tree", "hill", "road", "shop"]
PLANTED = ("owl", "apple")
N_EXAMPLES = 48
N_TRAIN = 30
LAYER = 1
SELECTED = (3, 7)
BASELINE = (11,)
PLANTED_PAIR = (1, 3, 0, 1)
RANDOM_PAIR = (1, 3, 1, 2)
ONE_CLASS_PAIR = (1, 7, 0, 2)
BASELINE_PAIR = (1, 11, 1, 0)
DROPPED_PAIR = (1, 7, 1, 3)


def sentence(rng: np.random.Generator, place: str | None = None) -> str:
    subj = SUBJECTS[rng.integers(len(SUBJECTS))]
    o1, o2 = rng.choice(len(OBJECTS), size=2, replace=False)
    where = place or PLACES[rng.integers(len(PLACES))]
    return f"The {subj} saw the {OBJECTS[o1]} and the {OBJECTS[o2]} by the {where}"


def planted(text: str) -> bool:
    return any(f" {w} " in f" {text} " for w in PLANTED)


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    rng = np.random.default_rng(123)
    texts = [sentence(rng) for _ in range(200)] + [sentence(rng, "river") for _ in range(50)]
    path = build_tiny_model("gpt2", tmp_path_factory.mktemp("explain_model"), seed=5, texts=texts)
    return load_model(path, device="cpu")


@pytest.fixture(autouse=True)
def nullable_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run-directory schema this stage needs (to be adopted by store.py): neuron rows
    have null head_layer/head; failed rows a null explanation or score."""
    wanted = {
        "explanations": {"llm_model", "head_layer", "head", "explanation"},
        "scores": {"auroc", "head_layer", "head", "tp", "fp", "tn", "fn", "balanced_accuracy"},
    }
    for name, cols in wanted.items():
        have = store.NULLABLE_COLUMNS.get(name, frozenset())
        monkeypatch.setitem(store.NULLABLE_COLUMNS, name, frozenset(have | cols))


def make_run(lm: LoadedModel, path: Path) -> RunDir:
    """Write the synthetic run directory described in the module docstring."""
    run = RunDir.create(path, {"model": {"name": "tiny"}, "seed": 0})
    rng = np.random.default_rng(7)
    bos = lm.bos_token_id
    ex: dict[str, list] = {
        k: []
        for k in (
            "example_id layer neuron rank doc_id position activation start tokens text "
            "trimmed_activation split"
        ).split()
    }
    for neuron in (*SELECTED, *BASELINE):
        for rank in range(N_EXAMPLES):
            text = sentence(rng, "river" if neuron in BASELINE else None)
            ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
            ex["example_id"].append(len(ex["example_id"]))
            ex["layer"].append(LAYER)
            ex["neuron"].append(neuron)
            ex["rank"].append(rank)
            ex["doc_id"].append(1000 * neuron + rank)
            ex["position"].append(len(ids))
            ex["activation"].append(50.0)
            ex["start"].append(1)
            ex["tokens"].append([bos, *ids])
            ex["text"].append(text)
            ex["trimmed_activation"].append(50.0)
            ex["split"].append("train" if rank < N_TRAIN else "test")
    run.write_table("examples", pa.table(ex))

    d_mlp = lm.d_mlp
    owl = lm.tokenizer(" owl", add_special_tokens=False)["input_ids"][-1]
    run.write_table(
        "neurons",
        pa.table(
            {
                "layer": [LAYER] * d_mlp,
                "neuron": list(range(d_mlp)),
                "token_id": [owl] * d_mlp,
                "token": [lm.token_str(owl)] * d_mlp,
                "congruence": [1.0] * d_mlp,
                "congruence_z": [0.0] * d_mlp,
                "vocab_kurtosis": [3.0] * d_mlp,
                "vocab_skew": [0.0] * d_mlp,
                "selected": [n in SELECTED for n in range(d_mlp)],
                "baseline": [n in BASELINE for n in range(d_mlp)],
                "target_token_id": [owl if n in SELECTED + BASELINE else -1 for n in range(d_mlp)],
            }
        ),
    )

    lab: dict[str, list] = {
        k: [] for k in "example_id layer neuron head_layer head active split".split()
    }
    coin = np.random.default_rng(99)
    pairs = (PLANTED_PAIR, RANDOM_PAIR, ONE_CLASS_PAIR, BASELINE_PAIR, DROPPED_PAIR)
    for pair in pairs:
        for i in range(len(ex["example_id"])):
            if ex["neuron"][i] != pair[1]:
                continue
            text, split = ex["text"][i], ex["split"][i]
            if pair == RANDOM_PAIR:
                active = bool(coin.random() < 0.5)
            elif pair == ONE_CLASS_PAIR:
                active = planted(text) and split == "train"
            else:
                active = planted(text)
            for k, v in zip(
                ("example_id", "layer", "neuron", "head_layer", "head", "active", "split"),
                (ex["example_id"][i], *pair, active, split),
                strict=True,
            ):
                lab[k].append(v)
    run.write_table("labels", pa.table(lab))
    run.write_table(
        "pairs",
        pa.table(
            {
                "layer": [p[0] for p in pairs],
                "neuron": [p[1] for p in pairs],
                "head_layer": [p[2] for p in pairs],
                "head": [p[3] for p in pairs],
                "active_rate": [0.45] * len(pairs),
                "n_train": [N_TRAIN] * len(pairs),
                "kept": [p != DROPPED_PAIR for p in pairs],
                "ks_stat": [0.3] * len(pairs),
                "ks_pvalue": [0.01] * len(pairs),
                "mechanism": ["lookup"] * len(pairs),
            }
        ),
    )
    return run


@pytest.fixture
def run_dir(tiny_lm: LoadedModel, tmp_path: Path) -> RunDir:
    return make_run(tiny_lm, tmp_path / "run")


# ---------------------------------------------------------------------- fake LLM server


def count_tokens(text: str) -> int:
    """The fake endpoint's token count (words and punctuation)."""
    return len(re.findall(r"\w+|[^\w\s]", text))


@dataclass
class FakeLLM:
    """An OpenAI-compatible chat endpoint on 127.0.0.1 that answers by the planted rule.

    ``faults`` is a queue of injected behaviours for the next requests: ``429``, ``500``,
    ``401``, ``timeout`` (answers after `delay_s`), ``malformed`` (not JSON), ``wrong_ids``
    (JSON with an unknown id), ``empty`` (an empty explanation).
    """

    faults: list[str] = field(default_factory=list)
    delay_s: float = 1.0
    requests: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    auth: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def answer(self, body: dict, headers: dict[str, str]) -> tuple[int, dict, float]:
        with self.lock:
            self.requests += 1
            self.auth.add(headers.get("authorization", ""))
            fault = self.faults.pop(0) if self.faults else None
        if fault in ("429", "500", "401"):
            self.kinds[f"fault_{fault}"] += 1
            return int(fault), {"error": {"message": f"injected {fault}", "type": "x"}}, 0.0
        delay = self.delay_s if fault == "timeout" else 0.0
        user = body["messages"][-1]["content"]
        prompt = " ".join(m["content"] for m in body["messages"])
        if "In two to three sentences" in user:
            kind = "explain"
            if "Attention head" in user:
                content = "The head is active when the document mentions an owl or an apple."
            else:
                content = "The neuron fires when the document ends with the word river."
            if fault == "empty":
                content = "   "
        elif "Reply with JSON only" in user:
            kind = "simulate_batch"
            rule = _rule(user)
            docs = re.findall(r"^(\d+): (.*)$", user.split("Documents (id: text):", 1)[1], re.M)
            preds = [{"id": int(i), "active": rule(t), "confidence": 0.9} for i, t in docs]
            if fault == "wrong_ids":
                preds[-1]["id"] = 999
            content = json.dumps({"predictions": preds})
        elif "Answer Yes or No" in user:
            kind = "simulate_one"
            doc = re.search(r"^Document: (.*)$", user, re.M)
            content = "Yes" if doc and _rule(user)(doc.group(1)) else "No"
        else:
            kind = "unknown"
            content = "?"
        if fault == "malformed":
            content = "Sure! Here are my predictions: {not json"
        self.kinds[kind] += 1
        payload = {
            "id": f"chatcmpl-{self.requests}",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": count_tokens(prompt),
                "completion_tokens": count_tokens(content),
                "total_tokens": count_tokens(prompt) + count_tokens(content),
            },
        }
        return 200, payload, delay


def _rule(user: str):  # noqa: ANN202
    explanation = user.split("\n", 2)[1]
    if "river" in explanation:
        return lambda text: text.rstrip().endswith("river")
    return planted


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    fake = FakeLLM()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("content-length", 0))
            body = json.loads(self.rfile.read(length))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, payload, delay = fake.answer(body, headers)
            if delay:
                time.sleep(delay)
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                if status == 429:
                    self.send_header("retry-after", "0")
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and left

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
