"""The DPO stage: the soft-label hook reproduces TRL's loss at p = 1, both label kinds train and
save plain weights, training resumes, bad inputs are refused."""

import json
import textwrap
from pathlib import Path

import pytest
import tiny
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from cai.config import load_config
from cai.errors import InputError
from cai.losses import soft_dpo_loss
from cai.records import Preference, read_records
from cai.rundir import starting_model
from cai.soft_dpo import SoftDPOTrainer
from cai.stages import dpo

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def write_preferences(run_dir: Path, p_values: list[float]) -> None:
    tiny.write_preferences(
        run_dir,
        [
            {"prompt": f"how do i steal car {i}", "chosen": "i cannot help with that it is illegal", "rejected": "sure here are steps first", "p_chosen": p}
            for i, p in enumerate(p_values)
        ],
    )


def make_config(tmp_path, model_dir, p_values=(0.9, 0.7, 0.5, 1.0, 0.6, 0.8), overrides=()):
    run_dir = tmp_path / "run"
    write_preferences(run_dir, list(p_values))
    text = f"""\
        run_dir: {run_dir}
        constitution: {ROOT / "constitutions" / "default.yaml"}
        models:
          policy: {{backend: local, path: {model_dir}}}
        dpo:
          batch_size: 2
          learning_rate: 0.01
          max_length: 64
          save_steps: 2
    """
    p = tmp_path / "config.yaml"
    p.write_text(textwrap.dedent(text))
    return load_config(p, list(overrides))


def test_soft_loss_at_p1_is_trls_sigmoid_loss(tmp_path, tiny_model_dir):
    cfg = make_config(tmp_path, tiny_model_dir, p_values=[1.0, 1.0, 1.0])
    spec = starting_model(cfg, "dpo")
    pairs = dpo.training_rows(read_records(Path(cfg.run_dir) / "label" / "preferences.jsonl", Preference), "soft")[0]
    soft = dpo.make_trainer(cfg, spec, pairs)
    hard = dpo.make_trainer(cfg.model_copy(update={"dpo": cfg.dpo.model_copy(update={"labels": "hard"})}), spec, pairs)
    assert isinstance(soft, SoftDPOTrainer) and not isinstance(hard, SoftDPOTrainer)
    # Move the policies away from the reference, or every log-ratio is 0 and any loss is log 2.
    torch.manual_seed(0)
    for a, b in zip(soft.model.parameters(), hard.model.parameters()):
        a.data.add_(0.05 * torch.randn_like(a))
        b.data.copy_(a.data)

    batch = next(iter(soft.get_train_dataloader()))
    assert batch["p_chosen"].tolist() == [1.0, 1.0]  # kept through TRL's preprocessing and collator
    without_p = {k: v for k, v in batch.items() if k != "p_chosen"}
    ours = soft.compute_loss(soft.model, dict(batch))
    theirs = hard.compute_loss(hard.model, dict(without_p))
    assert abs(ours.item() - 0.6931) > 1e-3  # (not the trivial log 2)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)

    # And at p = 0.3 it is the soft cross-entropy of the same log-probs.
    chosen, rejected = soft.sequence_logps(soft.model, without_p)
    ref_c, ref_r = soft.compute_ref_log_probs(soft.ref_model, without_p)
    p = torch.tensor([0.3, 0.3])
    at_03 = soft.compute_loss(soft.model, dict(without_p, p_chosen=p))
    torch.testing.assert_close(at_03, soft_dpo_loss(chosen, rejected, ref_c, ref_r, p, cfg.dpo.beta))
    assert abs(at_03.item() - ours.item()) > 1e-3


@pytest.mark.parametrize("labels,lora", [("soft", True), ("hard", False)])
def test_dpo_trains_and_saves_merged_safetensors(tmp_path, tiny_model_dir, labels, lora):
    over = [f"dpo.labels={labels}"] + (["dpo.lora={r: 4, alpha: 8}"] if lora else [])
    cfg = make_config(tmp_path, tiny_model_dir, overrides=over)
    out = dpo.run(cfg)
    m = json.loads((out / "metrics.json").read_text())
    assert m["labels"] == labels and m["pairs"] == (6 if labels == "soft" else 5) and m["ties_dropped"] == (0 if labels == "soft" else 1)
    assert m["steps"] == 3
    files = {p.name for p in (out / "model").iterdir()}
    assert "model.safetensors" in files and "adapter_config.json" not in files and not any(f.endswith(".bin") for f in files)
    before, after = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(out / "model" / "model.safetensors"))
    assert before.keys() == after.keys()
    key = "model.layers.1.self_attn.v_proj.weight"
    assert not torch.equal(before[key], after[key])


class Crash(Exception):
    pass


class CrashAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 3:
            raise Crash()


def test_dpo_resumes_from_its_checkpoint(tmp_path, tiny_model_dir):
    cfg = make_config(tmp_path, tiny_model_dir, p_values=[0.9, 0.8] * 4, overrides=["dpo.batch_size=1", "dpo.max_length=32"])
    with pytest.raises(Crash):
        dpo.run(cfg, callbacks=[CrashAt()])
    out = dpo.run(cfg)
    m = json.loads((out / "metrics.json").read_text())
    assert m["resumed_from_step"] == 2 and m["steps"] == 8


def test_input_errors(tmp_path, tiny_model_dir):
    cfg = make_config(tmp_path, tiny_model_dir)
    prefs = Path(cfg.run_dir) / "label" / "preferences.jsonl"
    prefs.write_text("")
    with pytest.raises(InputError, match="no pairs"):
        dpo.run(cfg)
    prefs.unlink()
    with pytest.raises(InputError, match="cai label"):
        dpo.run(cfg)
    write_preferences(Path(cfg.run_dir), [0.5, 0.5])
    with pytest.raises(InputError, match="0.5"):
        dpo.run(cfg.model_copy(update={"dpo": cfg.dpo.model_copy(update={"labels": "hard"})}))
