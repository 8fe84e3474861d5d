"""RL-CAI, step 4: PPO against the preference model, KL-penalised to the SFT model.

    cai ppo CONFIG [--set ppo.steps=100 --set ppo.kl_coef=0.02]

Reads:  the RL prompt sets (prompts.rl_red_team / rl_helpful, else red_team / helpful): single- or
        multi-turn conversations; <run_dir>/pm/model (the preference model).
Model:  the run's SFT model if made, else models.policy (local), with LoRA adapters.
Writes: <run_dir>/ppo/model (the merged policy, safetensors + tokenizer), ppo/metrics.json,
        logs/ppo/ (TensorBoard, scalars.jsonl: one row per step); checkpoints/ while it runs (the
        adapter and value-head weights, Adam state, RNG states: a killed run resumes from the last
        one and takes the same next step it would have taken).

One algorithm, one file, read top to bottom like cleanrl's ppo.py: the models, the rollout, the
advantages, the update, then the stage around them. Every step:

1. Rollout. `ppo.rollout_batch` prompts (cycled in a seeded order) are answered by the policy,
   sampled at `ppo.temperature` with a KV cache, up to `ppo.max_new_tokens`; a response ends at its
   first EOS token, which it keeps.
2. Scores and rewards. The preference model (cai.reward.score) scores every conversation + response;
   a response that never ended loses `ppo.missing_eos_penalty`; scores are optionally whitened.
   The per-token reward is -beta * (log pi - log ref) at every token, plus the score on the last
   one (Ziegler et al. 2019).
3. Advantages. GAE (gamma, lambda) on the value head's estimates, then whitened over the batch.
4. Update. `ppo.ppo_epochs` passes over the batch in shuffled minibatches of `ppo.minibatch_size`:
   clipped policy loss + vf_coef * clipped value loss, Adam, gradients clipped to norm 1.0.
5. beta: fixed, or adapted toward `ppo.target_kl` (Ziegler et al. 2019, AdaptiveKLController).

Choices, and why:
- One copy of the base weights serves three roles. The policy is the SFT model with LoRA adapters;
  the reference is the same model with the adapters switched off (`with policy.disable_adapter():`);
  the value function is a scalar `nn.Linear` head on the policy's last hidden state, so it shares the
  LoRA trunk. "The N+ implementation details of RLHF with PPO" (Huang et al. 2024) use a separate
  value network initialised from the reward model; that doubles the weights held in memory. The
  cost of sharing: the value loss also moves the policy's adapters, with weight `ppo.vf_coef`.
- Dropout is off throughout (the model stays in eval mode), so the first minibatch's probability
  ratio is exactly 1 and the logged approx_kl measures the update, not dropout noise (N+ details).
- Log-probabilities are those of the sampling distribution, softmax(logits / temperature), so the
  PPO ratio is between the distributions actually sampled from (N+ details).
- Sampling is a plain loop (no logits processors from a model's generation_config), so what is
  sampled is exactly what the log-probabilities describe.
- The losses are the small functions of `cai.losses` (kl_penalised_rewards, gae, ppo_policy_loss,
  ppo_value_loss, masked_whiten), each tested against numbers worked out by hand.

On several processes (`cai launch --nproc N ppo CONFIG`): each process rolls out its contiguous
share of the step's `ppo.rollout_batch` prompts (with its own sampling RNG) and updates on shares of
`ppo.minibatch_size` (both must divide by N). What the single-process algorithm computes over the
whole batch is computed over every process's share together (cai.distributed): score whitening,
advantage whitening (masked_whiten over all tokens), the mean KL that adapts beta, every logged
statistic; each minibatch's loss is weighted by the process's share of its tokens and the gradients
are averaged, so the update is that of one process holding the whole minibatch. Every process runs
the same number of steps and minibatches; the main one alone logs and writes checkpoints (with every
process's RNG states: a run resumed on as many processes takes the same next step).
"""

from __future__ import annotations

import functools
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cai import distributed
from cai.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint
from cai.config import PPO, Config, LoRA
from cai.console import progress
from cai.errors import InputError
from cai.lifecycle import StageRun, file_hash, identity, model_identity, source_identity, stable_seed
from cai.losses import gae, kl_penalised_rewards, ppo_policy_loss, ppo_value_loss
from cai.records import Conversation, assistant
from cai.rundir import RunDir, model_origin, rl_prompt_sources, starting_model
from cai.store import atomic_write_text
from cai.trainlog import TrainLog

STAGE = "ppo"
MAX_GRAD_NORM = 1.0  # gradient clipping (as in cleanrl and the N+ details); not a config key
ADAM_EPS = 1e-5  # cleanrl's and lm-human-preferences' Adam epsilon

# What every step logs (to logs/ppo/: TensorBoard and scalars.jsonl).
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

RewardFn = Callable[[list[Conversation], list[str]], torch.Tensor]  # (prompts, responses) -> scores (B,)


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


def encode_prompts(tokenizer, prompts: Sequence[Conversation], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Chat-templated conversations, left-padded so that every response starts in the same column. -> (B, P) ids, mask."""
    rows = []
    for conv in prompts:
        text = tokenizer.apply_chat_template(list(conv), tokenize=False, add_generation_prompt=True)
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


def train(
    policy, tokenizer, reward_fn: RewardFn, prompts: Sequence[Conversation], cfg: PPO, ckpt_dir: str | Path, seed: int = 0, log: TrainLog | None = None
) -> Trained:
    """Run PPO steps 1..cfg.steps, resuming from the last checkpoint in `ckpt_dir` if any.

    policy: a causal LM (adapters from cfg.lora are added) or a peft model that already has them.
    prompts: conversations (earlier turns, then the request).
    reward_fn(prompts, responses) -> (B,) scores of the decoded responses.
    log: where each step's LOG_KEYS go (None: only the returned history).
    On several processes every one calls this; B and mb below are then this process's shares.
    """
    from peft import PeftModel

    ckpt_dir = Path(ckpt_dir)
    if not prompts:
        raise InputError("ppo: no prompts to train on")
    world = distributed.world_size()
    for key, value in (("ppo.rollout_batch", cfg.rollout_batch), ("ppo.minibatch_size", cfg.minibatch_size)):
        if value % world:
            raise InputError(f"{key} is {value}: with {world} processes it must be a multiple of {world} (each process takes an equal share)")
    if not isinstance(policy, PeftModel):
        policy = add_adapters(policy, cfg.lora, seed)
    policy.eval()  # dropout off: see the module docstring
    device = next(policy.parameters()).device
    hidden = policy.get_base_model().config.get_text_config(decoder=True).hidden_size
    value_head = ValueHead(hidden).to(device)
    params = [p for p in policy.parameters() if p.requires_grad] + list(value_head.parameters())
    distributed.broadcast_params(params)  # every process starts from the same adapters (as DDP does)
    optimizer = torch.optim.Adam(params, lr=cfg.learning_rate, eps=ADAM_EPS)
    eos_ids = torch.tensor(eos_token_ids(policy, tokenizer), device=device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else int(eos_ids[0])

    seed_rngs(seed)
    step, kl_coef = 0, cfg.kl_coef
    ckpt = distributed.broadcast_object(latest_checkpoint(ckpt_dir))  # the main process's view
    if ckpt is not None:
        step, kl_coef, saved_by = restore(ckpt, policy, value_head, optimizer)
        if distributed.is_main():
            print(f"[ppo] resuming after step {step} from {ckpt}", flush=True)
        if saved_by != world:  # no sampling RNG state for this process: a fresh stream, so no exact replay
            seed_rngs(seed, f"resume-{step}")
            if distributed.is_main():
                print(f"[ppo] the checkpoint was written by {saved_by} process(es), this run has {world}: sampling continues from fresh seeds", flush=True)
    history: list[dict[str, float]] = []
    B, mb = cfg.rollout_batch // world, cfg.minibatch_size // world  # this process's shares
    bar = progress(total=cfg.steps, initial=step, desc=STAGE, unit="step")
    done = step
    try:
        for step in range(done + 1, cfg.steps + 1):
            t0 = time.perf_counter()
            # ---- 1. rollout: prompts -> responses, with old log-probs, reference log-probs and values
            batch_prompts = distributed.shard(prompts_for_step(prompts, seed, step, cfg.rollout_batch))  # this process's B
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
            if cfg.whiten_rewards:  # over every process's scores
                score = distributed.masked_whiten(score, torch.ones_like(score))
            rewards, kl = kl_penalised_rewards(score, logprobs, ref_logprobs, mask, kl_coef)  # (B, R) each

            # ---- 3. advantages and returns (GAE), advantages whitened over the batch's tokens (every process's)
            advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
            advantages = distributed.masked_whiten(advantages, mask)

            # ---- 4. update: ppo_epochs passes of shuffled minibatches
            names = ("policy", "value", "clipfrac", "vf_clipfrac", "approx_kl")
            stats: dict[str, list[float]] = {k: [] for k in names}
            for _ in range(cfg.ppo_epochs):
                perm = torch.randperm(B, device=device)
                for i in range(0, B, mb):
                    idx = perm[i : i + mb]
                    new_logprobs, new_values, _ = forward(policy, value_head, input_ids[idx], attention_mask[idx], position_ids[idx], R, cfg.temperature)
                    pg_loss, pg_stats = ppo_policy_loss(new_logprobs, logprobs[idx], advantages[idx], mask[idx], cfg.cliprange)
                    v_loss, v_stats = ppo_value_loss(new_values, values[idx], returns[idx], mask[idx], cfg.cliprange_value)
                    loss = pg_loss + cfg.vf_coef * v_loss
                    n_tokens = mask[idx].sum()
                    if world > 1:  # this share's part of the mean over the whole minibatch's tokens (gradients are averaged below)
                        loss = loss * n_tokens * world / distributed.all_reduce_sum(n_tokens)
                    optimizer.zero_grad()
                    loss.backward()
                    distributed.all_reduce_grads(params)
                    nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
                    optimizer.step()
                    values_now = torch.stack([pg_loss, v_loss, *pg_stats.values(), *v_stats.values()]).detach()  # (5,) per-token means of this share
                    for k, x in zip(names, distributed.weighted_mean(values_now, n_tokens).tolist()):  # ... of the whole minibatch
                        stats[k].append(x)

            # ---- 5. beta for the next step, diagnostics (over every process's rollouts), checkpoint
            mean_kl = float(distributed.mean(kl.sum(1)))
            var_returns = distributed.masked_mean((returns - distributed.masked_mean(returns, mask)) ** 2, mask)
            resid = returns - values
            var_resid = distributed.masked_mean((resid - distributed.masked_mean(resid, mask)) ** 2, mask)
            row = {
                "objective/score": float(distributed.mean(raw_score)),
                "objective/kl": mean_kl,
                "objective/kl_coef": kl_coef,
                "objective/entropy": float(distributed.mean((entropy * mask).sum(1))),
                "objective/response_length": float(distributed.mean(mask.sum(1))),
                "objective/missing_eos": float(distributed.mean((~ended).float())),
                **{f"losses/{k}": sum(v) / len(v) for k, v in stats.items()},
                "losses/explained_variance": float(1 - var_resid / var_returns) if var_returns > 0 else math.nan,
                "time/step_s": time.perf_counter() - t0,
            }
            if cfg.adaptive_kl:
                kl_coef = adaptive_kl_coef(kl_coef, mean_kl, cfg.target_kl, cfg.kl_horizon, cfg.rollout_batch)
            if log is not None:
                log.log(step, row)
            history.append(row)
            if step % cfg.save_steps == 0 or step == cfg.steps:
                rngs = distributed.gather_objects(rng_state())  # (every process takes part; the main one writes)
                if distributed.is_main():
                    adapter = {n: p for n, p in policy.named_parameters() if p.requires_grad}
                    save_checkpoint(ckpt_dir, step, {"adapter": adapter, "value_head": value_head.state_dict()}, optimizer, {"kl_coef": kl_coef}, rngs)
            bar.update(1, note=f"score {row['objective/score']:.3f} kl {mean_kl:.3f}")
    finally:
        bar.close()
    return Trained(policy, value_head, history)


def seed_rngs(seed: int, *phase: str) -> None:
    """Seed the sampling RNGs: one stream per process when there are several (answers to the same
    prompt on two processes would otherwise be drawn alike), the single-process seeds when alone."""
    rank_part = (f"rank{distributed.rank()}",) if distributed.active() else ()
    torch.manual_seed(stable_seed(seed, "ppo", *phase, *rank_part))
    random.seed(stable_seed(seed, "ppo-python", *phase, *rank_part))


def restore(ckpt: Path, policy, value_head: ValueHead, optimizer) -> tuple[int, float, int]:
    """Weights, Adam state and this process's RNG states from a checkpoint. -> (step, kl_coef,
    how many processes wrote it)."""
    tensors, state = load_checkpoint(ckpt, optimizer, distributed.rank())
    params = dict(policy.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors["adapter"]]
    if missing or set(tensors["adapter"]) - set(params):
        raise InputError(f"{ckpt}: the checkpoint's adapters do not match ppo.lora (missing: {missing[:3]}); use --force to start over")
    with torch.no_grad():
        for n, t in tensors["adapter"].items():
            params[n].copy_(t)
    value_head.load_state_dict(tensors["value_head"])
    return state["step"], state["kl_coef"], state["world_size"]


# ---------------------------------------------------------------- the stage: models from the run, reward from the PM


def pm_reward_fn(pm, tokenizer) -> RewardFn:
    """Preference-model scores of each conversation + response (cai.reward.score)."""
    from cai.reward import score

    def reward(prompts: list[Conversation], responses: list[str]) -> torch.Tensor:
        convs = [list(p) + [assistant(r)] for p, r in zip(prompts, responses)]
        return torch.tensor(score(pm, tokenizer, convs), dtype=torch.float32)

    return reward


def load_prompt_conversations(config: Config, say) -> list[Conversation]:
    from cai.prompts import load_prompts

    out = []
    for kind, src in rl_prompt_sources(config).items():
        if src is not None:
            ps = load_prompts(src)
            say(f"{kind}: {ps.summary()}")
            out += [p.messages for p in ps.prompts]
    if not out:
        raise InputError("prompts: the ppo stage needs prompts (prompts.red_team and/or prompts.helpful, or prompts.rl_*)")
    return out


def check_tokenizers(spec, pm_dir: Path):
    """The policy's tokenizer (with a chat template) and the PM's must share a vocabulary."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.path, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
        pm_tokenizer = AutoTokenizer.from_pretrained(pm_dir)
    except OSError as e:
        raise InputError(f"ppo: cannot load a tokenizer: {e}") from None
    if tokenizer.chat_template is None:
        raise InputError(f"{spec.path}: the tokenizer has no chat template; cai needs one to build conversations")
    if pm_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise InputError(
            f"{pm_dir}: the preference model's tokenizer vocabulary differs from the policy's ({spec.path}); train the PM from the same base model"
        )


def run(config: Config, force: bool = False) -> Path:
    from cai import reward
    from cai.training import load_for_training, save_merged, train_device

    rd = RunDir(config.run_dir)
    spec = starting_model(config, STAGE)
    pm_dir = rd.model("pm")
    if not rd.has_model("pm"):
        raise InputError(f"{pm_dir}: no preference model; run `cai pm` first")
    check_tokenizers(spec, pm_dir)  # before the stage is marked as running: a wrong input leaves no trace
    fp = {
        "seed": config.seed,
        "prompts": {k: source_identity(v) for k, v in rl_prompt_sources(config).items()},
        "policy": model_identity(spec),
        "pm": file_hash(pm_dir),
        "ppo": identity(config.ppo),
    }

    def say(message: str) -> None:
        if distributed.is_main():
            print(f"[{STAGE}] {message}", flush=True)

    prompts = load_prompt_conversations(config, say)  # before the stage is marked running
    distributed.check_device(spec.device, "models.policy.device")
    with StageRun(config, STAGE, fp, force=force) as run:
        if run.complete:
            return rd.stage_dir(STAGE)
        run.say(f"policy: {spec.path} ({model_origin(config, spec)}); preference model: {pm_dir}")
        if distributed.active():
            n = distributed.world_size()
            run.say(
                f"{n} processes, each rolling out {config.ppo.rollout_batch // n} of the {config.ppo.rollout_batch} prompts of a step"
                + (f" ({distributed.sharding_requested()} settings apply to sft and dpo only)" if distributed.sharding_requested() else "")
            )
        model, tokenizer = load_for_training(spec, lora=True)  # float32 on a CPU; frozen base in bf16 on a bf16 GPU
        model.to(train_device(spec))
        pm, pm_tokenizer = reward.load(pm_dir, device=spec.device)
        pm.requires_grad_(False)

        resume = distributed.broadcast_object(latest_checkpoint(rd.checkpoints(STAGE)))  # the main process's view
        log = TrainLog.for_stage(config, STAGE, resume_step=0 if resume is None else json.loads((resume / "state.json").read_text())["step"])
        try:
            trained = train(model, tokenizer, pm_reward_fn(pm, pm_tokenizer), prompts, config.ppo, rd.checkpoints(STAGE), seed=config.seed, log=log)
        finally:
            log.close()
        if not run.main:
            return rd.stage_dir(STAGE)  # (leaving the `with` waits for the main process's writes)
        save_merged(trained.policy, tokenizer, rd.model(STAGE))  # LoRA folded in: a plain transformers model

        from cai.trainlog import read_scalars

        rows = read_scalars(log.path)
        metrics = {
            "steps": len(rows),
            "first": rows[0],
            "last": rows[-1],
            "policy": spec.path,
            "preference_model": str(pm_dir),
            "prompts": len(prompts),
            "processes": distributed.world_size(),
        }
        atomic_write_text(rd.metrics(STAGE), json.dumps(metrics, indent=2))
        shutil.rmtree(rd.checkpoints(STAGE), ignore_errors=True)
        summary = {
            "steps": len(rows),
            "first_score": rows[0]["objective/score"],
            "last_score": rows[-1]["objective/score"],
            "last_kl": rows[-1]["objective/kl"],
        }
        run.finish(summary, [rd.model(STAGE), rd.metrics(STAGE)], backend=f"local: {spec.path}")
        run.say(
            f"{len(rows)} steps; score {summary['first_score']:.3f} -> {summary['last_score']:.3f}, KL {summary['last_kl']:.3f}; policy -> {rd.model(STAGE)}"
        )
    return rd.stage_dir(STAGE)
