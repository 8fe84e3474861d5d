"""SL-CAI, step 1: the model answers red-team prompts, critiques its answers, and revises them.

    cai critique CONFIG [--set critique.revisions=4]

For every red-team prompt the plan is fixed up front:

    init  ->  (critique under principle p_r  ->  revision under p_r)  x  critique.revisions

with p_r sampled from the constitution's SL principles, seeded per (prompt, round). All steps of
one prompt are turns of one conversation (after the constitution's few-shot conversations), so a
backend with a prefix cache recomputes nothing. Steps run breadth-first: every prompt's initial
answer, then every first critique, and so on; each batch of `critique.batch_size` conversations
is one generate call, and its results are committed to the run store in one transaction. A
killed run resumes at the first unfinished step of each prompt.

Output: `<run_dir>/critique/records.jsonl` and the HF dataset `<run_dir>/critique/dataset`, with the
columns of Hugging Face's open CAI datasets (init_prompt, init_response, critic_prompt,
critic_response, revision_prompt, revision_response, prompt, messages, chosen, rejected) plus
every round.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cai.backends import Backend, make_backend
from cai.config import Config, save_config
from cai.constitution import load_constitution, sample_sl_principle
from cai.errors import InputError
from cai.prompts import load_prompts
from cai.records import Constitution, Conversation, GenerationParams, Prompt, assistant, user
from cai.stages.common import begin, file_hash, finish, identity, stable_seed
from cai.store import RunStore, save_dataset, write_jsonl
from cai.templates import critique_start

STAGE = "critique"


@dataclass(frozen=True)
class Step:
    kind: str  # "init" | "critique" | "revision"
    round: int  # -1 for init
    principle_id: str | None
    request: str  # the user turn that asks for this step


def plan(constitution: Constitution, prompt: Prompt, config: Config) -> list[Step]:
    """The fixed sequence of steps for one prompt. Same config + prompt id -> same plan, in any process."""
    steps = [Step("init", -1, None, prompt.text)]
    for r in range(config.critique.revisions):
        p = sample_sl_principle(constitution, config.seed, f"{prompt.id}:round{r}")
        if not config.critique.direct_revision:
            steps.append(Step("critique", r, p.id, p.critique))
        steps.append(Step("revision", r, p.id, p.revision))
    return steps


def conversation(constitution: Constitution, prompt: Prompt, steps: list[Step], responses: list[str], few_shot: bool) -> Conversation:
    """The conversation that asks for step `len(responses)`: earlier steps are earlier turns."""
    conv = critique_start(constitution, prompt.text, few_shot)
    for step, response in zip(steps[1:], responses):  # steps[0]'s request is the prompt itself
        conv += [assistant(response), user(step.request)]
    if len(responses) == len(steps):  # (complete: nothing to ask)
        conv.append(assistant(responses[-1]))
    return conv


def fingerprint(config: Config) -> dict[str, Any]:
    """What the stage's output depends on. A change after the stage started is reported, not ignored."""
    red = config.prompts.red_team
    return {
        "seed": config.seed,
        "constitution": file_hash(config.constitution),
        "prompts.red_team": red.model_dump() | {"sha256": file_hash(red.path)} if red else None,
        "models.policy": identity(config.models.policy),
        "critique": identity(config.critique),
    }


def run(config: Config, backend: Backend | None = None, force: bool = False) -> Path:
    red = config.prompts.red_team
    if red is None:
        raise InputError("prompts.red_team: the critique stage needs red-team prompts")
    if config.models.policy is None and backend is None:
        raise InputError("models.policy: the critique stage needs a policy model")
    constitution = load_constitution(config.constitution)
    if not constitution.sl_principles:
        raise InputError(f"{config.constitution}: the constitution has no SL principles to critique with")
    prompt_set = load_prompts(red)
    print(f"[critique] {prompt_set.summary()}")

    out_dir = Path(config.run_dir) / STAGE
    store = RunStore(config.run_dir)
    fp = fingerprint(config)
    if begin(store, STAGE, fp, force):
        print(f"[critique] already complete: {out_dir / 'records.jsonl'}")
        store.close()
        return out_dir
    save_config(config, Path(config.run_dir) / "config.yaml")

    prompts = list(prompt_set.prompts)
    plans = {p.id: plan(constitution, p, config) for p in prompts}
    done = store.items(STAGE)  # id -> {"responses": [...], ...}; what survived earlier runs
    responses = {p.id: done.get(p.id, {}).get("responses", []) for p in prompts}
    resumed = sum(len(r) for r in responses.values())
    if resumed:
        print(f"[critique] resuming: {resumed} of {sum(len(s) for s in plans.values())} steps already done")

    own_backend = backend is None
    backend = backend or make_backend(config.models.policy)
    c = config.critique
    params = GenerationParams(max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p, stop=tuple(c.stop))
    position = {p.id: i for i, p in enumerate(prompts)}
    steps_per_prompt = len(next(iter(plans.values())))
    bar = tqdm(
        total=len(prompts), initial=resumed / steps_per_prompt, unit="prompt", desc="critique", dynamic_ncols=True,
        # prompts advance by 1/steps_per_prompt per step: show whole prompts, not 10.666666/180
        bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]",
    )
    t0, tokens, generated = time.perf_counter(), 0, 0
    try:
        while True:
            pending = [p for p in prompts if len(responses[p.id]) < steps_per_prompt]
            if not pending:
                break
            s = min(len(responses[p.id]) for p in pending)  # the earliest unfinished step goes first
            wave = [p for p in pending if len(responses[p.id]) == s]
            convs = {p.id: conversation(constitution, p, plans[p.id], responses[p.id], c.few_shot) for p in wave}
            wave.sort(key=lambda p: sum(len(m["content"]) for m in convs[p.id]))  # similar lengths together
            kind = plans[wave[0].id][s].kind
            for start in range(0, len(wave), c.batch_size):
                batch = wave[start : start + c.batch_size]
                gens = backend.generate(
                    [convs[p.id] for p in batch], params, seeds=[stable_seed(config.seed, p.id, s) for p in batch]
                )
                for p, g in zip(batch, gens):
                    responses[p.id] = responses[p.id] + [g.text]
                    tokens += g.completion_tokens
                    generated += 1
                store.put(STAGE, [(p.id, position[p.id], {"responses": responses[p.id]}) for p in batch])
                elapsed = time.perf_counter() - t0
                bar.set_postfix_str(f"step {s + 1}/{steps_per_prompt} {kind}, {tokens / elapsed:.0f} tok/s")
                bar.update(min(len(batch) / steps_per_prompt, bar.total - bar.n))  # (float steps)
    finally:
        bar.close()
        if own_backend:
            backend.close()

    model_name = getattr(backend, "name", "")
    sampling = {"temperature": c.temperature, "top_p": c.top_p, "max_new_tokens": c.max_new_tokens, "seed": config.seed}
    records = [record(p, plans[p.id], responses[p.id], model_name, sampling) for p in prompts]
    write_jsonl(out_dir / "records.jsonl", records)
    save_dataset(out_dir / "dataset", records)
    summary = {"prompts": len(records), "dropped_blank": prompt_set.dropped_blank, "dropped_duplicate": prompt_set.dropped_duplicate}
    finish(store, STAGE, fp, summary)
    store.close()
    print(f"[critique] generated {generated} steps ({resumed} resumed); {len(records)} records -> {out_dir / 'records.jsonl'} (HF dataset: {out_dir / 'dataset'})")
    return out_dir


def record(prompt: Prompt, steps: list[Step], responses: list[str], model: str, sampling: dict) -> dict[str, Any]:
    """One output row: llm-swarm's columns (last round) + every round + provenance."""
    rounds = []
    for r in sorted({s.round for s in steps if s.round >= 0}):
        got = {s.kind: (s, resp) for s, resp in zip(steps, responses) if s.round == r}
        crit = got.get("critique")
        rev_step, rev = got["revision"]
        rounds.append(
            {
                "round": r,
                "principle_id": rev_step.principle_id,
                "critic_prompt": crit[0].request if crit else "",
                "critic_response": crit[1] if crit else "",
                "revision_prompt": rev_step.request,
                "revision_response": rev,
            }
        )
    init, final = responses[0], rounds[-1]["revision_response"]
    return {
        "id": prompt.id,
        "init_prompt": prompt.text,
        "init_response": init,
        "critic_prompt": rounds[-1]["critic_prompt"],
        "critic_response": rounds[-1]["critic_response"],
        "revision_prompt": rounds[-1]["revision_prompt"],
        "revision_response": final,
        "prompt": prompt.text,
        "messages": [user(prompt.text), assistant(final)],
        "chosen": [user(prompt.text), assistant(final)],
        "rejected": [user(prompt.text), assistant(init)],
        "rounds": rounds,
        "model": model,
        "sampling": sampling,
        "source": prompt.source,
    }
