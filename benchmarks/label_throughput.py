"""Preference labels per second: option log-probs (cai label) vs a generative judge.

    .venv/bin/python benchmarks/label_throughput.py [--pairs 64] [--judge-tokens 64]

Same model, same pairs, same run, same batch size, both through cai's local backend:

- **logprob**: what `cai label` does. Each pair is asked in both option orders; each question is
  one forward pass that scores " (A)" and " (B)"; the two orders are averaged.
- **generative**: the way NeMo-Aligner's CAI recipe labels. The judge is asked the same question
  (one order) plus "explain briefly, then give your answer", writes up to --judge-tokens tokens
  greedily, and its verdict is parsed from the text ("(A)"/"(B)", the last one wins).

Two models: the shipped toy model (whose judgements mean something, so disagreement is
measured), and a ~20M-parameter random Llama with the toy tokenizer, which never stops early and
so shows the cost of a judge that writes a full reason. Results: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cai.backends.local import LocalBackend  # noqa: E402
from cai.config import LocalModel  # noqa: E402
from cai.records import GenerationParams, user  # noqa: E402
from cai.stages.label import combine, questions_for, score_questions  # noqa: E402
from cai.toyworld import corpus, load_constitution, model_path, world  # noqa: E402

JUDGE_INSTRUCTION = "Explain your choice in a sentence or two, then end with 'The answer is: (A)' or 'The answer is: (B)'."
KINDS = ("harmful_vs_refusal", "harmful_vs_evasive", "refusal_vs_evasive", "helpful_vs_evasive", "helpful_vs_harmful")


def toy_pairs(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """(prompt, response_a, response_b) from the toy world's train tasks, preferred side random."""
    rng = random.Random(seed)
    train = world.tasks("train")
    out = []
    for i in range(n):
        t, good, bad = corpus.choice_pair(rng, KINDS[i % len(KINDS)], train)
        prompt = world.prompt(t, rng.randrange(len(world.PHRASINGS)))
        out.append((prompt, good, bad) if rng.random() < 0.5 else (prompt, bad, good))
    return out


def logprob_labels(backend, constitution, pairs, batch: int) -> list[float]:
    principle = constitution.rl_principles[0]
    p_a = []
    for start in range(0, len(pairs), batch // 2):
        chunk = pairs[start : start + batch // 2]
        qs = [q for prompt, a, b in chunk for q in questions_for(constitution, [principle], [user(prompt)], a, b, swap=True, few_shot=True)]
        res = score_questions(backend, qs, cot=False, cot_tokens=0)
        p_a += [combine(res[2 * i : 2 * i + 2], False, (0.4, 0.6)) for i in range(len(chunk))]
    return p_a


def generative_labels(backend, constitution, pairs, batch: int, max_tokens: int) -> tuple[list[int | None], int]:
    principle = constitution.rl_principles[0]
    convs = []
    for prompt, a, b in pairs:
        ((_, _, conv),) = questions_for(constitution, [principle], [user(prompt)], a, b, swap=False, few_shot=True)
        question = conv[-2]["content"] + "\n\n" + JUDGE_INSTRUCTION
        convs.append(conv[:-2] + [user(question)])  # a fresh assistant turn: the judge writes freely
    verdicts, tokens = [], 0
    for start in range(0, len(convs), batch):
        gens = backend.generate(convs[start : start + batch], GenerationParams(max_new_tokens=max_tokens))
        for g in gens:
            tokens += g.completion_tokens
            found = re.findall(r"\(([AB])\)", g.text)
            verdicts.append(None if not found else 0 if found[-1] == "A" else 1)
    return verdicts, tokens


def random_model(out: Path) -> Path:
    """~20M-parameter Llama with the toy tokenizer and random weights."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(model_path())
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=384,
        intermediate_size=1024,
        num_hidden_layers=10,
        num_attention_heads=6,
        num_key_value_heads=6,
        max_position_embeddings=4096,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def bench(name: str, path: Path, pairs, batch: int, judge_tokens: int) -> dict:
    constitution = load_constitution()
    backend = LocalBackend.from_spec(LocalModel(backend="local", path=str(path), device="cpu", batch_size=batch))
    params = sum(p.numel() for p in backend.model.parameters())
    t0 = time.perf_counter()
    p_a = logprob_labels(backend, constitution, pairs, batch)
    t_lp = time.perf_counter() - t0
    backend.close()
    backend = LocalBackend.from_spec(LocalModel(backend="local", path=str(path), device="cpu", batch_size=batch))
    t0 = time.perf_counter()
    verdicts, tokens = generative_labels(backend, constitution, pairs, batch, judge_tokens)
    t_gen = time.perf_counter() - t0
    parsed = [(p, v) for p, v in zip(p_a, verdicts) if v is not None]
    disagree = sum((p < 0.5) != (v == 1) for p, v in parsed)
    return {
        "model": name,
        "params_m": params / 1e6,
        "pairs": len(pairs),
        "logprob_s": t_lp,
        "generative_s": t_gen,
        "logprob_per_s": len(pairs) / t_lp,
        "generative_per_s": len(pairs) / t_gen,
        "ratio": t_gen / t_lp,
        "judge_tokens_per_pair": tokens / len(pairs),
        "unparsed": len(pairs) - len(parsed),
        "disagree": disagree,
        "parsed": len(parsed),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--judge-tokens", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(2)
    pairs = toy_pairs(args.pairs)
    rows = [bench("toy model (shipped)", model_path(), pairs, args.batch, args.judge_tokens)]
    work = ROOT / "benchmarks" / ".work"
    work.mkdir(parents=True, exist_ok=True)
    rows.append(bench("random Llama", random_model(work / "random-20m"), pairs, args.batch, args.judge_tokens))
    print(
        "| model | params | pairs | logprob, both orders (pairs/s) | generative judge (pairs/s) | speed-up | judge tokens/pair | judge verdicts unparsed | disagreement (parsed) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['params_m']:.1f}M | {r['pairs']} | {r['logprob_per_s']:.1f} | {r['generative_per_s']:.2f} | "
            f"{r['ratio']:.1f}x | {r['judge_tokens_per_pair']:.0f} | {r['unparsed']}/{r['pairs']} | "
            f"{r['disagree']}/{r['parsed']} |"
        )


if __name__ == "__main__":
    main()
