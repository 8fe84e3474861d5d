"""What an OpenAI-compatible server's reply must hold before cai uses it (for cai.backends.openai).

Each reader takes the parsed body of a 200 reply and returns what the request asked for, or raises
`BadReply` saying what is wrong. The backend treats a bad reply like a 5xx: it retries (another
endpoint where there is one), then fails with the last reason. Nothing from a bad reply is used.

The rules (the OpenAI chat completions API, and vLLM's extensions):
- `choices` is a non-empty list; `choices[0].message` is an object.
- `message.content` is a string, or a list of parts whose `text` parts are joined (as the API
  allows). null (or absent) only where the server says why: `finish_reason: "content_filter"`
  (the provider withheld the text: an empty answer, counted) or a string `message.refusal` (the
  refusal is the answer). Anything else is a bad reply.
- `usage`, if present, holds non-negative integer token counts.
- log-probs are finite numbers <= 0 (a rounding error up to 1e-4 above 0 is read as 0), each
  with its token: NaN, infinities and entries without `token` are bad replies.
- `reply_cap` bounds the bytes of a reply by what the request can make the server write.
"""

from __future__ import annotations

import math
from typing import Any

from cai.records import Generation

BASE_BYTES = 64 * 1024  # envelope: ids, usage, metadata, an error message
PER_TOKEN_BYTES = 2048  # one generated token: its text JSON-escaped, a logprob entry's own fields
PER_ALTERNATIVE_BYTES = 512  # one top_logprobs alternative of a generated token
PER_PROMPT_CHAR_BYTES = 512  # prompt_logprobs / prompt_token_ids: at most one token per request character


class BadReply(Exception):
    """A 200 reply that does not hold what the request needs."""


class NoPromptLogprobs(BadReply):
    """A reply without `prompt_logprobs`/`prompt_token_ids`: the server does not offer them."""


def reply_cap(max_tokens: int, top_logprobs: int = 0, prompt_chars: int = 0) -> int:
    """Most bytes a reply may have: generated tokens with their alternatives, and, where the
    request asks for per-prompt-token data, the prompt's (`prompt_chars`: the request's length)."""
    return BASE_BYTES + max_tokens * (PER_TOKEN_BYTES + top_logprobs * PER_ALTERNATIVE_BYTES) + prompt_chars * PER_PROMPT_CHAR_BYTES


def first_choice(body: Any) -> dict:
    if not isinstance(body, dict):
        raise BadReply(f"the body is a JSON {type(body).__name__}, not an object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise BadReply("no `choices`")
    choice = choices[0]
    if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
        raise BadReply("`choices[0].message` is missing or not an object")
    return choice


def read_generation(body: Any) -> tuple[Generation, bool]:
    """(the completion, whether the provider withheld its text)."""
    choice = first_choice(body)
    finish = choice.get("finish_reason")
    if finish is not None and not isinstance(finish, str):
        raise BadReply(f"`finish_reason` is {_kind(finish)}, not a string")
    message = choice["message"]
    content = message.get("content")
    filtered = False
    if content is None:
        if isinstance(message.get("refusal"), str):
            content = message["refusal"]
        elif finish == "content_filter":
            content, filtered = "", True
        else:
            raise BadReply(f"`message.content` is {'null' if 'content' in message else 'missing'} (finish_reason {finish!r})")
    text = _text(content)
    prompt_tokens, completion_tokens = _usage(body)
    return Generation(text, prompt_tokens, completion_tokens, "length" if finish == "length" else "stop"), filtered


def read_logprob_content(body: Any) -> list[tuple[str, float, list[tuple[str, float]]]]:
    """`choices[0].logprobs.content`: per generated token, (token, logprob, [(alternative, logprob)])."""
    choice = first_choice(body)
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list):
        raise BadReply(
            "no `logprobs.content`: option scoring needs a server that returns `logprobs` and `top_logprobs` (vLLM, SGLang, llama.cpp and the OpenAI API do)"
        )
    out = []
    for i, pos in enumerate(content):
        where = f"logprobs.content[{i}]"
        token, lp = _token_logprob(pos, where)
        top = pos.get("top_logprobs") or []
        if not isinstance(top, list):
            raise BadReply(f"`{where}.top_logprobs` is {_kind(top)}, not a list")
        out.append((token, lp, [_token_logprob(t, f"{where}.top_logprobs[{j}]") for j, t in enumerate(top)]))
    return out


def read_prompt_token_ids(body: Any) -> list[int]:
    """vLLM's `prompt_token_ids` (asked for with `return_token_ids: true`)."""
    first_choice(body)
    ids = body.get("prompt_token_ids")
    if ids is None:
        raise NoPromptLogprobs("no `prompt_token_ids` (the server ignored `return_token_ids`)")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise BadReply("`prompt_token_ids` is not a non-empty list of token ids")
    return ids


def read_prompt_logprobs(body: Any, start: int) -> tuple[list[int], list[float]]:
    """(prompt token ids, log p(token j | tokens before j) for j >= start) from vLLM's
    `prompt_logprobs` (a list with one entry per prompt token: null for the first, else an object
    mapping token ids, as strings, to {"logprob", "rank", "decoded_token"}). `start` < 0 counts from
    the end."""
    ids = read_prompt_token_ids(body)
    entries = body.get("prompt_logprobs")
    if entries is None:
        raise NoPromptLogprobs("no `prompt_logprobs` (the server ignored them)")
    if not isinstance(entries, list) or len(entries) != len(ids):
        raise BadReply(f"`prompt_logprobs` is not a list with one entry per prompt token ({len(ids)})")
    start = max(1, start if start >= 0 else len(ids) + start)
    lps = []
    for j in range(start, len(ids)):
        entry = entries[j]
        item = entry.get(str(ids[j])) if isinstance(entry, dict) else None
        if not isinstance(item, dict):
            raise BadReply(f"`prompt_logprobs[{j}]` has no entry for the prompt's token {ids[j]}")
        lps.append(_logprob(item.get("logprob"), f"prompt_logprobs[{j}]"))
    return ids, lps


# ---------------------------------------------------------------- fields


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict):
                raise BadReply(f"`message.content[{i}]` is {_kind(part)}, not a content part")
            if part.get("type", "text") not in ("text", "output_text"):
                continue  # reasoning, images, tool calls: not the answer
            if not isinstance(part.get("text"), str):
                raise BadReply(f"`message.content[{i}].text` is {_kind(part.get('text'))}, not a string")
            texts.append(part["text"])
        if not texts:
            raise BadReply("`message.content` is a list without text parts")
        return "".join(texts)
    raise BadReply(f"`message.content` is {_kind(content)}, not a string")


def _usage(body: dict) -> tuple[int, int]:
    usage = body.get("usage")
    if usage is None:
        return 0, 0
    if not isinstance(usage, dict):
        raise BadReply(f"`usage` is {_kind(usage)}, not an object")
    counts = []
    for key in ("prompt_tokens", "completion_tokens"):
        n = usage.get(key, 0)
        if n is None:
            n = 0
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise BadReply(f"`usage.{key}` is {_kind(n)}, not a token count")
        counts.append(n)
    return counts[0], counts[1]


def _token_logprob(entry: Any, where: str) -> tuple[str, float]:
    if not isinstance(entry, dict):
        raise BadReply(f"`{where}` is {_kind(entry)}, not an object")
    if not isinstance(entry.get("token"), str):
        raise BadReply(f"`{where}` has no `token` string")
    return entry["token"], _logprob(entry.get("logprob"), where)


def _logprob(value: Any, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value > 1e-4:
        raise BadReply(f"`{where}.logprob` is {_kind(value)}, not a finite log-probability <= 0")
    return min(float(value), 0.0)


def _kind(value: Any) -> str:
    """How a wrong value is named in messages: its JSON type, and short values themselves."""
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    name = names.get(type(value), type(value).__name__)
    shown = repr(value)
    return f"{name} ({shown})" if len(shown) <= 40 else name
