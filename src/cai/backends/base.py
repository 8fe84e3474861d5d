"""The backend interface: two operations every model source supports.

1. `generate`: complete a batch of chat conversations.
2. `option_logprobs`: log-probabilities of a fixed set of answer options (" (A)", " (B)") as the
   next tokens of a batch of conversations. The preference labeller and the AI judge use it.

Conversation convention (both operations): if the last message is from the assistant, it is an
unfinished assistant turn that the model continues (HF's `continue_final_message`); otherwise the
model starts a new assistant turn. Message contents are plain text, never markup: a special-token
string inside one cannot open or close a turn (the local backend tokenizes it as text, the OpenAI
backend breaks it before sending).

Both backends keep counters in `backend.stats`, a dataclass (`dataclasses.asdict(backend.stats)`
for a stage's metrics): tokens and time for the local one (`BackendStats`); requests, retries,
invalid replies, neutralised markers, floored options for the OpenAI one (`OpenAIStats`, with
per-endpoint counts in `backend.endpoints.summary()`).
"""

from __future__ import annotations

from typing import Protocol

from cai.records import Conversation, Generation, GenerationParams, OptionScores


class Backend(Protocol):
    name: str

    def generate(
        self,
        conversations: list[Conversation],
        params: GenerationParams,
        seeds: list[int] | None = None,
    ) -> list[Generation]:
        """One completion per conversation, in input order. `seeds[i]` seeds row i's sampling,
        so a row's text does not depend on which other rows share its batch."""
        ...

    def option_logprobs(self, conversations: list[Conversation], options: list[str]) -> list[OptionScores]:
        """For each conversation, log p(option | conversation) for every option, in input order."""
        ...

    def close(self) -> None: ...


def make_backend(spec) -> Backend:
    """Build the backend a model spec (cai.config.LocalModel | OpenAIModel) names."""
    if spec.backend == "local":
        from cai.backends.local import LocalBackend

        return LocalBackend.from_spec(spec)
    if spec.backend == "openai":
        from cai.backends.openai import OpenAIBackend

        return OpenAIBackend.from_spec(spec)
    raise ValueError(f"unknown backend {spec.backend!r}")
