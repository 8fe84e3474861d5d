"""RL-CAI, step 4: PPO against the preference model, KL-penalised to the SFT model.

    cai ppo CONFIG [--set ppo.steps=100 --set ppo.kl_coef=0.02]

One algorithm, one file, read top to bottom like cleanrl's ppo.py: the models, the rollout, the
advantages, the update, then the stage around them. Every step:

1. Rollout. `ppo.rollout_batch` prompts (red-team, plus helpful if given, cycled in a seeded order)
   are answered by the policy, sampled at `ppo.temperature` with a KV cache, up to
   `ppo.max_new_tokens`; a response ends at its first EOS token, which it keeps.
2. Scores and rewards. The preference model (`<run_dir>/pm/model`, scored with `cai.stages.pm.score`)
   scores every [user(prompt), assistant(response)]; a response that never
   ended loses `ppo.missing_eos_penalty`; scores are optionally whitened. The per-token reward is
   -beta * (log pi - log ref) at every token, plus the score on the last one (Ziegler et al. 2019).
3. Advantages. GAE (gamma, lambda) on the value head's estimates, then whitened over the batch.
4. Update. `ppo.ppo_epochs` passes over the batch in shuffled minibatches of `ppo.minibatch_size`:
   clipped policy loss + vf_coef * clipped value loss, Adam, gradients clipped to norm 1.0.
5. beta: fixed, or adapted toward `ppo.target_kl` (Ziegler et al. 2019, AdaptiveKLController).

Choices, and why:
- One copy of the base weights serves three roles. The policy is the SFT model (`<run_dir>/sft/model`,
  else `models.policy`) with LoRA adapters; the reference is the same model with the adapters
  switched off (`with policy.disable_adapter():`); the value function is a scalar `nn.Linear` head on
  the policy's last hidden state, so it shares the LoRA trunk. "The N+ implementation details of RLHF
  with PPO" (Huang et al. 2024) use a separate value network initialised from the reward model; that
  doubles the weights held in memory, and memory is what this implementation is measured on. The cost
  of sharing: the value loss also moves the policy's adapters, with weight `ppo.vf_coef`.
- Dropout is off throughout (the model stays in eval mode), so the first minibatch's probability
  ratio is exactly 1 and the logged approx_kl measures the update, not dropout noise (N+ details).
- Log-probabilities are those of the sampling distribution, softmax(logits / temperature), so the
  PPO ratio is between the distributions actually sampled from (N+ details).
- Sampling is a plain loop (no logits processors from a model's generation_config), so what is
  sampled is exactly what the log-probabilities describe.
- The losses are the small functions of `cai.losses` (kl_penalised_rewards, gae, ppo_policy_loss,
  ppo_value_loss, masked_whiten), each tested against numbers worked out by hand.

Output, in `<run_dir>/ppo/`: `log.csv` and `tb/` (TensorBoard) with one row per step, `checkpoints/`
(the last one: adapter and value-head weights as safetensors, Adam state, RNG states; a killed run
resumes from it and takes the same next step it would have taken), `model/` (the merged policy,
safetensors + tokenizer, loadable with `from_pretrained`) and `metrics.json`.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from tqdm import tqdm

from cai.config import PPO, Config, LocalModel, LoRA, save_config
from cai.errors import InputError
from cai.losses import gae, kl_penalised_rewards, masked_mean, masked_whiten, ppo_policy_loss, ppo_value_loss
from cai.records import assistant, user
from cai.stages.common import begin, file_hash, finish, stable_seed
from cai.store import RunStore, atomic_write_text

STAGE = "ppo"
MAX_GRAD_NORM = 1.0  # gradient clipping (as in cleanrl and the N+ details); not a config key
ADAM_EPS = 1e-5  # cleanrl's and lm-human-preferences' Adam epsilon

# What every step logs: to log.csv (these columns, after `step`) and TensorBoard (these tags).
LOG_KEYS = (
    "objective/score",  # mean preference-model score of the rollout (before penalties and whitening)
    "objective/kl",  # mean over responses of sum_t (log pi - log ref): the KL to the reference, in nats
    "objective/kl_coef",  # beta used in this step's rewards
    "objective/entropy",  # mean over responses of the summed per-token entropy of the sampling distribution
    "objective/response_length",  # mean tokens per response, EOS included
    "objective/missing_eos",  # fraction of responses that hit max_new_tokens without ending
    "losses/policy",  # clipped surrogate loss, mean over minibatches and epochs
    "losses/value",
    "losses/clipfrac",  # fraction of tokens where the policy ratio was clipped
    "losses/vf_clipfrac",
    "losses/approx_kl",  # 0.5 (log ratio)^2 between the policy before and during the update
    "losses/explained_variance",  # of the returns by the rollout's values
    "time/step_s",
)

RewardFn = Callable[[list[str], list[str]], torch.Tensor]  # (prompts, responses) -> scores (B,)


# ---------------------------------------------------------------- the models: policy, reference, value


class ValueHead(nn.Module):
    """V(s_t) from the policy's last hidden state at position t: (B, T, H) -> (B, T).

    Initialised to zero: the first advantages are the rewards-to-go, and no random value signal
    reaches the shared trunk before the head has learnt anything.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.float()).squeeze(-1)


def add_adapters(model, lora: LoRA, seed: int):
    """The policy: `model` with fresh LoRA adapters (peft). The base weights stay frozen, shared with the reference."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)  # LoRA's A matrices are random
    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def forward(policy, value_head: ValueHead | None, input_ids, attention_mask, position_ids, R: int, temperature: float):
    """Log-probabilities of the last R tokens, and values of the states that chose them.

    input_ids: (B, P + R) = left-padded prompt, then the response. Position P - 1 + t predicts
    response token t, so its logits give log pi(y_t | x, y_<t) and its hidden state gives V(s_t).
    Returns logprobs (B, R), values (B, R) or None, logits (B, R, V) at the sampling temperature.
    """
    out = policy(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        output_hidden_states=value_head is not None,
        logits_to_keep=R + 1,  # only the response's logits: a (B, P + R, V) tensor would be mostly waste
        use_cache=False,
    )
    logits = out.logits[:, :-1].float() / temperature  # (B, R, V)
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, -R:, None]).squeeze(-1)  # (B, R)
    values = value_head(out.hidden_states[-1][:, -R - 1 : -1]) if value_head is not None else None  # (B, R)
    return logprobs, values, logits


# ---------------------------------------------------------------- the rollout


def encode_prompts(tokenizer, prompts: Sequence[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Chat-templated prompts, left-padded so that every response starts in the same column. -> (B, P) ids, mask."""
    rows = []
    for p in prompts:
        text = tokenizer.apply_chat_template([user(p)], tokenize=False, add_generation_prompt=True)
        rows.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    P = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(rows), P), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), P, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, P - len(r) :] = torch.tensor(r)
        mask[i, P - len(r) :] = 1
    return ids.to(device), mask.to(device)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only, so left padding does not shift a row. (B, T) -> (B, T)."""
    return (mask.cumsum(1) - 1).clamp(min=0)


@torch.no_grad()
def sample(policy, query: torch.Tensor, query_mask: torch.Tensor, max_new_tokens: int, temperature: float, eos_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Sample responses from softmax(logits / temperature) with a KV cache. (B, P) -> (B, R), pad after EOS.

    Draws from torch's global RNG, whose state the checkpoints keep.
    """
    B = len(query)
    out = policy(input_ids=query, attention_mask=query_mask, position_ids=positions(query_mask), use_cache=True, logits_to_keep=1)
    mask, pos = query_mask, positions(query_mask)[:, -1:] + 1  # (B, P), (B, 1)
    done = torch.zeros(B, dtype=torch.bool, device=query.device)
    tokens = []
    for _ in range(max_new_tokens):
        probs = torch.softmax(out.logits[:, -1].float() / temperature, dim=-1)  # (B, V)
        tok = torch.multinomial(probs, 1).squeeze(1)  # (B,)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        tokens.append(tok)
        done |= torch.isin(tok, eos_ids)
        if done.all():
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = policy(input_ids=tok[:, None], attention_mask=mask, position_ids=pos, cache=out.cache, use_cache=True)
        pos = pos + 1
    return torch.stack(tokens, dim=1)


def response_mask(response: torch.Tensor, eos_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1 for every token up to and including the first EOS. (B, R) -> mask (B, R) float, ended (B,) bool."""
    is_eos = torch.isin(response, eos_ids)
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0  # strictly after the first EOS
    return (~after_eos).float(), is_eos.any(1)


def eos_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS plus any the generation config adds (chat models often end turns with another token)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(extra if isinstance(extra, list) else [extra] if extra is not None else [])
    if not ids:
        raise InputError("ppo: the policy's tokenizer has no EOS token, so a response could never end")
    return sorted(ids)


# ---------------------------------------------------------------- the KL coefficient


def adaptive_kl_coef(kl_coef: float, kl: float, target: float, horizon: int, n_steps: int) -> float:
    """Ziegler et al. 2019 (AdaptiveKLController): move beta proportionally toward the target KL.

        e = clip(KL / KL_target - 1, -0.2, 0.2),   beta <- beta * (1 + e * n_steps / horizon)
    """
    error = min(max(kl / target - 1, -0.2), 0.2)
    return kl_coef * (1 + error * n_steps / horizon)


# ---------------------------------------------------------------- checkpoints (no pickles are ever loaded)


def save_checkpoint(ckpt_dir: Path, step: int, policy, value_head: ValueHead, optimizer, kl_coef: float) -> None:
    """Everything the next step depends on, written to a temporary directory and renamed into place."""
    from safetensors.torch import save_file

    tmp = ckpt_dir.with_name(f".{ckpt_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    adapter = {n: p.detach().contiguous() for n, p in policy.named_parameters() if p.requires_grad}
    save_file(adapter, tmp / "adapter.safetensors")
    save_file({n: p.detach().contiguous() for n, p in value_head.state_dict().items()}, tmp / "value_head.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")  # tensors and numbers only: loads with weights_only=True
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng |= {f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    save_file(rng, tmp / "rng.safetensors")
    version, state, gauss = random.getstate()
    state_json = {"step": step, "kl_coef": kl_coef, "python_rng": [version, list(state), gauss]}
    (tmp / "state.json").write_text(json.dumps(state_json))
    if ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    tmp.rename(ckpt_dir)


def last_checkpoint(out_dir: Path) -> Path | None:
    ckpts = sorted((out_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    return ckpts[-1] if ckpts else None


def load_checkpoint(ckpt_dir: Path, policy, value_head: ValueHead, optimizer) -> tuple[int, float]:
    """Restore weights, Adam state and RNG states. Returns (step, kl_coef)."""
    from safetensors.torch import load_file

    adapter = load_file(ckpt_dir / "adapter.safetensors")
    params = dict(policy.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in adapter]
    if missing or set(adapter) - set(params):
        raise InputError(f"{ckpt_dir}: the checkpoint's adapters do not match ppo.lora (missing: {missing[:3]}); use --force to start over")
    with torch.no_grad():
        for n, t in adapter.items():
            params[n].copy_(t)
    value_head.load_state_dict(load_file(ckpt_dir / "value_head.safetensors"))
    optimizer.load_state_dict(torch.load(ckpt_dir / "optimizer.pt", weights_only=True))
    rng = load_file(ckpt_dir / "rng.safetensors")
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available() and "cuda.0" in rng:
        torch.cuda.set_rng_state_all([rng[f"cuda.{i}"] for i in range(torch.cuda.device_count()) if f"cuda.{i}" in rng])
    state = json.loads((ckpt_dir / "state.json").read_text())
    version, st, gauss = state["python_rng"]
    random.setstate((version, tuple(st), gauss))
    return state["step"], state["kl_coef"]


# ---------------------------------------------------------------- logging


class Logger:
    """One row per step to log.csv and TensorBoard. On resume, rows after the checkpoint are dropped."""

    def __init__(self, out_dir: Path, resume_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.path = out_dir / "log.csv"
        rows = self.read(self.path)
        kept = [r for r in rows if int(r["step"]) <= resume_step]
        if resume_step == 0 or len(kept) != len(rows) or not self.path.exists():
            with open(self.path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["step", *LOG_KEYS])
                w.writerows([[r["step"], *(r[k] for k in LOG_KEYS)] for r in kept])
        self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=resume_step + 1)

    @staticmethod
    def read(path: Path) -> list[dict[str, str]]:
        if not path.is_file():
            return []
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    def log(self, step: int, stats: dict[str, float]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([step, *(repr(float(stats[k])) for k in LOG_KEYS)])
        for k in LOG_KEYS:
            self.tb.add_scalar(k, stats[k], step)
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()


# ---------------------------------------------------------------- the PPO loop


@dataclass
class Trained:
    policy: Any  # peft model: base weights + trained adapters
    value_head: ValueHead
    history: list[dict[str, float]] = field(default_factory=list)  # stats of the steps run in this call


@functools.lru_cache(maxsize=4)
def prompt_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The prompts are cycled; every pass over them has its own seeded order."""
    order = list(range(n))
    random.Random(stable_seed(seed, "ppo-prompts", epoch)).shuffle(order)
    return tuple(order)


def prompts_for_step(prompts: Sequence[str], seed: int, step: int, batch: int) -> list[str]:
    """The prompts of step `step` (1-based): a pure function of the step, so a resumed run needs no cursor."""
    n = len(prompts)
    return [prompts[prompt_order(n, seed, k // n)[k % n]] for k in range((step - 1) * batch, step * batch)]


def train(policy, tokenizer, reward_fn: RewardFn, prompts: Sequence[str], cfg: PPO, out_dir: str | Path, seed: int = 0) -> Trained:
    """Run PPO steps 1..cfg.steps, resuming from the last checkpoint in `out_dir/checkpoints` if any.

    policy: a causal LM (adapters from cfg.lora are added) or a peft model that already has them.
    reward_fn(prompts, responses) -> (B,) scores of the decoded responses.
    """
    from peft import PeftModel

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not prompts:
        raise InputError("ppo: no prompts to train on")
    if not isinstance(policy, PeftModel):
        policy = add_adapters(policy, cfg.lora, seed)
    policy.eval()  # dropout off: see the module docstring
    device = next(policy.parameters()).device
    hidden = policy.get_base_model().config.get_text_config(decoder=True).hidden_size
    value_head = ValueHead(hidden).to(device)
    params = [p for p in policy.parameters() if p.requires_grad] + list(value_head.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.learning_rate, eps=ADAM_EPS)
    eos_ids = torch.tensor(eos_token_ids(policy, tokenizer), device=device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else int(eos_ids[0])

    torch.manual_seed(stable_seed(seed, "ppo"))
    random.seed(stable_seed(seed, "ppo-python"))
    step, kl_coef = 0, cfg.kl_coef
    ckpt = last_checkpoint(out_dir)
    if ckpt is not None:
        step, kl_coef = load_checkpoint(ckpt, policy, value_head, optimizer)
        print(f"[ppo] resuming after step {step} from {ckpt}")
    logger = Logger(out_dir, step)
    history: list[dict[str, float]] = []
    B, mb = cfg.rollout_batch, cfg.minibatch_size
    bar = tqdm(total=cfg.steps, initial=step, unit="step", desc="ppo", dynamic_ncols=True)
    try:
        for step in range(step + 1, cfg.steps + 1):
            t0 = time.perf_counter()
            # ---- 1. rollout: prompts -> responses, with old log-probs, reference log-probs and values
            batch_prompts = prompts_for_step(prompts, seed, step, B)
            query, query_mask = encode_prompts(tokenizer, batch_prompts, device)  # (B, P)
            response = sample(policy, query, query_mask, cfg.max_new_tokens, cfg.temperature, eos_ids, pad_id)  # (B, R)
            mask, ended = response_mask(response, eos_ids)  # (B, R), (B,)
            R = response.shape[1]
            input_ids = torch.cat([query, response], dim=1)  # (B, P + R)
            attention_mask = torch.cat([query_mask, mask.long()], dim=1)
            position_ids = positions(attention_mask)
            logprobs, ref_logprobs, values, entropy = [], [], [], []
            with torch.no_grad():
                for i in range(0, B, mb):
                    sl = slice(i, i + mb)
                    lp, v, logits = forward(policy, value_head, input_ids[sl], attention_mask[sl], position_ids[sl], R, cfg.temperature)
                    ent = torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)  # (mb, R)
                    with policy.disable_adapter():  # the reference: the same weights, adapters off
                        ref_lp, _, _ = forward(policy, None, input_ids[sl], attention_mask[sl], position_ids[sl], R, cfg.temperature)
                    logprobs.append(lp)
                    ref_logprobs.append(ref_lp)
                    values.append(v)
                    entropy.append(ent)
            logprobs, ref_logprobs, values, entropy = (torch.cat(x) for x in (logprobs, ref_logprobs, values, entropy))  # (B, R) each
            responses = [tokenizer.decode(r[m.bool()].tolist(), skip_special_tokens=True) for r, m in zip(response, mask)]

            # ---- 2. scores -> per-token rewards: score on the last token, -beta * KL on every token
            raw_score = torch.as_tensor(reward_fn(batch_prompts, responses), dtype=torch.float32, device=device).reshape(B)
            score = raw_score.clone()
            if cfg.missing_eos_penalty is not None:
                score = score - cfg.missing_eos_penalty * (~ended).float()
            if cfg.whiten_rewards:
                score = masked_whiten(score, torch.ones_like(score))
            rewards, kl = kl_penalised_rewards(score, logprobs, ref_logprobs, mask, kl_coef)  # (B, R) each

            # ---- 3. advantages and returns (GAE), advantages whitened over the batch's tokens
            advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
            advantages = masked_whiten(advantages, mask)

            # ---- 4. update: ppo_epochs passes of shuffled minibatches
            stats: dict[str, list[float]] = {k: [] for k in ("policy", "value", "clipfrac", "vf_clipfrac", "approx_kl")}
            for _ in range(cfg.ppo_epochs):
                perm = torch.randperm(B, device=device)
                for i in range(0, B, mb):
                    idx = perm[i : i + mb]
                    new_logprobs, new_values, _ = forward(policy, value_head, input_ids[idx], attention_mask[idx], position_ids[idx], R, cfg.temperature)
                    pg_loss, pg_stats = ppo_policy_loss(new_logprobs, logprobs[idx], advantages[idx], mask[idx], cfg.cliprange)
                    v_loss, v_stats = ppo_value_loss(new_values, values[idx], returns[idx], mask[idx], cfg.cliprange_value)
                    loss = pg_loss + cfg.vf_coef * v_loss
                    optimizer.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
                    optimizer.step()
                    for k, x in (("policy", pg_loss), ("value", v_loss), *pg_stats.items(), *v_stats.items()):
                        stats[k].append(float(x.detach()))

            # ---- 5. beta for the next step, diagnostics, checkpoint
            mean_kl = float(kl.sum(1).mean())
            var_returns = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
            resid = returns - values
            var_resid = masked_mean((resid - masked_mean(resid, mask)) ** 2, mask)
            row = {
                "objective/score": float(raw_score.mean()),
                "objective/kl": mean_kl,
                "objective/kl_coef": kl_coef,
                "objective/entropy": float((entropy * mask).sum(1).mean()),
                "objective/response_length": float(mask.sum(1).mean()),
                "objective/missing_eos": float((~ended).float().mean()),
                **{f"losses/{k}": sum(v) / len(v) for k, v in stats.items()},
                "losses/explained_variance": float(1 - var_resid / var_returns) if var_returns > 0 else math.nan,
                "time/step_s": time.perf_counter() - t0,
            }
            if cfg.adaptive_kl:
                kl_coef = adaptive_kl_coef(kl_coef, mean_kl, cfg.target_kl, cfg.kl_horizon, B)
            logger.log(step, row)
            history.append(row)
            if step % cfg.save_steps == 0 or step == cfg.steps:
                previous = last_checkpoint(out_dir)
                save_checkpoint(out_dir / "checkpoints" / f"step-{step:06d}", step, policy, value_head, optimizer, kl_coef)
                if previous is not None and previous.name != f"step-{step:06d}":
                    shutil.rmtree(previous)  # only the newest is kept; it is complete before the old one goes
            bar.set_postfix_str(f"score {row['objective/score']:.3f} kl {mean_kl:.3f}")
            bar.update(1)
    finally:
        bar.close()
        logger.close()
    rows = Logger.read(out_dir / "log.csv")
    if rows:
        atomic_write_text(out_dir / "metrics.json", json.dumps({"steps": len(rows), "first": _floats(rows[0]), "last": _floats(rows[-1])}, indent=2))
    return Trained(policy, value_head, history)


def _floats(row: dict[str, str]) -> dict[str, float]:
    return {k: (int(v) if k == "step" else float(v)) for k, v in row.items()}


# ---------------------------------------------------------------- the stage: models from the run, reward from the PM


def load_prompt_texts(config: Config) -> list[str]:
    from cai.prompts import load_prompts

    texts = []
    for kind, src in (("red_team", config.prompts.red_team), ("helpful", config.prompts.helpful)):
        if src is not None:
            ps = load_prompts(src)
            print(f"[ppo] {kind}: {ps.summary()}")
            texts += [p.text for p in ps.prompts]
    if not texts:
        raise InputError("prompts: the ppo stage needs prompts.red_team and/or prompts.helpful")
    return texts


def pm_reward_fn(pm, tokenizer) -> RewardFn:
    """Preference-model scores of [user(prompt), assistant(response)], via the PM stage's own `score`."""
    from cai.stages.pm import score

    def reward(prompts: list[str], responses: list[str]) -> torch.Tensor:
        convs = [[user(p), assistant(r)] for p, r in zip(prompts, responses)]
        return torch.tensor(score(pm, tokenizer, convs), dtype=torch.float32)

    return reward


def fingerprint(config: Config, spec: LocalModel, pm_dir: Path) -> dict[str, Any]:
    srcs = {"red_team": config.prompts.red_team, "helpful": config.prompts.helpful}
    return {
        "seed": config.seed,
        "prompts": {k: (v.model_dump() | {"sha256": file_hash(v.path)}) if v else None for k, v in srcs.items()},
        "policy": spec.model_dump() | ({"sha256": file_hash(spec.path)} if Path(spec.path).exists() else {}),
        "pm": file_hash(pm_dir),
        "ppo": config.ppo.model_dump(exclude={"save_steps"}),  # how often to checkpoint does not change the result
    }


def run(config: Config, force: bool = False) -> Path:
    from transformers import AutoTokenizer

    from cai.stages import pm as pm_stage
    from cai.training import load_for_training, save_merged, sft_or_policy, train_device

    spec = sft_or_policy(config)  # the run's SFT model, else models.policy (local)
    origin = "models.policy" if spec is config.models.policy else "the run's SFT model"
    pm_dir = Path(config.run_dir) / "pm" / "model"
    if not (pm_dir / "config.json").is_file():
        raise InputError(f"{pm_dir}: no preference model; run `cai train-pm` first")
    prompts = load_prompt_texts(config)
    # Checked before the stage is marked as running: a wrong input leaves no trace in the store.
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.path, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
        pm_tokenizer = AutoTokenizer.from_pretrained(pm_dir)
    except OSError as e:
        raise InputError(f"ppo: cannot load a tokenizer: {e}") from None
    if tokenizer.chat_template is None:
        raise InputError(f"{spec.path}: the tokenizer has no chat template; cai needs one to build conversations")
    if pm_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise InputError(f"{pm_dir}: the preference model's tokenizer vocabulary differs from the policy's ({spec.path}); train the PM from the same base model")

    out_dir = Path(config.run_dir) / STAGE
    store = RunStore(config.run_dir)
    fp = fingerprint(config, spec, pm_dir)
    if begin(store, STAGE, fp, force):
        print(f"[ppo] already complete: {out_dir / 'model'}")
        store.close()
        return out_dir
    if force:
        shutil.rmtree(out_dir, ignore_errors=True)
    save_config(config, Path(config.run_dir) / "config.yaml")

    print(f"[ppo] policy: {spec.path} ({origin}); preference model: {pm_dir}")
    model, tokenizer = load_for_training(spec, lora=True)  # float32 on a CPU; frozen base in bf16 on a bf16 GPU
    model.to(train_device(spec))
    pm, pm_tokenizer = pm_stage.load(pm_dir, device=spec.device)
    pm.requires_grad_(False)

    trained = train(model, tokenizer, pm_reward_fn(pm, pm_tokenizer), prompts, config.ppo, out_dir, seed=config.seed)
    save_merged(trained.policy, tokenizer, out_dir / "model")  # LoRA folded in: a plain transformers model

    metrics = json.loads((out_dir / "metrics.json").read_text())
    metrics |= {"policy": spec.path, "preference_model": str(pm_dir), "prompts": len(prompts)}
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    summary = {"steps": metrics["steps"], "first_score": metrics["first"]["objective/score"], "last_score": metrics["last"]["objective/score"], "last_kl": metrics["last"]["objective/kl"]}
    finish(store, STAGE, fp, summary)
    store.close()
    print(f"[ppo] {metrics['steps']} steps; score {summary['first_score']:.3f} -> {summary['last_score']:.3f}, KL {summary['last_kl']:.3f}; policy -> {out_dir / 'model'}")
    return out_dir
