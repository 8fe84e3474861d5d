"""`cai run`: every stage in order on the shipped toy model (small settings), skip when done,
changed config reported, --from/--until, --force."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cai import cli, registry
from cai.config import load_config
from cai.errors import InputError
from cai.toyworld import model_path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "toyworld.yaml"
needs_model = pytest.mark.skipif(not (model_path() / "model.safetensors").exists(), reason="toy model not built")

# configs/toyworld.yaml, shrunk: a handful of prompts, one epoch, two PPO steps.
SMALL = [
    "prompts.red_team.limit=6",
    "prompts.helpful.limit=6",
    "prompts.rl_red_team.limit=6",
    "prompts.rl_helpful.limit=6",
    "evaluate.red_team.limit=6",
    "evaluate.helpful.limit=6",
    "evaluate.win_rate_prompts=4",
    "critique.max_new_tokens=48",
    "sample.max_new_tokens=40",
    "sft.epochs=1",
    "pm.epochs=1",
    "dpo.epochs=1",
    "ppo.steps=2",
    "ppo.rollout_batch=4",
    "ppo.minibatch_size=2",
    "ppo.ppo_epochs=1",
    "ppo.max_new_tokens=24",
    "ppo.save_steps=1",
]


def cai(*argv: str) -> int:
    return cli.main(list(argv))


def test_from_and_until_select_stages_in_order():
    config = load_config(CONFIG)
    assert [s.name for s in registry.planned(config, "sample", "pm")] == ["sample", "label", "pm", "ppo", "dpo"][:3]
    assert [s.name for s in registry.planned(config, "sample", "train-pm")] == ["sample", "label", "pm"]  # the old name still works
    dpo_only = load_config(CONFIG, ["pipeline.rl=dpo"])
    assert [s.name for s in registry.planned(dpo_only, "label", None)] == ["label", "dpo", "evaluate"]
    with pytest.raises(InputError, match="--from sampel: not a stage; stages are redteam, critique, sft"):
        registry.planned(config, "sampel", None)


@needs_model
def test_cai_run_end_to_end_then_skip_then_changed_config_then_force(tmp_path, capsys):
    run = tmp_path / "run"
    sets = [a for s in SMALL + [f"run_dir={run}"] for a in ("--set", s)]
    assert cai("run", str(CONFIG), *sets) == 0
    out = capsys.readouterr().out
    for i, stage in enumerate(["critique", "sft", "sample", "label", "pm", "ppo", "dpo", "evaluate"], 1):
        assert f"[{i}/8] {stage} done in" in out
    assert f"report: {run / 'report.html'}" in out
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    assert list(metrics["models"]) == ["policy", "sft", "ppo", "dpo"]
    policy = metrics["models"]["policy"]
    assert policy["red_team"]["harmful"] == 1.0 and policy["helpful"]["helpful"] == 1.0  # the helpful-only model
    pmo = metrics["preference_model"]  # the PM against the oracle, measured by evaluate alone
    assert pmo["pairs"] == 160 and set(pmo["by_type"]) >= {"harmful_vs_refusal", "helpful_vs_overrefusal"}
    assert pmo["accuracy"] == pytest.approx(sum(pmo["by_type"].values()) / len(pmo["by_type"]))
    for name in ("sft", "ppo", "dpo"):
        assert (run / name / "model" / "model.safetensors").is_file()
    assert (run / "report.html").stat().st_size > 10_000
    stamp = (run / "sft" / "model" / "model.safetensors").stat().st_mtime_ns

    # Again: every stage is complete, nothing is redone.
    assert cai("run", str(CONFIG), *sets) == 0
    out = capsys.readouterr().out
    assert out.count("already complete") >= 7, out
    assert (run / "sft" / "model" / "model.safetensors").stat().st_mtime_ns == stamp

    # A changed setting of a finished stage is an error that names the stage and the key.
    assert cai("run", str(CONFIG), *sets, "--set", "sft.learning_rate=1e-4") == 2
    assert "sft: the run directory holds output made with a different config (changed: sft)" in capsys.readouterr().err

    # --from sft --force redoes sft (and what follows it; --until keeps this test short).
    assert cai("run", str(CONFIG), *sets, "--set", "sft.learning_rate=1e-4", "--from", "sft", "--until", "sft", "--force") == 0
    assert "[1/1] sft done in" in capsys.readouterr().out
    assert (run / "sft" / "model" / "model.safetensors").stat().st_mtime_ns != stamp
