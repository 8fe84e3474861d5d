"""RL-CAI, step 3: a preference model trained on the soft AI labels.

    cai train-pm CONFIG [--set pm.lora.r=16]

The preference model (PM) is the base model with a one-logit head, `AutoModelForSequenceClassification
(num_labels=1)`: r(conversation) is the logit at the conversation's last token. It is trained on the
pairs of `<run_dir>/label/preferences.jsonl` with the soft Bradley-Terry cross-entropy
(`cai.losses.soft_preference_loss`): a pair labelled p_chosen = 0.7 pulls sigmoid(r_c - r_r) toward
0.7, not toward 1. (The CAI paper found soft labels better calibrated; TRL's RewardTrainer only
takes hard labels, so this stage runs its own short loop: a few dozen lines that show the whole
algorithm, with nothing to override.)

Base (`pm.model`): default the run's SFT model if it exists, else `models.policy`. Its tokenizer
must be the policy's (PPO scores the policy's tokens). The new head is trained in full; the rest in
full or through LoRA adapters (`pm.lora`, the head kept trainable as a module to save).

A fraction of the prompts (`pm.eval_fraction`, chosen by a hash of prompt_id, so the same ones in
every run) is held out with all their pairs. On them, before and after training, we report:
  accuracy    how often sign(r_c - r_r) agrees with the AI label (p_chosen > 0.5; ties left out)
  ece         expected calibration error: pairs binned by predicted p = sigmoid(r_c - r_r) into
              10 equal-width bins; sum over bins of (share of pairs) * |mean predicted - mean label|
  mean_predicted, mean_label, loss

Checkpoints every `pm.save_steps` steps to `<run_dir>/pm/checkpoints/step-N/`: the trainable
weights (safetensors), the optimizer state (torch.save of tensors only, read back with
weights_only=True) and the step. A rerun resumes from the last one; the batch order is a function
of the seed, so a resumed run trains on the same batches as an uninterrupted one.

Output: `<run_dir>/pm/model/` (safetensors + tokenizer) and `<run_dir>/pm/metrics.json`.
`score(model, tokenizer, conversations)` scores conversations with a loaded PM (PPO, evaluation).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

from cai.config import Config, LocalModel, save_config
from cai.errors import InputError
from cai.losses import soft_preference_loss
from cai.records import Conversation
from cai.stages.common import begin, file_hash, finish, stable_seed
from cai.store import RunStore, atomic_write_text, read_jsonl
from cai.training import apply_lora, cuda_bf16, load_for_training, require_local, save_merged, sft_or_policy, train_device

STAGE = "pm"
MAX_GRAD_NORM = 1.0  # (the Trainer's default, as in the other training stages)
ECE_BINS = 10
EVAL_BATCH = 16  # conversations per forward pass when scoring


def base_spec(config: Config) -> LocalModel:
    """pm.model, else the run's SFT model, else models.policy."""
    if config.pm.model is not None:
        return require_local(config.pm.model, "pm.model")
    return sft_or_policy(config)


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


def load_pairs(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise InputError(f"{path}: no preference labels; run `cai label` first")
    pairs = read_jsonl(path)
    if not pairs:
        raise InputError(f"{path}: the preference set has no pairs; nothing to train a preference model on")
    for n, p in enumerate(pairs, 1):
        missing = {"pair_id", "prompt", "chosen", "rejected", "p_chosen"} - p.keys()
        if missing:
            raise InputError(f"{path}: line {n}: missing field(s) {sorted(missing)}")
    return pairs


def held_out(key: str, fraction: float) -> bool:
    """Deterministic split: the same keys are held out in every run, whatever the seed or order."""
    return stable_seed("pm-eval", key) / 2**63 < fraction


def split(pairs: list[dict], fraction: float) -> tuple[list[dict], list[dict]]:
    """(train, held out). Pairs are held out by prompt, so no held-out prompt was seen in training
    (k responses make k(k-1)/2 pairs per prompt; splitting pairs would leak prompts)."""
    out = [held_out(p.get("prompt_id") or p["pair_id"], fraction) for p in pairs]
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


# ---------------------------------------------------------------- scoring


def encode(tokenizer, conversations: list[Conversation], max_length: int | None, pad_id: int) -> dict[str, torch.Tensor]:
    """Chat-template each conversation, keep its last `max_length` tokens (the score is read at the
    end), right-pad with `pad_id`. -> input_ids, attention_mask, both (N, T)."""
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    if max_length is not None:
        rows = [r[-max_length:] for r in rows]
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def rewards(model, tokenizer, conversations: list[Conversation], max_length: int | None = None) -> torch.Tensor:
    """(N,) scores, with gradients. The model reads the score at the last token that is not its
    pad_token_id, so that is what pads the rows (whichever tokenizer the caller holds)."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in encode(tokenizer, conversations, max_length, model.config.pad_token_id).items()}
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and cuda_bf16()):
        logits = model(**batch).logits  # (N, 1)
    return logits[:, 0].float()


@torch.no_grad()
def score(model, tokenizer, conversations: list[Conversation], batch_size: int = EVAL_BATCH, max_length: int | None = None) -> list[float]:
    """The preference model's score of each full conversation (prompt turns + the response)."""
    was_training = model.training
    model.eval()
    out: list[float] = []
    for start in range(0, len(conversations), batch_size):
        out += rewards(model, tokenizer, conversations[start : start + batch_size], max_length).tolist()
    model.train(was_training)
    return out


def pair_rewards(model, tokenizer, pairs: list[dict], max_length: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen, r_rejected), each (B,), from one forward pass over the 2B conversations."""
    convs = [p["prompt"] + p["chosen"] for p in pairs] + [p["prompt"] + p["rejected"] for p in pairs]
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


def evaluate(model, tokenizer, pairs: list[dict], max_length: int | None) -> dict[str, float] | None:
    if not pairs:
        return None
    convs = [p["prompt"] + p["chosen"] for p in pairs] + [p["prompt"] + p["rejected"] for p in pairs]
    r = torch.tensor(score(model, tokenizer, convs, max_length=max_length))
    r_c, r_r = r.chunk(2)
    return calibration(r_c - r_r, torch.tensor([float(p["p_chosen"]) for p in pairs]))


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(ckpt_dir: Path, step: int, model, optimizer, state: dict[str, Any]) -> None:
    """step-N/: trainable weights (safetensors), optimizer state, state.json; written to a temporary
    directory and renamed, then older checkpoints are removed."""
    from safetensors.torch import save_file

    final, tmp = ckpt_dir / f"step-{step}", ckpt_dir / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trainable = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(trainable, str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state | {"step": step}))
    tmp.rename(final)
    for old in ckpt_dir.glob("step-*"):
        if old != final:
            shutil.rmtree(old)


def last_checkpoint(ckpt_dir: Path) -> Path | None:
    found = sorted(ckpt_dir.glob("step-*"), key=lambda p: int(p.name.split("-")[1])) if ckpt_dir.is_dir() else []
    return found[-1] if found else None


def load_checkpoint(path: Path, model, optimizer) -> dict[str, Any]:
    from safetensors.torch import load_file

    trainable = load_file(str(path / "trainable.safetensors"))
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(trainable) != expected:
        raise InputError(f"{path}: checkpoint does not match the model (was pm.lora changed? use --force to restart)")
    model.load_state_dict(trainable, strict=False)
    # Tensors, numbers and strings only: never unpickle code from a file.
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    return json.loads((path / "state.json").read_text())


# ---------------------------------------------------------------- the stage


def fingerprint(config: Config, spec: LocalModel, prefs: Path) -> dict[str, Any]:
    return {
        "seed": config.seed,
        "preferences": file_hash(prefs),
        "model": spec.model_dump() | ({"sha256": file_hash(spec.path)} if Path(spec.path).exists() else {}),
        "pm": config.pm.model_dump(exclude={"model"}),
    }


def run(config: Config, force: bool = False, on_step: Callable[[int], None] | None = None) -> Path:
    """Train the PM; returns `<run_dir>/pm`. `on_step(step)` is called after every optimizer step."""
    c = config.pm
    spec = base_spec(config)
    run_dir = Path(config.run_dir)
    prefs = run_dir / "label" / "preferences.jsonl"
    pairs = load_pairs(prefs)
    train, test = split(pairs, c.eval_fraction)
    if not train:
        raise InputError(f"{prefs}: all {len(pairs)} pairs were held out (pm.eval_fraction={c.eval_fraction}); lower it")
    check_tokenizer(config, spec)
    out_dir, ckpt_dir = run_dir / STAGE, run_dir / STAGE / "checkpoints"

    with RunStore(run_dir) as store:
        fp = fingerprint(config, spec, prefs)
        if begin(store, STAGE, fp, force):
            print(f"[pm] already complete: {out_dir / 'model'}")
            return out_dir
    if force:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    save_config(config, run_dir / "config.yaml")
    print(f"[pm] {len(train)} training pairs, {len(test)} held out; base {spec.path}")

    torch.manual_seed(stable_seed(config.seed, "pm-init"))  # the new score head (and LoRA) initial weights
    model, tokenizer = load_for_training(spec, head="score", lora=c.lora is not None)
    if c.lora is not None:
        model = apply_lora(model, c.lora, "SEQ_CLS")
    model.to(train_device(spec))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=c.learning_rate, weight_decay=0.0)

    batches = batch_order(len(train), c.batch_size, c.epochs, config.seed)  # micro-batches
    total_steps = math.ceil(len(batches) / c.grad_accum)
    warmup = int(c.warmup_ratio * total_steps)
    state: dict[str, Any] = {"losses": [], "held_out_initial": None}
    resume = last_checkpoint(ckpt_dir)
    if resume is not None:
        state = load_checkpoint(resume, model, optimizer)
        print(f"[pm] resuming from {resume} ({state['step']} of {total_steps} steps done)")
    else:
        state["held_out_initial"] = evaluate(model, tokenizer, test, c.max_length)
    start = state.get("step", 0)

    model.train()
    t0 = time.perf_counter()
    for step in range(start, total_steps):
        for group in optimizer.param_groups:  # linear warmup, then constant
            group["lr"] = c.learning_rate * (min(1.0, step / warmup) if warmup else 1.0)
        micro = batches[step * c.grad_accum : (step + 1) * c.grad_accum]
        n_pairs = sum(len(b) for b in micro)
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for b in micro:
            chunk = [train[i] for i in b]
            r_c, r_r = pair_rewards(model, tokenizer, chunk, c.max_length)  # (B,), (B,)
            p = torch.tensor([float(x["p_chosen"]) for x in chunk], device=r_c.device)
            loss = soft_preference_loss(r_c, r_r, p) * len(b) / n_pairs  # mean over the step's pairs
            loss.backward()
            step_loss += loss.item()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        state["losses"].append(step_loss)
        done = step + 1
        if done % 10 == 0 or done == total_steps:
            print(f"[pm] step {done}/{total_steps} loss {step_loss:.4f} ({time.perf_counter() - t0:.0f}s)")
        if done % c.save_steps == 0 and done < total_steps:
            save_checkpoint(ckpt_dir, done, model, optimizer, state)
        if on_step is not None:
            on_step(done)

    held = evaluate(model, tokenizer, test, c.max_length)
    save_merged(model, tokenizer, out_dir / "model")
    losses = state["losses"]
    k = max(1, len(losses) // 10)
    metrics = {
        "pairs": {"train": len(train), "held_out": len(test)},
        "steps": total_steps,
        "resumed_from_step": start or None,
        "train_loss": sum(losses) / len(losses),
        "train_loss_first_10pct": sum(losses[:k]) / k,
        "train_loss_last_10pct": sum(losses[-k:]) / k,
        "held_out": held,
        "held_out_initial": state["held_out_initial"],
        "model": spec.path,
        "lora": c.lora is not None,
    }
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    with RunStore(run_dir) as store:
        finish(store, STAGE, fp, {"held_out_accuracy": (held or {}).get("accuracy"), "held_out_ece": (held or {}).get("ece"), "train_loss": metrics["train_loss"], "steps": total_steps})
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    if held:
        print(f"[pm] held-out accuracy {held['accuracy']:.3f}, ECE {held['ece']:.3f} -> {out_dir / 'model'}")
    return out_dir


def load(path: str | Path, device: str = "auto"):
    """(model, tokenizer) of a saved preference model, in eval mode, ready for `score`."""
    spec = LocalModel(backend="local", path=str(path), device=device)
    model, tokenizer = load_for_training(spec, head="score")
    return model.to(train_device(spec)).eval(), tokenizer
