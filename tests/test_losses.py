"""Every loss in cai.losses against numbers worked out by hand (the arithmetic is in the comments)."""

import math

import pytest
import torch
import torch.nn.functional as F

from cai.losses import (
    gae,
    kl_penalised_rewards,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    soft_dpo_loss,
    soft_preference_loss,
)

LOGSIG_1 = math.log(1 / (1 + math.exp(-1)))  # log sigma(1) = -0.3132617
LOGSIG_M1 = math.log(1 / (1 + math.exp(1)))  # log sigma(-1) = -1.3132617


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def close(actual: torch.Tensor, expected) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-9)


def test_soft_preference_loss_by_hand():
    # margin 1, p = 0.75: -(0.75 log sigma(1) + 0.25 log sigma(-1)) = 0.2349463 + 0.3283154
    loss = soft_preference_loss(t(1.0), t(0.0), t(0.75))
    assert float(loss) == pytest.approx(0.5632617, abs=1e-6)
    assert float(loss) == pytest.approx(-(0.75 * LOGSIG_1 + 0.25 * LOGSIG_M1), abs=1e-12)
    # p = 1 is TRL's RewardTrainer loss, -log sigma(r_c - r_r); p = 0.5 is symmetric in the two scores
    rc, rr = t(0.3, -1.2, 2.0), t(-0.4, 0.5, 2.5)
    assert torch.allclose(soft_preference_loss(rc, rr, torch.ones(3, dtype=torch.float64)), -F.logsigmoid(rc - rr).mean())
    half = torch.full((3,), 0.5, dtype=torch.float64)
    assert torch.allclose(soft_preference_loss(rc, rr, half), soft_preference_loss(rr, rc, half))


def test_soft_dpo_loss_by_hand():
    # h = 0.5 * ((-1 - -2) - (-3 - -2)) = 0.5 * (1 + 1) = 1
    args = (t(-1.0), t(-3.0), t(-2.0), t(-2.0))
    assert float(soft_dpo_loss(*args, p=t(1.0), beta=0.5)) == pytest.approx(-LOGSIG_1, abs=1e-12)  # 0.3132617
    assert float(soft_dpo_loss(*args, p=t(0.5), beta=0.5)) == pytest.approx(-(LOGSIG_1 + LOGSIG_M1) / 2, abs=1e-12)  # 0.8132617
    # p = 1 equals -log sigma(h) on any batch (DPO's sigmoid loss)
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(5, generator=g, dtype=torch.float64) for _ in range(4))
    h = 0.1 * ((pc - rc) - (pr - rr))
    assert torch.allclose(soft_dpo_loss(pc, pr, rc, rr, torch.ones(5, dtype=torch.float64), beta=0.1), -F.logsigmoid(h).mean())


def test_masked_mean_and_whiten_by_hand():
    x, mask = t([1.0, 2.0, 3.0, 100.0]), t([1.0, 1.0, 1.0, 0.0])
    assert float(masked_mean(x, mask)) == 2.0  # the 100 is masked out
    assert float(masked_mean(x, torch.zeros_like(mask))) == 0.0  # nothing unmasked: 0, not nan
    # mean 2, variance (1 + 0 + 1) / 3 = 2/3, so the unmasked entries become (x - 2) / sqrt(2/3)
    s = math.sqrt(2 / 3)
    w = masked_whiten(x, mask)
    assert w[0, :3].tolist() == pytest.approx([-1 / s, 0.0, 1 / s], abs=1e-6)
    assert masked_whiten(x, mask, shift_mean=False)[0, :3].tolist() == pytest.approx([2 - 1 / s, 2.0, 2 + 1 / s], abs=1e-6)


def test_kl_penalised_rewards_put_the_score_on_the_last_unmasked_token():
    score = t(2.0, 5.0)
    logprobs = t([-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5])
    ref = t([-1.5, -1.0, -9.0], [-1.0, -0.5, -0.0])
    mask = t([1.0, 1.0, 0.0], [1.0, 1.0, 1.0])
    rewards, kl = kl_penalised_rewards(score, logprobs, ref, mask, kl_coef=0.1)
    # kl = (logp - ref) * mask: row 0 [0.5, -1, masked], row 1 [0.5, 0, -0.5]
    close(kl, [[0.5, -1.0, 0.0], [0.5, 0.0, -0.5]])
    # rewards = -0.1 kl, plus the score on the last unmasked token (row 0: token 1; row 1: token 2)
    close(rewards, [[-0.05, 0.1 + 2.0, 0.0], [-0.05, 0.0, 0.05 + 5.0]])


def test_gae_on_a_1x3_example_by_hand():
    rewards, values, mask = t([1.0, 0.0, 2.0]), t([0.5, 1.0, 1.5]), t([1.0, 1.0, 1.0])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # t=2: delta = 2 + 0.9*0 - 1.5 = 0.5;                    A2 = 0.5
    # t=1: delta = 0 + 0.9*1.5 - 1.0 = 0.35;                 A1 = 0.35 + 0.9*0.8*0.5 = 0.71
    # t=0: delta = 1 + 0.9*1.0 - 0.5 = 1.4;                  A0 = 1.4 + 0.72*0.71 = 1.9112
    close(adv, [[1.9112, 0.71, 0.5]])
    close(ret, [[2.4112, 1.71, 2.0]])  # A + V


def test_gae_bootstraps_zero_past_the_end_of_a_response():
    # The response ends at token 1; token 2's value (9.9) must not leak into token 1's advantage.
    rewards, values, mask = t([1.0, 2.0, 0.0]), t([0.5, 1.0, 9.9]), t([1.0, 1.0, 0.0])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # t=1: delta = 2 + 0 - 1 = 1; A1 = 1.   t=0: delta = 1 + 0.9*1 - 0.5 = 1.4; A0 = 1.4 + 0.72*1 = 2.12
    close(adv, [[2.12, 1.0, 0.0]])
    close(ret, [[2.62, 2.0, 0.0]])


def test_ppo_policy_loss_clipping_by_hand():
    # token 0: ratio 1.5, A=+1 -> max(-1.5, -1.2) = -1.2, clipped (no credit beyond 1 + eps)
    # token 1: ratio 0.5, A=+1 -> max(-0.5, -0.8) = -0.5, not clipped (the pessimistic term is the unclipped one)
    # token 2: ratio 1.5, A=-1 -> max( 1.5,  1.2) =  1.5, not clipped
    # token 3: masked out
    old = t([0.0, 0.0, 0.0, 0.0])
    new = old + t([math.log(1.5), math.log(0.5), math.log(1.5), 5.0])
    adv, mask = t([1.0, 1.0, -1.0, 100.0]), t([1.0, 1.0, 1.0, 0.0])
    loss, stats = ppo_policy_loss(new, old, adv, mask, cliprange=0.2)
    assert float(loss) == pytest.approx((-1.2 - 0.5 + 1.5) / 3)
    assert float(stats["clipfrac"]) == pytest.approx(1 / 3)
    assert float(stats["approx_kl"]) == pytest.approx(0.5 * (2 * math.log(1.5) ** 2 + math.log(0.5) ** 2) / 3)


def test_ppo_value_loss_clipping_by_hand():
    # token 0: old 1, new 2, return 3: clipped value 1.2; max((2-3)^2, (1.2-3)^2) = 3.24, clipped
    # token 1: old 1, new 1.1, return 0: inside the clip range; (1.1)^2 = 1.21 either way
    values, old, returns, mask = t([2.0, 1.1]), t([1.0, 1.0]), t([3.0, 0.0]), t([1.0, 1.0])
    loss, stats = ppo_value_loss(values, old, returns, mask, cliprange_value=0.2)
    assert float(loss) == pytest.approx(0.5 * (3.24 + 1.21) / 2)
    assert float(stats["vf_clipfrac"]) == pytest.approx(0.5)
