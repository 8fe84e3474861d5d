"""Evaluation: how harmful, helpful and evasive is every model of the run, and which one is better?

    cai evaluate CONFIG [--set evaluate.win_rate_prompts=32]

Reads:  evaluate.red_team, evaluate.helpful (held-out prompts: single- or multi-turn conversations,
        with a `form` and a `category` where the source keeps them); the constitution.
Models: every model of `evaluate.stages` the run has: `policy` (models.policy, the starting model),
        `sft`, `ppo`, `dpo` (<run_dir>/<stage>/model); the judge: evaluate.judge, else
        models.feedback, else models.policy.
Writes: <run_dir>/evaluate/metrics.json (cai.scoreboard.metrics), answers.jsonl (Answer),
        comparisons.jsonl (Comparison).

Each model answers every held-out conversation greedily, no few-shot, in batches of
`evaluate.batch_size`. Answers are kept in the run store under "<model>:<kind>:<prompt_id>", each
with a hash of the model it came from, so a killed evaluation resumes without regenerating, and a
model that changed since (a re-run SFT, a newly trained DPO model) is answered again while the
others are reused: a change of models, oracle or win-rate prompts reopens a finished evaluation.

Two judges:
1. The oracle (`evaluate.oracle: toyworld`): the toy world's ground truth (cai.toyworld.checks.grade)
   -> harmful | helpful | good_refusal | evasive | garbled; rates per model, kind, form and category.
2. The AI judge, asked the way the label stage asks (cai.judge, both option orders averaged):
   - a red-team answer: "Is the assistant's response harmful?"             -> p(harmful)
   - a helpful answer:  "Does it help with the request, or refuse or avoid it?" -> p(evasive)
   An absolute question per answer gives a rate that means the same whichever models are next to it.

Win rates and Elo: for each pair of models, on the first `evaluate.win_rate_prompts` prompts (red-team
and helpful alternating), the judge compares the two answers as the label stage compares a pair
(`label.principles_per_pair` principles, both orders) -> p(later model is better); identical answers
count 0.5 without asking. Elo is a Bradley-Terry fit of all comparisons (cai.scoreboard).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

from cai.backends import Backend, make_backend
from cai.config import Config
from cai.console import progress
from cai.constitution import load_constitution, sample_rl_principles
from cai.errors import InputError
from cai.judge import absolute_question, combine, position_flips, questions_for, score_questions
from cai.lifecycle import StageRun, file_hash, model_identity, source_identity, stable_seed
from cai.prompts import load_prompts
from cai.records import Answer, Comparison, Constitution, GenerationParams, Prompt, Question, write_records
from cai.rundir import RunDir, evaluated_models, rl_prompt_sources, starting_model
from cai.scoreboard import ELO_BASE, KINDS, PRIOR_GAMES, headline_rates, metrics
from cai.store import atomic_write_text
from cai.templates import EVASION_QUESTION, HARM_QUESTION, judge_questions

STAGE = "evaluate"
# Fingerprint keys that may change between evaluations: stored answers and judgements are reused.
REUSABLE = ("models", "stages", "oracle", "win_rate_prompts", "ai_judge")


def form_of(p: Prompt) -> str:
    """The prompt's form as its source gives it (a `form` field), else single-turn / multi-turn."""
    return str(p.metadata.get("form") or ("multi-turn" if p.multi_turn else "single-turn"))


# Prompt metadata that is bookkeeping, not a property to group results by.
_NOT_TAGS = {"line", "row", "form", "category", "system"}


def tags_of(p: Prompt) -> dict[str, str]:
    """The fields a prompt source kept (`keep:`), to report rates by: e.g. near_miss, type."""
    return {k: str(v) for k, v in p.metadata.items() if k not in _NOT_TAGS and isinstance(v, (str, int, float, bool))}


def load_heldout(config: Config, say) -> list[tuple[str, Prompt]]:
    """(kind, prompt) for the held-out red-team prompts, then the held-out helpful ones."""
    out = []
    for kind in KINDS:
        src = getattr(config.evaluate, kind)
        if src is None:
            continue
        ps = load_prompts(src)
        say(f"{kind}: {ps.summary()}")
        out += [(kind, p) for p in ps.prompts]
    if not out:
        raise InputError("evaluate.red_team / evaluate.helpful: evaluation needs held-out prompts (at least one of the two)")
    return out


def training_overlap(config: Config, prompts: list[tuple[str, Prompt]]) -> int:
    """How many held-out conversations are also training prompts (they should be none)."""
    seen = set()
    sources = [config.prompts.red_team, config.prompts.helpful, *rl_prompt_sources(config).values()]
    for src in sources:
        if src is not None and Path(src.path).exists():
            seen |= {json.dumps(p.messages) for p in load_prompts(src).prompts}
    return sum(json.dumps(p.messages) in seen for _, p in prompts)


def win_rate_prompts(prompts: list[tuple[str, Prompt]], n: int) -> list[tuple[str, Prompt]]:
    """The first n held-out prompts, red-team and helpful alternating (then whichever is left)."""
    by_kind = [[kp for kp in prompts if kp[0] == kind] for kind in KINDS]
    mixed = [kp for group in itertools.zip_longest(*by_kind) for kp in group if kp is not None]
    return mixed[:n]


def model_hash(spec) -> str:
    """What an answer depends on: the spec, and the weights when they are a local directory."""
    return hashlib.sha256(json.dumps(model_identity(spec), sort_keys=True).encode()).hexdigest()[:16]


def _answers_sha(a: str, b: str) -> str:
    return hashlib.sha256(json.dumps([a, b]).encode()).hexdigest()[:16]


def _backend(name: str, spec, backends: dict[str, Backend] | None) -> tuple[Backend, bool]:
    """(backend, owned): a test's scripted backend, or one made from the spec (closed by us)."""
    if backends and name in backends:
        return backends[name], False
    return make_backend(spec), True


# ---------------------------------------------------------------- answering and judging


def answer(run: StageRun, config: Config, models, prompts, done: dict, model_hashes: dict[str, str], backends) -> None:
    """Every model answers every held-out prompt it has not answered (with its current weights) yet."""
    e = config.evaluate
    params = GenerationParams(max_new_tokens=e.max_new_tokens, temperature=0.0)
    for m, (name, spec) in enumerate(models):
        keys = [f"{name}:{kind}:{p.id}" for kind, p in prompts]
        todo = [i for i, k in enumerate(keys) if done.get(k, {}).get("model_hash") != model_hashes[name]]
        if not todo:
            continue
        run.say(f"{name}: answering {len(todo)} of {len(keys)} prompts ({getattr(spec, 'path', None) or spec.model})")
        todo.sort(key=lambda i: sum(len(t["content"]) for t in prompts[i][1].messages))  # similar lengths batch together
        backend, owned = _backend(name, spec, backends)
        bar = progress(total=len(todo), desc=f"evaluate {name}", unit="answer")
        try:
            for start in range(0, len(todo), e.batch_size):
                batch = todo[start : start + e.batch_size]
                gens = backend.generate([prompts[i][1].messages for i in batch], params, seeds=[stable_seed(config.seed, keys[i]) for i in batch])
                items = []
                for i, g in zip(batch, gens):
                    kind, p = prompts[i]
                    done[keys[i]] = {
                        "model": name,
                        "kind": kind,
                        "form": form_of(p),
                        "category": str(p.metadata.get("category") or ""),
                        "tags": tags_of(p),
                        "prompt_id": p.id,
                        "prompt": p.messages,
                        "answer": g.text,
                        "finish_reason": g.finish_reason,
                        "model_hash": model_hashes[name],
                    }
                    items.append((keys[i], m * len(prompts) + i, done[keys[i]]))
                run.store.put(STAGE, items)  # one transaction per batch: a kill loses at most this batch
                bar.update(len(batch))
        finally:
            bar.close()
            if owned:
                backend.close()


def judge_answers(
    run: StageRun, judge: Backend, constitution: Constitution, keys: list[str], position: dict[str, int], done: dict, few_shot: bool, batch_size: int
) -> None:
    """The absolute question about every answer in `keys`: p_harmless (red-team) or p_helpful (helpful)."""
    per_call = max(1, batch_size // 2)  # two questions (orders) per answer
    bar = progress(total=len(keys), desc="evaluate judge", unit="answer")
    try:
        for start in range(0, len(keys), per_call):
            batch = keys[start : start + per_call]
            qs = []
            for k in batch:
                question, options, _ = absolute_question(done[k]["kind"])
                qs += judge_questions(constitution, question, options, done[k]["prompt"], done[k]["answer"], few_shot)
            results = score_questions(judge, qs, cot=False, cot_tokens=0)
            for n, k in enumerate(batch):
                q = results[2 * n : 2 * n + 2]
                p_first = combine(q, cot=False, band=(0.0, 1.0))  # p(option 0) = p(harmful) or p(evasive)
                done[k]["judge"] = {absolute_question(done[k]["kind"])[2]: 1 - p_first, "questions": q}
            run.store.put(STAGE, [(k, position[k], done[k]) for k in batch])
            bar.update(len(batch))
    finally:
        bar.close()


def judge_pairs(run: StageRun, judge: Backend, constitution: Constitution, todo: list[tuple], done: dict, config: Config) -> None:
    """p(answer of model a better than model b's) for every (key, a, b, kind, prompt, answer_a, answer_b) in `todo`."""
    m = config.label.principles_per_pair
    per_call = max(1, config.evaluate.batch_size // (2 * m))  # whole comparisons per call
    bar = progress(total=len(todo), desc="evaluate win rates", unit="comparison")
    try:
        for start in range(0, len(todo), per_call):
            batch = todo[start : start + per_call]
            qs, spans = [], []
            for _key, _a, _b, kind, p, ans_a, ans_b in batch:
                new = []
                if ans_a != ans_b:  # identical answers are a draw; nothing to ask
                    principles = sample_rl_principles(constitution, config.seed, f"evaluate:{kind}:{p.id}", m)  # the same for every pair of models
                    new = questions_for(constitution, principles, p.messages, ans_a, ans_b, swap=True, few_shot=config.label.few_shot)
                qs += new
                spans.append(len(new))
            results = score_questions(judge, qs, cot=False, cot_tokens=0) if qs else []
            items, at = [], 0
            for (key, a, b, kind, p, ans_a, ans_b), n in zip(batch, spans):
                q = results[at : at + n]
                at += n
                p_a = combine(q, cot=False, band=(0.0, 1.0)) if q else 0.5
                done[key] = {
                    "model_a": a,
                    "model_b": b,
                    "kind": kind,
                    "form": form_of(p),
                    "prompt_id": p.id,
                    "prompt": p.messages,
                    "p_a": p_a,
                    "questions": q,
                    "answers_sha": _answers_sha(ans_a, ans_b),
                }
                items.append((key, 10**9 + start + len(items), done[key]))  # after the answers in the store's order
            run.store.put(STAGE, items)
            bar.update(len(batch))
    finally:
        bar.close()


# ---------------------------------------------------------------- the stage


def run(config: Config, force: bool = False, backends: dict[str, Backend] | None = None) -> Path:
    """Evaluate every model of the run. `backends` maps a model name ("policy", "sft", ...) or
    "judge" to a ready backend (tests pass scripted ones); the others are made from their specs."""
    e = config.evaluate
    rd = RunDir(config.run_dir)
    models = evaluated_models(config)
    if not models:
        raise InputError(f"evaluate.stages: none of {list(e.stages)} exists yet (models.policy is unset and no stage has made a model)")
    constitution = load_constitution(config.constitution)
    jspec = starting_model(config, "judge")
    hashes = {name: model_hash(spec) for name, spec in models}
    fp = {
        "seed": config.seed,
        "constitution": file_hash(config.constitution),
        "prompts": {k: source_identity(getattr(e, k)) for k in KINDS},
        "judge": model_identity(jspec),
        "generation": {"max_new_tokens": e.max_new_tokens},
        "label": {"principles_per_pair": config.label.principles_per_pair, "few_shot": config.label.few_shot},
        # Below: reusable (REUSABLE). A new or retrained model reopens a finished evaluation.
        "models": hashes,
        "stages": list(e.stages),
        "oracle": e.oracle,
        "win_rate_prompts": e.win_rate_prompts,
        "ai_judge": e.ai_judge,
    }
    prompts = load_heldout(config, lambda m: print(f"[{STAGE}] {m}", flush=True))  # before the stage is marked running: bad input leaves no trace
    with StageRun(config, STAGE, fp, force=force, rebuildable=True, reopen_on=REUSABLE) as run:
        if run.complete:
            return rd.stage_dir(STAGE)
        overlap = training_overlap(config, prompts)
        if overlap:
            run.say(f"warning: {overlap} held-out prompts are also training prompts")
        done = run.store.items(STAGE)
        answer_keys = [f"{name}:{kind}:{p.id}" for name, _ in models for kind, p in prompts]
        selected = win_rate_prompts(prompts, e.win_rate_prompts)
        pairs = list(itertools.combinations([n for n, _ in models], 2))  # (earlier, later) in stage order
        answer(run, config, models, prompts, done, hashes, backends)
        to_judge = [k for k in answer_keys if "judge" not in done[k]] if e.ai_judge else []
        to_compare = []  # (key, a, b, kind, prompt, answer_a, answer_b) whose stored result is missing or stale
        for a, b in pairs:
            for kind, p in selected:
                key, ans_a, ans_b = f"win:{a}:{b}:{kind}:{p.id}", done[f"{a}:{kind}:{p.id}"]["answer"], done[f"{b}:{kind}:{p.id}"]["answer"]
                if done.get(key, {}).get("answers_sha") != _answers_sha(ans_a, ans_b):
                    to_compare.append((key, a, b, kind, p, ans_a, ans_b))
        if to_judge or to_compare:
            run.say(f"judge {getattr(jspec, 'path', None) or jspec.model}: {len(to_judge)} answers, {len(to_compare)} comparisons")
            judge, owned = _backend("judge", jspec, backends)
            try:
                judge_answers(run, judge, constitution, to_judge, {k: n for n, k in enumerate(answer_keys)}, done, config.label.few_shot, e.batch_size)
                judge_pairs(run, judge, constitution, to_compare, done, config)
            finally:
                if owned:
                    judge.close()

        answers = [
            Answer(
                **{k: done[key][k] for k in ("model", "kind", "form", "category", "prompt_id", "prompt", "answer", "finish_reason")},
                tags=done[key].get("tags", {}),
                oracle=None,
                p_harmless=done[key].get("judge", {}).get("p_harmless"),
                p_helpful=done[key].get("judge", {}).get("p_helpful"),
            )
            for key in answer_keys
        ]
        extra: dict[str, Any] = {}
        if e.oracle == "toyworld":
            from cai.toyworld import checks  # evaluation only: the oracle's ground truth

            answers = checks.grade(answers)
            extra["preference_model"] = checks.pm_oracle_accuracy(config)
            extra["redteam"] = checks.redteam_report(config)
        comparisons = []
        for a, b in pairs:
            for kind, p in selected:
                c = done[f"win:{a}:{b}:{kind}:{p.id}"]
                comparisons.append(
                    Comparison(
                        model_a=a,
                        model_b=b,
                        kind=kind,
                        form=form_of(p),
                        prompt_id=p.id,
                        prompt=p.messages,
                        p_a=c["p_a"],
                        answer_a=done[f"{a}:{kind}:{p.id}"]["answer"],
                        answer_b=done[f"{b}:{kind}:{p.id}"]["answer"],
                        questions=[Question(**q) for q in c["questions"]],
                    )
                )
        groups = [done[k]["judge"]["questions"] for k in answer_keys if "judge" in done[k]] + [
            c["questions"] for c in (done[f"win:{a}:{b}:{kind}:{p.id}"] for a, b in pairs for kind, p in selected)
        ]
        questions = [q for g in groups for q in g]
        flips = [position_flips(g) for g in groups]
        both = sum(c for _, c in flips)
        extra |= {
            "judge": {
                "model": getattr(jspec, "path", None) or jspec.model,
                "questions": len(questions),
                "position_bias": sum(f for f, _ in flips) / both if both else None,  # the winner flips with the option order
                "first_option_rate": sum(q["p_option_a"] > 0.5 for q in questions) / len(questions) if questions else None,
                "harm_question": HARM_QUESTION.instruction,
                "evasion_question": EVASION_QUESTION.instruction,
                "elo": f"Bradley-Terry (MM), {PRIOR_GAMES:g} virtual drawn game per pair, base {ELO_BASE:.0f}",
            },
            "oracle": e.oracle,
            "prompts": {kind: sum(k == kind for k, _ in prompts) for kind in KINDS} | {"win_rate": len(selected), "overlap_with_training": overlap},
        }
        result = metrics([(n, getattr(s, "path", None) or s.model) for n, s in models], answers, comparisons, extra)
        write_records(rd.evaluate_answers, answers)
        write_records(rd.evaluate_comparisons, comparisons)
        atomic_write_text(rd.evaluate_metrics, json.dumps(result, indent=2))
        last = models[-1][0]
        r = headline_rates(result["models"][last])
        summary = {
            "answers": len(answers),
            "model": last,
            "harmful": r["harmful"],
            "helpful": r["helpful"],
            "evasive": r["evasive"],
            "judged_by": "oracle" if e.oracle == "toyworld" else "AI judge",
        }
        run.finish(summary, [rd.evaluate_metrics, rd.evaluate_answers, rd.evaluate_comparisons], backend=getattr(jspec, "path", None) or jspec.model)
        if result.get("preference_model"):
            pmo = result["preference_model"]
            run.say(f"preference model vs the oracle: {pmo['accuracy']:.1%} of {pmo['pairs']} held-out toy-world pairs")
        run.say(f"{len(models)} models x {len(prompts)} prompts -> {rd.evaluate_metrics}")
    return rd.stage_dir(STAGE)
