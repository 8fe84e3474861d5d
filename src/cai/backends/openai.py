"""The OpenAI-compatible HTTP backend: vLLM, SGLang, TGI, Ollama, llama.cpp and hosted APIs.

    spec = OpenAIModel(backend="openai", base_url="http://localhost:8000/v1", model="Qwen/Qwen2.5-7B-Instruct")
    backend = OpenAIBackend.from_spec(spec)
    backend.generate([[user("Hello")]], GenerationParams(max_new_tokens=64))
    backend.close()

One POST to {base_url}/chat/completions per conversation, at most `max_concurrency` in flight (a
thread pool sharing one httpx client); results come back in input order.

Failures. 429, 5xx, timeouts, dropped connections and unparseable bodies are transient: they are
retried up to `max_retries` times, waiting a random time in [0, backoff_s * 2**retry] ("full
jitter"), or the server's Retry-After, each wait capped at MAX_WAIT_S. Any other 4xx means the
request itself is wrong: it fails at once with the server's message (401/403/404 as InputError,
since the fix is in the config or the environment).

The API key is read once from the environment variable `api_key_env` names and only ever goes into
the Authorization header: not into repr, logs or exception messages.

Beyond the plain OpenAI API, two conventions (see cai.backends.base):
- A conversation that ends with an assistant message is continued: the request carries vLLM's and
  SGLang's `continue_final_message: true, add_generation_prompt: false`, and the reply holds only
  the continuation. Servers without that extension may reject it (400) or start a new turn.
- `option_logprobs` reads the `top_logprobs` of a short greedy completion, so it sees only options
  whose answer token is among the server's top tokens; see `read_option_logprobs`.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

import httpx

from cai.errors import BackendError, InputError
from cai.records import Conversation, Generation, GenerationParams, OptionScores

log = logging.getLogger(__name__)

MAX_WAIT_S = 60.0  # cap on one wait between attempts, Retry-After included
OPTION_MAX_TOKENS = 8  # room for a short lead-in ("The answer is (") before the answer letter
EMPTY_FLOOR = -100.0  # option log-prob when the server generated no token at all (nothing to compare with)
_CORE_STRIP = " \t\r\n()[]Ġ▁Ċ"  # whitespace, brackets, and the space/newline markers of byte-level and sentencepiece vocabularies

T = TypeVar("T")
R = TypeVar("R")


class OpenAIBackend:
    """A `Backend` over an OpenAI-compatible chat completions server."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 16,
        max_retries: int = 5,
        timeout_s: float = 120.0,
        backoff_s: float = 1.0,
        top_logprobs: int = 20,
    ):
        if not base_url.startswith(("http://", "https://")):
            raise InputError(f"base_url {base_url!r}: expected an http:// or https:// URL up to /v1, e.g. http://localhost:8000/v1")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.model = model
        self.name = model
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.top_logprobs = top_logprobs
        self.missing_options = 0  # options given a floor instead of a measured log-prob, over all calls
        self._rng = random.Random()

        key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not key and not _is_local(self.base_url):
            raise InputError(
                f"the environment variable {api_key_env} is not set: put the API key for {self.base_url} in it "
                "(or set api_key_env to null for a server that needs no key)"
            )
        # The key lives only in the client's headers (httpx masks Authorization in their repr).
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
        )

    @classmethod
    def from_spec(cls, spec) -> OpenAIBackend:
        """Build from a cai.config.OpenAIModel."""
        return cls(
            spec.base_url,
            spec.model,
            api_key_env=spec.api_key_env,
            max_concurrency=spec.max_concurrency,
            max_retries=spec.max_retries,
            timeout_s=spec.timeout_s,
            backoff_s=spec.backoff_s,
            top_logprobs=spec.top_logprobs,
        )

    def __repr__(self) -> str:
        key = "set" if self._has_key else "none"
        return (
            f"OpenAIBackend(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r}, "
            f"key={key}, max_concurrency={self.max_concurrency}, max_retries={self.max_retries})"
        )

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------ the two operations

    def generate(
        self,
        conversations: list[Conversation],
        params: GenerationParams,
        seeds: list[int] | None = None,
    ) -> list[Generation]:
        if seeds is not None and len(seeds) != len(conversations):
            raise ValueError(f"got {len(seeds)} seeds for {len(conversations)} conversations")

        def one(i: int) -> Generation:
            conv = conversations[i]
            payload = self._payload(conv, max_tokens=params.max_new_tokens, temperature=params.temperature)
            payload["top_p"] = params.top_p
            if params.stop:
                payload["stop"] = list(params.stop)
            if seeds is not None:
                payload["seed"] = seeds[i]
            body = self._post(payload)
            choice = body["choices"][0]
            usage = body.get("usage") or {}
            return Generation(
                text=choice["message"].get("content") or "",
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
            )

        return self._map(one, list(range(len(conversations))))

    def option_logprobs(self, conversations: list[Conversation], options: list[str]) -> list[OptionScores]:
        cores = [option_core(o) for o in options]
        if not options or "" in cores or len(set(cores)) != len(cores):
            raise ValueError(
                f"options {options!r}: need at least one, each non-empty and distinct once whitespace and "
                "brackets are stripped (the API reports tokens, so ' (A)' is matched by its core 'A')"
            )

        def one(conv: Conversation) -> OptionScores:
            payload = self._payload(conv, max_tokens=OPTION_MAX_TOKENS, temperature=0.0)
            payload["logprobs"] = True
            payload["top_logprobs"] = self.top_logprobs
            body = self._post(payload)
            content = (body["choices"][0].get("logprobs") or {}).get("content")
            if content is None:
                raise RuntimeError(
                    f"{self.url} (model {self.model!r}) returned no logprobs: option scoring needs a server "
                    "that supports `logprobs` and `top_logprobs` (vLLM, SGLang, llama.cpp and the OpenAI API do)"
                )
            return read_option_logprobs(content, options)

        scores = self._map(one, conversations)
        self.missing_options += sum(sum(s.missing) for s in scores)
        return scores

    # ------------------------------------------------------------ HTTP

    def _payload(self, conv: Conversation, max_tokens: int, temperature: float) -> dict[str, Any]:
        if not conv:
            raise ValueError("cannot complete an empty conversation")
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": conv,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if conv[-1]["role"] == "assistant":
            payload["continue_final_message"] = True
            payload["add_generation_prompt"] = False
        return payload

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        """POST one chat completion, retrying transient failures; return the parsed body."""
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            retry_after = None
            try:
                r = self._client.post(self.url, json=payload)
            except httpx.TimeoutException:
                last = f"timed out after {self.timeout_s:g} s"
            except httpx.TransportError as e:  # refused, reset, closed without an answer
                last = f"connection failed: {type(e).__name__}: {e}"
            else:
                if r.status_code == 429 or r.status_code >= 500:
                    last = f"HTTP {r.status_code}: {_server_message(r)}"
                    retry_after = _retry_after(r)
                elif not r.is_success:
                    raise self._request_error(r)
                else:
                    body = _parse_completion(r)
                    if body is not None:
                        return body
                    last = f"HTTP {r.status_code} with an unparseable body: {r.text[:200]!r}"
            if attempt + 1 < attempts:
                wait = self._wait_s(attempt, retry_after)
                log.warning("%s: %s; retry %d/%d in %.2f s", self.url, self._redact(last), attempt + 1, self.max_retries, wait)
                time.sleep(wait)
        raise BackendError(
            self._redact(f"{self.url} (model {self.model!r}) failed after {attempts} attempts; last error: {last}")
        )

    def _wait_s(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_WAIT_S)
        return self._rng.uniform(0.0, min(self.backoff_s * 2**attempt, MAX_WAIT_S))

    def _request_error(self, r: httpx.Response) -> Exception:
        """The exception for a 4xx that retrying cannot fix."""
        msg = f"{self.url} (model {self.model!r}) rejected the request: HTTP {r.status_code}: {_server_message(r)}"
        if r.status_code in (401, 403):
            if self._has_key:
                hint = f"check the API key in the environment variable {self.api_key_env}"
            elif self.api_key_env:
                hint = f"no API key was sent: set the environment variable {self.api_key_env}"
            else:
                hint = "no API key was sent: set api_key_env to the environment variable that holds one"
            return InputError(self._redact(f"{msg}; {hint}"))
        if r.status_code == 404:
            return InputError(self._redact(f"{msg}; check the model name and that base_url ends in /v1"))
        return RuntimeError(self._redact(msg))

    @property
    def _has_key(self) -> bool:
        return "authorization" in self._client.headers

    def _redact(self, text: str) -> str:
        """Servers sometimes echo the key they were sent; never pass it on."""
        key = self._client.headers.get("authorization", "").removeprefix("Bearer ")
        return text.replace(key, "***") if key else text

    def _map(self, fn: Callable[[T], R], items: list[T]) -> list[R]:
        """fn over items with at most max_concurrency calls in flight; results in input order."""
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(items))) as pool:
            futures = [pool.submit(fn, x) for x in items]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:  # don't start requests nobody will read; running ones finish
                    f.cancel()
                raise


# ---------------------------------------------------------------- reading option log-probs


def option_core(text: str) -> str:
    """What is left of an option or a token without whitespace and brackets: " (A)" -> "A"."""
    return text.strip(_CORE_STRIP)


def read_option_logprobs(content: list[dict[str, Any]], options: list[str]) -> OptionScores:
    """Option log-probs from the `logprobs.content` of a short greedy completion.

    An option such as " (A)" is several tokens (" (", "A", ")"), and the API reports only the
    generated tokens and each one's `top_logprobs`. So options are matched by their core ("A"):
    1. the position read is the first whose generated token is some option's core; failing that,
       the first whose top_logprobs hold some option's core;
    2. there, an option's log-prob is the logsumexp over the listed tokens with its core
       ("A" and " A" are the same answer);
    3. an option not listed there gets a floor, the smallest log-prob listed there minus log 2:
       an unlisted token is less likely than every listed one, so it ranks below them; its
       `missing` flag is set. If no position holds any option, every option gets the floor of the
       first position (EMPTY_FLOOR if nothing was generated) and is missing.

    Limitations: an option's core must be one token in the server's vocabulary ("A" is everywhere;
    a word like "Harmless" may be split and then never matches). The value read is conditioned on
    the tokens generated before the answer letter (e.g. " ("), so it is log p(option | conversation)
    only up to a term shared by all options: differences between options are exact, absolute values
    are not.
    """
    cores = [option_core(o) for o in options]
    n = len(options)
    # Per position, (core, logprob) of every listed token; the generated token is listed even when
    # a server leaves it out of top_logprobs.
    positions: list[list[tuple[str, float]]] = []
    for pos in content:
        listed = [(t["token"], float(t["logprob"])) for t in pos.get("top_logprobs") or []]
        if pos["token"] not in {tok for tok, _ in listed}:
            listed.append((pos["token"], float(pos["logprob"])))
        positions.append([(option_core(tok), lp) for tok, lp in listed])

    at = next((i for i, pos in enumerate(content) if option_core(pos["token"]) in cores), None)
    if at is None:
        at = next((i for i, pos in enumerate(positions) if any(c in cores for c, _ in pos)), None)
    if at is None:
        floor = min(lp for _, lp in positions[0]) - math.log(2) if positions else EMPTY_FLOOR
        return OptionScores(logprobs=(floor,) * n, missing=(True,) * n)

    floor = min(lp for _, lp in positions[at]) - math.log(2)
    logprobs, missing = [], []
    for core in cores:
        lps = [lp for c, lp in positions[at] if c == core]
        logprobs.append(_logsumexp(lps) if lps else floor)
        missing.append(not lps)
    return OptionScores(logprobs=tuple(logprobs), missing=tuple(missing))


# ---------------------------------------------------------------- helpers


def _logsumexp(xs: list[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def _is_local(base_url: str) -> bool:
    host = httpx.URL(base_url).host
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified  # 0.0.0.0, as vLLM prints its address


def _parse_completion(r: httpx.Response) -> dict[str, Any] | None:
    """The body if it is a chat completion with at least one choice holding a message, else None."""
    try:
        body = r.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    if not isinstance(choices[0].get("message"), dict):
        return None
    return body


def _server_message(r: httpx.Response) -> str:
    """The error message of an OpenAI-style ({"error": {"message"}}), vLLM ({"message"}) or
    FastAPI ({"detail"}) error body, else the start of the body."""
    try:
        body = r.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        for key in ("message", "detail", "error"):
            if body.get(key):
                return str(body[key])
    return r.text[:300] or r.reason_phrase


def _retry_after(r: httpx.Response) -> float | None:
    """Retry-After in seconds (the HTTP-date form is ignored)."""
    try:
        return max(0.0, float(r.headers["retry-after"]))
    except (KeyError, ValueError):
        return None
