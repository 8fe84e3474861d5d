"""The run directory: every path a stage reads or writes, and which model each stage starts from.

    rd = RunDir(config.run_dir)
    rd.critique_records          # <run_dir>/critique/records.jsonl
    starting_model(config, "ppo")   # the SFT model if the run made one, else models.policy

No other module writes a path inside a run directory as a literal: they ask this one. The layout:

    <run_dir>/
      config.yaml        the resolved config of the last stage run (API keys never: only their variable names)
      store.sqlite       the run store: work items, stage status, fingerprints (cai.store)
      .lock              held by the process working on the run (one at a time)
      logs/<stage>/      training logs: TensorBoard events and scalars.jsonl (sft, pm, ppo, dpo)
      redteam/           prompts.jsonl, dataset/                       (generated red-team prompts)
      critique/          records.jsonl, sft_dataset/, pairs_dataset/   (SL-CAI data)
      sft/               model/, metrics.json, checkpoints/            (the SL-CAI model)
      sample/            responses.jsonl, pairs.jsonl                  (k answers per prompt, paired)
      label/             preferences.jsonl, dataset/, summary.json     (AI preference labels)
      pm/                model/, metrics.json, checkpoints/            (the preference model)
      ppo/               model/, metrics.json, checkpoints/            (RL-CAI, PPO)
      dpo/               model/, metrics.json, checkpoints/            (RL-CAI, DPO)
      evaluate/          metrics.json, answers.jsonl, comparisons.jsonl
      report.html

Which model a stage starts from (`starting_model`):

    redteam   models.redteam, else models.policy
    critique  models.policy (it critiques and revises its own answers)
    sft       sft.model, else models.policy                       (local weights: it trains them)
    sample    sample.model, else the run's SFT model if made, else models.policy
    label     models.feedback, else models.policy (the starting model, as in the CAI paper)
    pm        pm.model, else the run's SFT model if made, else models.policy   (local)
    ppo, dpo  the run's SFT model if made, else models.policy               (local)
    evaluate  each model the run made (policy, sft, ppo, dpo); the judge: evaluate.judge,
              else models.feedback, else models.policy
A model the run made inherits dtype, device and trust_remote_code from models.policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cai.config import Config, LocalModel
from cai.errors import InputError

# The models a run makes, in stage order (evaluate compares them; "policy" is the starting model).
RUN_MODELS = ("policy", "sft", "ppo", "dpo")


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    # ------------------------------------------------------------ the run
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def store(self) -> Path:
        return self.root / "store.sqlite"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def logs_root(self) -> Path:
        """Every training stage's logs (`tensorboard --logdir` this)."""
        return self.root / "logs"

    def logs(self, stage: str) -> Path:
        """Training logs of a stage: TensorBoard event files and scalars.jsonl."""
        return self.logs_root / stage

    def scalars(self, stage: str) -> Path:
        """A training stage's logged scalars, one JSON object per step (cai.trainlog)."""
        return self.logs(stage) / "scalars.jsonl"

    def model(self, name: str) -> Path:
        """The model a stage made (`sft`, `pm`, `ppo`, `dpo`): safetensors + tokenizer."""
        return self.root / name / "model"

    def metrics(self, stage: str) -> Path:
        return self.root / stage / "metrics.json"

    def checkpoints(self, stage: str) -> Path:
        return self.root / stage / "checkpoints"

    # ------------------------------------------------------------ redteam
    @property
    def redteam_prompts(self) -> Path:
        return self.root / "redteam" / "prompts.jsonl"

    @property
    def redteam_dataset(self) -> Path:
        return self.root / "redteam" / "dataset"

    # ------------------------------------------------------------ critique
    @property
    def critique_records(self) -> Path:
        return self.root / "critique" / "records.jsonl"

    @property
    def critique_sft_dataset(self) -> Path:
        """TRL SFTTrainer: conversational prompt/completion (the final revision)."""
        return self.root / "critique" / "sft_dataset"

    @property
    def critique_pairs_dataset(self) -> Path:
        """TRL DPOTrainer: prompt, chosen (final revision), rejected (initial answer)."""
        return self.root / "critique" / "pairs_dataset"

    # ------------------------------------------------------------ sample
    @property
    def sample_responses(self) -> Path:
        return self.root / "sample" / "responses.jsonl"

    @property
    def sample_pairs(self) -> Path:
        return self.root / "sample" / "pairs.jsonl"

    # ------------------------------------------------------------ label
    @property
    def label_preferences(self) -> Path:
        return self.root / "label" / "preferences.jsonl"

    @property
    def label_dataset(self) -> Path:
        """TRL RewardTrainer / DPOTrainer: conversational prompt, chosen, rejected (+ p_chosen)."""
        return self.root / "label" / "dataset"

    @property
    def label_summary(self) -> Path:
        return self.root / "label" / "summary.json"

    # ------------------------------------------------------------ evaluate
    @property
    def evaluate_metrics(self) -> Path:
        return self.root / "evaluate" / "metrics.json"

    @property
    def evaluate_answers(self) -> Path:
        return self.root / "evaluate" / "answers.jsonl"

    @property
    def evaluate_comparisons(self) -> Path:
        return self.root / "evaluate" / "comparisons.jsonl"

    # ------------------------------------------------------------ models the run made
    def has_model(self, name: str) -> bool:
        return (self.model(name) / "config.json").is_file()


def run_model(config: Config, name: str) -> LocalModel:
    """The spec of a model the run made (`sft`, `pm`, `ppo`, `dpo`): local weights in the run
    directory, with models.policy's dtype, device and trust_remote_code where it is local."""
    base = config.models.policy
    inherit = {"dtype": base.dtype, "device": base.device, "trust_remote_code": base.trust_remote_code} if isinstance(base, LocalModel) else {}
    return LocalModel(backend="local", path=str(RunDir(config.run_dir).model(name)), **inherit)


def require_local(spec, key: str) -> LocalModel:
    """Training needs the weights in this process: an OpenAI-compatible server cannot be fine-tuned."""
    if spec is None:
        raise InputError(f"{key}: no model to train (set models.policy to a local model)")
    if not isinstance(spec, LocalModel):
        raise InputError(f"{key}: training needs a local model (backend: local), not an {spec.backend!r} endpoint")
    return spec


def _policy(config: Config, stage: str):
    if config.models.policy is None:
        raise InputError(f"models.policy: the {stage} stage needs a model (set models.policy)")
    return config.models.policy


def _sft_or_policy(config: Config, stage: str):
    return run_model(config, "sft") if RunDir(config.run_dir).has_model("sft") else _policy(config, stage)


def starting_model(config: Config, stage: str):
    """The model spec a stage starts from (see the module docstring). Raises InputError if none."""
    match stage:
        case "redteam":
            return config.models.redteam or _policy(config, stage)
        case "critique":
            return _policy(config, stage)
        case "sft":
            return require_local(config.sft.model or config.models.policy, "sft.model" if config.sft.model else "models.policy")
        case "sample":
            return config.sample.model or _sft_or_policy(config, stage)
        case "label":
            if config.models.feedback is None and config.models.policy is None:
                raise InputError("models.feedback: the label stage needs a feedback model (models.feedback or models.policy)")
            return config.models.feedback or config.models.policy
        case "pm":
            return require_local(config.pm.model or _sft_or_policy(config, stage), "pm.model")
        case "ppo" | "dpo":
            return require_local(_sft_or_policy(config, stage), "models.policy")
        case "judge":
            spec = config.evaluate.judge or config.models.feedback or config.models.policy
            if spec is None:
                raise InputError("evaluate.judge: evaluation needs a judge model (evaluate.judge, models.feedback or models.policy)")
            return spec
    raise ValueError(f"no starting model for stage {stage!r}")


def evaluated_models(config: Config) -> list[tuple[str, object]]:
    """(name, spec) of every model in `evaluate.stages` that exists, in stage order."""
    rd = RunDir(config.run_dir)
    out = []
    for name in config.evaluate.stages:
        if name == "policy":
            if config.models.policy is not None:
                out.append((name, config.models.policy))
        elif rd.has_model(name):
            out.append((name, run_model(config, name)))
    return out


def red_team_sources(config: Config) -> list:
    """The red-team prompt sources the critique stage reads: prompts.red_team, and with a redteam
    section the generated prompts (<run_dir>/redteam/prompts.jsonl) with them (redteam.use: add) or
    instead of them (replace)."""
    from cai.config import PromptSource

    given = [config.prompts.red_team] if config.prompts.red_team is not None else []
    if config.redteam is None:
        return given
    generated = PromptSource(path=str(RunDir(config.run_dir).redteam_prompts), format="jsonl")
    return [generated] if config.redteam.use == "replace" else given + [generated]


def rl_prompt_sources(config: Config, helpful: bool = True) -> dict[str, object]:
    """The prompt sources the RL stages (sample, ppo) read, by kind: prompts.rl_red_team and
    prompts.rl_helpful where given, else prompts.red_team and prompts.helpful."""
    p = config.prompts
    return {"red_team": p.rl_red_team or p.red_team, "helpful": (p.rl_helpful or p.helpful) if helpful else None}


def model_origin(config: Config, spec) -> str:
    """Where a starting model came from, for the console: "the run's SFT model" or the config key."""
    path = getattr(spec, "path", None)
    if path is not None and Path(path) == RunDir(config.run_dir).model("sft"):
        return "the run's SFT model"
    return "models.policy" if spec is config.models.policy else "config"
