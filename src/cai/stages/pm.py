"""RL-CAI, step 3: a preference model trained on the soft AI labels.

    cai pm CONFIG [--set pm.lora.r=16]          (also: cai train-pm)

Reads:  <run_dir>/label/preferences.jsonl (Preference).
Model:  pm.model, else the run's SFT model if made, else models.policy (local; the policy's tokenizer).
Writes: <run_dir>/pm/model (safetensors + tokenizer), pm/metrics.json, logs/pm/ (TensorBoard,
        scalars.jsonl); checkpoints/ while it runs.

The preference model (PM) is the base model with a one-logit head (cai.reward): r(conversation) is
the logit at the conversation's last token. It is trained with the soft Bradley-Terry cross-entropy
(`cai.losses.soft_preference_loss`): a pair labelled p_chosen = 0.7 pulls sigmoid(r_c - r_r) toward
0.7, not toward 1. (The CAI paper found soft labels better calibrated; TRL's RewardTrainer only takes
hard labels, so this stage runs its own short loop: setup, train, save, with nothing to override.)
The new head is trained in full; the rest in full or through LoRA adapters (`pm.lora`).

A fraction of the prompts (`pm.eval_fraction`, chosen by a hash of prompt_id, so the same ones in
every run) is held out with all their pairs. On them, before and after training:
  accuracy    how often sign(r_c - r_r) agrees with the AI label (p_chosen > 0.5; ties left out)
  ece         expected calibration error: pairs binned by predicted p = sigmoid(r_c - r_r) into
              10 equal-width bins; sum over bins of (share of pairs) * |mean predicted - mean label|
  mean_predicted, mean_label, loss

Checkpoints every `pm.save_steps` steps (cai.checkpoint); the batch order is a function of the
seed, so a resumed run trains on the same batches as an uninterrupted one.

On several processes (`cai launch --nproc N pm CONFIG`): an optimizer step still takes the same
`pm.batch_size x pm.grad_accum` pairs; each process computes the loss of its contiguous share, in
micro-batches of at most `pm.batch_size`, weighted by its share of the step's pairs, and the
gradients are summed over the processes (cai.distributed.all_reduce_grads) before clipping and the
update, so every process takes the step a single process would. The batch schedule does not depend
on the number of processes: a run resumes on any number. The held-out pairs are scored in shares
too; the main process alone writes the log, checkpoints and the model.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cai import distributed
from cai.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint
from cai.config import Config, LocalModel
from cai.console import progress
from cai.errors import InputError
from cai.lifecycle import StageRun, file_hash, identity, model_identity, stable_seed
from cai.losses import soft_preference_loss
from cai.records import Preference, read_records
from cai.reward import rewards, score
from cai.rundir import RunDir, starting_model
from cai.store import atomic_write_text
from cai.training import apply_lora, load_for_training, save_merged, train_device
from cai.trainlog import TrainLog

STAGE = "pm"
MAX_GRAD_NORM = 1.0  # (the Trainer's default, as in the other training stages)
ECE_BINS = 10


def check_tokenizer(config: Config, spec: LocalModel) -> None:
    """The PM must read the policy's tokens: a different vocabulary is an input error."""
    from transformers import AutoTokenizer

    policy = config.models.policy
    if not isinstance(policy, LocalModel) or policy.path == spec.path:
        return  # (a remote policy's tokenizer cannot be compared)
    mine = AutoTokenizer.from_pretrained(spec.path, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    theirs = AutoTokenizer.from_pretrained(policy.path, revision=policy.revision, trust_remote_code=policy.trust_remote_code)
    if mine.get_vocab() != theirs.get_vocab():
        raise InputError(
            f"pm.model: the preference model's tokenizer ({spec.path}, {len(mine)} tokens) differs from the policy's "
            f"({policy.path}, {len(theirs)} tokens); the PM must use the policy's tokenizer"
        )


# ---------------------------------------------------------------- data


def held_out(key: str, fraction: float) -> bool:
    """Deterministic split: the same keys are held out in every run, whatever the seed or order."""
    return stable_seed("pm-eval", key) / 2**63 < fraction


def split(pairs: list[Preference], fraction: float) -> tuple[list[Preference], list[Preference]]:
    """(train, held out). Pairs are held out by prompt, so no held-out prompt was seen in training
    (k responses make k(k-1)/2 pairs per prompt; splitting pairs would leak prompts)."""
    out = [held_out(p.prompt_id or p.pair_id, fraction) for p in pairs]
    return [p for p, o in zip(pairs, out) if not o], [p for p, o in zip(pairs, out) if o]


def batch_order(n: int, batch_size: int, epochs: float, seed: int) -> list[list[int]]:
    """Every micro-batch of the run, in order: one seeded permutation per epoch, cut to `epochs`."""
    per_epoch = math.ceil(n / batch_size)
    total = math.ceil(epochs * per_epoch)
    batches: list[list[int]] = []
    for epoch in range(math.ceil(epochs)):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(stable_seed(seed, "pm-epoch", epoch))).tolist()
        batches += [perm[i : i + batch_size] for i in range(0, n, batch_size)]
    return batches[:total]


def pair_rewards(model, tokenizer, pairs: list[Preference], max_length: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen, r_rejected), each (B,), from one forward pass over the 2B conversations."""
    convs = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
    return rewards(model, tokenizer, convs, max_length).chunk(2)


def calibration(margins: torch.Tensor, p: torch.Tensor, bins: int = ECE_BINS) -> dict[str, float]:
    """Agreement and calibration of predicted p = sigmoid(r_c - r_r) against soft labels p. (N,) each."""
    q = torch.sigmoid(margins)
    decided = p != 0.5
    agree = (margins > 0) == (p > 0.5)
    which = torch.clamp((q * bins).long(), max=bins - 1)  # bin of each pair; q = 1 goes to the last
    ece = sum((which == b).sum() / len(q) * (q[which == b].mean() - p[which == b].mean()).abs() for b in range(bins) if (which == b).any())
    return {
        "pairs": len(q),
        "accuracy": agree[decided].float().mean().item() if decided.any() else float("nan"),
        "loss": soft_preference_loss(margins, torch.zeros_like(margins), p).item(),
        "ece": float(ece),
        "mean_predicted": q.mean().item(),
        "mean_label": p.mean().item(),
    }


def evaluate(model, tokenizer, pairs: list[Preference], max_length: int | None) -> dict[str, float] | None:
    """Calibration on `pairs`; with several processes each scores its share (every process calls it)."""
    if not pairs:
        return None
    mine = distributed.shard(pairs)
    convs = [p.prompt + p.chosen for p in mine] + [p.prompt + p.rejected for p in mine]
    shares = distributed.gather_objects(score(model, tokenizer, convs, max_length=max_length) if mine else [])  # in rank order
    r_c = [x for s in shares for x in s[: len(s) // 2]]
    r_r = [x for s in shares for x in s[len(s) // 2 :]]
    return calibration(torch.tensor(r_c) - torch.tensor(r_r), torch.tensor([p.p_chosen for p in pairs]))


# ---------------------------------------------------------------- setup, train, save


def setup(config: Config, spec: LocalModel):
    """(model, tokenizer, trainable parameters, optimizer): the base with a fresh score head (and LoRA)."""
    c = config.pm
    torch.manual_seed(stable_seed(config.seed, "pm-init"))  # the new score head (and LoRA) initial weights
    model, tokenizer = load_for_training(spec, head="score", lora=c.lora is not None)
    if c.lora is not None:
        model = apply_lora(model, c.lora, "SEQ_CLS")
    model.to(train_device(spec))
    params = [p for p in model.parameters() if p.requires_grad]
    distributed.broadcast_params(params)  # every process starts from the same weights (as DDP does)
    return model, tokenizer, params, torch.optim.AdamW(params, lr=c.learning_rate, weight_decay=0.0)


def train(
    config: Config,
    model,
    tokenizer,
    params,
    optimizer,
    pairs: list[Preference],
    log: TrainLog,
    start: int,
    state: dict,
    on_step: Callable[[int], None] | None = None,
) -> None:
    """Optimizer steps start+1 .. total over the seeded micro-batch order, checkpointing as it goes."""
    c = config.pm
    rd = RunDir(config.run_dir)
    batches = batch_order(len(pairs), c.batch_size, c.epochs, config.seed)  # micro-batches
    total = math.ceil(len(batches) / c.grad_accum)
    warmup = int(c.warmup_ratio * total)
    model.train()
    bar = progress(total=total, initial=start, desc=STAGE, unit="step")
    try:
        for step in range(start, total):
            lr = c.learning_rate * (min(1.0, step / warmup) if warmup else 1.0)  # linear warmup, then constant
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_pairs = [i for b in batches[step * c.grad_accum : (step + 1) * c.grad_accum] for i in b]  # the global batch
            n_pairs = len(step_pairs)
            mine = distributed.shard(step_pairs)  # this process's share (all of it when alone)
            optimizer.zero_grad(set_to_none=True)
            totals = torch.zeros(2, dtype=torch.float64)  # this process's (loss, agreements)
            for i in range(0, len(mine), c.batch_size):  # micro-batches of at most batch_size pairs
                chunk = [pairs[j] for j in mine[i : i + c.batch_size]]
                r_c, r_r = pair_rewards(model, tokenizer, chunk, c.max_length)  # (B,), (B,)
                p = torch.tensor([x.p_chosen for x in chunk], device=r_c.device)
                loss = soft_preference_loss(r_c, r_r, p) * len(chunk) / n_pairs  # its part of the mean over the step's pairs
                loss.backward()
                totals += torch.tensor([loss.item(), float(((r_c > r_r) == (p > 0.5)).sum())], dtype=torch.float64)
            distributed.all_reduce_grads(params, average=False)  # summed: each share is already weighted by its size
            step_loss, agree = distributed.all_reduce_sum(totals).tolist()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            optimizer.step()
            state["losses"].append(step_loss)
            done = step + 1
            if done % config.logging.every_steps == 0 or done == total or done == 1:
                log.log(done, {"train/loss": step_loss, "train/accuracy": agree / n_pairs, "train/grad_norm": float(grad_norm), "train/learning_rate": lr})
            bar.update(1, note=f"loss {step_loss:.4f}")
            if done % c.save_steps == 0 and done < total:
                rngs = distributed.gather_objects(rng_state())  # (every process takes part; the main one writes)
                if distributed.is_main():
                    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
                    save_checkpoint(rd.checkpoints(STAGE), done, {"trainable": trainable}, optimizer, state, rngs)
            if on_step is not None:
                on_step(done)
    finally:
        bar.close()


def run(config: Config, force: bool = False, on_step: Callable[[int], None] | None = None) -> Path:
    """Train the PM; returns `<run_dir>/pm`. `on_step(step)` is called after every optimizer step."""
    c = config.pm
    rd = RunDir(config.run_dir)
    spec = starting_model(config, STAGE)
    if not rd.label_preferences.is_file():
        raise InputError(f"{rd.label_preferences}: no preference labels; run `cai label` first")
    pairs = read_records(rd.label_preferences, Preference)
    if not pairs:
        raise InputError(f"{rd.label_preferences}: the preference set has no pairs; nothing to train a preference model on")
    train_pairs, test_pairs = split(pairs, c.eval_fraction)
    if not train_pairs:
        raise InputError(f"{rd.label_preferences}: all {len(pairs)} pairs were held out (pm.eval_fraction={c.eval_fraction}); lower it")
    check_tokenizer(config, spec)
    fp = {"seed": config.seed, "preferences": file_hash(rd.label_preferences), "model": model_identity(spec), "pm": identity(c) | {"model": None}}
    distributed.check_device(spec.device, "pm.model.device" if config.pm.model else "models.policy.device")
    with StageRun(config, STAGE, fp, force=force) as run:
        if run.complete:
            return rd.stage_dir(STAGE)
        run.say(f"{len(train_pairs)} training pairs, {len(test_pairs)} held out; base {spec.path}")
        if distributed.active():
            run.say(
                f"{distributed.world_size()} processes, each a whole copy of the model"
                + (f" ({distributed.sharding_requested()} settings apply to sft and dpo only)" if distributed.sharding_requested() else "")
            )
        model, tokenizer, params, optimizer = setup(config, spec)
        state: dict[str, Any] = {"losses": [], "held_out_initial": None}
        resume = distributed.broadcast_object(latest_checkpoint(rd.checkpoints(STAGE)))  # the main process's view
        if resume is not None:
            tensors, state = load_checkpoint(resume, optimizer, distributed.rank())
            expected = {n for n, p in model.named_parameters() if p.requires_grad}
            if set(tensors["trainable"]) != expected:
                raise InputError(f"{resume}: checkpoint does not match the model (was pm.lora changed? use --force to restart)")
            model.load_state_dict(tensors["trainable"], strict=False)
            run.say(f"resuming from {resume} (step {state['step']})")
        else:
            state["held_out_initial"] = evaluate(model, tokenizer, test_pairs, c.max_length)
        start = state.get("step", 0)
        log = TrainLog.for_stage(config, STAGE, resume_step=start)
        t0 = time.perf_counter()
        try:
            train(config, model, tokenizer, params, optimizer, train_pairs, log, start, state, on_step)
            held = evaluate(model, tokenizer, test_pairs, c.max_length)
            if held:
                log.log(len(state["losses"]), {f"eval/{k}": v for k, v in held.items() if k != "pairs"})
        finally:
            log.close()
        if not run.main:
            return rd.stage_dir(STAGE)  # (leaving the `with` waits for the main process's writes)

        save_merged(model, tokenizer, rd.model(STAGE))
        losses = state["losses"]
        k = max(1, len(losses) // 10)
        metrics = {
            "pairs": {"train": len(train_pairs), "held_out": len(test_pairs)},
            "steps": len(losses),
            "resumed_from_step": start or None,
            "train_loss": sum(losses) / len(losses),
            "train_loss_first_10pct": sum(losses[:k]) / k,
            "train_loss_last_10pct": sum(losses[-k:]) / k,
            "held_out": held,
            "held_out_initial": state["held_out_initial"],
            "batch": {
                "processes": distributed.world_size(),
                "per_device": c.batch_size,
                "global": c.batch_size * c.grad_accum,
            },  # (per_device: the largest micro-batch)
            "model": spec.path,
            "lora": c.lora is not None,
            "train_runtime_s": round(time.perf_counter() - t0, 1),
        }
        atomic_write_text(rd.metrics(STAGE), json.dumps(metrics, indent=2))
        shutil.rmtree(rd.checkpoints(STAGE), ignore_errors=True)
        summary = {
            "held_out_accuracy": (held or {}).get("accuracy"),
            "held_out_ece": (held or {}).get("ece"),
            "train_loss": metrics["train_loss"],
            "steps": len(losses),
        }
        run.finish(summary, [rd.model(STAGE), rd.metrics(STAGE)], backend=f"local: {spec.path}")
        if held:
            run.say(f"held-out accuracy {held['accuracy']:.3f}, ECE {held['ece']:.3f} -> {rd.model(STAGE)}")
    return rd.stage_dir(STAGE)
