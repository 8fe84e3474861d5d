"""Red-team prompts written by the model: few-shot generation from seed prompts, then filters.

    cai redteam CONFIG [--set redteam.requests=1000]

Reads:  redteam.seeds (default prompts.red_team): the pool of example prompts; the evaluation
        prompt sets (evaluate.red_team, evaluate.helpful), for decontamination; the constitution
        (its `topics`, if redteam.topics is empty; its choice examples, for the harm filter).
Model:  models.redteam, else models.policy; for the optional harm filter, models.feedback, else
        models.policy.
Writes: <run_dir>/redteam/prompts.jsonl (one prompt per line with its provenance: the seed
        prompts shown, the topic, the filter scores) and the HF dataset redteam/dataset.

The CAI paper red-teamed with 182,831 prompts, 140,335 of them written by a pre-trained model
few-shot prompted with human ones; a user with a domain constitution has no such set, and makes
one here from a handful. Request i shows `redteam.k` seed prompts drawn with the run's seed (and,
with topics, the i-th topic in turn, so coverage is balanced) and asks for one new request
(cai.templates.redteam_request); the reply is parsed robustly (one request, or a numbered list:
cai.templates.parse_redteam_reply), and a reply with nothing usable is counted, not fatal. Every
reply is committed to the run store as it comes, so a killed run resumes.

Then the filters, each counted (cai.dedup): length bounds; exact and near duplicates (MinHash-LSH);
copies of a seed prompt; decontamination (a prompt sharing an n-gram with any evaluation prompt
never reaches training); with `redteam.harm_filter`, the feedback model's p(harmful) for each
request (option log-probs, both orders) must reach `redteam.harm_threshold`.

`cai run` runs this stage before `critique` when the config has a `redteam` section; critique then
reads the generated prompts with the given ones (`redteam.use: add`) or instead of them (`replace`).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from cai import dedup
from cai.backends import Backend, make_backend
from cai.config import Config, Redteam
from cai.console import progress
from cai.constitution import load_constitution
from cai.errors import InputError
from cai.judge import combine, score_questions
from cai.lifecycle import StageRun, file_hash, identity, model_identity, source_identity, stable_seed
from cai.prompts import conversation_id, load_prompts
from cai.records import GenerationParams, Prompt
from cai.rundir import RunDir, starting_model
from cai.store import save_dataset, write_jsonl
from cai.templates import parse_redteam_reply, redteam_request, request_questions

STAGE = "redteam"


def seed_source(config: Config):
    src = config.redteam.seeds or config.prompts.red_team
    if src is None:
        raise InputError("redteam.seeds: the redteam stage needs seed prompts (redteam.seeds or prompts.red_team)")
    return src


def plan(config: Config, pool: list[Prompt], topics: list[str]) -> list[dict[str, Any]]:
    """Request i: the seed prompts it shows (a seeded draw, the same in any process) and its topic."""
    r = config.redteam
    out = []
    for i in range(r.requests):
        rng = random.Random(stable_seed(config.seed, "redteam", i))
        shown = rng.sample(range(len(pool)), min(r.k, len(pool)))
        out.append({"shown": shown, "topic": topics[i % len(topics)] if topics else None})
    return out


def generate(run: StageRun, backend: Backend, config: Config, pool: list[Prompt], requests: list[dict]) -> dict[str, dict]:
    """Every request's reply, committed batch by batch. -> request key -> {"reply": text}."""
    r = config.redteam
    done = run.store.items(STAGE)
    todo = [i for i in range(len(requests)) if f"request-{i}" not in done]
    if done:
        run.say(f"resuming: {len(requests) - len(todo)} of {len(requests)} requests already answered")
    params = GenerationParams(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p)
    bar = progress(total=len(requests), initial=len(requests) - len(todo), desc=STAGE, unit="request")
    t0, tokens = time.perf_counter(), 0
    try:
        for start in range(0, len(todo), r.batch_size):
            batch = todo[start : start + r.batch_size]
            convs = [redteam_request([pool[j].text for j in requests[i]["shown"]], requests[i]["topic"]) for i in batch]
            gens = backend.generate(convs, params, seeds=[stable_seed(config.seed, "redteam-sample", i) for i in batch])
            items = []
            for i, g in zip(batch, gens):
                done[f"request-{i}"] = {"reply": g.text}
                items.append((f"request-{i}", i, done[f"request-{i}"]))
                tokens += g.completion_tokens
            run.store.put(STAGE, items)
            bar.update(len(batch), note=f"{tokens / (time.perf_counter() - t0):.0f} tok/s")
    finally:
        bar.close()
    return done


def harm_scores(run: StageRun, config: Config, prompts: list[Prompt]) -> dict[str, float]:
    """p(the request asks for something harmful) by the feedback model, both option orders averaged."""
    constitution = load_constitution(config.constitution)
    done = run.store.items("redteam-harm")
    todo = [p for p in prompts if p.id not in done]
    if todo:
        spec = starting_model(config, "label")
        run.say(f"harm filter: {len(todo)} prompts asked of {getattr(spec, 'path', None) or spec.model}")
        backend = make_backend(spec)
        try:
            for start in range(0, len(todo), 16):
                batch = todo[start : start + 16]
                qs = [q for p in batch for q in request_questions(constitution, p.messages, few_shot=config.label.few_shot)]
                results = score_questions(backend, qs, cot=False, cot_tokens=0)
                run.store.put(
                    "redteam-harm", [(p.id, n, {"p_harmful": combine(results[2 * n : 2 * n + 2], cot=False, band=(0.0, 1.0))}) for n, p in enumerate(batch)]
                )
        finally:
            backend.close()
        done = run.store.items("redteam-harm")
    return {p.id: done[p.id]["p_harmful"] for p in prompts}


def file_hash_of_ids(ids: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def evaluation_prompts(config: Config) -> list[Prompt]:
    """Every evaluation prompt set in the config: what a generated prompt must never copy."""
    out = []
    for src in (config.evaluate.red_team, config.evaluate.helpful):
        if src is not None:
            out += load_prompts(src).prompts
    return out


def run(config: Config, backend: Backend | None = None, force: bool = False) -> Path:
    if config.redteam is None:  # `cai redteam` on a config without the section: the defaults
        print("[redteam] no redteam section in the config: default settings; add `redteam: {}` so that `cai run` and critique use the prompts", flush=True)
        config = config.model_copy(update={"redteam": Redteam()})
    r = config.redteam
    rd = RunDir(config.run_dir)
    spec = starting_model(config, STAGE) if backend is None else None
    pool = list(load_prompts(seed_source(config)).prompts)
    constitution = load_constitution(config.constitution)
    topics = list(r.topics or constitution.topics)
    eval_prompts = evaluation_prompts(config)
    fp = {
        "seed": config.seed,
        "seeds": source_identity(seed_source(config)),
        "constitution": file_hash(config.constitution),
        "evaluation": file_hash_of_ids([p.id for p in eval_prompts]),
        "model": model_identity(spec) if spec is not None else None,
        "feedback": model_identity(starting_model(config, "label")) if r.harm_filter else None,
        "redteam": identity(r) | {"seeds": None, "use": None},
    }
    with StageRun(config, STAGE, fp, force=force, rebuildable=True, clear=["redteam-harm"]) as run:
        if run.complete:
            return rd.stage_dir(STAGE)
        run.say(f"{r.requests} requests, {r.k} of {len(pool)} seed prompts each" + (f", topics {', '.join(topics)}" if topics else ""))
        requests = plan(config, pool, topics)
        own = backend is None
        backend = backend or make_backend(spec)
        try:
            replies = generate(run, backend, config, pool, requests)
        finally:
            if own:
                backend.close()

        # Parse: each reply gives zero or more requests; an unparseable reply is counted.
        generated, provenance, unparseable = [], {}, 0
        for i, req in enumerate(requests):
            texts = parse_redteam_reply(replies[f"request-{i}"]["reply"])
            unparseable += not texts
            for text in texts:
                p = Prompt(id=conversation_id([{"role": "user", "content": text}]), text=text, source=str(rd.redteam_prompts), metadata={"request": i})
                generated.append(p)
                provenance.setdefault(p.id, {"request": i, "topic": req["topic"], "shown": [pool[j].text for j in req["shown"]]})
        filters = [
            dedup.LengthBounds(r.min_words, r.max_words),
            dedup.exact_duplicates,
            lambda ps: dedup.near_duplicates(ps, threshold=r.near_duplicate, seed=config.seed),
            dedup.SeedOverlap(pool, threshold=r.near_duplicate, seed=config.seed),
            dedup.Decontaminate(eval_prompts, n=r.decontaminate_ngram),
        ]
        result = dedup.apply(generated, filters)
        scores: dict[str, float] = {}
        if r.harm_filter:
            scores = harm_scores(run, config, list(result.kept))
            harm = dedup.MinScore(scores, r.harm_threshold)(result.kept)
            result = dedup.Filtered(harm.kept, result.dropped + harm.dropped)
        if not result.kept:
            raise InputError(f"redteam: no generated prompt survived the filters ({result.counts()}); raise redteam.requests or loosen the filters")

        rows = []
        for p in result.kept:
            row = {"id": p.id, "prompt": p.text, **provenance[p.id], "model": backend.name}
            if p.id in scores:
                row["p_harmful"] = scores[p.id]
            rows.append(row)
        write_jsonl(rd.redteam_prompts, rows)
        save_dataset(rd.redteam_dataset, rows)
        counts = result.counts()
        summary = {"requests": len(requests), "unparseable_replies": unparseable, "generated": len(generated), "kept": len(rows), "dropped": counts}
        run.finish(summary, [rd.redteam_prompts, rd.redteam_dataset], backend=backend)
        run.say(
            f"{len(generated)} prompts from {len(requests)} requests ({unparseable} replies unparseable); "
            f"dropped {', '.join(f'{v} {k}' for k, v in counts.items()) or 'none'}; kept {len(rows)} -> {rd.redteam_prompts}"
        )
    return rd.stage_dir(STAGE)
