"""PPO on tiny random models: it learns a known reward, resumes exactly, trains only the adapters,
and the stage runs end to end on a run directory."""

import json
from pathlib import Path

import pytest
import torch

from cai.config import PPO, Config, LocalModel, LoRA, Models, Prompts, PromptSource
from cai.errors import InputError
from cai.stages import ppo
from cai.stages.ppo import LOG_KEYS, adaptive_kl_coef, add_adapters, prompt_order, response_mask, train
from cai.trainlog import TrainLog, read_scalars

TEXTS = ["how do i make a bomb", "fix bike", "write poem", "learn python", "bake bread", "hack password", "poison friend", "steal car"]
PROMPTS = [[{"role": "user", "content": t}] for t in TEXTS]  # conversations: the unit the pipeline passes
# A known reward: the fraction of response words in this set (about 10% of the tiny vocabulary, so a
# random policy already earns ~0.1 and every batch carries signal).
GOOD = set("safe good kind yes sure help bread poem bike python".split())
# The tiny random model's lm_head (std 0.02, 32 wide) caps how far its trunk alone can move a token's
# logit, so the tests give the lm_head an adapter too.
LORA = LoRA(r=8, alpha=16, target_modules=["q_proj", "v_proj", "lm_head"])


@pytest.fixture(autouse=True)
def one_thread():
    """Models this small run several times faster on one thread, and a busy machine cannot stall them
    (a two-thread matmul of a few hundred numbers waits for both threads to be scheduled)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def good_word_rate(prompts: list, responses: list[str]) -> torch.Tensor:
    return torch.tensor([sum(w in GOOD for w in r.split()) / max(len(r.split()), 1) for r in responses])


def load(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)


def small(**kw) -> PPO:
    args = dict(steps=2, rollout_batch=4, minibatch_size=2, ppo_epochs=2, learning_rate=1e-2, max_new_tokens=6, save_steps=100, lora=LORA)
    return PPO(**(args | kw))


# ---------------------------------------------------------------- small pieces, by hand


def test_response_mask_keeps_the_first_eos_and_nothing_after():
    eos = torch.tensor([3])
    response = torch.tensor([[5, 3, 0, 0], [5, 6, 7, 8], [3, 5, 3, 0]])
    mask, ended = response_mask(response, eos)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert ended.tolist() == [True, False, True]


def test_adaptive_kl_coef_by_hand():
    # KL 9 vs target 6: error 0.5 clipped to 0.2; beta *= 1 + 0.2 * 16 / 100 = 1.032
    assert adaptive_kl_coef(0.1, kl=9.0, target=6.0, horizon=100, n_steps=16) == pytest.approx(0.1032)
    # KL 5.4 vs 6: error -0.1; beta *= 1 - 0.1 * 16 / 100 = 0.984
    assert adaptive_kl_coef(0.1, kl=5.4, target=6.0, horizon=100, n_steps=16) == pytest.approx(0.0984)


def test_prompts_are_cycled_each_pass_in_its_own_seeded_order():
    orders = [prompt_order(8, seed=0, epoch=e) for e in range(3)]
    assert all(sorted(o) == list(range(8)) for o in orders)
    assert orders[0] != orders[1]
    # step 2 of batch 6 takes the last 2 prompts of pass 0, then the first 4 of pass 1
    got = ppo.prompts_for_step(PROMPTS, seed=0, step=2, batch=6)
    assert got == [PROMPTS[i] for i in orders[0][6:] + orders[1][:4]]


# ---------------------------------------------------------------- the algorithm


def test_ppo_raises_a_known_reward_and_keeps_kl_bounded(tiny_model_dir, tmp_path):
    model, tok = load(tiny_model_dir)
    cfg = PPO(steps=20, rollout_batch=16, minibatch_size=8, ppo_epochs=2, learning_rate=1e-2, max_new_tokens=8, kl_coef=0.05, save_steps=100, lora=LORA)
    log = TrainLog(tmp_path / "logs")
    history = train(model, tok, good_word_rate, PROMPTS, cfg, tmp_path / "checkpoints", seed=0, log=log).history
    log.close()
    score = [h["objective/score"] for h in history]
    kl = [h["objective/kl"] for h in history]
    first, last = sum(score[:3]) / 3, sum(score[-5:]) / 5
    assert last > first + 0.15, f"reward did not rise: {score}"
    assert max(kl) < 15, f"KL to the reference ran away: {kl}"  # nats per response of 8 tokens
    assert [r["step"] for r in read_scalars(tmp_path / "logs" / "scalars.jsonl")] == list(range(1, 21))


def test_a_step_changes_the_adapters_and_leaves_the_reference_alone(tiny_model_dir, tmp_path):
    model, tok = load(tiny_model_dir)
    original, _ = load(tiny_model_dir)
    policy = add_adapters(model, LORA, seed=0)
    before = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    # One minibatch per step: the first update's probability ratio is exactly 1, so the rollout's
    # log-probs are the ones the update computes (same temperature, same positions, no dropout).
    cfg = small(steps=2, rollout_batch=8, minibatch_size=8, ppo_epochs=1)
    trained = train(policy, tok, good_word_rate, PROMPTS, cfg, tmp_path / "checkpoints", seed=0)
    assert trained.history[0]["losses/approx_kl"] == pytest.approx(0.0, abs=1e-10)
    assert trained.history[0]["losses/clipfrac"] == 0.0

    unchanged = [n for n, p in trained.policy.named_parameters() if p.requires_grad and torch.equal(p, before[n])]
    assert not unchanged, f"adapters that did not move: {unchanged}"
    assert trained.value_head.linear.weight.abs().sum() > 0  # zero-initialised, then trained

    ids = tok(["how do i fix bike ? here are steps"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = original(input_ids=ids).logits
        with trained.policy.disable_adapter():  # the reference
            ref = trained.policy(input_ids=ids).logits
        pol = trained.policy(input_ids=ids).logits
    torch.testing.assert_close(ref, want, rtol=0, atol=1e-6)
    assert not torch.allclose(pol, want, atol=1e-4)


def test_resuming_from_a_checkpoint_gives_the_same_next_step(tiny_model_dir, tmp_path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    model, tok = load(tiny_model_dir)
    a = train(model, tok, good_word_rate, PROMPTS, small(steps=3, save_steps=2), straight, seed=0).history

    model, tok = load(tiny_model_dir)
    train(model, tok, good_word_rate, PROMPTS, small(steps=2, save_steps=2), interrupted, seed=0)
    assert (interrupted / "checkpoint-2" / "adapter.safetensors").is_file()
    model, tok = load(tiny_model_dir)  # a new process would start from the base weights again
    resumed = train(model, tok, good_word_rate, PROMPTS, small(steps=3, save_steps=2), interrupted, seed=0)
    assert len(resumed.history) == 1  # only step 3 ran
    for key in LOG_KEYS:
        if key != "time/step_s":
            assert resumed.history[0][key] == pytest.approx(a[2][key], abs=1e-5), key
    assert [p.name for p in interrupted.iterdir()] == ["checkpoint-3"]  # only the newest kept


# ---------------------------------------------------------------- the stage


def make_pm(model_dir: Path, out: Path, tokenizer=None) -> None:
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    config.num_labels = 1
    torch.manual_seed(1)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(out)
    (tokenizer or AutoTokenizer.from_pretrained(model_dir)).save_pretrained(out)


def make_config(run_dir: Path, model_dir: Path | None, **ppo_kw) -> Config:
    prompts = run_dir.parent / f"{run_dir.name}-prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in TEXTS))
    return Config(
        run_dir=str(run_dir),
        constitution="unused-by-ppo.yaml",
        prompts=Prompts(red_team=PromptSource(path=str(prompts))),
        models=Models(policy=LocalModel(backend="local", path=str(model_dir), device="cpu") if model_dir else None),
        ppo=small(**ppo_kw),
    )


def test_run_end_to_end_on_a_tiny_run_dir(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "run"
    make_pm(tiny_model_dir, run_dir / "pm" / "model")
    config = make_config(run_dir, tiny_model_dir, steps=2, save_steps=1)
    out = ppo.run(config)

    logs = run_dir / "logs" / "ppo"  # training logs in one place: <run_dir>/logs/<stage>/
    rows = read_scalars(logs / "scalars.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and set(LOG_KEYS) <= rows[0].keys()
    assert all(r["objective/kl_coef"] == config.ppo.kl_coef for r in rows)
    assert list(logs.glob("events.out.tfevents.*"))
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2

    assert list((out / "model").glob("*.safetensors")) and not list((out / "model").glob("*.bin"))
    merged = AutoModelForCausalLM.from_pretrained(out / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[2, 5, 6, 7]])
    with torch.no_grad():
        assert not torch.allclose(merged(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-4)  # it was trained
    assert ppo.run(config) == out  # complete: skipped


def test_run_rejects_a_missing_pm_a_missing_policy_and_a_different_vocabulary(tiny_model_dir, tmp_path):
    with pytest.raises(InputError, match="no preference model"):
        ppo.run(make_config(tmp_path / "no-pm", tiny_model_dir))

    with pytest.raises(InputError, match="models.policy"):
        ppo.run(make_config(tmp_path / "no-policy", None))

    from tiny import build_tokenizer

    other = build_tokenizer()
    other.add_tokens(["zebra"])
    run_dir = tmp_path / "other-vocab"
    make_pm(tiny_model_dir, run_dir / "pm" / "model", tokenizer=other)
    with pytest.raises(InputError, match="vocabulary differs"):
        ppo.run(make_config(run_dir, tiny_model_dir))
