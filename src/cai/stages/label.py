"""RL-CAI, step 2: AI preference labels from the constitution (RLAIF).

    cai label CONFIG [--set label.principles_per_pair=4]

Reads:  <run_dir>/sample/pairs.jsonl (Pair), the constitution's RL principles and choice examples.
Model:  models.feedback, else models.policy (the starting model, as in the CAI paper).
Writes: <run_dir>/label/preferences.jsonl (Preference), label/dataset (TRL RewardTrainer and
        DPOTrainer: conversational prompt, chosen, rejected, plus p_chosen), label/summary.json.

For every pair the feedback model is asked multiple-choice questions (cai.judge): under
`label.principles_per_pair` sampled RL principles, each in both option orders (`label.swap_orders`);
the quoted context is the whole conversation the replies answer. Each question's option
log-probabilities give p(A); their mean, with the order undone, is p(response a is better). With
chain of thought the model reasons first and each p is clamped to `label.clamp`.
"""

from __future__ import annotations

import json
from pathlib import Path

from cai.backends import Backend, make_backend
from cai.config import Config
from cai.console import progress
from cai.constitution import load_constitution, sample_rl_principles
from cai.errors import InputError
from cai.judge import combine, position_flips, questions_for, score_questions
from cai.lifecycle import StageRun, file_hash, identity, model_identity
from cai.records import Pair, Preference, Question, assistant, read_records, to_json, write_records
from cai.rundir import RunDir, starting_model
from cai.store import atomic_write_text, save_dataset

STAGE = "label"


def preference(pair: Pair, questions: list[dict], config: Config) -> Preference | None:
    """The labelled pair (None if hard labels drop it as too close to 0.5)."""
    lc = config.label
    p_a = combine(questions, lc.chain_of_thought, lc.clamp)  # (sets each question's p_a)
    if lc.hard:
        if abs(p_a - 0.5) <= lc.margin:
            return None
        p_a = 1.0 if p_a > 0.5 else 0.0
    a_wins = p_a >= 0.5
    chosen, rejected = (pair.response_a, pair.response_b) if a_wins else (pair.response_b, pair.response_a)
    return Preference(
        pair_id=pair.pair_id,
        prompt_id=pair.prompt_id,
        kind=pair.kind,
        prompt=pair.prompt,
        chosen=[assistant(chosen)],
        rejected=[assistant(rejected)],
        p_chosen=p_a if a_wins else 1 - p_a,
        chosen_is_a=a_wins,
        questions=[Question(**q) for q in questions],
    )


def summarize(rows: list[Preference], identical: int, dropped: int) -> dict:
    questions = [q for r in rows for q in r.questions]
    flips = [position_flips([q.model_dump() for q in r.questions]) for r in rows]
    comparisons = sum(c for _, c in flips)
    return {
        "pairs": len(rows),
        "identical_pairs_skipped": identical,
        "dropped_within_margin": dropped,
        "position_bias": sum(f for f, _ in flips) / comparisons if comparisons else None,  # the winner flips with the order
        "first_option_rate": sum(q.p_option_a > 0.5 for q in questions) / len(questions),  # how often "(A)" wins, whatever it holds
        "mean_p_chosen": sum(r.p_chosen for r in rows) / len(rows),
        "missing_options": sum(sum(q.missing) for q in questions),
    }


def run(config: Config, backend: Backend | None = None, force: bool = False) -> Path:
    rd = RunDir(config.run_dir)
    if not rd.sample_pairs.is_file():
        raise InputError(f"{rd.sample_pairs}: no response pairs; run `cai sample` first")
    pairs = read_records(rd.sample_pairs, Pair)
    constitution = load_constitution(config.constitution)
    if not constitution.rl_principles:
        raise InputError(f"{config.constitution}: the constitution has no RL principles to label with")
    identical = sum(p.response_a == p.response_b for p in pairs)
    pairs = [p for p in pairs if p.response_a != p.response_b]  # nothing to prefer
    if not pairs:
        raise InputError(f"{rd.sample_pairs}: no pair has two different responses ({identical} identical); sample at a higher temperature")
    spec = starting_model(config, STAGE)
    lc = config.label
    fp = {
        "seed": config.seed,
        "constitution": file_hash(config.constitution),
        "pairs": file_hash(rd.sample_pairs),
        "feedback": model_identity(spec),
        "label": identity(lc),
    }
    with StageRun(config, STAGE, fp, force=force, rebuildable=True) as run:
        if run.complete:
            return rd.stage_dir(STAGE)
        done = run.store.items(STAGE)
        todo = [i for i, p in enumerate(pairs) if p.pair_id not in done]
        if done:
            run.say(f"resuming: {len(pairs) - len(todo)} of {len(pairs)} pairs already labelled")
        run.say(f"feedback model: {getattr(spec, 'path', None) or spec.model}")
        own = backend is None
        backend = backend or make_backend(spec)
        per_pair = lc.principles_per_pair * (2 if lc.swap_orders else 1)
        pairs_per_batch = max(1, lc.batch_size // per_pair)  # whole pairs per call, so a pair is labelled or not
        bar = progress(total=len(pairs), initial=len(pairs) - len(todo), desc=STAGE, unit="pair")
        try:
            for start in range(0, len(todo), pairs_per_batch):
                batch = todo[start : start + pairs_per_batch]
                qs = []
                for i in batch:
                    p = pairs[i]
                    principles = sample_rl_principles(constitution, config.seed, p.pair_id, lc.principles_per_pair)
                    qs += questions_for(constitution, principles, p.prompt, p.response_a, p.response_b, lc.swap_orders, lc.few_shot, think=lc.chain_of_thought)
                results = score_questions(backend, qs, lc.chain_of_thought, lc.cot_max_new_tokens)
                run.store.put(STAGE, [(pairs[i].pair_id, i, {"questions": results[n * per_pair : (n + 1) * per_pair]}) for n, i in enumerate(batch)])
                bar.update(len(batch))
        finally:
            bar.close()
            if own:
                backend.close()

        done = run.store.items(STAGE)
        labelled = [preference(p, done[p.pair_id]["questions"], config) for p in pairs]
        rows = [r for r in labelled if r is not None]
        if not rows:
            raise InputError(f"label: every pair fell within label.margin={lc.margin} of 0.5; lower the margin")
        write_records(rd.label_preferences, rows)
        save_dataset(rd.label_dataset, [to_json(r) for r in rows])
        summary = summarize(rows, identical, len(labelled) - len(rows))
        atomic_write_text(rd.label_summary, json.dumps(summary, indent=2))
        run.finish(summary, [rd.label_preferences, rd.label_dataset, rd.label_summary], backend=backend)
        bias = f"{summary['position_bias']:.1%}" if summary["position_bias"] is not None else "n/a (orders not swapped)"
        run.say(
            f"{len(rows)} labelled pairs -> {rd.label_preferences}; mean p(chosen) {summary['mean_p_chosen']:.3f}; "
            f"position bias {bias}; (A) wins {summary['first_option_rate']:.1%} of questions"
            + (f"; {summary['dropped_within_margin']} dropped within margin" if lc.hard else "")
            + (f"; {summary['missing_options']} options missing from top_logprobs (floored)" if summary["missing_options"] else "")
        )
    return rd.stage_dir(STAGE)
