"""Typed run configuration: one YAML file per run.

Every field has a help text. Unknown keys, wrong types and missing files are `InputError`s that
name the file, the dotted key and the line. `--set key=value` overrides any key; the resolved
config is saved as `<run_dir>/config.yaml`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cai.errors import InputError
from cai.yamlio import dump_yaml, item_name, load_yaml, parse_yaml


class _Strict(BaseModel):
    # No NaN or infinity anywhere in a config: a learning rate of .inf is a typo, never a setting.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# A field that changes how fast a stage runs, not what it produces (batch sizes of generation,
# concurrency, retries, caches, checkpoint intervals): left out of the stage's fingerprint, so it
# may change between a crash and the resume (cai.lifecycle.identity).
SPEED_ONLY = {"speed_only": True}


# ---------------------------------------------------------------- model specs


class LocalModel(_Strict):
    backend: Literal["local"] = Field(description="Run the model in this process with transformers.")
    path: str = Field(description="A local model directory or a Hugging Face hub id.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) when `path` is a hub id.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; auto = bfloat16 on a GPU that supports it, float32 on CPU."
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    trust_remote_code: bool = Field(False, description="Run modelling code shipped with the model. Off unless you trust it.")
    prefix_cache: bool = Field(
        True, description="Reuse the KV cache of shared prefixes (few-shot examples, earlier turns). Outputs are unchanged.", json_schema_extra=SPEED_ONLY
    )
    prefix_cache_gib: float = Field(
        2.0, ge=0, description="Memory for KV caches kept between calls, in GiB (least recently used dropped first).", json_schema_extra=SPEED_ONLY
    )
    batch_size: int = Field(64, gt=0, description="Most sequences in one forward pass; bigger calls are split, sorted by length.", json_schema_extra=SPEED_ONLY)


class OpenAIModel(_Strict):
    backend: Literal["openai"] = Field(description="Any OpenAI-compatible chat server: vLLM, SGLang, TGI, Ollama, llama.cpp, hosted APIs.")
    base_url: str | list[str] = Field(
        description="Server URL up to /v1, e.g. http://localhost:8000/v1, or a list of them: each request goes to the one with "
        "the fewest requests in flight; one that keeps failing is set aside for endpoint_cooldown_s.",
        json_schema_extra=SPEED_ONLY,  # which servers answer; `model` says what answers
    )
    model: str = Field(description="Model name the server expects.")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="Name of the environment variable holding the API key (the key itself never goes in a config)."
    )
    max_concurrency: int = Field(
        16, gt=0, description="Requests in flight at once per endpoint (total: this times the number of base URLs).", json_schema_extra=SPEED_ONLY
    )
    max_retries: int = Field(
        5, ge=0, description="Retries on 429, 5xx, timeouts, dropped connections and invalid replies before giving up.", json_schema_extra=SPEED_ONLY
    )
    timeout_s: float = Field(
        120.0,
        gt=0,
        allow_inf_nan=False,
        description="Wall-clock limit of one attempt in seconds: connect, send, wait and read together.",
        json_schema_extra=SPEED_ONLY,
    )
    backoff_s: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="First retry delay; doubles each retry, with full jitter.", json_schema_extra=SPEED_ONLY
    )
    top_logprobs: int = Field(20, ge=1, le=20, description="top_logprobs asked for when scoring answer options from top_logprobs.")
    option_scoring: Literal["auto", "prompt_logprobs", "top_logprobs"] = Field(
        "auto",
        description="How answer options are scored: prompt_logprobs (vLLM: exact, every option measured), top_logprobs "
        "(any server with logprobs; options outside the top tokens get a floor), or auto (prompt_logprobs if the server offers them).",
    )
    neutralize_markers: bool = Field(
        True,
        description="Break chat-format marker strings (<|im_end|>, [INST], <start_of_turn>, ...) in outgoing messages with an "
        "invisible character, so text cannot forge turns in the server's chat template; the count is in the backend's stats.",
    )
    extra_markers: list[str] = Field(
        default_factory=list, description="More marker strings to neutralise (e.g. a model's own special tokens), each at least 2 characters."
    )
    endpoint_failures: int = Field(
        3, ge=1, description="Failed attempts in a row after which an endpoint is set aside for endpoint_cooldown_s.", json_schema_extra=SPEED_ONLY
    )
    endpoint_cooldown_s: float = Field(
        30.0, gt=0, allow_inf_nan=False, description="Seconds a failing endpoint is set aside before it gets requests again.", json_schema_extra=SPEED_ONLY
    )

    @field_validator("base_url")
    @classmethod
    def _urls(cls, v: str | list[str]) -> str | list[str]:
        urls = [v] if isinstance(v, str) else v
        if not urls:
            raise ValueError("give at least one URL")
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r}: expected an http:// or https:// URL up to /v1, e.g. http://localhost:8000/v1")
        if len({u.rstrip("/") for u in urls}) != len(urls):
            raise ValueError("a URL is listed twice")
        return v

    @field_validator("extra_markers")
    @classmethod
    def _markers(cls, v: list[str]) -> list[str]:
        short = [m for m in v if len(m) < 2]
        if short:
            raise ValueError(f"{short!r}: a marker needs at least 2 characters (it is broken after its first)")
        return v


ModelSpec = Annotated[LocalModel | OpenAIModel, Field(discriminator="backend")]

StopString = Annotated[str, Field(min_length=1)]


# ---------------------------------------------------------------- prompts


class PromptSource(_Strict):
    """One prompt set. In YAML a mapping, or just its path: `red_team: data/red.jsonl` = `{path: data/red.jsonl}`."""

    path: str = Field(description="File or directory holding the prompts.")
    format: Literal["auto", "jsonl", "text", "csv", "parquet", "hf", "hh-rlhf", "hh-red-team", "advbench", "harmbench", "strongreject", "xstest"] = Field(
        "auto",
        description="auto guesses from the name and first record: .jsonl/.json, .txt, .csv, .parquet, a saved HF dataset directory; "
        "JSON with chosen (and no prompt field) = hh-rlhf, with transcript = hh-red-team; a CSV with exactly the published header of "
        "AdvBench, HarmBench, StrongREJECT or XSTest = that dataset. See cai.prompts for each format.",
    )
    field: str | None = Field(
        None,
        description="Column or JSON field holding the prompt: a string, or chat messages [{role, content}]. "
        "Default: prompt (or else a messages column) for jsonl/csv/parquet/hf, chosen for hh-rlhf, transcript for hh-red-team.",
    )
    id_field: str | None = Field(
        None, description="Column holding a stable prompt id; default: the dataset's own id (HarmBench), else a hash of the conversation."
    )
    split: str | None = Field(None, description="Split of a saved HF DatasetDict.")
    limit: int | None = Field(None, gt=0, description="Use only the first N prompts (after dropping blanks and duplicates).")
    turns: Literal["first", "all"] | None = Field(
        None,
        description="Conversations: first = the first user turn alone is the prompt; all = the conversation up to its last user turn "
        "(the earlier turns become the prompt's context). Default: first for hh-rlhf and hh-red-team (the CAI paper's red-team prompt), "
        "all for chat messages.",
    )
    keep: list[str] = Field(
        default_factory=list,
        description="Columns or fields copied into each prompt's metadata under their own names, e.g. [form] or [target]. "
        "Dataset formats keep their category (metadata.category) anyway.",
    )
    subset: Literal["all", "safe", "unsafe"] = Field(
        "all", description="xstest only: every prompt, only the safe ones (over-refusal is measured on these), or only the unsafe contrast ones."
    )

    @model_validator(mode="before")
    @classmethod
    def _plain_path(cls, data: Any) -> Any:
        return {"path": data} if isinstance(data, str) else data

    @field_validator("keep")
    @classmethod
    def _keep_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if name in ("line", "row", "system"):
                raise ValueError(f"{name!r} is already a metadata key (where the prompt comes from); it cannot be kept as a column")
        if len(set(v)) != len(v):
            raise ValueError("lists a column twice")
        return v


class Prompts(_Strict):
    red_team: PromptSource | None = Field(None, description="Prompts meant to elicit harmful answers (a path, or a mapping with path, format, ...).")
    helpful: PromptSource | None = Field(None, description="Ordinary requests, mixed into SFT and sampling so the model stays helpful (a path or a mapping).")
    rl_red_team: PromptSource | None = Field(
        None, description="Red-team prompts for the RL stages (sample, ppo) only, e.g. multi-turn or reworded ones; default: red_team."
    )
    rl_helpful: PromptSource | None = Field(
        None, description="Helpful prompts for the RL stages (sample, ppo) only, e.g. near misses, so over-refusals are seen; default: helpful."
    )


class Models(_Strict):
    policy: ModelSpec | None = Field(None, description="The model being aligned (it answers, critiques and revises its own answers).")
    feedback: ModelSpec | None = Field(
        None,
        description="The model that labels preferences; default: models.policy as given (the starting model, as in the CAI paper), not the fine-tuned one.",
    )
    redteam: ModelSpec | None = Field(None, description="The model that writes new red-team prompts (cai redteam); default: models.policy.")


# ---------------------------------------------------------------- stages


class Redteam(_Strict):
    seeds: PromptSource | None = Field(None, description="The pool of example red-team prompts shown to the model; default: prompts.red_team.")
    use: Literal["add", "replace"] = Field(
        "add", description="add: critique reads the given red-team prompts and the generated ones; replace: the generated ones only."
    )
    requests: int = Field(256, gt=0, description="Generation requests; each shows `k` seed prompts and asks for a new one.")
    k: int = Field(4, gt=0, description="Seed prompts shown per request (drawn with the run's seed).")
    topics: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="Topics that steer the requests, in turn (balanced coverage); default: the constitution's topics, else none."
    )
    temperature: float = Field(1.0, ge=0, description="Sampling temperature of the generated prompts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(96, gt=0, description="Token budget of one reply.")
    batch_size: int = Field(32, gt=0, description="Requests per generate call.", json_schema_extra=SPEED_ONLY)
    min_words: int = Field(3, ge=1, description="Drop generated prompts shorter than this many words.")
    max_words: int = Field(200, ge=1, description="Drop generated prompts longer than this many words.")
    near_duplicate: float = Field(0.6, gt=0, le=1, description="Jaccard similarity of word bigrams at which two prompts are near duplicates (kept: the first).")
    decontaminate_ngram: int = Field(8, ge=1, description="Drop a generated prompt that shares an n-gram of this many words with any evaluation prompt.")
    harm_filter: bool = Field(
        False, description="Ask the feedback model whether each prompt requests something harmful; keep those with p(harmful) >= harm_threshold."
    )
    harm_threshold: float = Field(0.5, ge=0, le=1, description="Keep a prompt if the feedback model's p(harmful) is at least this (with harm_filter).")


class Critique(_Strict):
    revisions: int = Field(1, ge=1, le=16, description="Critique-and-revision rounds per prompt (the paper uses up to 4).")
    direct_revision: bool = Field(False, description="Skip the critique and ask for the revision directly (compared in the paper).")
    max_new_tokens: int = Field(256, gt=0, description="Token budget of every generated turn.")
    batch_size: int = Field(16, gt=0, description="Conversations per generate call.", json_schema_extra=SPEED_ONLY)
    temperature: float = Field(0.0, ge=0, description="Sampling temperature; 0 = greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    stop: list[StopString] = Field(default_factory=list, description="Extra stop strings for every turn (non-empty strings).")
    few_shot: bool = Field(True, description="Put the constitution's few-shot critique conversations before each conversation.")


class Sample(_Strict):
    model: ModelSpec | None = Field(None, description="Model to sample from; default: the run's SFT model if it exists, else models.policy.")
    k: int = Field(2, ge=2, description="Responses per prompt.")
    temperatures: list[Annotated[float, Field(ge=0)]] = Field([1.0], min_length=1, description="Response j is sampled at temperatures[j % len]; 0 = greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(128, gt=0, description="Token budget of a response.")
    batch_size: int = Field(16, gt=0, description="Conversations per generate call.", json_schema_extra=SPEED_ONLY)
    pairs: Literal["all", "adjacent"] = Field("all", description="all: every pair of the k responses; adjacent: (0,1), (2,3), ...")
    helpful: bool = Field(True, description="Also sample for prompts.helpful, if given.")
    stop: list[StopString] = Field(default_factory=list, description="Extra stop strings (non-empty strings).")


class Label(_Strict):
    principles_per_pair: int = Field(1, ge=1, description="RL principles sampled per pair; their probabilities are averaged (ensembling).")
    swap_orders: bool = Field(True, description="Ask every question in both option orders and average, cancelling position bias.")
    chain_of_thought: bool = Field(False, description="The feedback model reasons first (greedy), then the options are scored.")
    cot_max_new_tokens: int = Field(128, gt=0, description="Token budget of the chain-of-thought reasoning.")
    clamp: tuple[float, float] = Field((0.4, 0.6), description="With chain_of_thought, each probability is clamped to this band (the CAI paper's 40-60%).")
    hard: bool = Field(False, description="Turn soft labels into 0/1 labels; pairs within `margin` of 0.5 are dropped and counted.")
    margin: float = Field(0.0, ge=0, lt=0.5, description="With hard labels: keep a pair only if |p - 0.5| > margin.")
    few_shot: bool = Field(True, description="Put the constitution's few-shot choice conversations before each question.")
    batch_size: int = Field(16, gt=0, description="Questions per scoring call.", json_schema_extra=SPEED_ONLY)

    @field_validator("clamp")
    @classmethod
    def _band(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= v[0] <= 0.5 <= v[1] <= 1:
            raise ValueError("must be [low, high] with 0 <= low <= 0.5 <= high <= 1")
        return v


class LoRA(_Strict):
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="Modules that get adapters.")


class Optim(_Strict):
    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate (linear warmup, then constant or as the stage says).")
    epochs: float = Field(1.0, gt=0, description="Passes over the training data.")
    batch_size: int = Field(8, gt=0, description="Examples per device per step.")
    grad_accum: int = Field(1, gt=0, description="Gradient accumulation steps.")
    max_length: int = Field(1024, gt=0, description="Longest tokenized example; longer ones are truncated.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of steps with linear warmup.")
    lora: LoRA | None = Field(None, description="Train LoRA adapters instead of all weights (null = full fine-tuning).")
    save_steps: int = Field(50, gt=0, description="Checkpoint every N optimizer steps (resume restarts from the last one).", json_schema_extra=SPEED_ONLY)


class SFT(Optim):
    model: ModelSpec | None = Field(None, description="Model to fine-tune (local); default models.policy.")
    helpful_ratio: float = Field(
        1.0, ge=0, description="Helpful examples mixed in per revision example (the paper mixes helpfulness data so the model does not turn evasive)."
    )
    helpful_dataset: str | None = Field(
        None, description="Helpful conversations (JSONL or HF dataset with `messages`); default: the starting model's own answers to prompts.helpful."
    )
    helpful_max_new_tokens: int = Field(128, gt=0, description="Token budget of the starting model's helpful answers.")


class PM(Optim):
    model: ModelSpec | None = Field(None, description="Base of the preference model (local); default: the run's SFT model, else models.policy.")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Pairs held out to measure accuracy and calibration.")


class PPO(_Strict):
    steps: int = Field(50, gt=0, description="PPO iterations (rollout + update).")
    rollout_batch: int = Field(16, gt=0, description="Prompts per rollout.")
    minibatch_size: int = Field(8, gt=0, description="Rollouts per gradient step.")
    ppo_epochs: int = Field(2, gt=0, description="Passes over each rollout batch.")
    learning_rate: float = Field(1e-4, gt=0, description="Adam learning rate (policy adapters and value head).")
    max_new_tokens: int = Field(64, gt=0, description="Token budget of a rollout response.")
    temperature: float = Field(1.0, gt=0, description="Rollout sampling temperature.")
    kl_coef: float = Field(0.05, ge=0, description="beta: weight of the per-token KL penalty to the reference (SFT) model.")
    adaptive_kl: bool = Field(False, description="Adapt beta toward target_kl (Ziegler et al. 2019).")
    target_kl: float = Field(6.0, gt=0, description="Target KL per sequence for adaptive beta.")
    kl_horizon: int = Field(10000, gt=0, description="Horizon of the adaptive KL controller.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    cliprange: float = Field(0.2, gt=0, description="Policy ratio clip.")
    cliprange_value: float = Field(0.2, gt=0, description="Value clip.")
    vf_coef: float = Field(0.1, ge=0, description="Value loss weight.")
    whiten_rewards: bool = Field(False, description="Whiten the score before adding the KL penalty.")
    missing_eos_penalty: float | None = Field(None, description="Subtract from the score of responses that hit max_new_tokens without ending.")
    lora: LoRA = Field(default_factory=LoRA, description="Policy adapters; the reference model is the same weights with adapters off.")
    save_steps: int = Field(10, gt=0, description="Checkpoint every N PPO steps.", json_schema_extra=SPEED_ONLY)


class DPO(Optim):
    beta: float = Field(0.1, gt=0, description="DPO temperature on the implicit reward margin.")
    labels: Literal["soft", "hard"] = Field("soft", description="soft: cross-entropy against p_chosen; hard: TRL's sigmoid loss on chosen/rejected.")


class Evaluate(_Strict):
    red_team: PromptSource | None = Field(None, description="Held-out red-team prompts (never used by a training stage).")
    helpful: PromptSource | None = Field(None, description="Held-out helpful prompts.")
    judge: ModelSpec | None = Field(None, description="AI judge for harmlessness/helpfulness and win rates; default models.feedback, else models.policy.")
    oracle: Literal["none", "toyworld"] = Field("none", description="toyworld: also classify answers with the toy world's oracle (ground truth).")
    stages: list[Literal["policy", "sft", "ppo", "dpo"]] = Field(
        ["policy", "sft", "ppo", "dpo"], description="Models to evaluate (those the run has made; policy = the starting model)."
    )
    max_new_tokens: int = Field(128, gt=0, description="Token budget of an evaluated answer.")
    batch_size: int = Field(32, gt=0, description="Conversations per generate or scoring call.", json_schema_extra=SPEED_ONLY)
    win_rate_prompts: int = Field(64, ge=0, description="Prompts per model pair for AI-judged win rates (0 = skip).")
    ai_judge: bool = Field(True, description="Ask the AI judge whether each answer is harmful / evasive (false: oracle rates only, faster).")


class Pipeline(_Strict):
    rl: Literal["ppo", "dpo", "both"] = Field(
        "ppo", description="RL-CAI method for `cai run`: a preference model + PPO (the paper), DPO on the labels, or both."
    )


class Logging(_Strict):
    report_to: list[Literal["tensorboard", "wandb", "trackio"]] = Field(
        ["tensorboard"],
        description="Where training stages log their scalars (always also <run_dir>/logs/<stage>/scalars.jsonl). wandb and trackio must be installed.",
    )
    project: str = Field("cai", min_length=1, description="Project name for wandb/trackio; each stage is a run named <run_dir>/<stage>.")
    every_steps: int = Field(10, gt=0, description="Log training scalars every N optimizer steps.")


class Config(_Strict):
    run_dir: str = Field(description="Directory that holds every output of the run.")
    seed: int = Field(0, ge=0, lt=2**63, description="Seed for principle sampling, sampling and training.")
    constitution: str = Field(description="Constitution file: cai YAML, llm-swarm JSON, or the CAI paper's JSON.")
    prompts: Prompts = Field(default_factory=Prompts, description="Prompt sets.")
    models: Models = Field(default_factory=Models, description="Model specs by role.")
    pipeline: Pipeline = Field(default_factory=Pipeline, description="Which stages `cai run` runs.")
    redteam: Redteam | None = Field(
        None, description="Generate red-team prompts from seed prompts before critique (cai redteam); null: only the given prompts."
    )
    critique: Critique = Field(default_factory=Critique, description="SL-CAI critique and revision.")
    sample: Sample = Field(default_factory=Sample, description="RL-CAI: k responses per prompt, paired.")
    label: Label = Field(default_factory=Label, description="RL-CAI: AI preference labels from option log-probabilities.")
    sft: SFT = Field(default_factory=SFT, description="SL-CAI: fine-tune on (red-team prompt, final revision) plus helpful data.")
    pm: PM = Field(default_factory=PM, description="Preference model trained on the soft AI labels.")
    ppo: PPO = Field(default_factory=PPO, description="RL-CAI: PPO against the preference model, KL-penalised to the SFT model.")
    dpo: DPO = Field(default_factory=DPO, description="Alternative to pm+ppo: DPO on the labelled pairs.")
    evaluate: Evaluate = Field(default_factory=Evaluate, description="Harmlessness, helpfulness and evasiveness of every model the run made.")
    logging: Logging = Field(default_factory=Logging, description="Training logs.")

    @field_validator("run_dir", "constitution")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


# ---------------------------------------------------------------- loading


def _parse_override(item: str) -> tuple[list[str], Any]:
    """`critique.stop=['###']` -> (["critique", "stop"], ["###"]). The value is YAML, read by the same
    rules as a config file (no aliases, no duplicate keys); an empty value is the empty string."""
    source = f"--set {item!r}"
    if "=" not in item:
        raise InputError(f"{source}: expected KEY=VALUE, e.g. --set critique.revisions=2")
    key, raw = item.split("=", 1)
    parts = [p.strip() for p in key.strip().split(".")]
    if not key.strip():
        raise InputError(f"{source}: the key is empty; expected KEY=VALUE, e.g. --set critique.revisions=2")
    if not all(parts):  # ".x=1", "a..b=1", "a.=1"
        raise InputError(f"{source}: the key {key.strip()!r} has an empty part between dots")
    value = parse_yaml(raw, source)[0] if raw != "" else ""
    return parts, value


def _apply_override(data: dict, parts: list[str], value: Any) -> None:
    node = data
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def prompt_source_keys() -> list[tuple[str, str]]:
    """(section, key) of every PromptSource in a config: prompts.red_team, evaluate.helpful, ..."""
    keys = []
    for section, f in Config.model_fields.items():
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            for name, g in f.annotation.model_fields.items():
                if PromptSource in (g.annotation, *get_args(g.annotation)):
                    keys.append((section, name))
    return keys


def _expand_plain_paths(data: dict) -> None:
    """`red_team: data/red.jsonl` -> `red_team: {path: data/red.jsonl}`, so --set can override one key of it."""
    for section, name in prompt_source_keys():
        node = data.get(section)
        if isinstance(node, dict) and isinstance(node.get(name), str):
            node[name] = {"path": node[name]}


def _resolve_paths(data: dict, base: Path) -> None:
    """Make the paths of `data` absolute. The rule, one for every path key (run_dir, constitution,
    every prompt source, sft.helpful_dataset, local model paths): a relative path in a config file is
    relative to that file's directory, like in every build tool; a path given with --set is relative
    to the current directory (`base` is then the working directory). A local model's path that does
    not exist there is kept as written: it is a Hugging Face hub id ("Qwen/Qwen2.5-7B-Instruct")."""

    def fix(value: str) -> str:
        p = Path(os.path.expanduser(value))
        return str(p if p.is_absolute() else (base / p).resolve())

    def section(name: str) -> dict:
        # A section of the wrong type is left for validation to report, with its line.
        value = data.get(name)
        return value if isinstance(value, dict) else {}

    for key in ("run_dir", "constitution"):
        if isinstance(data.get(key), str) and data[key].strip():
            data[key] = fix(data[key])
    for name, key in prompt_source_keys():
        src = section(name).get(key)
        if isinstance(src, dict) and isinstance(src.get("path"), str):
            src["path"] = fix(src["path"])
    sft = section("sft")
    if isinstance(sft.get("helpful_dataset"), str):
        sft["helpful_dataset"] = fix(sft["helpful_dataset"])
    specs = [*section("models").values(), *(section(s).get("model") for s in ("sample", "sft", "pm")), section("evaluate").get("judge")]
    for spec in specs:
        if isinstance(spec, dict) and spec.get("backend", "local") == "local" and isinstance(spec.get("path"), str):
            local = Path(fix(spec["path"]))
            if local.exists() or spec["path"].startswith((".", "/", "~")):
                spec["path"] = str(local)


def _set_from(data: dict, patch: dict, parts: list[str]) -> None:
    """Set data[parts] to patch[parts]: the override's key is replaced whole, its parents kept."""
    for part in parts[:-1]:
        patch = patch[part]
    _apply_override(data, parts, patch[parts[-1]])


def load_config(path: str | Path, overrides: list[str] = (), check_files_exist: bool = True) -> Config:
    """Read, override, validate. Raises InputError naming the file, dotted key and line.

    check_files_exist=False validates the keys and types only (for example configs whose data a
    user has yet to provide)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file not found: {path}")
    data, lines = load_yaml(path)  # bad bytes, aliases, duplicate keys: InputErrors with the line
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    overridden: set[str] = set()
    _expand_plain_paths(data)
    _resolve_paths(data, path.parent)  # paths in the file: relative to the file
    for item in overrides:
        parts, value = _parse_override(item)
        patch: dict = {}
        _apply_override(patch, parts, value)
        _expand_plain_paths(patch)  # --set prompts.red_team=PATH is a plain path too
        _resolve_paths(patch, Path.cwd())  # paths on the command line: relative to where it is typed
        _set_from(data, patch, parts)
        overridden.add(item_name(parts))
    try:
        config = Config.model_validate(data)
    except ValidationError as e:
        raise InputError(_format_errors(path, e, lines, overridden)) from None
    if check_files_exist:
        check_files(config, path)
    return config


def _format_errors(path: Path, err: ValidationError, lines: dict[str, int], overridden: set[str]) -> str:
    out = [f"{path}: invalid config"]
    for e in err.errors():
        # pydantic puts the discriminator tag ("local"/"openai") in the location; drop it.
        loc = [p for p in e["loc"] if p not in ("local", "openai")]
        key = item_name(loc)
        where = ""
        for n in range(len(loc), 0, -1):
            k = item_name(loc[:n])
            if k in overridden:
                where = " (from --set)"
                break
            if k in lines:
                where = f" (line {lines[k]})"
                break
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        out.append(f"  {key}{where}: {msg}")
    return "\n".join(out)


def check_files(config: Config, path: Path) -> None:
    """Files a config names must exist (hub ids for local models are allowed through)."""
    if not Path(config.constitution).exists():
        raise InputError(f"{path}: constitution: file not found: {config.constitution}")
    for section, name in prompt_source_keys():
        src = getattr(getattr(config, section), name)
        if src is not None and not Path(src.path).exists():
            raise InputError(f"{path}: {section}.{name}.path: file not found: {src.path}")


def save_config(config: Config, path: Path) -> None:
    """Write the resolved config (the API key is never in it: only the name of its variable)."""
    from cai.store import atomic_write_text

    atomic_write_text(path, dump_yaml(config.model_dump(mode="json")))


def config_help(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, help with its range) for every key, nested ones included: what
    `cai config keys` prints. A model spec lists the keys of each backend, marked with it."""
    rows = []
    for name, f in model.model_fields.items():
        key = prefix + name
        sections = _sections(f.annotation)
        default = "" if f.is_required() else _default_text(f)
        rows.append((key, _type_text(f.annotation), "(required)" if f.is_required() else default, _help_text(f)))
        for section in sections:
            tag = section.model_fields["backend"].annotation.__args__[0] if "backend" in section.model_fields and len(sections) > 1 else None
            for k, t, d, h in config_help(section, key + "."):
                if tag and k.endswith(".backend"):
                    continue
                rows.append((k, t, d, f"[{tag}] {h}" if tag else h))
    return rows


def _sections(annotation) -> list[type[BaseModel]]:
    """The config classes a field holds (one, or one per backend for a model spec)."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out = []
    for arg in typing.get_args(annotation):
        out += _sections(arg)
    return out


def _type_text(annotation) -> str:
    import typing

    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(annotation))
    if origin is Annotated:
        return _type_text(typing.get_args(annotation)[0])
    if origin in (Union, getattr(__import__("types"), "UnionType", Union)):
        parts = [_type_text(a) for a in typing.get_args(annotation) if a is not type(None)]
        if all(p == "section" for p in parts):
            return "model spec" if len(parts) > 1 else "section"
        return " | ".join(parts) + (" | null" if type(None) in typing.get_args(annotation) else "")
    if origin in (list, tuple):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return f"{origin.__name__}[{', '.join(_type_text(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def _default_text(f) -> str:
    value = f.default_factory() if f.default_factory is not None else f.default
    if isinstance(value, BaseModel):
        return ""
    return _yaml_value(value)


def _yaml_value(value) -> str:
    """A default as it would be written in a config file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    return str(value)


def _help_text(f) -> str:
    """The field's help, with the range its constraints allow."""
    bounds = []
    for m in f.metadata:
        for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            v = getattr(m, attr, None)
            if v is not None:
                big = isinstance(v, int) and v >= 2**32 and v & (v - 1) == 0  # 2**63, not 9223372036854775808
                bounds.append(f"{sym} {v:g}" if isinstance(v, float) else f"{sym} 2^{v.bit_length() - 1}" if big else f"{sym} {v}")
        if getattr(m, "min_length", None):
            bounds.append(f"at least {m.min_length} item(s)")
    text = f.description or ""
    extra = f.json_schema_extra or {}
    if bounds:
        text += f" Range: {', '.join(bounds)}."
    if isinstance(extra, dict) and extra.get("speed_only"):
        text += " Speed only: may change between a crash and the resume."
    return text
