"""The OpenAI-compatible HTTP backend: vLLM, SGLang, TGI, Ollama, llama.cpp and hosted APIs.

    spec = OpenAIModel(backend="openai", base_url=["http://gpu1:8000/v1", "http://gpu2:8000/v1"], model="Qwen/Qwen2.5-7B-Instruct")
    backend = OpenAIBackend.from_spec(spec)
    backend.generate([[user("Hello")]], GenerationParams(max_new_tokens=64))
    backend.close()

One POST to {endpoint}/chat/completions per conversation; results come back in input order, each
item exactly once.

Endpoints (cai.backends.endpoints). `base_url` is one URL or a list. Each request goes to the
endpoint with the fewest requests in flight, at most `max_concurrency` per endpoint (so the total
grows with the list). Before the first request every endpoint is asked for `GET /v1/models`
(with the API key): a wrong key is an InputError; an endpoint that does not answer is named in a
warning and set aside for a cool-down while the others work (a user with 8 servers, one of them
down, wants to go on); if none answers, that is an error naming each. An endpoint that fails
`endpoint_failures` attempts in a row is set aside for `endpoint_cooldown_s`, and its requests go
to the others.

Failures. 429, 5xx, timeouts, dropped connections and replies that fail validation
(cai.backends.replies: content missing or not text, NaN log-probs, log-prob entries without their
token, a body over the size cap derived from `max_tokens`) are transient: the attempt is retried,
on another endpoint where one is up, up to `max_retries` times, waiting a random time in
[0, backoff_s * 2**retry] ("full jitter") or the server's Retry-After, each wait capped at
MAX_WAIT_S; then the request fails with what was wrong with the last reply. Nothing from a bad
reply is used. Any other 4xx means the request itself is wrong: it fails at once with the server's
message (401/403/404 as InputError, since the fix is in the config or the environment).
`timeout_s` is a wall-clock deadline for each attempt: connect, send, wait and read together
(cai.backends.http), so a server that trickles its reply cannot hold a request past it.

Text is never markup: chat-format marker strings in outgoing messages are broken with an
invisible character (cai.backends.markers), counted in `stats.neutralized_markers`.

The API key is read once from the environment variable `api_key_env` names and only ever goes into
the Authorization header: not into repr, logs or exception messages.

Beyond the plain OpenAI API:
- A conversation that ends with an assistant message is continued: the request carries vLLM's and
  SGLang's `continue_final_message: true, add_generation_prompt: false`, and the reply holds only
  the continuation. Servers without that extension may reject it (400) or start a new turn.
- `option_logprobs`, with `option_scoring`:
  - "prompt_logprobs" (vLLM): exact. The conversation is sent with `return_token_ids: true`
    (its prompt's token ids), and the conversation continued with each option with
    `prompt_logprobs: 0` as well (`max_tokens: 1`); an option's log-prob is the sum of the prompt
    log-probs of the tokens after the prompt's own. Every option is measured, none is ever
    floored, options of any length. Cost: 1 + K requests per question, and vLLM 0.32 computes a
    request with prompt log-probs without its prefix cache (it needs every position's logits), so
    each option is a full prefill of the question: about K times the prefill of "top_logprobs".
  - "top_logprobs": the `top_logprobs` of a short greedy completion: one request per question,
    but it sees only one-token options whose token is among the server's top tokens (others get
    a floor, counted in `stats.missing_options`); see `read_option_logprobs`.
  - "auto" (default): "prompt_logprobs" if the server offers it (the first question is asked that
    way; a 400/422, or a reply without `prompt_logprobs`, means it does not), else "top_logprobs".
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import httpx

from cai.backends.endpoints import Endpoint, Endpoints
from cai.backends.http import ReplyTooLarge, exchange, make_client
from cai.backends.markers import marker_pattern, neutralize
from cai.backends.replies import (
    BASE_BYTES,
    BadReply,
    NoPromptLogprobs,
    read_generation,
    read_logprob_content,
    read_prompt_logprobs,
    read_prompt_token_ids,
    reply_cap,
)
from cai.errors import BackendError, InputError
from cai.records import Conversation, Generation, GenerationParams, OptionScores

log = logging.getLogger(__name__)

MAX_WAIT_S = 60.0  # cap on one wait between attempts, Retry-After included
CHECK_TIMEOUT_S = 10.0  # most time the start-up check waits for one endpoint's GET /models
OPTION_MAX_TOKENS = 8  # room for a short lead-in ("The answer is (") before the answer letter
EMPTY_FLOOR = -100.0  # option log-prob when the server generated no token at all (nothing to compare with)
_CORE_STRIP = " \t\r\n()[]Ġ▁Ċ"  # whitespace, brackets, and the space/newline markers of byte-level and sentencepiece vocabularies

OptionScoring = Literal["auto", "prompt_logprobs", "top_logprobs"]
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class OpenAIStats:
    """Counters over the backend's life, for a stage's metrics (`dataclasses.asdict(backend.stats)`)."""

    requests: int = 0  # attempts sent
    retries: int = 0  # attempts that were retries
    invalid_replies: int = 0  # 200 replies that failed validation (then retried)
    neutralized_markers: int = 0  # chat-marker strings broken in outgoing messages
    missing_options: int = 0  # options given a floor instead of a measured log-prob (top_logprobs scoring)
    filtered_replies: int = 0  # replies whose text the provider withheld (finish_reason content_filter)
    prompt_tokens: int = 0  # of generate calls, as the servers' usage reports them
    completion_tokens: int = 0


class RequestRejected(RuntimeError):
    """A 4xx that retrying cannot fix."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class OpenAIBackend:
    """A `Backend` over one or more OpenAI-compatible chat completions servers."""

    def __init__(
        self,
        base_url: str | list[str],
        model: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 16,
        max_retries: int = 5,
        timeout_s: float = 120.0,
        backoff_s: float = 1.0,
        top_logprobs: int = 20,
        option_scoring: OptionScoring = "auto",
        neutralize_markers: bool = True,
        extra_markers: tuple[str, ...] | list[str] = (),
        endpoint_failures: int = 3,
        endpoint_cooldown_s: float = 30.0,
    ):
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise InputError("base_url: give at least one server URL, e.g. http://localhost:8000/v1")
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise InputError(f"base_url {url!r}: expected an http:// or https:// URL up to /v1, e.g. http://localhost:8000/v1")
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise InputError(f"timeout_s {timeout_s!r}: expected a finite number of seconds > 0")
        if option_scoring not in ("auto", "prompt_logprobs", "top_logprobs"):
            raise InputError(f"option_scoring {option_scoring!r}: expected auto, prompt_logprobs or top_logprobs")
        self.base_urls = [u.rstrip("/") for u in urls]
        self.model = model
        self.name = model
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.top_logprobs = top_logprobs
        self.option_scoring: OptionScoring = option_scoring  # "auto" becomes one of the others on first use
        self.endpoints = Endpoints(self.base_urls, max_concurrency, endpoint_failures, endpoint_cooldown_s)
        self.stats = OpenAIStats()
        self._markers = marker_pattern(tuple(extra_markers)) if neutralize_markers else None
        self._rng = random.Random()
        self._lock = threading.Lock()  # guards stats
        self._setup_lock = threading.Lock()  # one start-up check, one scoring probe
        self._checked = False

        key = os.environ.get(api_key_env) if api_key_env else None
        remote = [u for u in self.base_urls if not _is_local(u)]
        if api_key_env and not key and remote:
            raise InputError(
                f"the environment variable {api_key_env} is not set: put the API key for {remote[0]} in it "
                "(or set api_key_env to null for a server that needs no key)"
            )
        # The key lives only in the client's headers (httpx masks Authorization in their repr).
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = make_client(headers, max_connections=max_concurrency * len(self.base_urls))

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
            option_scoring=spec.option_scoring,
            neutralize_markers=spec.neutralize_markers,
            extra_markers=spec.extra_markers,
            endpoint_failures=spec.endpoint_failures,
            endpoint_cooldown_s=spec.endpoint_cooldown_s,
        )

    def __repr__(self) -> str:
        key = "set" if self._has_key else "none"
        urls = self.base_urls[0] if len(self.base_urls) == 1 else self.base_urls
        return (
            f"OpenAIBackend(base_url={urls!r}, model={self.model!r}, api_key_env={self.api_key_env!r}, "
            f"key={key}, max_concurrency={self.max_concurrency}, max_retries={self.max_retries})"
        )

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------ start-up check

    def check(self) -> None:
        """Ask every endpoint for GET /models, once (the first generate or option_logprobs call does
        it). A rejected key is an InputError; endpoints that do not answer are set aside with a
        warning, and if none answers this raises naming each."""
        with self._setup_lock:
            if self._checked:
                return
            with ThreadPoolExecutor(max_workers=len(self.endpoints.all)) as pool:
                problems = list(pool.map(self._probe, self.endpoints.all))
            down = [(e, p) for e, p in zip(self.endpoints.all, problems) if p is not None]
            if len(down) == len(self.endpoints.all):
                raise BackendError(
                    self._redact(
                        f"no endpoint of model {self.model!r} answered GET /models: "
                        + "; ".join(f"{e.url} ({p})" for e, p in down)
                        + ". Start the server(s) or fix base_url."
                    )
                )
            for e, problem in down:
                self.endpoints.set_aside(e, self._redact(f"did not answer GET /models at start ({problem})"))
            self._checked = True

    def _probe(self, endpoint: Endpoint) -> str | None:
        """What is wrong with an endpoint (None: it answered). Raises InputError for a rejected key."""
        url = endpoint.url + "/models"
        try:
            r = exchange(self._client, "GET", url, None, min(self.timeout_s, CHECK_TIMEOUT_S), 16 * BASE_BYTES)
        except httpx.TimeoutException:
            return f"no answer within {min(self.timeout_s, CHECK_TIMEOUT_S):g} s"
        except httpx.TransportError as e:
            return f"connection failed: {type(e).__name__}: {e}"
        except ReplyTooLarge:
            return None  # a long model list: it answered
        if r.status in (401, 403):
            raise self._request_error(url, r)
        if r.status == 429 or r.status >= 500:
            return f"HTTP {r.status}: {_server_message(r)}"
        if r.status == 200:
            try:
                ids = [m.get("id") for m in r.json().get("data") or [] if isinstance(m, dict)]
            except (ValueError, AttributeError):
                ids = []
            if ids and self.model not in ids:
                log.warning("%s lists models %s, not %r; requests for it may fail", endpoint.url, ids[:8], self.model)
        return None  # 200, or a server without /models (404): go on

    # ------------------------------------------------------------ the two operations

    def generate(
        self,
        conversations: list[Conversation],
        params: GenerationParams,
        seeds: list[int] | None = None,
    ) -> list[Generation]:
        if seeds is not None and len(seeds) != len(conversations):
            raise ValueError(f"got {len(seeds)} seeds for {len(conversations)} conversations")
        self.check()

        def one(i: int) -> Generation:
            payload = self._payload(self._messages(conversations[i]), max_tokens=params.max_new_tokens, temperature=params.temperature)
            payload["top_p"] = params.top_p
            if params.stop:
                payload["stop"] = list(params.stop)
            if seeds is not None:
                payload["seed"] = seeds[i]
            generation, filtered = self._request(payload, read_generation, reply_cap(params.max_new_tokens))
            self._count(prompt_tokens=generation.prompt_tokens, completion_tokens=generation.completion_tokens)
            if filtered:
                self._count(filtered_replies=1)
                log.warning("model %r: the provider withheld a reply (finish_reason content_filter); it reads as empty", self.model)
            return generation

        return self._map(one, list(range(len(conversations))))

    def option_logprobs(self, conversations: list[Conversation], options: list[str]) -> list[OptionScores]:
        if not options or any(not o for o in options) or len(set(options)) != len(options):
            raise ValueError(f"options {options!r}: need at least one, each non-empty and distinct")
        if not conversations:
            return []
        self.check()
        messages = [self._messages(c) for c in conversations]
        first = None
        with self._setup_lock:
            if self.option_scoring == "auto":
                first = self._probe_prompt_logprobs(messages[0], options)
        if first is not None:  # the probe scored the first question
            return [first, *self._score_by_prompt(messages[1:], options)]
        if self.option_scoring == "prompt_logprobs":
            return self._score_by_prompt(messages, options)
        return self._score_by_top_logprobs(messages, options)

    # ------------------------------------------------------------ option scoring

    def _probe_prompt_logprobs(self, messages: Conversation, options: list[str]) -> OptionScores | None:
        """Settle option_scoring="auto" by asking the first question with prompt log-probs: its
        scores if the server offers them, else None (and top_logprobs from now on)."""
        try:
            [scores] = self._score_by_prompt([messages], options, probing=True)
        except NoPromptLogprobs as e:
            reason = str(e)
        except RequestRejected as e:
            if e.status not in (400, 422):
                raise
            reason = str(e)
        else:
            self.option_scoring = "prompt_logprobs"
            log.info("model %r: options are scored with prompt log-probs (exact)", self.model)
            return scores
        self.option_scoring = "top_logprobs"
        log.info("model %r: the server offers no prompt log-probs (%s); options are scored from top_logprobs", self.model, reason)
        return None

    def _score_by_prompt(self, messages: list[Conversation], options: list[str], probing: bool = False) -> list[OptionScores]:
        """Exact option log-probs from vLLM's prompt log-probs (module docstring)."""
        jobs = [(i, None) for i in range(len(messages))] + [(i, o) for i in range(len(messages)) for o in options]

        def one(job: tuple[int, str | None]):
            conv, option = messages[job[0]], job[1]
            if option is not None and conv[-1]["role"] == "assistant":  # the option continues the final turn
                conv = conv[:-1] + [{**conv[-1], "content": conv[-1]["content"] + option}]
            elif option is not None:  # ... or starts the assistant's turn
                conv = conv + [{"role": "assistant", "content": option}]
            payload = self._payload(conv, max_tokens=1, temperature=0.0)
            payload["return_token_ids"] = True
            if option is not None:
                payload["prompt_logprobs"] = 0  # the prompt's own tokens only
            cap = reply_cap(1, 0, prompt_chars=len(json.dumps(conv)))
            read = read_prompt_token_ids if option is None else (lambda body: read_prompt_logprobs(body, start=1))
            return self._request(payload, read, cap, fatal=(NoPromptLogprobs,) if probing else ())

        results = dict(zip(jobs, self._map(one, jobs)))
        out = []
        for i in range(len(messages)):
            base = results[(i, None)]
            logprobs = []
            for o in options:
                ids, lps = results[(i, o)]  # lps[j - 1] = log p(ids[j] | ids[:j])
                common = next((j for j, (a, b) in enumerate(zip(base, ids)) if a != b), min(len(base), len(ids)))
                if common >= len(ids):
                    raise RuntimeError(f"model {self.model!r}: option {o!r} added no token to the prompt")
                # (if the option's first token merged with the prompt's last, the tokens after the
                # common prefix are scored: what the server would see)
                logprobs.append(sum(lps[max(common, 1) - 1 :]))
            out.append(OptionScores(logprobs=tuple(logprobs), missing=(False,) * len(options)))
        return out

    def _score_by_top_logprobs(self, messages: list[Conversation], options: list[str]) -> list[OptionScores]:
        cores = [option_core(o) for o in options]
        if "" in cores or len(set(cores)) != len(cores):
            raise ValueError(
                f"options {options!r}: with top_logprobs scoring each must be non-empty and distinct once whitespace "
                "and brackets are stripped (the API reports tokens, so ' (A)' is matched by its core 'A')"
            )

        def one(conv: Conversation) -> OptionScores:
            payload = self._payload(conv, max_tokens=OPTION_MAX_TOKENS, temperature=0.0)
            payload["logprobs"] = True
            payload["top_logprobs"] = self.top_logprobs
            positions = self._request(payload, read_logprob_content, reply_cap(OPTION_MAX_TOKENS, self.top_logprobs))
            return read_option_logprobs(positions, options)

        scores = self._map(one, messages)
        self._count(missing_options=sum(sum(s.missing) for s in scores))
        return scores

    # ------------------------------------------------------------ requests

    def _messages(self, conv: Conversation) -> Conversation:
        """The conversation as sent: marker strings neutralised (counted once per conversation)."""
        if not conv:
            raise ValueError("cannot complete an empty conversation")
        if self._markers is None:
            return conv
        out, n = [], 0
        for m in conv:
            content, k = neutralize(m["content"], self._markers)
            out.append({**m, "content": content})
            n += k
        if n:
            self._count(neutralized_markers=n)
        return out

    def _payload(self, messages: Conversation, max_tokens: int, temperature: float) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
        if messages[-1]["role"] == "assistant":
            payload["continue_final_message"] = True
            payload["add_generation_prompt"] = False
        return payload

    def _request(self, payload: dict[str, Any], read: Callable[[Any], R], cap: int, fatal: tuple[type[Exception], ...] = ()) -> R:
        """POST one chat completion and `read` the reply, retrying transient failures (on another
        endpoint where one is up). `read` raises BadReply for a reply it cannot use; exceptions in
        `fatal` end the request at once."""
        attempts = self.max_retries + 1
        endpoint: Endpoint | None = None
        last, url = "", ""
        for attempt in range(attempts):
            endpoint = self.endpoints.acquire(avoid=endpoint)
            url = endpoint.url + "/chat/completions"
            self._count(requests=1, retries=int(attempt > 0))
            retry_after, ok = None, False
            try:
                r = exchange(self._client, "POST", url, payload, self.timeout_s, cap)
                if r.status == 429 or r.status >= 500:
                    last, retry_after = f"HTTP {r.status}: {_server_message(r)}", _retry_after(r)
                elif not 200 <= r.status < 300:
                    raise self._request_error(url, r)
                else:
                    try:
                        body = r.json()
                    except ValueError:
                        raise BadReply(f"an unparseable body: {r.body[:200]!r}") from None
                    result, ok = read(body), True
            except httpx.TimeoutException:
                last = f"no complete reply within timeout_s={self.timeout_s:g} s"
            except httpx.TransportError as e:  # refused, reset, closed without an answer
                last = f"connection failed: {type(e).__name__}: {e}"
            except ReplyTooLarge as e:
                last = f"invalid reply: {e} (max_tokens={payload['max_tokens']})"
                self._count(invalid_replies=1)
            except BadReply as e:
                if isinstance(e, fatal):
                    self.endpoints.release(endpoint, None)
                    raise
                last = f"invalid reply: {e}"
                self._count(invalid_replies=1)
            except BaseException:
                self.endpoints.release(endpoint, None)
                raise
            self.endpoints.release(endpoint, ok, self._redact(last))
            if ok:
                return result
            if attempt + 1 < attempts:
                wait = self._wait_s(attempt, retry_after)
                log.warning("%s: %s; retry %d/%d in %.2f s", url, self._redact(last), attempt + 1, self.max_retries, wait)
                time.sleep(wait)
        raise BackendError(self._redact(f"model {self.model!r}: request failed after {attempts} attempts; last error, from {url}: {last}"))

    def _wait_s(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_WAIT_S)
        with self._lock:
            return self._rng.uniform(0.0, min(self.backoff_s * 2**attempt, MAX_WAIT_S))

    def _request_error(self, url: str, r) -> Exception:
        """The exception for a 4xx that retrying cannot fix."""
        msg = f"{url} (model {self.model!r}) rejected the request: HTTP {r.status}: {_server_message(r)}"
        if r.status in (401, 403):
            if self._has_key:
                hint = f"check the API key in the environment variable {self.api_key_env}"
            elif self.api_key_env:
                hint = f"no API key was sent: set the environment variable {self.api_key_env}"
            else:
                hint = "no API key was sent: set api_key_env to the environment variable that holds one"
            return InputError(self._redact(f"{msg}; {hint}"))
        if r.status == 404:
            return InputError(self._redact(f"{msg}; check the model name and that base_url ends in /v1"))
        return RequestRejected(self._redact(msg), r.status)

    def _count(self, **increments: int) -> None:
        with self._lock:
            for name, n in increments.items():
                setattr(self.stats, name, getattr(self.stats, name) + n)

    @property
    def _has_key(self) -> bool:
        return "authorization" in self._client.headers

    def _redact(self, text: str) -> str:
        """Servers sometimes echo the key they were sent; never pass it on."""
        key = self._client.headers.get("authorization", "").removeprefix("Bearer ")
        return text.replace(key, "***") if key else text

    def _map(self, fn: Callable[[T], R], items: list[T]) -> list[R]:
        """fn over items, as many at once as the endpoints take; results in input order."""
        if not items:
            return []
        workers = min(self.max_concurrency * len(self.endpoints.all), len(items))
        with ThreadPoolExecutor(max_workers=workers) as pool:
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


def read_option_logprobs(positions: list[tuple[str, float, list[tuple[str, float]]]], options: list[str]) -> OptionScores:
    """Option log-probs from the generated tokens of a short greedy completion: per position,
    (token, logprob, top_logprobs as [(token, logprob)]), as cai.backends.replies.read_logprob_content
    returns them.

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
    are not. Servers with prompt log-probs (vLLM) avoid all of this: option_scoring="prompt_logprobs".
    """
    cores = [option_core(o) for o in options]
    n = len(options)
    # Per position, (core, logprob) of every listed token; the generated token is listed even when
    # a server leaves it out of top_logprobs.
    listed_at: list[list[tuple[str, float]]] = []
    for token, lp, top in positions:
        listed = list(top)
        if token not in {tok for tok, _ in listed}:
            listed.append((token, lp))
        listed_at.append([(option_core(tok), v) for tok, v in listed])

    at = next((i for i, (token, _, _) in enumerate(positions) if option_core(token) in cores), None)
    if at is None:
        at = next((i for i, pos in enumerate(listed_at) if any(c in cores for c, _ in pos)), None)
    if at is None:
        floor = min(v for _, v in listed_at[0]) - math.log(2) if listed_at else EMPTY_FLOOR
        return OptionScores(logprobs=(floor,) * n, missing=(True,) * n)

    floor = min(v for _, v in listed_at[at]) - math.log(2)
    logprobs, missing = [], []
    for core in cores:
        lps = [v for c, v in listed_at[at] if c == core]
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


def _server_message(r) -> str:
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
    return r.body[:300].decode("utf-8", "replace") or f"(empty body, HTTP {r.status})"


def _retry_after(r) -> float | None:
    """Retry-After in seconds (the HTTP-date form is ignored)."""
    try:
        return max(0.0, float(r.headers["retry-after"]))
    except (KeyError, ValueError):
        return None
