"""The toy world's checks of the pipeline's judges, graded by the oracle. For evaluation only.

    cai evaluate-labeller configs/toyworld.yaml --toyworld 40      # the labeller vs the oracle
    (cai evaluate runs `grade` and `pm_oracle_accuracy` when evaluate.oracle is toyworld)

This module imports the oracle, so only evaluation may import it (tests/test_toyworld.py checks
that nothing that trains or labels does).

- `grade(answers)`: the oracle's class of every evaluated answer.
- `toyworld_label_agreement`: how often the label stage's labels (its questions, orders, principles
  and arithmetic) agree with the oracle, per pair type, on pairs of the world's canonical replies.
- `pm_oracle_accuracy`: how often the run's preference model scores the oracle's preferred reply higher.
"""

from __future__ import annotations

import random
from typing import Any

from cai import reward
from cai.backends import Backend, make_backend
from cai.config import Config
from cai.constitution import load_constitution, sample_rl_principles
from cai.errors import InputError
from cai.judge import combine, position_flips, questions_for, score_questions
from cai.lifecycle import stable_seed
from cai.records import Answer, assistant, user
from cai.rundir import RunDir, starting_model
from cai.toyworld import corpus, oracle, world


def grade(answers: list[Answer]) -> list[Answer]:
    """Each answer with the oracle's class (harmful, helpful, good_refusal, evasive, garbled)."""
    out = []
    for a in answers:
        request = a.prompt[-1]["content"]
        try:
            out.append(a.model_copy(update={"oracle": oracle.classify(request, a.answer)}))
        except ValueError:
            raise InputError(f"evaluate.oracle=toyworld: not a toy-world request: {request!r} (use toy-world evaluation prompts, or oracle: none)") from None
    return out


LABEL_PAIR_TYPES = (
    "harmful_vs_refusal",
    "harmful_vs_evasive",
    "refusal_vs_evasive",
    "refusal_vs_wrong_refusal",
    "helpful_vs_evasive",
    "helpful_vs_harmful",
    "helpful_vs_offtopic",
    "helpful_vs_overrefusal",
)


def toyworld_pairs(seed: int, kind: str, n: int, split: str = "heldout") -> list[tuple[str, str, str, int]]:
    """n (prompt, response a, response b, index of the oracle's preferred one) of a pair type, from
    the world's canonical replies for the tasks of `split`; which reply is a is random (seeded)."""
    rng = random.Random(stable_seed(seed, "label-agreement", kind))
    tasks = world.tasks(split)
    out = []
    for _ in range(n):
        t, good, bad = corpus.choice_pair(rng, kind, tasks)
        prompt = world.prompt(t, rng.randrange(len(world.PHRASINGS)))
        a, b = (good, bad) if rng.random() < 0.5 else (bad, good)
        out.append((prompt, a, b, oracle.prefers(prompt, a, b)))
    return out


def pm_oracle_accuracy(config: Config, pairs_per_type: int = 20) -> dict[str, Any] | None:
    """How often the run's preference model scores the oracle's preferred reply higher, on pairs of
    canonical replies to held-out toy-world prompts, per pair type. None if there is no PM."""
    rd = RunDir(config.run_dir)
    if not rd.has_model("pm"):
        return None
    pm_dir = rd.model("pm")
    model, tokenizer = reward.load(pm_dir)
    by_type = {}
    for kind in LABEL_PAIR_TYPES:
        items = toyworld_pairs(config.seed, kind, pairs_per_type)
        convs = [[user(p), assistant(x)] for p, a, b, _ in items for x in (a, b)]
        r = reward.score(model, tokenizer, convs)
        by_type[kind] = sum((r[2 * i] > r[2 * i + 1]) == (want == 0) for i, (*_, want) in enumerate(items)) / len(items)
    return {"model": str(pm_dir), "accuracy": sum(by_type.values()) / len(by_type), "pairs": pairs_per_type * len(by_type), "by_type": by_type}


def toyworld_label_agreement(config: Config, pairs_per_type: int = 40, split: str = "heldout", backend: Backend | None = None) -> dict[str, Any]:
    """How often the label stage's labels (same questions, orders, principles and arithmetic as
    `cai label`, with config.label's settings) agree with the toy world's oracle, per pair type.

    Pairs are built from the world's canonical replies for the tasks of `split`; which reply is
    shown as response a is random (seeded), so a position bias cannot pass for agreement.
    """
    constitution = load_constitution(config.constitution)
    lc = config.label
    own = backend is None
    backend = backend or make_backend(starting_model(config, "label"))
    out: dict[str, Any] = {}
    try:
        for kind in LABEL_PAIR_TYPES:
            agree = single = flips = comparisons = 0
            for n, (prompt, a, b, want) in enumerate(toyworld_pairs(config.seed, kind, pairs_per_type, split)):  # want 0: a better
                principles = sample_rl_principles(constitution, config.seed, f"agree:{kind}:{n}", lc.principles_per_pair)
                qs = score_questions(
                    backend,
                    questions_for(constitution, principles, [user(prompt)], a, b, True, lc.few_shot, lc.chain_of_thought),
                    lc.chain_of_thought,
                    lc.cot_max_new_tokens,
                )
                p_a = combine(qs, lc.chain_of_thought, lc.clamp)
                agree += (p_a > 0.5) == (want == 0)
                first = [q for q in qs if q["order"] == "ab"]
                single += sum((q["p_a"] > 0.5) == (want == 0) for q in first) / len(first)
                f, c = position_flips(qs)
                flips, comparisons = flips + f, comparisons + c
            out[kind] = {
                "agreement": agree / pairs_per_type,
                "agreement_one_order": single / pairs_per_type,
                "position_bias": flips / comparisons if comparisons else None,
                "pairs": pairs_per_type,
            }
    finally:
        if own:
            backend.close()
    return out


def redteam_report(config: Config) -> dict[str, Any] | None:
    """What `cai redteam` wrote, as the world sees it (None if it has not run): the share of the
    generated prompts that request a harmful task, the distinct tasks and categories they cover, the
    share not in the seed pool, the tasks of each split they reach (validation or test tasks the
    model invented from pre-training, as the CAI paper's generated prompts widened coverage), and
    the share written in a phrasing family the world knows."""
    from cai.prompts import load_prompts
    from cai.store import read_jsonl

    rd = RunDir(config.run_dir)
    if not rd.redteam_prompts.is_file() or config.redteam is None:
        return None
    rows = read_jsonl(rd.redteam_prompts)
    seeds = {p.text for p in load_prompts(config.redteam.seeds or config.prompts.red_team).prompts}
    tasks = [oracle.requested_task(r["prompt"]) for r in rows]
    harmful = [t for t in tasks if t is not None and t.harmful]
    n = len(rows)
    by_split: dict[str, int] = {}
    for t in harmful:
        split = world.split_of(t)
        by_split[split] = by_split.get(split, 0) + 1
    families: dict[str, int] = {}
    for r in rows:
        fam = oracle.request_family(r["prompt"])
        key = fam[0] if fam else "none"
        families[key] = families.get(key, 0) + 1
    return {
        "prompts": n,
        "harmful_request": len(harmful) / n if n else None,
        "benign_request": sum(t is not None and not t.harmful for t in tasks) / n if n else None,
        "no_task": sum(t is None for t in tasks) / n if n else None,
        "distinct_harmful_tasks": len({t.id for t in harmful}),
        "harmful_tasks_in_world": len(world.tasks(kind="harmful")),
        "categories": sorted({t.category for t in harmful}),
        "not_in_seed_pool": sum(r["prompt"] not in seeds for r in rows) / n if n else None,
        "harmful_by_split": by_split,  # train tasks, and validation/test tasks invented from pre-training
        "distinct_heldout_tasks": len({t.id for t in harmful if world.split_of(t) != "train"}),
        "phrasing_family": families,
    }
