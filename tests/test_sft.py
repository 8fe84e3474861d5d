"""The SFT stage: the loss mask, training and saving, the helpful mix, resuming, input errors."""

import json
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import write_critique_records
from transformers import AutoModelForCausalLM, TrainerCallback

from cai.config import load_config
from cai.errors import InputError
from cai.rundir import starting_model
from cai.stages import sft
from cai.store import RunStore

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def write_records(run_dir: Path, n: int) -> None:
    write_critique_records(run_dir, [(f"p{i}", f"how do i hack password {i}", "i cannot help with that because it is harmful") for i in range(n)])


def make_config(tmp_path, model_dir, n_records=4, extra="", overrides=()):
    run_dir = tmp_path / "run"
    write_records(run_dir, n_records)
    text = f"""\
        run_dir: {run_dir}
        constitution: {ROOT / "constitutions" / "default.yaml"}
        models:
          policy: {{backend: local, path: {model_dir}}}
        sft:
          batch_size: 2
          learning_rate: 0.01
          max_length: 64
          save_steps: 2
    """
    p = tmp_path / "config.yaml"
    p.write_text(textwrap.dedent(text) + extra)
    return load_config(p, list(overrides))


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "model.safetensors"))


def test_loss_mask_covers_the_answer_only(tmp_path, tiny_model_dir):
    cfg = make_config(tmp_path, tiny_model_dir)
    example = {"prompt": [{"role": "user", "content": "bake bread"}], "completion": [{"role": "assistant", "content": "first bake then fix"}]}
    trainer = sft.make_trainer(cfg, starting_model(cfg, "sft"), [example])
    tok = trainer.processing_class
    row = trainer.train_dataset[0]
    ids, labels = row["input_ids"], row["labels"]
    prompt_ids = tok.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    n = len(prompt_ids)
    assert ids[:n] == prompt_ids
    assert labels[:n] == [-100] * n  # no loss on "<|im_start|>user bake bread<|im_end|> <|im_start|>assistant"
    assert labels[n:] == ids[n:]  # loss on every answer token and the <|im_end|> that ends it
    assert ids[n:] == tok("first bake then fix", add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]


def test_sft_trains_mixes_helpful_data_and_saves_safetensors(tmp_path, tiny_model_dir):
    helpful = tmp_path / "helpful.jsonl"
    convs = [[{"role": "user", "content": f"learn python {i}"}, {"role": "assistant", "content": "sure here are steps"}] for i in range(10)]
    helpful.write_text("".join(json.dumps({"messages": m}) + "\n" for m in convs))
    cfg = make_config(tmp_path, tiny_model_dir, n_records=6, overrides=["sft.helpful_ratio=0.5", f"sft.helpful_dataset={helpful}"])
    out = sft.run(cfg)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["examples"] == {"revisions": 6, "helpful": 3}
    assert metrics["steps"] == 5  # ceil(9 examples / batch 2)
    files = sorted(p.name for p in (out / "model").iterdir())
    assert "model.safetensors" in files and not [f for f in files if f.endswith((".bin", ".pt", ".pth"))]
    before, after = weights(tiny_model_dir), weights(out / "model")
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2, changed
    model = AutoModelForCausalLM.from_pretrained(out / "model", use_safetensors=True)
    assert model.num_parameters() > 0
    assert not list((out / "checkpoints").glob("checkpoint-*"))  # removed once the model is saved
    assert sft.run(cfg) == out  # complete: skipped


def test_lora_adapters_are_merged_into_plain_weights(tmp_path, tiny_model_dir):
    cfg = make_config(tmp_path, tiny_model_dir, overrides=["sft.helpful_ratio=0", "sft.lora={r: 4, alpha: 8}"])
    out = sft.run(cfg)
    files = {p.name for p in (out / "model").iterdir()}
    assert "adapter_config.json" not in files and "model.safetensors" in files
    before, after = weights(tiny_model_dir), weights(out / "model")
    assert before.keys() == after.keys()  # merged: the base model's tensors, no lora_A/lora_B
    assert not torch.equal(before["model.layers.0.self_attn.q_proj.weight"], after["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])  # not adapted


class Crash(Exception):
    pass


class CrashAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            raise Crash()


class FirstStep(TrainerCallback):
    first = None

    def on_step_end(self, args, state, control, **kw):
        if self.first is None:
            self.first = state.global_step


def test_generated_helpful_answers_are_kept_and_training_resumes_from_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    prompts = tmp_path / "helpful.txt"
    prompts.write_text("bake bread\nfix bike\nwrite poem\n")
    cfg = make_config(
        tmp_path,
        tiny_model_dir,
        n_records=5,
        extra=f"prompts:\n  helpful: {{path: {prompts}}}\n",
        overrides=["sft.helpful_ratio=1", "sft.batch_size=1", "sft.helpful_max_new_tokens=4"],
    )
    with pytest.raises(Crash):
        sft.run(cfg, callbacks=[CrashAt(3)])  # killed at the end of step 3: checkpoint-2 is the last
    with RunStore(cfg.run_dir) as store:
        assert len(store.items(sft.HELPFUL_STAGE)) == 3  # 5 wanted, 3 prompts exist
    assert [p.name for p in (Path(cfg.run_dir) / "sft" / "checkpoints").glob("checkpoint-*")] == ["checkpoint-2"]

    import cai.backends

    def no_generation(spec):
        raise AssertionError("helpful answers were generated again")

    monkeypatch.setattr(cai.backends, "make_backend", no_generation)
    first = FirstStep()
    out = sft.run(cfg, callbacks=[first])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 2
    assert first.first == 3  # continues after the checkpoint, not from step 1
    assert metrics["steps"] == 8 and metrics["examples"] == {"revisions": 5, "helpful": 3}


def test_input_errors(tmp_path, tiny_model_dir):
    cfg = make_config(tmp_path, tiny_model_dir, overrides=["sft.helpful_ratio=0"])
    records = Path(cfg.run_dir) / "critique" / "records.jsonl"
    records.write_text("")
    with pytest.raises(InputError, match="empty"):
        sft.run(cfg)
    records.unlink()
    with pytest.raises(InputError, match="run `cai critique` first"):
        sft.run(cfg)
    write_records(Path(cfg.run_dir), 2)
    with pytest.raises(InputError, match="no helpful data"):
        sft.run(make_config(tmp_path, tiny_model_dir, n_records=2))  # helpful_ratio 1 by default, no source
    remote = make_config(tmp_path, tiny_model_dir, overrides=["models.policy={backend: openai, base_url: 'http://x/v1', model: m}"])
    with pytest.raises(InputError, match="local model"):
        sft.run(remote)
