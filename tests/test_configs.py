"""Every config in configs/ loads and validates, and says at the top what it runs and how."""

from pathlib import Path

import pytest
import yaml

from cai.config import load_config

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates_and_opens_with_how_to_run_it(path):
    config = load_config(path, check_files_exist=path.name == "toyworld.yaml")  # the toy world ships its data
    head = path.read_text().splitlines()[0]
    assert head.startswith("# ") and len(head) > 20
    assert "cai run" in path.read_text() or "cai " in path.read_text()
    assert config.run_dir


def test_toyworld_config_reads_only_training_prompts_and_evaluates_on_held_out_ones():
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "toyworld.yaml")
    assert config.prompts.red_team.path.endswith("red_team_train.jsonl") and config.prompts.helpful.path.endswith("helpful_train.jsonl")
    assert config.prompts.rl_red_team.path.endswith("red_team_rl.jsonl") and config.prompts.rl_helpful.path.endswith("helpful_rl.jsonl")
    # The README reports the test split; settings are chosen with --set evaluate.*.path=..._validation.jsonl.
    assert config.evaluate.red_team.path.endswith("red_team_test.jsonl") and config.evaluate.helpful.path.endswith("helpful_test.jsonl")
    assert config.evaluate.oracle == "toyworld"


def test_accelerate_config_is_yaml():
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "multi-gpu.yaml").read_text())
    assert cfg["distributed_type"] == "DEEPSPEED" and cfg["num_processes"] >= 1


def test_committed_toyworld_prompt_files_are_what_the_world_generates():
    from cai.toyworld import prompt_files

    folder = Path(__file__).resolve().parents[1] / "configs" / "toyworld"
    assert sorted(p.name for p in folder.glob("*.jsonl")) == sorted(prompt_files.FILES)
    for name in prompt_files.FILES:
        assert (folder / name).read_text() == prompt_files.render(name), f"regenerate with: cai toyworld prompts --out {folder}"
