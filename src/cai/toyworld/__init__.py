"""The toy world: a miniature world where harm is decidable, and a tiny helpful-only model of it.

    cai toyworld train     # rebuild the shipped model from a seed (python -m cai.toyworld.train)
    cai toyworld baseline  # measure it (python -m cai.toyworld.baseline)
    cai toyworld prompts   # write the prompt files of configs/toyworld/ (python -m cai.toyworld.prompt_files)

Modules: world (tasks, the train/validation/test split, the ways to ask, canonical replies),
prompt_files (the pipeline's and evaluation's prompt sets), corpus (the pre-training corpus,
rendered by cai.templates), train (tokenizer, model, pre-training loop), oracle (ground truth, for
evaluation only), baseline (the shipped model's numbers). See docs/toyworld.md.
"""

from __future__ import annotations

from pathlib import Path

from cai.records import Constitution
from cai.toyworld import world


def model_path() -> Path:
    """The shipped toy model (config, safetensors weights, tokenizer with its chat template)."""
    return Path(__file__).parent / "model"


def constitution_path() -> Path:
    """constitutions/toyworld.yaml of the source tree."""
    return Path(__file__).resolve().parents[3] / "constitutions" / "toyworld.yaml"


def load_constitution(path: str | Path | None = None) -> Constitution:
    from cai.constitution import load_constitution as load

    return load(Path(path) if path is not None else constitution_path())


def prompts(split: str, kind: str) -> list[str]:
    """Single-turn SL-phrased prompts of a split's tasks: prompts("train" | "validation" | "test", "harmful" | "benign")."""
    return world.prompts(split, kind)
