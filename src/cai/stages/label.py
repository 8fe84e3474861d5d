"""RL-CAI, step 2: AI preference labels from the constitution (RLAIF).

    cai label CONFIG [--set label.principles_per_pair=4]

For every pair (response a, response b) of the sample stage, the feedback model (`models.feedback`,
default `models.policy`: the starting model, as in the CAI paper) is asked multiple-choice
questions built by `cai.templates.choice_question`: under `label.principles_per_pair` sampled RL
principles, each in both option orders (`label.swap_orders`). Each question yields the
log-probabilities of " (A)" and " (B)"; normalised over the two they give p(A). The probability that
a is better is the mean over the questions of p(option that shows a):

    p_a = mean_q  p_q(a)        p_q(a) = p_q(A) if a is shown first, else 1 - p_q(A)

Swapping orders cancels position bias; how often the winner flips with the order is reported.
With chain of thought, the model first reasons (greedy), the options are scored after the
reasoning, and each p_q(A) is clamped to `label.clamp` (the CAI paper found 0.4-0.6 best).

Output: `<run_dir>/label/preferences.jsonl` and the HF dataset `<run_dir>/label/dataset`, in TRL's
conversational preference format (prompt, chosen, rejected) plus p_chosen and every question.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from cai.backends import Backend, make_backend
from cai.config import Config, save_config
from cai.constitution import load_constitution, sample_rl_principles
from cai.errors import InputError
from cai.records import Constitution, Conversation, GenerationParams, RLPrinciple, assistant, user
from cai.stages.common import begin, file_hash, finish, identity
from cai.store import RunStore, atomic_write_text, read_jsonl, save_dataset, write_jsonl
from cai.templates import CHOICE_OPTIONS, choice_question

STAGE = "label"


# ---------------------------------------------------------------- the arithmetic of labels


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


# ---------------------------------------------------------------- the stage


def feedback_spec(config: Config):
    spec = config.models.feedback or config.models.policy
    if spec is None:
        raise InputError("models.feedback: the label stage needs a feedback model (models.feedback or models.policy)")
    return spec


def fingerprint(config: Config, pairs_path: Path) -> dict[str, Any]:
    return {
        "seed": config.seed,
        "constitution": file_hash(config.constitution),
        "pairs": file_hash(pairs_path),
        "feedback": identity(feedback_spec(config)),
        "label": identity(config.label),
    }


def run(config: Config, backend: Backend | None = None, force: bool = False) -> Path:
    pairs_path = Path(config.run_dir) / "sample" / "pairs.jsonl"
    if not pairs_path.is_file():
        raise InputError(f"{pairs_path}: no response pairs; run `cai sample` first")
    pairs = read_jsonl(pairs_path)
    constitution = load_constitution(config.constitution)
    if not constitution.rl_principles:
        raise InputError(f"{config.constitution}: the constitution has no RL principles to label with")
    identical = [p for p in pairs if p["response_a"] == p["response_b"]]
    pairs = [p for p in pairs if p["response_a"] != p["response_b"]]  # nothing to prefer
    if not pairs:
        raise InputError(f"{pairs_path}: no pair has two different responses ({len(identical)} identical); sample at a higher temperature")

    out_dir = Path(config.run_dir) / STAGE
    store = RunStore(config.run_dir)
    fp = fingerprint(config, pairs_path)
    if begin(store, STAGE, fp, force):
        print(f"[label] already complete: {out_dir / 'preferences.jsonl'}")
        store.close()
        return out_dir
    save_config(config, Path(config.run_dir) / "config.yaml")

    lc = config.label
    done = store.items(STAGE)
    todo = [i for i, p in enumerate(pairs) if p["pair_id"] not in done]
    if done:
        print(f"[label] resuming: {len(pairs) - len(todo)} of {len(pairs)} pairs already labelled")
    spec = feedback_spec(config)
    print(f"[label] feedback model: {getattr(spec, 'path', None) or spec.model}")
    own_backend = backend is None
    backend = backend or make_backend(spec)
    per_pair = lc.principles_per_pair * (2 if lc.swap_orders else 1)
    pairs_per_batch = max(1, lc.batch_size // per_pair)  # whole pairs per call, so a pair is labelled or not
    bar = tqdm(total=len(pairs), initial=len(pairs) - len(todo), unit="pair", desc="label", dynamic_ncols=True)
    try:
        for start in range(0, len(todo), pairs_per_batch):
            batch = todo[start : start + pairs_per_batch]
            qs = []
            for i in batch:
                p = pairs[i]
                principles = sample_rl_principles(constitution, config.seed, p["pair_id"], lc.principles_per_pair)
                qs += questions_for(constitution, principles, [user(p["prompt"])], p["response_a"], p["response_b"], lc.swap_orders, lc.few_shot, think=lc.chain_of_thought)
            results = score_questions(backend, qs, lc.chain_of_thought, lc.cot_max_new_tokens)
            store.put(STAGE, [(pairs[i]["pair_id"], i, {"questions": results[n * per_pair : (n + 1) * per_pair]}) for n, i in enumerate(batch)])
            bar.update(len(batch))
    finally:
        bar.close()
        if own_backend:
            backend.close()

    done = store.items(STAGE)
    rows, dropped = [], 0
    flips = comparisons = missing = 0
    for p in pairs:
        qs = done[p["pair_id"]]["questions"]
        p_a = combine(qs, lc.chain_of_thought, lc.clamp)
        f, c = position_flips(qs)
        flips, comparisons = flips + f, comparisons + c
        missing += sum(sum(q["missing"]) for q in qs)
        if lc.hard:
            if abs(p_a - 0.5) <= lc.margin:
                dropped += 1
                continue
            p_a = 1.0 if p_a > 0.5 else 0.0
        a_wins = p_a >= 0.5
        chosen, rejected = (p["response_a"], p["response_b"]) if a_wins else (p["response_b"], p["response_a"])
        rows.append(
            {
                "pair_id": p["pair_id"],
                "prompt_id": p["prompt_id"],
                "kind": p["kind"],
                "prompt": [user(p["prompt"])],
                "chosen": [assistant(chosen)],
                "rejected": [assistant(rejected)],
                "p_chosen": p_a if a_wins else 1 - p_a,
                "chosen_is_a": a_wins,
                "questions": qs,
            }
        )
    if not rows:
        raise InputError(f"label: every pair fell within label.margin={lc.margin} of 0.5; lower the margin")
    write_jsonl(out_dir / "preferences.jsonl", rows)
    save_dataset(out_dir / "dataset", rows)
    first_wins = [q["p_option_a"] > 0.5 for r in rows for q in r["questions"]]
    summary = {
        "pairs": len(rows),
        "identical_pairs_skipped": len(identical),
        "dropped_within_margin": dropped,
        "position_bias": flips / comparisons if comparisons else None,  # winner flips with the order
        "first_option_rate": sum(first_wins) / len(first_wins),  # how often "(A)" wins, whatever it holds
        "mean_p_chosen": sum(r["p_chosen"] for r in rows) / len(rows),
        "missing_options": missing,
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    finish(store, STAGE, fp, summary)
    store.close()
    bias = f"{summary['position_bias']:.1%}" if comparisons else "n/a (orders not swapped)"
    print(
        f"[label] {len(rows)} labelled pairs -> {out_dir / 'preferences.jsonl'}; mean p(chosen) {summary['mean_p_chosen']:.3f}; "
        f"position bias {bias}; (A) wins {summary['first_option_rate']:.1%} of questions"
        + (f"; {dropped} dropped within margin" if lc.hard else "")
        + (f"; {missing} options missing from top_logprobs (floored)" if missing else "")
    )
    return out_dir


# ---------------------------------------------------------------- how good is a labeller?


def parse_transcript(text: str) -> Conversation:
    """"\n\nHuman: ...\n\nAssistant: ..." -> chat turns (a trailing empty "Assistant:" is dropped)."""
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
    backend = backend or make_backend(feedback_spec(config))
    right = total = 0
    by_order: dict[str, list[bool]] = {"ab": [], "ba": []}
    try:
        for n, item in enumerate(tqdm(items, desc="evaluate-labeller", unit="item")):
            context = parse_transcript(item["prompt"])
            for c in item["corrects"]:
                for w in item["incorrects"]:
                    principles = sample_rl_principles(constitution, config.seed, f"eval:{n}:{total}", lc.principles_per_pair)
                    qs = score_questions(backend, questions_for(constitution, principles, context, c, w, True, lc.few_shot, lc.chain_of_thought), lc.chain_of_thought, lc.cot_max_new_tokens)
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
