"""Typed records that flow between stages.

A conversation is a list of chat messages, `{"role": "system"|"user"|"assistant", "content": str}`,
the format of chat templates, TRL's conversational datasets and the OpenAI chat API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    """

    sl_principles: tuple[SLPrinciple, ...]
    rl_principles: tuple[RLPrinciple, ...]
    critique_examples: tuple[tuple[Message, ...], ...] = ()
    choice_examples: tuple[tuple[Message, ...], ...] = ()
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
