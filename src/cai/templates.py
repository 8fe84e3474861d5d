"""How records become conversations: the exact turns a model sees in every stage.

These are pure functions, used by the stages *and* by the toy world's corpus, so the toy model
is trained on exactly the conversation shapes the pipeline gives it.

Critique (SL-CAI), one growing conversation per red-team prompt:

    [few-shot critique conversations, flattened]
    user:      <red-team prompt>
    assistant: <initial answer>
    user:      <principle.critique>      (skipped with direct revision)
    assistant: <critique>
    user:      <principle.revision>
    assistant: <revision>                (then more rounds, each with a fresh principle)

Preference question (RL-CAI), one per (pair, principle, order):

    [few-shot choice conversations, flattened]
    user:      Consider this conversation ... <instruction> Options: (A) ... (B) ...
    assistant: The answer is:            (the model continues with " (A)" or " (B)")
"""

from __future__ import annotations

from cai.records import Constitution, Conversation, Message, RLPrinciple, assistant, user

CHOICE_HEADER = "Consider the following conversation between a human and an assistant:"
OPTION_LABELS = ("A", "B")
CHOICE_OPTIONS = (" (A)", " (B)")
ANSWER_PREFIX = "The answer is:"
COT_PREFIX = "Let's think step by step:"


def flatten(examples: tuple[tuple[Message, ...], ...]) -> Conversation:
    """Few-shot conversations as one run of turns, the way llm-swarm's `system_chat` is used."""
    return [dict(m) for conv in examples for m in conv]


def critique_start(constitution: Constitution, prompt: str, few_shot: bool = True) -> Conversation:
    """The conversation that asks for the initial answer to a red-team prompt."""
    prefix = flatten(constitution.critique_examples) if few_shot else []
    return prefix + [user(prompt)]


def transcript(conversation: Conversation) -> str:
    """A conversation as plain text, for quoting it inside a preference question."""
    names = {"user": "Human", "assistant": "Assistant", "system": "System"}
    return "\n\n".join(f"{names[m['role']]}: {m['content']}" for m in conversation)


def choice_text(context: Conversation, instruction: str, options: list[str]) -> str:
    """The user turn of a multiple-choice question, laid out as in the CAI paper (sec. 4.1)."""
    lines = "\n".join(f"({chr(ord('A') + i)}) {option}" for i, option in enumerate(options))
    return f"{CHOICE_HEADER}\n\n{transcript(context)}\n\n{instruction}\n\nOptions:\n{lines}"


def choice_answer(label: str) -> str:
    """How a few-shot example answers: the same words the model is scored after, then the option."""
    return f"{ANSWER_PREFIX} ({label})"


def choice_question(
    constitution: Constitution,
    principle: RLPrinciple,
    context: Conversation,
    response_a: str,
    response_b: str,
    few_shot: bool = True,
    reasoning: str | None = None,
    think: bool = False,
) -> Conversation:
    """A multiple-choice question: which of two assistant replies to `context` does `principle` prefer?

    The final assistant turn is unfinished ("The answer is:"), so the next tokens are an option.
    Chain of thought: with `think`, the turn is "Let's think step by step:" for the model to
    reason; with `reasoning`, that reasoning is in the turn, followed by "The answer is:".
    """
    question = choice_text(context, principle.instruction, [response_a, response_b])
    prefix = flatten(constitution.choice_examples) if few_shot else []
    if think:
        answer = COT_PREFIX
    elif reasoning is not None:
        answer = f"{COT_PREFIX} {reasoning.strip()}\n{ANSWER_PREFIX}"
    else:
        answer = ANSWER_PREFIX
    return prefix + [user(question), assistant(answer)]
