"""The stages of a Constitutional AI run, in order: one list, used by the CLI, `cai run`, the report
and the docs. What each stage reads and writes, and which model it starts from, is here at a glance;
the paths themselves are cai.rundir's, the starting-model rule is cai.rundir.starting_model.

    from cai.registry import STAGES, stage
    for s in STAGES: print(s.name, s.reads, "->", s.writes)

Each stage is a module of cai.stages with a `run(config, force=False)`; a stage imports helpers,
never another stage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cai.errors import InputError
from cai.stages import critique, dpo, evaluate, label, pm, ppo, redteam, sample, sft


@dataclass(frozen=True)
class Stage:
    name: str  # the CLI command, the config section, the run-store key and the directory in run_dir
    help: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    starts_from: str
    run: Callable  # run(config, force=False) -> the stage's directory
    phase: str  # "sl" | "rl" | "eval": which part of the paper
    aliases: tuple[str, ...] = ()
    data_parallel: bool = False  # trains on several processes (cai launch); the others generate text in one


STAGES: tuple[Stage, ...] = (
    Stage(
        "redteam",
        "red-team prompts written by the model from seed prompts, deduplicated and decontaminated (with a redteam section)",
        reads=("redteam.seeds or prompts.red_team", "evaluate.red_team / helpful (decontamination)", "constitution (topics)"),
        writes=("redteam/prompts.jsonl", "redteam/dataset"),
        starts_from="models.redteam, else models.policy",
        run=redteam.run,
        phase="sl",
    ),
    Stage(
        "critique",
        "SL-CAI: answer red-team prompts, critique and revise the answers",
        reads=("prompts.red_team and/or redteam/prompts.jsonl", "constitution (SL principles, critique examples)"),
        writes=("critique/records.jsonl", "critique/sft_dataset", "critique/pairs_dataset"),
        starts_from="models.policy",
        run=critique.run,
        phase="sl",
    ),
    Stage(
        "sft",
        "SL-CAI: fine-tune on the final revisions mixed with helpful data",
        reads=("critique/records.jsonl", "sft.helpful_dataset or prompts.helpful"),
        writes=("sft/model", "sft/metrics.json", "logs/sft"),
        starts_from="sft.model, else models.policy",
        run=sft.run,
        phase="sl",
        data_parallel=True,
    ),
    Stage(
        "sample",
        "RL-CAI: sample k responses per prompt from the policy and pair them",
        reads=("prompts.rl_red_team / rl_helpful, else prompts.red_team / helpful",),
        writes=("sample/responses.jsonl", "sample/pairs.jsonl"),
        starts_from="sample.model, else the run's SFT model, else models.policy",
        run=sample.run,
        phase="rl",
    ),
    Stage(
        "label",
        "RL-CAI: label response pairs with the feedback model under the constitution",
        reads=("sample/pairs.jsonl", "constitution (RL principles, choice examples)"),
        writes=("label/preferences.jsonl", "label/dataset", "label/summary.json"),
        starts_from="models.feedback, else models.policy",
        run=label.run,
        phase="rl",
    ),
    Stage(
        "pm",
        "RL-CAI: train a preference model on the soft AI labels",
        reads=("label/preferences.jsonl",),
        writes=("pm/model", "pm/metrics.json", "logs/pm"),
        starts_from="pm.model, else the run's SFT model, else models.policy",
        run=pm.run,
        phase="rl",
        aliases=("train-pm",),
        data_parallel=True,
    ),
    Stage(
        "ppo",
        "RL-CAI: PPO against the preference model, KL-penalised to the SFT model",
        reads=("prompts.rl_red_team / rl_helpful, else prompts.red_team / helpful", "pm/model"),
        writes=("ppo/model", "ppo/metrics.json", "logs/ppo"),
        starts_from="the run's SFT model, else models.policy",
        run=ppo.run,
        phase="rl",
        data_parallel=True,
    ),
    Stage(
        "dpo",
        "RL-CAI alternative: DPO on the labelled pairs",
        reads=("label/preferences.jsonl",),
        writes=("dpo/model", "dpo/metrics.json", "logs/dpo"),
        starts_from="the run's SFT model, else models.policy",
        run=dpo.run,
        phase="rl",
        data_parallel=True,
    ),
    Stage(
        "evaluate",
        "harmful / helpful / evasive rates and win rates of every model the run made",
        reads=("evaluate.red_team", "evaluate.helpful", "policy, sft/model, ppo/model, dpo/model"),
        writes=("evaluate/metrics.json", "evaluate/answers.jsonl", "evaluate/comparisons.jsonl"),
        starts_from="each model of the run; judge: evaluate.judge, else models.feedback, else models.policy",
        run=evaluate.run,
        phase="eval",
    ),
)

NAMES = tuple(s.name for s in STAGES)
DATA_PARALLEL = tuple(s.name for s in STAGES if s.data_parallel)


def stage(name: str) -> Stage:
    """The stage called `name` (or one of its aliases)."""
    for s in STAGES:
        if name == s.name or name in s.aliases:
            return s
    raise InputError(f"{name}: not a stage; stages are {', '.join(NAMES)}")


def planned(config, start: str | None = None, until: str | None = None) -> list[Stage]:
    """The stages `cai run` runs, in order: pipeline.rl picks PPO (with its preference model), DPO
    or both; --from / --until cut the list."""
    for flag, value in (("--from", start), ("--until", until)):
        if value is not None and not any(value == s.name or value in s.aliases for s in STAGES):
            raise InputError(f"{flag} {value}: not a stage; stages are {', '.join(NAMES)}")
    lo = NAMES.index(stage(start).name) if start else 0
    hi = NAMES.index(stage(until).name) if until else len(NAMES) - 1
    rl = config.pipeline.rl
    skip = {"pm", "ppo"} if rl == "dpo" else {"dpo"} if rl == "ppo" else set()
    if config.redteam is None:
        skip.add("redteam")
    return [s for i, s in enumerate(STAGES) if lo <= i <= hi and s.name not in skip]
