"""How good is a labeller? The feedback model's accuracy on a multiple-choice set.

    cai evaluate-labeller CONFIG --data RLMadisonFewShotPrompts.json

The set is the CAI paper's format (a JSON list or JSONL of {prompt, corrects, incorrects}, the
prompt a "Human: ... Assistant: ..." transcript). Every (correct, incorrect) pair is labelled with
the label stage's own questions and arithmetic (cai.judge, config.label's settings): accuracy with
the orders averaged, and per single order, which shows the position bias swapping removes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from cai.backends import Backend, make_backend
from cai.config import Config
from cai.constitution import load_constitution, sample_rl_principles
from cai.errors import InputError
from cai.judge import combine, questions_for, score_questions
from cai.records import Conversation, assistant, user
from cai.rundir import starting_model


def parse_transcript(text: str) -> Conversation:
    """ "\n\nHuman: ...\n\nAssistant: ..." -> chat turns (a trailing empty "Assistant:" is dropped)."""
    parts = re.split(r"(?:^|\n\n)(Human|Assistant):", text)
    turns = [(parts[i], parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]
    conv = [user(t) if who == "Human" else assistant(t) for who, t in turns if t]
    if not conv or conv[0]["role"] != "user":
        raise InputError(f"not a Human/Assistant transcript: {text[:80]!r}")
    return conv


def load_choice_set(path: str | Path) -> list[dict]:
    """The CAI paper's multiple-choice evaluation format: a JSON list or JSONL of {prompt, corrects, incorrects}."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8")
    try:
        items = json.loads(text) if text.lstrip().startswith("[") else [json.loads(l) for l in text.splitlines() if l.strip()]
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: line {e.lineno}: invalid JSON: {e.msg}") from None
    for n, item in enumerate(items, 1):
        missing = {"prompt", "corrects", "incorrects"} - set(item)
        if missing:
            raise InputError(f"{path}: item {n}: missing field(s) {sorted(missing)}")
    return items


def evaluate_labeller(config: Config, data: str | Path, backend: Backend | None = None) -> dict[str, Any]:
    """Accuracy of the feedback model on (correct, incorrect) pairs, with the label stage's settings.

    Reports accuracy with the questions averaged (as the label stage does) and per single order,
    which shows the position bias that swapping removes.
    """
    items = load_choice_set(data)
    constitution = load_constitution(config.constitution)
    lc = config.label
    own_backend = backend is None
    backend = backend or make_backend(starting_model(config, "label"))
    right = total = 0
    by_order: dict[str, list[bool]] = {"ab": [], "ba": []}
    try:
        for n, item in enumerate(items):
            context = parse_transcript(item["prompt"])
            for c in item["corrects"]:
                for w in item["incorrects"]:
                    principles = sample_rl_principles(constitution, config.seed, f"eval:{n}:{total}", lc.principles_per_pair)
                    qs = score_questions(
                        backend,
                        questions_for(constitution, principles, context, c, w, True, lc.few_shot, lc.chain_of_thought),
                        lc.chain_of_thought,
                        lc.cot_max_new_tokens,
                    )
                    p_correct = combine(qs, lc.chain_of_thought, lc.clamp)
                    right += p_correct > 0.5
                    total += 1
                    for q in qs:
                        by_order[q["order"]].append(q["p_a"] > 0.5)
    finally:
        if own_backend:
            backend.close()
    return {
        "comparisons": total,
        "accuracy": right / total,
        "accuracy_correct_first": sum(by_order["ab"]) / len(by_order["ab"]),
        "accuracy_correct_second": sum(by_order["ba"]) / len(by_order["ba"]),
    }
