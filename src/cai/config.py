"""Typed run configuration: one YAML file per run.

Every field has a help text. Unknown keys, wrong types and missing files are `InputError`s that
name the file, the dotted key and the line. `--set key=value` overrides any key; the resolved
config is saved as `<run_dir>/config.yaml`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cai.errors import InputError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
        True, description="Reuse the KV cache of shared prefixes (few-shot examples, earlier turns). Outputs are unchanged."
    )
    prefix_cache_gib: float = Field(
        2.0, ge=0, description="Memory for KV caches kept between calls, in GiB (least recently used dropped first)."
    )
    batch_size: int = Field(64, gt=0, description="Most sequences in one forward pass; bigger calls are split, sorted by length.")


class OpenAIModel(_Strict):
    backend: Literal["openai"] = Field(description="Any OpenAI-compatible chat server: vLLM, SGLang, TGI, Ollama, llama.cpp, hosted APIs.")
    base_url: str | list[str] = Field(
        description="Server URL up to /v1, e.g. http://localhost:8000/v1, or a list of them: each request goes to the one with "
        "the fewest requests in flight; one that keeps failing is set aside for endpoint_cooldown_s."
    )
    model: str = Field(description="Model name the server expects.")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="Name of the environment variable holding the API key (the key itself never goes in a config)."
    )
    max_concurrency: int = Field(16, gt=0, description="Requests in flight at once per endpoint (total: this times the number of base URLs).")
    max_retries: int = Field(5, ge=0, description="Retries on 429, 5xx, timeouts, dropped connections and invalid replies before giving up.")
    timeout_s: float = Field(
        120.0, gt=0, allow_inf_nan=False, description="Wall-clock limit of one attempt in seconds: connect, send, wait and read together."
    )
    backoff_s: float = Field(1.0, gt=0, allow_inf_nan=False, description="First retry delay; doubles each retry, with full jitter.")
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
    endpoint_failures: int = Field(3, ge=1, description="Failed attempts in a row after which an endpoint is set aside for endpoint_cooldown_s.")
    endpoint_cooldown_s: float = Field(30.0, gt=0, allow_inf_nan=False, description="Seconds a failing endpoint is set aside before it gets requests again.")

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


ModelSpec = Annotated[Union[LocalModel, OpenAIModel], Field(discriminator="backend")]


# ---------------------------------------------------------------- prompts


class PromptSource(_Strict):
    path: str = Field(description="File or directory holding the prompts.")
    format: Literal["auto", "jsonl", "text", "csv", "parquet", "hf", "hh-rlhf"] = Field(
        "auto", description="auto guesses from the name: .jsonl/.json, .txt, .csv, .parquet, a saved HF dataset directory, *.jsonl.gz with chosen/rejected = hh-rlhf."
    )
    field: str = Field("prompt", description="Column or JSON field holding the prompt text (jsonl, csv, parquet, hf).")
    id_field: str | None = Field(None, description="Column holding a stable prompt id; default: a hash of the text.")
    split: str | None = Field(None, description="Split of a saved HF DatasetDict.")
    limit: int | None = Field(None, gt=0, description="Use only the first N prompts (after dropping blanks and duplicates).")


class Prompts(_Strict):
    red_team: PromptSource | None = Field(None, description="Prompts meant to elicit harmful answers.")
    helpful: PromptSource | None = Field(None, description="Ordinary requests, mixed into SFT and sampling so the model stays helpful.")


class Models(_Strict):
    policy: ModelSpec | None = Field(None, description="The model being aligned (it answers, critiques and revises its own answers).")
    feedback: ModelSpec | None = Field(
        None, description="The model that labels preferences; default: models.policy as given (the starting model, as in the CAI paper), not the fine-tuned one."
    )


# ---------------------------------------------------------------- stages


class Critique(_Strict):
    revisions: int = Field(1, ge=1, le=16, description="Critique-and-revision rounds per prompt (the paper uses up to 4).")
    direct_revision: bool = Field(False, description="Skip the critique and ask for the revision directly (compared in the paper).")
    max_new_tokens: int = Field(256, gt=0, description="Token budget of every generated turn.")
    batch_size: int = Field(16, gt=0, description="Conversations per generate call.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature; 0 = greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    stop: list[str] = Field(default_factory=list, description="Extra stop strings for every turn.")
    few_shot: bool = Field(True, description="Put the constitution's few-shot critique conversations before each conversation.")


class Sample(_Strict):
    model: ModelSpec | None = Field(None, description="Model to sample from; default: the run's SFT model if it exists, else models.policy.")
    k: int = Field(2, ge=2, description="Responses per prompt.")
    temperatures: list[float] = Field([1.0], min_length=1, description="Response j is sampled at temperatures[j % len]; 0 = greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(128, gt=0, description="Token budget of a response.")
    batch_size: int = Field(16, gt=0, description="Conversations per generate call.")
    pairs: Literal["all", "adjacent"] = Field("all", description="all: every pair of the k responses; adjacent: (0,1), (2,3), ...")
    helpful: bool = Field(True, description="Also sample for prompts.helpful, if given.")
    stop: list[str] = Field(default_factory=list, description="Extra stop strings.")


class Label(_Strict):
    principles_per_pair: int = Field(1, ge=1, description="RL principles sampled per pair; their probabilities are averaged (ensembling).")
    swap_orders: bool = Field(True, description="Ask every question in both option orders and average, cancelling position bias.")
    chain_of_thought: bool = Field(False, description="The feedback model reasons first (greedy), then the options are scored.")
    cot_max_new_tokens: int = Field(128, gt=0, description="Token budget of the chain-of-thought reasoning.")
    clamp: tuple[float, float] = Field((0.4, 0.6), description="With chain_of_thought, each probability is clamped to this band (the CAI paper's 40-60%).")
    hard: bool = Field(False, description="Turn soft labels into 0/1 labels; pairs within `margin` of 0.5 are dropped and counted.")
    margin: float = Field(0.0, ge=0, lt=0.5, description="With hard labels: keep a pair only if |p - 0.5| > margin.")
    few_shot: bool = Field(True, description="Put the constitution's few-shot choice conversations before each question.")
    batch_size: int = Field(16, gt=0, description="Questions per scoring call.")

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
    save_steps: int = Field(50, gt=0, description="Checkpoint every N optimizer steps (resume restarts from the last one).")


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
    save_steps: int = Field(10, gt=0, description="Checkpoint every N PPO steps.")


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
    batch_size: int = Field(32, gt=0, description="Conversations per generate or scoring call.")
    win_rate_prompts: int = Field(64, ge=0, description="Prompts per model pair for AI-judged win rates (0 = skip).")


class Pipeline(_Strict):
    rl: Literal["ppo", "dpo", "both"] = Field("ppo", description="RL-CAI method for `cai run`: a preference model + PPO (the paper), DPO on the labels, or both.")


STAGES = ("critique", "sample", "label")


class Config(_Strict):
    run_dir: str = Field(description="Directory that holds every output of the run.")
    seed: int = Field(0, description="Seed for principle sampling, sampling and training.")
    constitution: str = Field(description="Constitution file: cai YAML, llm-swarm JSON, or the CAI paper's JSON.")
    prompts: Prompts = Field(default_factory=Prompts, description="Prompt sets.")
    models: Models = Field(default_factory=Models, description="Model specs by role.")
    pipeline: Pipeline = Field(default_factory=Pipeline, description="Which stages `cai run` runs.")
    critique: Critique = Field(default_factory=Critique, description="SL-CAI critique and revision.")
    sample: Sample = Field(default_factory=Sample, description="RL-CAI: k responses per prompt, paired.")
    label: Label = Field(default_factory=Label, description="RL-CAI: AI preference labels from option log-probabilities.")
    sft: SFT = Field(default_factory=SFT, description="SL-CAI: fine-tune on (red-team prompt, final revision) plus helpful data.")
    pm: PM = Field(default_factory=PM, description="Preference model trained on the soft AI labels.")
    ppo: PPO = Field(default_factory=PPO, description="RL-CAI: PPO against the preference model, KL-penalised to the SFT model.")
    dpo: DPO = Field(default_factory=DPO, description="Alternative to pm+ppo: DPO on the labelled pairs.")
    evaluate: Evaluate = Field(default_factory=Evaluate, description="Harmlessness, helpfulness and evasiveness of every model the run made.")

    @field_validator("run_dir", "constitution")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


# ---------------------------------------------------------------- loading


def _key_lines(node: yaml.Node, prefix: str = "") -> dict[str, int]:
    """Map dotted keys of a YAML mapping to 1-based line numbers, for error messages."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = f"{prefix}{k.value}"
            lines[key] = k.start_mark.line + 1
            lines.update(_key_lines(v, key + "."))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            key = f"{prefix}{i}"
            lines[key] = v.start_mark.line + 1
            lines.update(_key_lines(v, key + "."))
    return lines


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise InputError(f"--set {item!r}: expected KEY=VALUE, e.g. --set critique.revisions=2")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    return key.strip().split("."), value


def _apply_override(data: dict, parts: list[str], value: Any) -> None:
    node = data
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def _resolve_paths(data: dict, base: Path) -> None:
    """Relative paths in a config are relative to the config file, like in every build tool."""

    def fix(value: str) -> str:
        p = Path(os.path.expanduser(value))
        if p.is_absolute():
            return str(p)
        return str((base / p).resolve()) if (base / p).exists() else value

    if isinstance(data.get("constitution"), str):
        data["constitution"] = fix(data["constitution"])
    for src in [*(data.get("prompts") or {}).values(), *((data.get("evaluate") or {}).get(k) for k in ("red_team", "helpful"))]:
        if isinstance(src, dict) and isinstance(src.get("path"), str):
            src["path"] = fix(src["path"])
    sft = data.get("sft")
    if isinstance(sft, dict) and isinstance(sft.get("helpful_dataset"), str):
        sft["helpful_dataset"] = fix(sft["helpful_dataset"])
    for spec in (data.get("models") or {}).values():
        if isinstance(spec, dict) and spec.get("backend") == "local" and isinstance(spec.get("path"), str):
            spec["path"] = fix(spec["path"])


def load_config(path: str | Path, overrides: list[str] = (), check_files_exist: bool = True) -> Config:
    """Read, override, validate. Raises InputError naming the file, dotted key and line.

    check_files_exist=False validates the keys and types only (for example configs whose data a
    user has yet to provide)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file not found: {path}")
    text = path.read_text()
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    lines = _key_lines(node) if node is not None else {}
    overridden: set[str] = set()
    for item in overrides:
        parts, value = _parse_override(item)
        _apply_override(data, parts, value)
        overridden.add(".".join(parts))
    _resolve_paths(data, path.parent)
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
        loc = [str(p) for p in e["loc"] if p not in ("local", "openai")]
        key = ".".join(loc)
        where = ""
        for n in range(len(loc), 0, -1):
            k = ".".join(loc[:n])
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
    for section in ("prompts", "evaluate"):
        for name in ("red_team", "helpful"):
            src = getattr(getattr(config, section), name)
            if src is not None and not Path(src.path).exists():
                raise InputError(f"{path}: {section}.{name}.path: file not found: {src.path}")


def save_config(config: Config, path: Path) -> None:
    """Write the resolved config (the API key is never in it: only the name of its variable)."""
    from cai.store import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def config_help(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, help) for every field, for `cai config-help`."""
    rows = []
    for name, f in model.model_fields.items():
        key = prefix + name
        rows.append((key, f.description or ""))
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(config_help(ann, key + "."))
    return rows
