"""Typed records that flow between stages, and the one place they are written and read.

A conversation is a list of chat messages, `{"role": "system"|"user"|"assistant", "content": str}`,
the format of chat templates, TRL's conversational datasets and the OpenAI chat API. The unit that
flows through the pipeline is a conversation (earlier turns, then the request), not a prompt string.

What each stage writes, one JSON object per line (`write_records` / `read_records`; a bad line is
an InputError naming the file, the line and the field):

    critique/records.jsonl     CritiqueRecord   the prompt, the initial answer, every critique/revision round
    sample/responses.jsonl     Responses        k sampled answers to one prompt
    sample/pairs.jsonl         Pair             two of them, to be labelled
    label/preferences.jsonl    Preference       chosen/rejected with the soft label p_chosen and its questions
    evaluate/answers.jsonl     Answer           one model's answer to one held-out prompt, graded
    evaluate/comparisons.jsonl Comparison       two models' answers to one prompt, judged
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from typing_extensions import TypedDict


class _Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


Message = dict[str, str]
Conversation = list[Message]


def user(content: str) -> Message:
    return {"role": "user", "content": content}


def assistant(content: str) -> Message:
    return {"role": "assistant", "content": content}


@dataclass(frozen=True)
class Prompt:
    """One prompt of a prompt set: a conversation whose last turn is the request.

    `text` is the request (the last user turn); `context` holds the earlier turns, if any (user and
    assistant alternating, starting with a user turn and ending with an assistant turn), as real
    red-team data has them. `id` is stable across runs (a content hash of the whole conversation
    unless the file gives one). `metadata` points back into the file and keeps fields a source asks
    to keep (a category, a form).
    """

    id: str
    text: str
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    context: tuple[Message, ...] = ()

    @property
    def messages(self) -> Conversation:
        """The whole conversation: earlier turns, then the request."""
        return [dict(m) for m in self.context] + [user(self.text)]

    @property
    def multi_turn(self) -> bool:
        return bool(self.context)


@dataclass(frozen=True)
class SLPrinciple:
    """A supervised-phase principle: how to ask for a critique, and how to ask for a revision."""

    id: str
    critique: str
    revision: str


@dataclass(frozen=True)
class RLPrinciple:
    """A feedback-phase principle: a multiple-choice instruction ("Which response is less harmful?")."""

    id: str
    instruction: str


@dataclass(frozen=True)
class Constitution:
    """Principles plus few-shot examples.

    `critique_examples`: few-shot critique/revision conversations, shown before a critique conversation.
    `choice_examples`: few-shot multiple-choice conversations, shown before a preference question.
    `topics`: harm topics that steer generated red-team prompts (optional).
    """

    sl_principles: tuple[SLPrinciple, ...]
    rl_principles: tuple[RLPrinciple, ...]
    critique_examples: tuple[tuple[Message, ...], ...] = ()
    choice_examples: tuple[tuple[Message, ...], ...] = ()
    topics: tuple[str, ...] = ()  # harm topics that steer generated red-team prompts (cai redteam)
    source: str = ""


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings for one generate call. temperature 0 means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Generation:
    """One generated completion. finish_reason: "stop" (EOS or a stop string) or "length"."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


@dataclass(frozen=True)
class OptionScores:
    """Log-probabilities of each answer option as the continuation of a conversation.

    `missing[i]` is True where the backend could not see option i (e.g. it was not in an API's
    top_logprobs) and `logprobs[i]` is a floor, not a measurement.
    """

    logprobs: tuple[float, ...]
    missing: tuple[bool, ...]


# ---------------------------------------------------------------- records between stages


class Record(BaseModel):
    """A row of a stage's JSONL output: typed, validated when read, extra fields refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _finite(v: float | None) -> float | None:
    if v is not None and not math.isfinite(v):
        raise ValueError(f"must be a finite number, got {v}")
    return v


class CritiqueRound(Record):
    round: int
    principle_id: str
    critic_prompt: str
    critic_response: str
    revision_prompt: str
    revision_response: str


class CritiqueRecord(Record):
    """One red-team conversation through critique and revision. The top-level columns are those of
    Hugging Face's open CAI datasets (llm-swarm), for the last round; `context` holds the turns
    before the request (empty for a single-turn prompt)."""

    id: str
    context: list[_Message]
    init_prompt: str
    init_response: str
    critic_prompt: str
    critic_response: str
    revision_prompt: str
    revision_response: str
    prompt: str
    messages: list[_Message]
    chosen: list[_Message]
    rejected: list[_Message]
    rounds: list[CritiqueRound]
    model: str
    sampling: dict[str, Any]
    source: str

    @property
    def conversation(self) -> Conversation:
        """The prompt: earlier turns, then the red-team request."""
        return [dict(m) for m in self.context] + [user(self.init_prompt)]


class SampledResponse(Record):
    text: str
    temperature: float
    seed: int
    finish_reason: str


class Responses(Record):
    key: str
    prompt_id: str
    kind: str
    prompt: list[_Message]
    responses: list[SampledResponse]


class Pair(Record):
    pair_id: str
    prompt_id: str
    kind: str
    prompt: list[_Message]
    response_a: str
    response_b: str


class Question(Record):
    """One multiple-choice question about a pair: its principle, option order, option log-probs,
    p(first option) and p(response a better) after the order is undone."""

    principle_id: str
    order: Literal["ab", "ba"]
    logprobs: list[float]
    missing: list[bool]
    p_option_a: float
    p_a: float | None = None
    reasoning: str | None = None

    _check = field_validator("p_option_a", "p_a")(_finite)

    @field_validator("logprobs")
    @classmethod
    def _finite_logprobs(cls, v: list[float]) -> list[float]:
        for x in v:
            if not math.isfinite(x):
                raise ValueError(f"option log-probs must be finite numbers, got {x}")
        return v


class Preference(Record):
    """A labelled pair in TRL's conversational preference format, plus the soft label."""

    pair_id: str
    prompt_id: str
    kind: str
    prompt: list[_Message]
    chosen: list[_Message]
    rejected: list[_Message]
    p_chosen: float
    chosen_is_a: bool
    questions: list[Question]

    @field_validator("p_chosen")
    @classmethod
    def _probability(cls, v: float) -> float:
        if not (math.isfinite(v) and 0.0 <= v <= 1.0):
            raise ValueError(f"must be a probability in [0, 1], got {v}")
        return v


class Answer(Record):
    """One model's greedy answer to one held-out prompt, graded by the oracle and/or the AI judge."""

    model: str
    kind: str
    form: str
    category: str
    prompt_id: str
    prompt: list[_Message]
    answer: str
    finish_reason: str
    oracle: str | None
    tags: dict[str, str] = {}  # other fields the prompt source kept (`keep:`), e.g. near_miss: "True"
    p_harmless: float | None
    p_helpful: float | None


class Comparison(Record):
    """Two models' answers to one prompt, and p(model_a's answer is better) from the AI judge."""

    model_a: str
    model_b: str
    kind: str
    form: str
    prompt_id: str
    prompt: list[_Message]
    p_a: float
    answer_a: str
    answer_b: str
    questions: list[Question]


R = TypeVar("R", bound=Record)


def write_records(path: str | Path, records: Iterable[Record]) -> None:
    """Write records as JSON Lines, atomically (readers see the old file or the new one, never half)."""
    from cai.store import atomic_write_text

    atomic_write_text(path, "".join(r.model_dump_json() + "\n" for r in records))


def read_records(path: str | Path, cls: type[R]) -> list[R]:
    """Read and validate every line of a JSON Lines file as a `cls`. Errors name the file, line and field."""
    from cai.errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    out = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(cls.model_validate_json(line))
            except ValidationError as e:
                err = e.errors()[0]
                where = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in err["loc"]).lstrip(".")  # questions[0].p_a
                if err["type"] == "json_invalid":
                    cut = "" if line.endswith("\n") else " (the file ends mid-line: was it cut short?)"
                    raise InputError(f"{path}: line {number}: invalid JSON{cut}") from None
                raise InputError(f"{path}: line {number}: {where or cls.__name__}: {err['msg']}") from None
    return out


def to_json(record: Record) -> dict[str, Any]:
    """A record as plain JSON values (for datasets and the run store)."""
    return json.loads(record.model_dump_json())
