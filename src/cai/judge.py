"""The judge's arithmetic: multiple-choice questions, option log-probabilities, soft labels.

    qs = questions_for(constitution, principles, context, a, b, swap=True, few_shot=True)
    results = score_questions(backend, qs, cot=False, cot_tokens=0)
    p_a = combine(results, cot=False, band=(0.0, 1.0))      # p(response a is better)

Used by the label stage (AI preference labels), by evaluation (the AI judge's absolute questions
and win rates) and by the labeller checks. For one pair of replies to a conversation, a question
is asked per sampled principle and, with `swap`, in both option orders; each yields the
log-probabilities of " (A)" and " (B)", normalised over the two into p(A). The probability that
reply a is better is the mean over the questions of p(the option that shows a):

    p_a = mean_q  p_q(a)        p_q(a) = p_q(A) if a is shown first, else 1 - p_q(A)

Swapping orders cancels position bias; `position_flips` counts how often the winner flips with
the order. With chain of thought, the model first reasons (greedy), the options are scored after
the reasoning, and each p_q(A) is clamped to a band (the CAI paper found 0.4-0.6 best).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from cai.backends import Backend
from cai.records import Constitution, Conversation, GenerationParams, RLPrinciple, assistant
from cai.templates import CHOICE_OPTIONS, EVASION_OPTIONS, EVASION_QUESTION, HARM_OPTIONS, HARM_QUESTION, choice_question


def normalise(logp_a: float, logp_b: float) -> float:
    """p(A) from the two options' log-probabilities, renormalised over just the two: sigmoid(lA - lB)."""
    d = logp_a - logp_b
    return 1 / (1 + math.exp(-d)) if d >= 0 else math.exp(d) / (1 + math.exp(d))


def clamp(p: float, band: tuple[float, float]) -> float:
    return min(max(p, band[0]), band[1])


def p_first_response(p_option_a: float, order: str) -> float:
    """p(response a is better) from one question's p(A): order "ab" shows a as (A), "ba" as (B)."""
    return p_option_a if order == "ab" else 1 - p_option_a


def position_flips(questions: Sequence[dict]) -> tuple[int, int]:
    """(flips, comparisons): per principle asked in both orders, does the winner change with the order?"""
    by_principle: dict[str, dict[str, float]] = {}
    for q in questions:
        by_principle.setdefault(q["principle_id"], {})[q["order"]] = q["p_a"]
    both = [v for v in by_principle.values() if len(v) == 2]
    return sum((v["ab"] > 0.5) != (v["ba"] > 0.5) for v in both), len(both)


def questions_for(
    constitution: Constitution, principles: list[RLPrinciple], context: Conversation, a: str, b: str, swap: bool, few_shot: bool, think: bool = False
) -> list[tuple[RLPrinciple, str, Conversation]]:
    """(principle, order, conversation) for every question about one pair of replies to `context`."""
    out = []
    for principle in principles:
        for order in ("ab", "ba") if swap else ("ab",):
            first, second = (a, b) if order == "ab" else (b, a)
            conv = choice_question(constitution, principle, context, first, second, few_shot=few_shot, think=think)
            out.append((principle, order, conv))
    return out


def score_questions(backend: Backend, questions: list[tuple[RLPrinciple, str, list]], cot: bool, cot_tokens: int) -> list[dict]:
    """Ask a batch of questions; one result dict per question."""
    reasoning = [None] * len(questions)
    convs = [conv for _, _, conv in questions]
    if cot:
        gens = backend.generate(convs, GenerationParams(max_new_tokens=cot_tokens, temperature=0.0, stop=("The answer is",)))
        reasoning = [g.text.strip() for g in gens]
        convs = [c[:-1] + [assistant(f"{c[-1]['content']} {r}\nThe answer is:")] for c, r in zip(convs, reasoning)]
    scores = backend.option_logprobs(convs, list(CHOICE_OPTIONS))
    out = []
    for (principle, order, _), s, r in zip(questions, scores, reasoning):
        q = {
            "principle_id": principle.id,
            "order": order,
            "logprobs": list(s.logprobs),
            "missing": list(s.missing),
            "p_option_a": normalise(*s.logprobs),
        }
        if r is not None:
            q["reasoning"] = r
        out.append(q)
    return out


def combine(questions: list[dict], cot: bool, band: tuple[float, float]) -> float:
    """p(response a is better), averaged over every question (principles x orders)."""
    ps = []
    for q in questions:
        p = clamp(q["p_option_a"], band) if cot else q["p_option_a"]
        q["p_a"] = p_first_response(p, q["order"])
        ps.append(q["p_a"])
    return sum(ps) / len(ps)


def absolute_question(kind: str) -> tuple[RLPrinciple, tuple[str, str], str]:
    """The evaluation judge's question about one answer to a prompt of `kind`, its two options, and
    the answers.jsonl field its result goes to: p(harmless) for red-team prompts, p(helpful) otherwise."""
    return (HARM_QUESTION, HARM_OPTIONS, "p_harmless") if kind == "red_team" else (EVASION_QUESTION, EVASION_OPTIONS, "p_helpful")
