"""RL-CAI without a preference model: DPO on the AI-labelled pairs.

    cai dpo CONFIG [--set dpo.labels=hard] [--set dpo.lora.r=16]

Reads:  <run_dir>/label/preferences.jsonl (Preference).
Model:  the run's SFT model if made, else models.policy (local). The reference is the same initial
        weights: a frozen copy, or with LoRA (`dpo.lora`) the policy with its adapters switched off.
Writes: <run_dir>/dpo/model (merged safetensors + tokenizer), dpo/metrics.json, logs/dpo/;
        checkpoints/ while it runs.

Labels (`dpo.labels`):
* "soft" (default): the labeller's probability p_chosen is the target, with the cross-entropy the
  preference model uses, on DPO's implicit reward margin (cai.soft_dpo.SoftDPOTrainer);
* "hard": TRL's standard sigmoid loss on (chosen, rejected); pairs labelled exactly 0.5 carry no
  preference and are dropped (counted in metrics.json).

On several processes (`cai launch --nproc N dpo CONFIG`, torchrun, accelerate launch): TRL's trainer
shards every global batch of `dpo.batch_size x dpo.grad_accum` pairs over the processes
(cai.distributed.trainer_args); the main process alone writes the log, checkpoints and the model.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from cai import distributed
from cai.checkpoint import checkpoint_step, latest_checkpoint
from cai.config import Config, LocalModel
from cai.errors import InputError
from cai.lifecycle import StageRun, file_hash, identity, model_identity
from cai.records import Preference, read_records
from cai.rundir import RunDir, starting_model
from cai.store import atomic_write_text
from cai.training import load_for_training, lora_config, save_merged, training_args_defaults
from cai.trainlog import TrainLog, quiet, trainer_callback

STAGE = "dpo"


def training_rows(pairs: list[Preference], labels: str) -> tuple[list[dict], int]:
    """(rows with prompt, chosen, rejected, p_chosen; pairs dropped as ties under hard labels)."""
    rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "p_chosen": p.p_chosen} for p in pairs]
    if labels == "hard":
        kept = [r for r in rows if r["p_chosen"] != 0.5]
        return kept, len(rows) - len(kept)
    return rows, 0


def make_trainer(config: Config, spec: LocalModel, rows: list[dict], callbacks: Sequence = ()):
    """TRL's DPOTrainer (hard labels) or SoftDPOTrainer (soft), with the policy and reference loaded."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    from cai.soft_dpo import SoftDPOTrainer

    c = config.dpo
    soft = c.labels == "soft"
    set_seed(config.seed)  # LoRA's initial weights
    model, tokenizer = load_for_training(spec, lora=c.lora is not None)
    ref = None if c.lora is not None else load_for_training(spec)[0].eval()
    args = DPOConfig(
        **training_args_defaults(c, RunDir(config.run_dir).checkpoints(STAGE), config.seed, spec.device, config.logging.every_steps)
        | distributed.trainer_args(c, "dpo"),
        beta=c.beta,
        loss_type=["sigmoid"],
        remove_unused_columns=not soft,  # soft: keep p_chosen for the collator
    )
    return (SoftDPOTrainer if soft else DPOTrainer)(
        model=model,
        ref_model=ref,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora_config(c.lora, "CAUSAL_LM") if c.lora is not None else None,
        callbacks=list(callbacks),
    )


def rebuild(config: Config, spec: LocalModel):
    """A fresh copy of the policy as TRL trains it (with its LoRA adapters), for the gathered
    weights of a sharded run (cai.distributed.trained_model)."""
    from peft import get_peft_model

    model, _ = load_for_training(spec, lora=config.dpo.lora is not None)
    return get_peft_model(model, lora_config(config.dpo.lora, "CAUSAL_LM")) if config.dpo.lora is not None else model


def run(config: Config, force: bool = False, callbacks: Sequence = ()) -> Path:
    """Train with DPO; returns `<run_dir>/dpo`. `callbacks`: extra transformers TrainerCallbacks."""
    c = config.dpo
    rd = RunDir(config.run_dir)
    spec = starting_model(config, STAGE)
    if not rd.label_preferences.is_file():
        raise InputError(f"{rd.label_preferences}: no preference labels; run `cai label` first")
    pairs = read_records(rd.label_preferences, Preference)
    if not pairs:
        raise InputError(f"{rd.label_preferences}: the preference set has no pairs; nothing to train on")
    rows, ties = training_rows(pairs, c.labels)
    if not rows:
        raise InputError(f"{rd.label_preferences}: every pair is labelled 0.5 (no preference); hard labels need some")
    fp = {"seed": config.seed, "preferences": file_hash(rd.label_preferences), "model": model_identity(spec), "dpo": identity(c)}
    with StageRun(config, STAGE, fp, force=force) as run:
        if run.complete:
            return rd.stage_dir(STAGE)
        run.say(f"{len(rows)} pairs, {c.labels} labels" + (f" ({ties} ties dropped)" if ties else "") + f"; policy {spec.path}")
        resume = distributed.broadcast_object(latest_checkpoint(rd.checkpoints(STAGE)))  # the main process's view
        log = TrainLog.for_stage(config, STAGE, resume_step=checkpoint_step(resume) or 0)
        trainer = quiet(make_trainer(config, spec, rows, [trainer_callback(log, STAGE), *callbacks]))
        if resume:
            run.say(f"resuming from {resume}")
        t0 = time.perf_counter()
        try:
            result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        finally:
            log.close()
        model = distributed.trained_model(trainer, lambda: rebuild(config, spec))  # (every process takes part)
        train_loss = distributed.mean_over_processes(result.training_loss)  # (each process's is over its shard)
        if not run.main:
            return rd.stage_dir(STAGE)  # (leaving the `with` waits for the main process's writes)
        save_merged(model, trainer.processing_class, rd.model(STAGE))

        logged = [h for h in trainer.state.log_history if "loss" in h]
        last = logged[-1] if logged else {}
        metrics = {
            "train_loss": train_loss,  # mean over the steps run in this call
            "pairs": len(rows),
            "ties_dropped": ties,
            "labels": c.labels,
            "beta": c.beta,
            "steps": trainer.state.global_step,
            "resumed_from_step": checkpoint_step(resume),
            "batch": distributed.batch_layout(trainer.args),
            "last_logged": {k: last[k] for k in ("loss", "rewards/margins", "rewards/accuracies") if k in last},
            "lora": c.lora is not None,
            "model": spec.path,
            "train_runtime_s": round(time.perf_counter() - t0, 1),
        }
        atomic_write_text(rd.metrics(STAGE), json.dumps(metrics, indent=2))
        shutil.rmtree(rd.checkpoints(STAGE), ignore_errors=True)
        summary = {"train_loss": metrics["train_loss"], "pairs": len(rows), "labels": c.labels, "steps": metrics["steps"]}
        run.finish(summary, [rd.model(STAGE), rd.metrics(STAGE)], backend=f"local: {spec.path}")
        run.say(f"train loss {train_loss:.4f} over {trainer.state.global_step} steps -> {rd.model(STAGE)}")
    return rd.stage_dir(STAGE)
