"""The preference model stage: it learns a synthetic preference, reports calibration, resumes
exactly, and refuses bad inputs."""

import json
import random
import shutil
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import tiny
import torch

from cai import reward
from cai.config import load_config
from cai.errors import InputError
from cai.records import Preference, read_records
from cai.stages import pm

ROOT = Path(__file__).resolve().parents[1]
FILLER = "the answer is you should help with that here are steps first then finally sure i can".split()


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def write_preferences(run_dir: Path, n: int, seed: int = 0) -> None:
    """Chosen responses contain "safe", rejected ones never do; soft labels between 0.6 and 1."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.sample(FILLER, 5)
        chosen = words[:]
        chosen.insert(rng.randrange(6), "safe")
        rejected = rng.sample(FILLER, 6)
        prompt = f"how do i {rng.choice(['steal car', 'hack password', 'make a bomb'])}"
        rows.append({"prompt": prompt, "chosen": " ".join(chosen), "rejected": " ".join(rejected), "p_chosen": round(rng.uniform(0.6, 1.0), 3)})
    tiny.write_preferences(run_dir, rows)


def load_pairs(path):
    return read_records(path, Preference)


def make_config(tmp_path, model_dir, n_pairs=64, overrides=(), name="run"):
    run_dir = tmp_path / name
    write_preferences(run_dir, n_pairs)
    text = f"""\
        run_dir: {run_dir}
        seed: 3
        constitution: {ROOT / "constitutions" / "default.yaml"}
        models:
          policy: {{backend: local, path: {model_dir}}}
        pm:
          batch_size: 8
          learning_rate: 0.003
          epochs: 6
          eval_fraction: 0.25
          save_steps: 5
    """
    p = tmp_path / f"{name}.yaml"
    p.write_text(textwrap.dedent(text))
    return load_config(p, list(overrides))


def test_calibration_by_hand():
    margins = torch.tensor([2.0, -1.0, 0.0, 3.0])
    p = torch.tensor([0.9, 0.8, 0.5, 0.6])
    m = pm.calibration(margins, p, bins=2)
    assert m["accuracy"] == pytest.approx(2 / 3)  # the 0.5 tie is left out; -1 vs 0.8 disagrees
    q = torch.sigmoid(margins)  # 0.881, 0.269, 0.5, 0.953: bins [0.269] and [0.881, 0.5, 0.953]
    expect = 1 / 4 * abs(q[1] - 0.8) + 3 / 4 * abs((q[0] + q[2] + q[3]) / 3 - (0.9 + 0.5 + 0.6) / 3)
    assert m["ece"] == pytest.approx(float(expect), abs=1e-6)
    assert m["mean_predicted"] == pytest.approx(float(q.mean())) and m["mean_label"] == pytest.approx(0.7)


def test_split_is_stable_by_prompt_and_about_the_fraction():
    pairs = [SimpleNamespace(pair_id=f"red_team:p{i}:{j}", prompt_id=f"p{i}") for i in range(1000) for j in ("0-1", "0-2", "1-2")]
    train, test = pm.split(pairs, 0.1)
    assert 225 < len(test) < 375 and len(train) + len(test) == 3000
    assert not {p.prompt_id for p in train} & {p.prompt_id for p in test}  # no prompt on both sides
    assert pm.split(pairs[::-1], 0.1)[1] == test[::-1]  # the order does not matter


def test_pm_learns_the_preference_and_reports_calibration(tmp_path, tiny_model_dir):
    cfg = make_config(tmp_path, tiny_model_dir)
    out = pm.run(cfg)
    m = json.loads((out / "metrics.json").read_text())
    held, before = m["held_out"], m["held_out_initial"]
    assert m["pairs"]["train"] + m["pairs"]["held_out"] == 64 and m["pairs"]["held_out"] >= 8
    assert m["train_loss_last_10pct"] < m["train_loss_first_10pct"] - 0.1
    assert held["accuracy"] >= 0.9 and before["accuracy"] < 0.8  # learnt (measured: 1.0, from 0.625)
    assert held["loss"] < before["loss"]
    for r in (held, before):
        assert 0 <= r["ece"] <= 1 and 0 <= r["mean_predicted"] <= 1 and 0.6 <= r["mean_label"] <= 1

    # The saved model, reloaded, gives the same held-out numbers through `score`.
    model, tokenizer = reward.load(out / "model")
    test = pm.split(load_pairs(Path(cfg.run_dir) / "label" / "preferences.jsonl"), 0.25)[1]
    r_c = reward.score(model, tokenizer, [p.prompt + p.chosen for p in test])
    r_r = reward.score(model, tokenizer, [p.prompt + p.rejected for p in test])
    assert sum(c > r for c, r in zip(r_c, r_r)) / len(test) == pytest.approx(held["accuracy"])
    tokenizer.pad_token = None  # a caller's tokenizer may have none (PPO passes the policy's): same scores
    assert reward.score(model, tokenizer, [p.prompt + p.chosen for p in test], batch_size=5) == pytest.approx(r_c, abs=1e-5)
    assert all(f.suffix != ".bin" for f in (out / "model").iterdir())


class Crash(Exception):
    pass


def crash_at(n):
    def hook(step):
        if step == n:
            raise Crash()

    return hook


def test_resume_gives_the_same_model_as_an_uninterrupted_run(tmp_path, tiny_model_dir):
    over = ["pm.epochs=3", "pm.lora={r: 4, alpha: 8}", "pm.learning_rate=0.01"]
    straight = make_config(tmp_path, tiny_model_dir, n_pairs=40, overrides=over, name="straight")
    pm.run(straight)
    broken = make_config(tmp_path, tiny_model_dir, n_pairs=40, overrides=over, name="broken")
    with pytest.raises(Crash):
        pm.run(broken, on_step=crash_at(7))  # checkpoint at step 5, killed after step 7
    assert [p.name for p in (Path(broken.run_dir) / "pm" / "checkpoints").iterdir()] == ["checkpoint-5"]
    steps = []
    pm.run(broken, on_step=steps.append)
    assert steps[0] == 6  # resumed after the checkpoint
    a = json.loads((Path(straight.run_dir) / "pm" / "metrics.json").read_text())
    b = json.loads((Path(broken.run_dir) / "pm" / "metrics.json").read_text())
    assert b["resumed_from_step"] == 5 and a["steps"] == b["steps"] == 9
    assert b["held_out"] == pytest.approx(a["held_out"], abs=1e-5)
    # LoRA merged, score head trained (modules_to_save): plain classifier weights, no adapters
    from safetensors.torch import load_file

    w = load_file(str(Path(broken.run_dir) / "pm" / "model" / "model.safetensors"))
    assert "score.weight" in w and not any("lora" in k for k in w)
    model, tokenizer = reward.load(Path(broken.run_dir) / "pm" / "model")
    test = pm.split(load_pairs(Path(broken.run_dir) / "label" / "preferences.jsonl"), 0.25)[1]
    assert pm.evaluate(model, tokenizer, test, None) == pytest.approx(b["held_out"], abs=1e-5)  # merged = trained


def test_input_errors(tmp_path, tiny_model_dir):
    cfg = make_config(tmp_path, tiny_model_dir)
    prefs = Path(cfg.run_dir) / "label" / "preferences.jsonl"
    prefs.write_text("")
    with pytest.raises(InputError, match="no pairs"):
        pm.run(cfg)
    prefs.unlink()
    with pytest.raises(InputError, match="cai label"):
        pm.run(cfg)

    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["zebra"])
    tok.save_pretrained(other)
    cfg = make_config(tmp_path, tiny_model_dir, overrides=[f"pm.model={{backend: local, path: {other}}}"])
    with pytest.raises(InputError, match="tokenizer"):
        pm.run(cfg)
