"""Small pure loss functions, each with its reference. Shapes in comments: B batch, T tokens.

Every function takes tensors and returns tensors; none touches a model, so each is tested
against numbers computed by hand (tests/test_losses.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_preference_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry cross-entropy against a soft label (CAI, Bai et al. 2022, sec. 4.1; Christiano et al. 2017).

        L = -[ p log sigma(r_c - r_r) + (1 - p) log sigma(r_r - r_c) ]

    r_chosen, r_rejected: (B,) scores; p: (B,) the labeller's probability that `chosen` is better.
    With p = 1 this is TRL's RewardTrainer loss, -log sigma(r_c - r_r).
    """
    margin = r_chosen - r_rejected  # (B,)
    return -(p * F.logsigmoid(margin) + (1 - p) * F.logsigmoid(-margin)).mean()


def soft_dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    p: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, eq. 7) with a soft label: the same cross-entropy as
    `soft_preference_loss`, on DPO's implicit reward margin

        h = beta * [(log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x))]

    All inputs (B,): summed log-probabilities of the response tokens. p = 1 gives DPO's sigmoid
    loss; a constant p = 1 - eps gives its `label_smoothing=eps` (cDPO, Mitchell 2023).
    """
    h = beta * ((policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps))
    return -(p * F.logsigmoid(h) + (1 - p) * F.logsigmoid(-h)).mean()


# ---------------------------------------------------------------- PPO (Schulman et al. 2017; Huang et al. 2024,
# "The N+ implementation details of RLHF with PPO"; Ziegler et al. 2019)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise to unit variance (and zero mean) over the unmasked entries. (B, T) -> (B, T)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return out if shift_mean else out + mean


def kl_penalised_rewards(
    score: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -beta * KL estimate at every token, plus the sequence score on the last one.

    score: (B,); logprobs, ref_logprobs, mask: (B, T) over response tokens.
    The KL estimate is k1 = log pi - log ref (Ziegler et al. 2019). Returns (rewards, kl), both (B, T).
    """
    kl = (logprobs - ref_logprobs) * mask  # (B, T)
    rewards = -kl_coef * kl
    last = mask.sum(1).long().clamp(min=1) - 1  # (B,) index of each response's last token
    rewards[torch.arange(len(score)), last] += score
    return rewards, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016). (B, T) each -> (advantages, returns).

        delta_t = r_t + gamma V_{t+1} - V_t,   A_t = delta_t + gamma lam A_{t+1}
    Tokens past the end of a response (mask 0) contribute nothing and bootstrap from 0.
    """
    values = values * mask
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        adv[:, t] = last
    returns = adv + values
    return adv, returns


def ppo_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate objective (PPO, eq. 7). (B, T) each -> scalar loss, diagnostics."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
    loss = masked_mean(torch.max(pg_loss1, pg_loss2), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((pg_loss2 > pg_loss1).float(), mask),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask),  # (Schulman's k2 estimator)
        }
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (as in OpenAI's baselines and lm-human-preferences). (B, T) -> scalar."""
    v_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    v_loss1 = (values - returns) ** 2
    v_loss2 = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(v_loss1, v_loss2), mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((v_loss2 > v_loss1).float(), mask)}
    return loss, stats
