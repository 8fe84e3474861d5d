"""SL-CAI, step 1: the model answers red-team prompts, critiques its answers, and revises them.

    cai critique CONFIG [--set critique.revisions=4]

Reads:  prompts.red_team (single- or multi-turn conversations; see cai.prompts), the constitution.
Model:  models.policy (it critiques and revises its own answers).
Writes: <run_dir>/critique/records.jsonl (CritiqueRecord), critique/sft_dataset (TRL SFTTrainer:
        conversational prompt/completion), critique/pairs_dataset (TRL DPOTrainer: prompt, chosen =
        final revision, rejected = initial answer, for conversations whose answer was revised).

For every red-team conversation the plan is fixed up front:

    init  ->  (critique under principle p_r  ->  revision under p_r)  x  critique.revisions

with p_r sampled from the constitution's SL principles, seeded per (prompt, round). All steps of
one prompt are turns of one conversation after the constitution's few-shot conversations: the
prompt's earlier turns, the request, the answer, then the critique and revision requests about
that last answer. A backend with a prefix cache recomputes nothing. Steps run breadth-first (every
prompt's initial answer, then every first critique, ...); each batch of `critique.batch_size`
conversations is one generate call, committed to the run store in one transaction, so a killed
run resumes at the first unfinished step of each prompt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from cai.backends import Backend, make_backend
from cai.config import Config
from cai.console import progress
from cai.constitution import load_constitution, sample_sl_principle
from cai.errors import InputError
from cai.lifecycle import StageRun, file_hash, identity, model_identity, source_identity, stable_seed
from cai.prompts import load_prompts
from cai.records import Constitution, Conversation, CritiqueRecord, CritiqueRound, GenerationParams, Prompt, assistant, user, write_records
from cai.rundir import RunDir, red_team_sources, starting_model
from cai.store import save_dataset
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
    conv = critique_start(constitution, prompt.messages, few_shot)
    for step, response in zip(steps[1:], responses):  # steps[0]'s request is the prompt itself
        conv += [assistant(response), user(step.request)]
    if len(responses) == len(steps):  # (complete: nothing to ask)
        conv.append(assistant(responses[-1]))
    return conv


def record(prompt: Prompt, steps: list[Step], responses: list[str], model: str, sampling: dict) -> CritiqueRecord:
    """One output row: llm-swarm's columns (last round) + every round + provenance."""
    rounds = []
    for r in sorted({s.round for s in steps if s.round >= 0}):
        got = {s.kind: (s, resp) for s, resp in zip(steps, responses) if s.round == r}
        crit = got.get("critique")
        rev_step, rev = got["revision"]
        rounds.append(
            CritiqueRound(
                round=r,
                principle_id=rev_step.principle_id,
                critic_prompt=crit[0].request if crit else "",
                critic_response=crit[1] if crit else "",
                revision_prompt=rev_step.request,
                revision_response=rev,
            )
        )
    init, final, conv = responses[0], rounds[-1].revision_response, prompt.messages
    return CritiqueRecord(
        id=prompt.id,
        context=list(prompt.context),
        init_prompt=prompt.text,
        init_response=init,
        critic_prompt=rounds[-1].critic_prompt,
        critic_response=rounds[-1].critic_response,
        revision_prompt=rounds[-1].revision_prompt,
        revision_response=final,
        prompt=prompt.text,
        messages=conv + [assistant(final)],
        chosen=conv + [assistant(final)],
        rejected=conv + [assistant(init)],
        rounds=rounds,
        model=model,
        sampling=sampling,
        source=prompt.source,
    )


def export(rd: RunDir, records: list[CritiqueRecord]) -> list[Path]:
    """records.jsonl and the two TRL-native datasets made from it."""
    write_records(rd.critique_records, records)
    save_dataset(rd.critique_sft_dataset, [{"prompt": r.conversation, "completion": [assistant(r.revision_response)]} for r in records])
    pairs = [
        {"prompt": r.conversation, "chosen": [assistant(r.revision_response)], "rejected": [assistant(r.init_response)]}
        for r in records
        if r.revision_response != r.init_response  # an unrevised answer is no preference
    ]
    save_dataset(rd.critique_pairs_dataset, pairs, columns=["prompt", "chosen", "rejected"])
    return [rd.critique_records, rd.critique_sft_dataset, rd.critique_pairs_dataset]


def generate(
    run: StageRun, backend: Backend, constitution: Constitution, prompts: list[Prompt], plans: dict[str, list[Step]], config: Config
) -> tuple[dict[str, list[str]], int]:
    """Every step of every prompt, breadth-first, each batch committed. -> (prompt id -> responses, steps resumed)."""
    c = config.critique
    done = run.store.items(STAGE)  # id -> {"responses": [...]}; what survived earlier runs
    responses = {p.id: done.get(p.id, {}).get("responses", []) for p in prompts}
    steps_per_prompt = len(next(iter(plans.values())))
    resumed = sum(len(r) for r in responses.values())
    if resumed:
        run.say(f"resuming: {resumed} of {steps_per_prompt * len(prompts)} steps already done")
    params = GenerationParams(max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p, stop=tuple(c.stop))
    position = {p.id: i for i, p in enumerate(prompts)}
    bar = progress(total=len(prompts) * steps_per_prompt, initial=resumed, desc=STAGE, unit="step")
    t0, tokens = time.perf_counter(), 0
    try:
        while pending := [p for p in prompts if len(responses[p.id]) < steps_per_prompt]:
            s = min(len(responses[p.id]) for p in pending)  # the earliest unfinished step goes first
            wave = [p for p in pending if len(responses[p.id]) == s]
            convs = {p.id: conversation(constitution, p, plans[p.id], responses[p.id], c.few_shot) for p in wave}
            wave.sort(key=lambda p: sum(len(m["content"]) for m in convs[p.id]))  # similar lengths together
            for start in range(0, len(wave), c.batch_size):
                batch = wave[start : start + c.batch_size]
                gens = backend.generate([convs[p.id] for p in batch], params, seeds=[stable_seed(config.seed, p.id, s) for p in batch])
                for p, g in zip(batch, gens):
                    responses[p.id] = responses[p.id] + [g.text]
                    tokens += g.completion_tokens
                run.store.put(STAGE, [(p.id, position[p.id], {"responses": responses[p.id]}) for p in batch])
                bar.update(len(batch), note=f"step {s + 1}/{steps_per_prompt} {plans[batch[0].id][s].kind}, {tokens / (time.perf_counter() - t0):.0f} tok/s")
    finally:
        bar.close()
    return responses, resumed


def load_red_team(config: Config, say) -> list[Prompt]:
    """The red-team conversations to critique (cai.rundir.red_team_sources), a conversation given
    twice critiqued once."""
    prompts: dict[str, Prompt] = {}
    for src in red_team_sources(config):
        if not Path(src.path).exists():
            raise InputError(f"{src.path}: no generated red-team prompts; run `cai redteam` first")
        ps = load_prompts(src)
        say(ps.summary())
        for p in ps.prompts:
            prompts.setdefault(p.id, p)
    return list(prompts.values())


def run(config: Config, backend: Backend | None = None, force: bool = False) -> Path:
    sources = red_team_sources(config)
    if not sources:
        raise InputError("prompts.red_team: the critique stage needs red-team prompts")
    spec = starting_model(config, STAGE) if backend is None else None
    constitution = load_constitution(config.constitution)
    if not constitution.sl_principles:
        raise InputError(f"{config.constitution}: the constitution has no SL principles to critique with")
    prompts = load_red_team(config, lambda m: print(f"[{STAGE}] {m}", flush=True))
    rd = RunDir(config.run_dir)
    fp = {
        "seed": config.seed,
        "constitution": file_hash(config.constitution),
        "prompts.red_team": [source_identity(s) for s in sources],
        "models.policy": model_identity(config.models.policy),
        "critique": identity(config.critique),
    }
    with StageRun(config, STAGE, fp, force=force, rebuildable=True) as run:
        if run.complete:
            return rd.stage_dir(STAGE)
        plans = {p.id: plan(constitution, p, config) for p in prompts}
        own = backend is None
        backend = backend or make_backend(spec)
        try:
            responses, resumed = generate(run, backend, constitution, prompts, plans, config)
        finally:
            if own:
                backend.close()
        c = config.critique
        sampling = {"temperature": c.temperature, "top_p": c.top_p, "max_new_tokens": c.max_new_tokens, "seed": config.seed}
        records = [record(p, plans[p.id], responses[p.id], backend.name, sampling) for p in prompts]
        outputs = export(rd, records)
        multi = sum(p.multi_turn for p in prompts)
        revised = sum(r.revision_response != r.init_response for r in records)
        summary = {"prompts": len(records), "multi_turn": multi, "revised": revised}
        run.finish(summary, outputs, backend=backend)
        total = sum(len(v) for v in plans.values())
        run.say(
            f"generated {total - resumed} steps ({resumed} resumed); {len(records)} conversations ({multi} multi-turn), {revised} answers revised -> {rd.critique_records}"
        )
    return rd.stage_dir(STAGE)
