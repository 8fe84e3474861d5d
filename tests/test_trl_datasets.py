"""Every dataset cai writes trains in the matching TRL trainer as it is, without conversion: one
optimizer step of each trainer on each dataset, with the shipped toy model.

    critique/sft_dataset   -> trl.SFTTrainer     (conversational prompt/completion)
    critique/pairs_dataset -> trl.DPOTrainer     (prompt, chosen = final revision, rejected = initial answer)
    label/dataset          -> trl.RewardTrainer  (prompt, chosen, rejected; extra columns such as p_chosen)
    label/dataset          -> trl.DPOTrainer
"""

from __future__ import annotations

import pytest
import torch
from datasets import load_from_disk

from cai.config import load_config
from cai.rundir import RunDir
from cai.stages import critique, label, sample
from cai.toyworld import model_path

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
needs_model = pytest.mark.skipif(not (model_path() / "model.safetensors").exists(), reason="toy model not built")
CPU = dict(
    use_cpu=True,
    bf16=False,
    gradient_checkpointing=False,
    report_to="none",
    max_steps=1,
    per_device_train_batch_size=2,
    logging_steps=1,
    save_strategy="no",
    disable_tqdm=True,
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A small real run: critique, sample and label on the toy model, a few toy-world prompts."""
    tmp = tmp_path_factory.mktemp("trl")
    cfg = load_config(
        ROOT / "configs" / "toyworld.yaml",
        [
            f"run_dir={tmp / 'run'}",
            "prompts.red_team.limit=4",
            "prompts.helpful.limit=2",
            "prompts.rl_red_team.limit=4",
            "prompts.rl_helpful.limit=2",
            "critique.max_new_tokens=48",
            "sample.max_new_tokens=32",
            "sample.k=3",
        ],
    )
    critique.run(cfg)
    sample.run(cfg)
    label.run(cfg)
    return RunDir(cfg.run_dir)


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path())


def _changed(before: dict, model) -> bool:
    return any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)


@needs_model
def test_critique_sft_dataset_trains_in_sft_trainer(run_dir, tmp_path):
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    data = load_from_disk(str(run_dir.critique_sft_dataset))
    assert data.column_names == ["prompt", "completion"] and data.num_rows == 4
    model = AutoModelForCausalLM.from_pretrained(model_path())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = SFTTrainer(model=model, args=SFTConfig(output_dir=str(tmp_path), max_length=512, **CPU), train_dataset=data, processing_class=_tokenizer())
    assert trainer.train().global_step == 1 and _changed(before, trainer.model)


@needs_model
@pytest.mark.parametrize("which", ["critique pairs", "labels"])
def test_preference_datasets_train_in_dpo_trainer(run_dir, tmp_path, which):
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    data = load_from_disk(str(run_dir.critique_pairs_dataset if which == "critique pairs" else run_dir.label_dataset))
    assert {"prompt", "chosen", "rejected"} <= set(data.column_names) and data.num_rows > 0
    model = AutoModelForCausalLM.from_pretrained(model_path())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = DPOTrainer(model=model, args=DPOConfig(output_dir=str(tmp_path), max_length=512, **CPU), train_dataset=data, processing_class=_tokenizer())
    assert trainer.train().global_step == 1 and _changed(before, trainer.model)


@needs_model
def test_label_dataset_trains_in_reward_trainer(run_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    data = load_from_disk(str(run_dir.label_dataset))
    assert {"prompt", "chosen", "rejected", "p_chosen"} <= set(data.column_names)
    tokenizer = _tokenizer()
    model = AutoModelForSequenceClassification.from_pretrained(model_path(), num_labels=1, pad_token_id=tokenizer.pad_token_id)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = RewardTrainer(model=model, args=RewardConfig(output_dir=str(tmp_path), max_length=512, **CPU), train_dataset=data, processing_class=tokenizer)
    assert trainer.train().global_step == 1 and _changed(before, trainer.model)
