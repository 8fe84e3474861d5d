"""RL-CAI, step 1: the policy answers every prompt k times; the answers are paired.

    cai sample CONFIG [--set sample.k=4]

Reads:  the RL prompt sets (prompts.rl_red_team / prompts.rl_helpful if given, else prompts.red_team
        and, with sample.helpful, prompts.helpful), single- or multi-turn conversations.
Model:  sample.model, else the run's SFT model if the sft stage made it, else models.policy.
Writes: <run_dir>/sample/responses.jsonl (Responses: k answers per prompt), sample/pairs.jsonl (Pair).

Response j of a prompt is sampled at `sample.temperatures[j % len]` with a seed fixed by (seed,
prompt, j), so a resumed run draws the same responses. Waves run breadth-first (every prompt's
response 0, then response 1, ...); every batch is committed to the run store before the next starts.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from cai.backends import Backend, make_backend
from cai.config import Config
from cai.console import progress
from cai.errors import InputError
from cai.lifecycle import StageRun, identity, model_identity, source_identity, stable_seed
from cai.prompts import load_prompts
from cai.records import GenerationParams, Pair, Prompt, Responses, SampledResponse, write_records
from cai.rundir import RunDir, model_origin, rl_prompt_sources, starting_model

STAGE = "sample"


def pair_indices(k: int, how: str) -> list[tuple[int, int]]:
    if how == "all":
        return list(itertools.combinations(range(k), 2))
    return [(i, i + 1) for i in range(0, k - 1, 2)]


def load_rl_prompts(config: Config, say) -> list[tuple[str, Prompt]]:
    """(kind, prompt) for every RL prompt: red-team ones, then helpful ones."""
    out = []
    for kind, src in rl_prompt_sources(config, config.sample.helpful).items():
        if src is not None:
            ps = load_prompts(src)
            say(f"{kind}: {ps.summary()}")
            out += [(kind, p) for p in ps.prompts]
    if not out:
        raise InputError("prompts: the sample stage needs prompts (prompts.red_team and/or prompts.helpful, or prompts.rl_*)")
    return out


def run(config: Config, backend: Backend | None = None, force: bool = False) -> Path:
    rd = RunDir(config.run_dir)
    spec = starting_model(config, STAGE)
    s = config.sample
    fp = {
        "seed": config.seed,
        "prompts": {k: source_identity(v) for k, v in rl_prompt_sources(config, config.sample.helpful).items()},
        "model": model_identity(spec),
        "sample": identity(s) | {"model": None},
    }
    prompts = load_rl_prompts(config, lambda m: print(f"[{STAGE}] {m}", flush=True))  # before the stage is marked running
    with StageRun(config, STAGE, fp, force=force, rebuildable=True) as run:
        if run.complete:
            return rd.stage_dir(STAGE)
        # The same conversation can be both a red-team and a helpful prompt; it is sampled once per kind.
        keys = [f"{kind}:{p.id}" for kind, p in prompts]
        run.say(f"policy: {getattr(spec, 'path', None) or spec.model} ({model_origin(config, spec)})")
        done = run.store.items(STAGE)
        responses: dict[str, list[dict]] = {key: done.get(key, {}).get("responses", []) for key in keys}
        resumed = sum(len(r) for r in responses.values())
        if resumed:
            run.say(f"resuming: {resumed} of {len(keys) * s.k} responses already done")
        own = backend is None
        backend = backend or make_backend(spec)
        bar = progress(total=len(keys) * s.k, initial=resumed, desc=STAGE, unit="response")
        t0, tokens = time.perf_counter(), 0
        try:
            for j in range(s.k):  # wave j: every prompt's j-th response
                temperature = s.temperatures[j % len(s.temperatures)]
                params = GenerationParams(max_new_tokens=s.max_new_tokens, temperature=temperature, top_p=s.top_p, stop=tuple(s.stop))
                wave = [i for i, key in enumerate(keys) if len(responses[key]) == j]
                wave.sort(key=lambda i: sum(len(m["content"]) for m in prompts[i][1].messages))
                for start in range(0, len(wave), s.batch_size):
                    batch = wave[start : start + s.batch_size]
                    seeds = [stable_seed(config.seed, keys[i], j) for i in batch]
                    gens = backend.generate([prompts[i][1].messages for i in batch], params, seeds=seeds)
                    for i, seed, g in zip(batch, seeds, gens):
                        responses[keys[i]] = responses[keys[i]] + [{"text": g.text, "temperature": temperature, "seed": seed, "finish_reason": g.finish_reason}]
                        tokens += g.completion_tokens
                    run.store.put(STAGE, [(keys[i], i, {"responses": responses[keys[i]]}) for i in batch])
                    bar.update(len(batch), note=f"{tokens / (time.perf_counter() - t0):.0f} tok/s")
        finally:
            bar.close()
            if own:
                backend.close()

        rows, pairs = [], []
        for key, (kind, p) in zip(keys, prompts):
            answers = [SampledResponse(**r) for r in responses[key]]
            rows.append(Responses(key=key, prompt_id=p.id, kind=kind, prompt=p.messages, responses=answers))
            for a, b in pair_indices(s.k, s.pairs):
                pairs.append(
                    Pair(pair_id=f"{key}:{a}-{b}", prompt_id=p.id, kind=kind, prompt=p.messages, response_a=answers[a].text, response_b=answers[b].text)
                )
        write_records(rd.sample_responses, rows)
        write_records(rd.sample_pairs, pairs)
        identical = sum(p.response_a == p.response_b for p in pairs)
        multi = sum(p.multi_turn for _, p in prompts)
        run.finish(
            {"prompts": len(rows), "multi_turn": multi, "pairs": len(pairs), "identical_pairs": identical},
            [rd.sample_responses, rd.sample_pairs],
            backend=backend,
        )
        run.say(f"{len(rows)} prompts ({multi} multi-turn) x {s.k} responses -> {len(pairs)} pairs ({identical} with identical responses) -> {rd.sample_pairs}")
    return rd.stage_dir(STAGE)
