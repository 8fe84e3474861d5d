"""What the training stages (sft, train-pm, dpo) share: loading a model to train, LoRA, safe
Trainer defaults, and saving the result as plain safetensors.

    model, tokenizer = load_for_training(spec)                 # causal LM
    model, tokenizer = load_for_training(spec, head="score")   # one-logit sequence classifier (PM)
    model = apply_lora(model, config.sft.lora, "CAUSAL_LM")
    args = SFTConfig(**training_args_defaults(config.sft, rd.checkpoints("sft"), seed), ...)
    save_merged(model, tokenizer, rd.model("sft"))

Precision: weights are trained in float32 (mixed bf16 autocast on a GPU that supports it), except
frozen LoRA base weights, which may stay in bf16. A bf16 master copy of weights that the
optimizer updates loses small updates (bf16 has 8 bits of mantissa), so full fine-tuning never
stores them in bf16 unless the spec asks for it explicitly.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Literal

import torch

from cai.config import LocalModel, LoRA, Optim
from cai.errors import InputError

Head = Literal["causal_lm", "score"]


def cuda_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def train_device(spec: LocalModel) -> torch.device:
    """Where a plain training loop runs: the spec's device, or cuda when there is one."""
    if spec.device != "auto":
        return torch.device(spec.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_dtype(spec: LocalModel, lora: bool) -> torch.dtype:
    if spec.dtype != "auto":
        return getattr(torch, spec.dtype)
    return torch.bfloat16 if (lora and cuda_bf16()) else torch.float32


def load_for_training(spec: LocalModel, head: Head = "causal_lm", lora: bool = False):
    """(model, tokenizer) in the training dtype, on the CPU (Trainer or the stage moves it).

    head="score" loads `AutoModelForSequenceClassification` with one output (a reward); its `score`
    layer is new and randomly initialised when `spec.path` is a causal LM. The tokenizer always has
    a pad token (EOS if it had none) and the model config knows its id.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    kwargs = dict(revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.path, **kwargs)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        dtype = train_dtype(spec, lora)
        if head == "score":
            model = AutoModelForSequenceClassification.from_pretrained(
                spec.path, num_labels=1, pad_token_id=tokenizer.pad_token_id, dtype=dtype, use_safetensors=True, **kwargs
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(spec.path, dtype=dtype, use_safetensors=True, **kwargs)
    except OSError as e:
        raise InputError(f"cannot load model {spec.path!r} for training: {e}") from None
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def lora_config(lora: LoRA, task_type: Literal["CAUSAL_LM", "SEQ_CLS"]):
    """peft's LoraConfig for our LoRA section. For a sequence classifier the new `score` head is
    trained in full (modules_to_save): a frozen random head would make the reward meaningless."""
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type=task_type,
        modules_to_save=["score"] if task_type == "SEQ_CLS" else None,
    )


def apply_lora(model, lora: LoRA, task_type: Literal["CAUSAL_LM", "SEQ_CLS"]):
    """Wrap `model` with fresh LoRA adapters (seed torch first: their initial weights are random)."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(lora, task_type))


def training_args_defaults(optim: Optim, output_dir: str | Path, seed: int, device: str = "auto", log_every: int = 10) -> dict[str, Any]:
    """Keyword arguments for any TRL config (SFTConfig, DPOConfig, ...), safe on a CPU.

    TRL configs default to bf16=True and gradient_checkpointing=True; on a CPU the first fails or
    runs emulated and the second makes the first step ~25x slower, so both are off unless a GPU
    with bf16 is there. The schedule is linear warmup then constant (cai.config.Optim). The
    Trainer's own progress bar and loggers are off: cai.trainlog logs to <run_dir>/logs/<stage>/
    and cai.console shows progress, the same way for every training stage.
    """
    use_cpu = device == "cpu" or not torch.cuda.is_available()
    return dict(
        output_dir=str(output_dir),
        seed=seed,
        data_seed=seed,
        learning_rate=optim.learning_rate,
        num_train_epochs=optim.epochs,
        per_device_train_batch_size=optim.batch_size,
        gradient_accumulation_steps=optim.grad_accum,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=optim.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        max_length=optim.max_length,
        bf16=(not use_cpu) and cuda_bf16(),
        gradient_checkpointing=False,
        activation_checkpointing=False,  # (transformers 5's name for it; setting both avoids a deprecation warning)
        use_cpu=use_cpu,
        save_strategy="steps",
        save_steps=optim.save_steps,
        save_total_limit=1,  # resuming needs only the last checkpoint
        logging_steps=log_every,
        logging_first_step=True,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def save_merged(model, tokenizer, out_dir: str | Path) -> Path:
    """Merge LoRA adapters (if any) into the weights and save safetensors + tokenizer, atomically:
    everything is written to a temporary sibling directory which is then renamed into place."""
    from peft import PeftModel

    out_dir = Path(out_dir)
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    model.config.use_cache = True  # (trainers turn the KV cache off while training; inference wants it)
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")  # unique per process
    old = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    stray = [p.name for p in tmp.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    if stray:  # (transformers 5 writes safetensors only; this guards the promise)
        raise RuntimeError(f"save_merged: unexpected pickled files {stray} in {tmp}")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir
