"""RL-CAI without a preference model: DPO on the AI-labelled pairs.

    cai dpo CONFIG [--set dpo.labels=hard] [--set dpo.lora.r=16]

The policy is the run's SFT model if the sft stage made it, else `models.policy`; the reference is
the same initial weights: a frozen copy, or with LoRA (`dpo.lora`) the policy with its adapters
switched off (TRL does that when it wraps the model itself, so no second copy is held).

Labels (`dpo.labels`), on `<run_dir>/label/preferences.jsonl`:

* "soft" (default): the labeller's probability p_chosen is the target, with the same cross-entropy
  the preference model uses, on DPO's implicit reward margin (`cai.losses.soft_dpo_loss`):

      h = beta * [(log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x))]
      L = -[ p log sigma(h) + (1 - p) log sigma(-h) ]

  TRL's DPOTrainer has one global `label_smoothing`, not a per-pair label, so `SoftDPOTrainer`
  replaces only `compute_loss`: TRL still tokenizes, collates, keeps the reference model (or turns
  the adapters off), checkpoints and logs; the log-probabilities are computed the way TRL computes
  them (its fused LM head), and with p = 1 the loss is TRL's sigmoid loss (tested).
* "hard": TRL's standard sigmoid loss on (chosen, rejected); pairs labelled exactly 0.5 carry no
  preference and are dropped (counted in metrics.json).

Checkpoints go to `<run_dir>/dpo/checkpoints` every `dpo.save_steps` steps; a rerun resumes from the
last one. They are deleted once the model is saved; the training logs stay there (`runs/`).

Output: `<run_dir>/dpo/model/` (merged safetensors + tokenizer) and `<run_dir>/dpo/metrics.json`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from trl import DPOTrainer

from cai.config import Config, LocalModel, save_config
from cai.errors import InputError
from cai.losses import soft_dpo_loss
from cai.stages.common import begin, file_hash, finish
from cai.store import RunStore, atomic_write_text, read_jsonl
from cai.training import last_checkpoint, load_for_training, lora_config, remove_checkpoints, save_merged, sft_or_policy, training_args_defaults

STAGE = "dpo"
_NOT_MODEL_INPUTS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}  # (as in TRL's DPOTrainer)


class SoftDPOTrainer(DPOTrainer):
    """DPOTrainer whose loss is `cai.losses.soft_dpo_loss` against each pair's `p_chosen`.

    The dataset must keep its `p_chosen` column (args.remove_unused_columns=False); the collator
    TRL builds is wrapped to pass it on as a (B,) tensor.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.data_collator = _WithPChosen(self.data_collator)

    def sequence_logps(self, model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probs of the chosen and rejected completions under `model`, (B,) each.
        The batch is [chosen rows; rejected rows]; only completion tokens are labelled."""
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NOT_MODEL_INPUTS}
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)  # (2B, T)
        out = model(**model_kwargs, labels=labels, use_cache=False, fused_lm_head=True)
        T = inputs["completion_mask"].shape[1] - 1
        logps = out.log_probs[:, -T:].sum(dim=1)  # (2B,); unlabelled tokens contribute 0
        return logps.chunk(2)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        p = inputs.pop("p_chosen")  # (B,)
        if "ref_chosen_logps" in inputs:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:  # TRL's reference pass: the frozen copy, or this model with its adapters off
            ref_chosen, ref_rejected = self.compute_ref_log_probs(self.ref_model if self.ref_model is not None else model, inputs)
        chosen, rejected = self.sequence_logps(model, inputs)
        loss = soft_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, p, self.beta)

        mode = "train" if self.model.training else "eval"
        with torch.no_grad():
            r_c, r_r = self.beta * (chosen - ref_chosen), self.beta * (rejected - ref_rejected)  # implicit rewards
            for key, value in {
                "rewards/chosen": r_c.mean(),
                "rewards/rejected": r_r.mean(),
                "rewards/margins": (r_c - r_r).mean(),
                "rewards/accuracies": ((r_c > r_r) == (p > 0.5)).float().mean(),
                "p_chosen": p.mean(),
            }.items():
                self._metrics[mode][key].append(self.accelerator.gather_for_metrics(value).mean().item())
        return (loss, None) if return_outputs else loss


class _WithPChosen:
    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(examples)
        batch["p_chosen"] = torch.tensor([float(e["p_chosen"]) for e in examples])
        return batch


# ---------------------------------------------------------------- data


def load_pairs(path: Path, labels: str) -> tuple[list[dict[str, Any]], int]:
    """(rows with prompt, chosen, rejected, p_chosen; pairs dropped as ties under hard labels)."""
    if not path.is_file():
        raise InputError(f"{path}: no preference labels; run `cai label` first")
    rows = read_jsonl(path)
    if not rows:
        raise InputError(f"{path}: the preference set has no pairs; nothing to train on")
    keep = ("prompt", "chosen", "rejected", "p_chosen")
    for n, r in enumerate(rows, 1):
        missing = set(keep) - r.keys()
        if missing:
            raise InputError(f"{path}: line {n}: missing field(s) {sorted(missing)}")
    pairs = [{k: r[k] for k in keep} for r in rows]
    if labels == "hard":
        kept = [p for p in pairs if p["p_chosen"] != 0.5]
        if not kept:
            raise InputError(f"{path}: every pair is labelled 0.5 (no preference); hard labels need some")
        return kept, len(pairs) - len(kept)
    return pairs, 0


# ---------------------------------------------------------------- the stage


def fingerprint(config: Config, spec: LocalModel, prefs: Path) -> dict[str, Any]:
    return {
        "seed": config.seed,
        "preferences": file_hash(prefs),
        "model": spec.model_dump() | ({"sha256": file_hash(spec.path)} if Path(spec.path).exists() else {}),
        "dpo": config.dpo.model_dump(),
    }


def make_trainer(config: Config, spec: LocalModel, pairs: list[dict], ckpt_dir: Path, callbacks: Sequence = ()):
    """TRL's DPOTrainer (hard labels) or SoftDPOTrainer (soft), with the policy and reference loaded."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOConfig

    c = config.dpo
    soft = c.labels == "soft"
    set_seed(config.seed)  # LoRA's initial weights
    model, tokenizer = load_for_training(spec, lora=c.lora is not None)
    ref = None if c.lora is not None else load_for_training(spec)[0].eval()
    args = DPOConfig(
        **training_args_defaults(c, ckpt_dir, config.seed, spec.device),
        beta=c.beta,
        loss_type=["sigmoid"],
        remove_unused_columns=not soft,  # soft: keep p_chosen for the collator
    )
    return (SoftDPOTrainer if soft else DPOTrainer)(
        model=model,
        ref_model=ref,
        args=args,
        train_dataset=Dataset.from_list(pairs),
        processing_class=tokenizer,
        peft_config=lora_config(c.lora, "CAUSAL_LM") if c.lora is not None else None,
        callbacks=list(callbacks),
    )


def run(config: Config, force: bool = False, callbacks: Sequence = ()) -> Path:
    """Train with DPO; returns `<run_dir>/dpo`. `callbacks`: extra transformers TrainerCallbacks."""
    c = config.dpo
    spec = sft_or_policy(config)
    run_dir = Path(config.run_dir)
    prefs = run_dir / "label" / "preferences.jsonl"
    pairs, ties = load_pairs(prefs, c.labels)
    out_dir, ckpt_dir = run_dir / STAGE, run_dir / STAGE / "checkpoints"

    with RunStore(run_dir) as store:
        fp = fingerprint(config, spec, prefs)
        if begin(store, STAGE, fp, force):
            print(f"[dpo] already complete: {out_dir / 'model'}")
            return out_dir
    if force:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    save_config(config, run_dir / "config.yaml")
    print(f"[dpo] {len(pairs)} pairs, {c.labels} labels" + (f" ({ties} ties dropped)" if ties else "") + f"; policy {spec.path}")

    trainer = make_trainer(config, spec, pairs, ckpt_dir, callbacks)
    resume = last_checkpoint(ckpt_dir)
    if resume:
        print(f"[dpo] resuming from {resume}")
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    save_merged(trainer.model, trainer.processing_class, out_dir / "model")

    logged = [h for h in trainer.state.log_history if "loss" in h]
    last = logged[-1] if logged else {}
    metrics = {
        "train_loss": result.training_loss,  # mean over the steps this process ran
        "pairs": len(pairs),
        "ties_dropped": ties,
        "labels": c.labels,
        "beta": c.beta,
        "steps": trainer.state.global_step,
        "resumed_from_step": int(Path(resume).name.split("-")[-1]) if resume else None,
        "last_logged": {k: last[k] for k in ("loss", "rewards/margins", "rewards/accuracies") if k in last},
        "lora": c.lora is not None,
        "model": spec.path,
        "train_runtime_s": round(time.perf_counter() - t0, 1),
    }
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    with RunStore(run_dir) as store:
        finish(store, STAGE, fp, {"train_loss": metrics["train_loss"], "pairs": len(pairs), "labels": c.labels, "steps": metrics["steps"]})
    remove_checkpoints(ckpt_dir)
    print(f"[dpo] train loss {result.training_loss:.4f} over {trainer.state.global_step} steps -> {out_dir / 'model'}")
    return out_dir
