"""A chat client for any OpenAI-compatible endpoint, with a cache, retries and a budget.

* The official ``openai`` package is imported when the first client is made (install it
  with ``pip install 'lookuplens[llm]'``).
* The key is read from the environment variable the config names, handed to the
  ``openai`` client, and kept nowhere else: not on this object, not in the cache, not in
  logs or error messages.
* Responses are cached on disk, one JSON file per request, named by the sha256 of the
  request (model, messages and sampling parameters; not the key, not the URL), so that a
  rerun sends nothing for questions already answered.
* 429, 5xx, timeouts and connection errors are retried with exponential backoff
  (honouring Retry-After, capped); other client errors (400, 422) fail the request;
  401, 403 and 404 mean the endpoint, key or model is wrong and raise `LLMConfigError`.
* Budget: before a request is sent, the request cap and the token cap (prompt tokens
  estimated at 4 characters per token) are checked; `BudgetExhausted` is raised when
  either would be passed. Cached answers are free.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lookuplens.explain.errors import BudgetExhausted, LLMConfigError, LLMRequestError
from lookuplens.explain.settings import LLMConfig
from lookuplens.explain.usage import Usage
from lookuplens.store import atomic_write_bytes, canonical_json

log = logging.getLogger(__name__)

Message = dict[str, str]
CACHE_VERSION = 1


@dataclass(frozen=True)
class ChatResult:
    """One answer."""

    content: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    """Served from the cache (no request sent)."""
    key: str
    """The request's cache key."""
    model: str
    """The model that answered, as the endpoint names it."""


def estimate_tokens(text: str) -> int:
    """Rough token count (4 characters per token) for budget checks."""
    return math.ceil(len(text) / 4)


class LLMClient:
    """See the module docstring. ``sleep`` is injectable for tests."""

    def __init__(
        self,
        cfg: LLMConfig,
        cache_dir: str | os.PathLike[str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        try:
            import openai
        except ImportError:
            raise LLMConfigError(
                "the llm explainer and scorer need the openai package: "
                "pip install 'lookuplens[llm]' (or pip install openai)"
            ) from None
        self.cfg = cfg
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._sleep = sleep
        self._openai = openai
        if cfg.api_key_env is None:
            key = "EMPTY"  # local servers without authentication accept any key
        else:
            key = os.environ.get(cfg.api_key_env, "")
            if not key:
                raise LLMConfigError(
                    f"the environment variable {cfg.api_key_env} holding the LLM's key is not "
                    f"set; export {cfg.api_key_env}=... (for a local server without keys set "
                    "api_key_env to none)"
                )
        self._client = openai.OpenAI(
            api_key=key, base_url=cfg.base_url, timeout=cfg.timeout_s, max_retries=0
        )
        del key
        self.usage = Usage()
        """Requests sent and tokens spent by this client (cache hits counted apart)."""
        self.failures = 0
        """Requests that failed for good."""
        self.exhausted = False
        """The budget stopped a request."""

    # ------------------------------------------------------------------ cache
    def request_params(self, max_tokens: int, json_mode: bool) -> dict[str, Any]:
        params: dict[str, Any] = {self.cfg.tokens_param: max_tokens}
        if self.cfg.temperature is not None:
            params["temperature"] = self.cfg.temperature
        if self.cfg.seed is not None:
            params["seed"] = self.cfg.seed
        if json_mode:
            params["response_format"] = {"type": "json_object"}
        return params

    @staticmethod
    def cache_key(model: str, messages: Sequence[Message], params: dict[str, Any]) -> str:
        body = {"v": CACHE_VERSION, "model": model, "messages": list(messages), "params": params}
        return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()

    def _cache_path(self, key: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / key[:2] / f"{key}.json"

    def _cache_get(self, key: str) -> dict[str, Any] | None:
        path = self._cache_path(key)
        if path is None or not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            resp = entry["response"]
            if not isinstance(resp["content"], str):
                raise TypeError("content")
            return dict(resp)
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ignoring unreadable cache entry %s (%s)", path, e)
            return None

    def _cache_put(self, key: str, request: dict[str, Any], response: dict[str, Any]) -> None:
        path = self._cache_path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"key": key, "request": request, "response": response}
        atomic_write_bytes(path, json.dumps(entry, ensure_ascii=False, indent=1))

    def forget(self, result: ChatResult) -> None:
        """Drop an answer from the cache (a malformed one, so a rerun asks again)."""
        path = self._cache_path(result.key)
        if path is not None:
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ requests
    def chat(
        self, messages: Sequence[Message], max_tokens: int, json_mode: bool = False
    ) -> ChatResult:
        """Answer of the model to ``messages`` (from the cache when possible).

        Raises `BudgetExhausted`, `LLMRequestError` (failed for good) or `LLMConfigError`.
        """
        cfg = self.cfg
        params = self.request_params(max_tokens, json_mode)
        key = self.cache_key(cfg.model, messages, params)
        hit = self._cache_get(key)
        if hit is not None:
            self.usage += Usage(cached=1)
            return ChatResult(
                hit["content"],
                int(hit.get("prompt_tokens", 0)),
                int(hit.get("completion_tokens", 0)),
                True,
                key,
                str(hit.get("model", cfg.model)),
            )
        estimate = sum(estimate_tokens(m["content"]) for m in messages)
        attempt = 0
        while True:
            self._check_budget(estimate)
            self.usage += Usage(requests=1)
            try:
                resp = self._client.chat.completions.create(
                    model=cfg.model,
                    messages=list(messages),  # type: ignore[arg-type]
                    **params,
                )
            except self._openai.APIStatusError as e:
                status = int(e.status_code)
                if status in (401, 403, 404):
                    self.failures += 1
                    raise LLMConfigError(
                        f"the LLM endpoint refused the request (HTTP {status}); check the base "
                        f"URL ({cfg.base_url or 'OpenAI'}), the model name ({cfg.model}) and the "
                        f"key in {cfg.api_key_env}"
                    ) from None
                if status in (408, 409, 429) or status >= 500:
                    attempt = self._backoff(attempt, f"HTTP {status}", e.response)
                    continue
                self.failures += 1
                raise LLMRequestError(f"the LLM endpoint answered HTTP {status}") from None
            except (self._openai.APITimeoutError, self._openai.APIConnectionError) as e:
                what = "timeout" if isinstance(e, self._openai.APITimeoutError) else "no connection"
                attempt = self._backoff(attempt, what, None)
                continue
            break
        content, model = _content(resp), str(getattr(resp, "model", None) or cfg.model)
        usage = getattr(resp, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        completion_tokens = getattr(usage, "completion_tokens", None)
        if prompt_tokens is None or completion_tokens is None:
            log.debug("the endpoint reported no usage; estimating tokens")
            prompt_tokens = estimate if prompt_tokens is None else prompt_tokens
            completion_tokens = (
                estimate_tokens(content) if completion_tokens is None else completion_tokens
            )
        self.usage += Usage(
            prompt_tokens=int(prompt_tokens), completion_tokens=int(completion_tokens)
        )
        response = {
            "content": content,
            "prompt_tokens": int(prompt_tokens),
            "completion_tokens": int(completion_tokens),
            "model": model,
        }
        request = {"model": cfg.model, "messages": list(messages), "params": params}
        self._cache_put(key, request, response)
        return ChatResult(content, int(prompt_tokens), int(completion_tokens), False, key, model)

    def _check_budget(self, estimate: int) -> None:
        cfg, u = self.cfg, self.usage
        if cfg.max_requests is not None and u.requests >= cfg.max_requests:
            self.exhausted = True
            raise BudgetExhausted(
                f"the request budget ({cfg.max_requests}) is spent; raise max_requests to go on"
            )
        spent = u.prompt_tokens + u.completion_tokens
        if cfg.max_tokens is not None and spent + estimate > cfg.max_tokens:
            self.exhausted = True
            raise BudgetExhausted(
                f"the token budget ({cfg.max_tokens}) would be passed ({spent} spent, about "
                f"{estimate} more asked); raise max_tokens to go on"
            )

    def _backoff(self, attempt: int, what: str, response: Any) -> int:
        cfg = self.cfg
        if attempt >= cfg.max_retries:
            self.failures += 1
            raise LLMRequestError(
                f"the LLM request failed {attempt + 1} times (last: {what}); try again later "
                "or raise max_retries"
            )
        delay = cfg.backoff_initial_s * (2**attempt)
        retry_after = _retry_after(response)
        if retry_after is not None:
            delay = max(delay, retry_after)
        delay = min(delay, cfg.backoff_max_s)
        log.info(
            "LLM request failed (%s); retry %d of %d in %.2fs",
            what,
            attempt + 1,
            cfg.max_retries,
            delay,
        )
        self._sleep(delay)
        return attempt + 1


def _retry_after(response: Any) -> float | None:
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _content(resp: Any) -> str:
    choices = getattr(resp, "choices", None) or []
    if not choices:
        return ""
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    return content if isinstance(content, str) else ""
