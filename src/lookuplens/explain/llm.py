"""The LLM explainer and simulator (any OpenAI-compatible chat endpoint).

Failures never become explanations or predictions: a malformed answer gives status
``malformed`` (and is dropped from the cache so that a rerun asks again), a request that
failed for good ``request_failed``, and a spent budget ``budget``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from lookuplens.explain.base import (
    Env,
    ExplanationResult,
    SimulationResult,
    Status,
    StoredExplanation,
    Task,
    Usage,
)
from lookuplens.explain.client import ChatResult, LLMClient
from lookuplens.explain.errors import BudgetExhausted, LLMRequestError, MalformedAnswerError
from lookuplens.explain.prompts import (
    explain_messages,
    parse_explanation,
    parse_predictions,
    parse_yes_no,
    simulate_batch_messages,
    simulate_one_messages,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class _Meter:
    """Usage of the requests made for one task."""

    def __init__(self, client: LLMClient) -> None:
        self.client = client
        self.start = client.usage.requests
        self.used = Usage()
        self.model: str | None = None

    def add(self, r: ChatResult) -> None:
        self.used += Usage(
            cached=int(r.cached),
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
        )
        self.model = r.model

    @property
    def usage(self) -> Usage:
        return self.used + Usage(requests=self.client.usage.requests - self.start)


def _failure(e: Exception) -> Status:
    if isinstance(e, BudgetExhausted):
        return "budget"
    if isinstance(e, MalformedAnswerError):
        return "malformed"
    return "request_failed"


class LLMExplainer:
    """Asks the LLM when the head is active (or the neuron fires), as the paper did."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.cfg = env.llm

    def explain(self, task: Task) -> ExplanationResult:
        k = self.cfg.max_examples_per_class
        active = [it for it in task.train if it.active][:k]
        inactive = [it for it in task.train if not it.active][:k]
        if not active or not inactive:
            return ExplanationResult(
                None, "one_class", note="the training prompts have one class only"
            )
        client = self.env.client
        meter = _Meter(client)
        messages = explain_messages(task, active, inactive, self.cfg.max_prompt_chars)
        try:
            r = client.chat(messages, self.cfg.max_explanation_tokens)
            meter.add(r)
            try:
                text = parse_explanation(r.content)
            except MalformedAnswerError:
                client.forget(r)
                raise
        except (BudgetExhausted, LLMRequestError, MalformedAnswerError) as e:
            log.info("%s: no explanation (%s)", task.label, e)
            return ExplanationResult(
                None, _failure(e), note=str(e), llm_model=self.cfg.model, usage=meter.usage
            )
        return ExplanationResult(
            text, "ok", llm_model=meter.model or self.cfg.model, usage=meter.usage
        )


class LLMSimulator:
    """Asks the LLM, given an explanation, which held-out prompts are active.

    ``batched`` (default): up to `ScoreConfig.batch_size` prompts per request, JSON answer
    with a confidence per prompt (graded, so AUROC is computed). ``per_prompt``: the
    paper's one request per prompt with a Yes/No answer (not graded).
    """

    def __init__(self, env: Env) -> None:
        if env.score is None:
            raise ValueError("the LLM simulator needs the score stage's settings")
        self.env = env
        self.cfg = env.llm
        self.score = env.score

    def simulate(self, task: Task, explanation: StoredExplanation) -> SimulationResult:
        client = self.env.client
        meter = _Meter(client)
        n = len(task.test)
        seed = [
            self.score.seed,
            task.layer,
            task.neuron,
            (task.head_layer if task.head_layer is not None else -1) + 1,
            (task.head if task.head is not None else -1) + 1,
        ]
        order = np.random.default_rng(seed).permutation(n)
        predicted: list[bool] = [False] * n
        graded: list[float | None] = [None] * n
        try:
            if self.score.scheme == "per_prompt":
                for j in order:
                    messages = simulate_one_messages(
                        task, explanation.text, task.test[j], self.cfg.max_prompt_chars
                    )
                    r = client.chat(messages, 4)
                    meter.add(r)
                    predicted[j] = self._parse(client, r, parse_yes_no)
            else:
                size = self.score.batch_size
                for start in range(0, n, size):
                    rows = [int(j) for j in order[start : start + size]]
                    items = [task.test[j] for j in rows]
                    messages = simulate_batch_messages(
                        task, explanation.text, items, self.cfg.max_prompt_chars
                    )
                    budget = 32 + self.cfg.answer_tokens_per_prompt * len(items)
                    r = client.chat(messages, budget, json_mode=self.cfg.json_mode)
                    meter.add(r)
                    answers = self._parse(
                        client, r, functools.partial(parse_predictions, n=len(items))
                    )
                    for j, (active, conf) in zip(rows, answers, strict=True):
                        predicted[j] = active
                        if conf is not None:
                            graded[j] = conf if active else 1.0 - conf
        except (BudgetExhausted, LLMRequestError, MalformedAnswerError) as e:
            log.info("%s: not simulated (%s)", task.label, e)
            return SimulationResult(
                None, None, _failure(e), note=str(e), llm_model=self.cfg.model, usage=meter.usage
            )
        scores = (
            tuple(float(g) for g in graded if g is not None)
            if all(g is not None for g in graded)
            else None
        )
        return SimulationResult(
            tuple(predicted),
            scores,
            "ok",
            llm_model=meter.model or self.cfg.model,
            usage=meter.usage,
        )

    @staticmethod
    def _parse(client: LLMClient, r: ChatResult, parse: Callable[[str], T]) -> T:
        try:
            return parse(r.content)
        except MalformedAnswerError:
            client.forget(r)
            raise
