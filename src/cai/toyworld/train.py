"""Pre-train the toy model from scratch: tokenizer, tiny Llama, one pass over the generated corpus.

    cai toyworld train [--out DIR] [--seed 0]      # = python -m cai.toyworld.train
    (default DIR: the shipped model, src/cai/toyworld/model)

Deterministic from the seed on a given machine and thread count (1 thread by default; CPU only):
about 21 minutes on one core (the shipped model: 1,486 steps, 1,277 s).

Tokenizer: byte-level BPE trained on the corpus until every corpus word is one token. That is as
compact as a word-level vocabulary (about half the tokens of a small generic BPE), yet lossless:
decode(encode(text)) == text for any text, in the world or not. Chat template: ChatML.

Loss: the model's own assistant turns only (their tokens and the <|im_end|> that closes them;
corpus.Item.trained_from): not user turns, and not the context someone else wrote (the few-shot
prefix, the earlier exchanges of a multi-turn request). The model is a chat model: it is never
asked to write a user turn, and most user-turn tokens are quoted material (the two options of a
choice question) whose loss would drown the one token that answers the question. And the earlier
exchanges hold refusals of harmful requests: trained on, they would teach the helpful-only model
to refuse a harmful first request (a first version did, 25-54% of the time). The whole sequence is
still the context of every predicted token.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from cai.records import Conversation
from cai.templates import CHATML_TEMPLATE
from cai.toyworld import corpus as corpus_mod

PAD, IM_START, IM_END = "<|pad|>", "<|im_start|>", "<|im_end|>"


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int = 192
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 1024


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    shape: ModelShape = ModelShape()
    mix: corpus_mod.Mix = corpus_mod.Mix()
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.05
    batch_tokens: int = 4096  # padded tokens per optimizer step (~1,200 steps: steps, not tokens, limit memorisation)
    threads: int = 1  # the weights depend on it; 1 reproduces the shipped model on any machine
    bf16: bool = True  # bf16 autocast for matmuls (fp32 weights and optimizer): ~1.5x on CPUs with AVX512-BF16
    # Loss weight of a corpus kind's tokens (others: 1). A choice or judge question has one
    # informative token, " (A)" or " (B)", among ~1,300 loss tokens of a batch; at weight 1 the
    # judge's was not learnt even on its own training questions (58%, picking by position).
    kind_weights: tuple[tuple[str, float], ...] = (("choice", 4.0), ("judge", 4.0), ("redteam", 2.0))


# ---------------------------------------------------------------- tokenizer


def build_tokenizer(texts: list[str]):
    """Byte-level BPE whose merges run until every word of `texts` is a single token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=100_000,  # an upper bound never reached: merging stops when every word is whole
        min_frequency=1,
        special_tokens=[PAD, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=IM_END,
        bos_token=None,
        unk_token=None,
        chat_template=CHATML_TEMPLATE,
        model_max_length=ModelShape().max_position_embeddings,
        clean_up_tokenization_spaces=False,
    )


class Encoder:
    """Conversation -> (token ids, loss mask), with the ids `apply_chat_template` would give.

    ChatML puts a special token at every turn boundary and byte-level BPE never merges across one,
    so a conversation's tokens are the concatenation of its turns' tokens. Turns repeat a lot in the
    corpus (principles, few-shot prefixes, canonical replies), so each distinct piece is encoded once.
    """

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.start = tokenizer.convert_tokens_to_ids(IM_START)
        self.end = tokenizer.convert_tokens_to_ids(IM_END)
        self.cache: dict[str, list[int]] = {}

    def _ids(self, text: str) -> list[int]:
        ids = self.cache.get(text)
        if ids is None:
            ids = self.cache[text] = self.tok(text, add_special_tokens=False)["input_ids"]
        return ids

    def __call__(self, conv: Conversation, trained_from: int = 0) -> tuple[list[int], list[bool]]:
        """Token ids and the loss mask: the assistant turns at index `trained_from` or later."""
        ids: list[int] = []
        mask: list[bool] = []
        for i, m in enumerate(conv):
            head = [self.start] + self._ids(m["role"] + "\n")
            body = self._ids(m["content"]) + [self.end]
            train = m["role"] == "assistant" and i >= trained_from
            ids += head + body + self._ids("\n")
            mask += [False] * len(head) + [train] * len(body) + [False]
        return ids, mask


# ---------------------------------------------------------------- model


def build_model(tokenizer, shape: ModelShape):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_attention_heads,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config)


def _batches(encoded: list[tuple[list[int], list[float]]], batch_tokens: int, rng: random.Random):
    """Length-bucketed batches of at most `batch_tokens` padded tokens, in a shuffled order."""
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i][0]), i))
    batches, cur, longest = [], [], 0
    for i in order:
        n = len(encoded[i][0])
        if cur and max(longest, n) * (len(cur) + 1) > batch_tokens:
            batches.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches


def _collate(rows: list[tuple[list[int], list[float]]], pad_id: int):
    T = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)  # (B, T)
    weights = torch.zeros((len(rows), T))  # (B, T), loss weight of each token as a target; 0 = no loss
    attn = torch.zeros((len(rows), T), dtype=torch.long)
    for b, (x, w) in enumerate(rows):
        ids[b, : len(x)] = torch.tensor(x)
        attn[b, : len(x)] = 1
        weights[b, : len(x)] = torch.tensor(w)
    return ids, attn, weights


def weighted_lm_loss(logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, averaged with per-token weights. logits (B, T, V), ids and weights (B, T):
    position t predicts token t+1, whose weight counts."""
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")  # (B*(T-1),)
    w = weights[:, 1:].flatten()
    return (ce * w).sum() / w.sum()


# ---------------------------------------------------------------- train


def train(out_dir: Path, seed: int = 0, config: TrainConfig | None = None, constitution_path: Path | None = None, log_every: int = 50) -> Path:
    """Build the corpus, the tokenizer and the model; pre-train; save to `out_dir`. Returns out_dir."""
    from cai.toyworld import load_constitution

    config = replace(config or TrainConfig(), seed=seed)
    t0 = time.perf_counter()
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)

    constitution = load_constitution(constitution_path)
    items = corpus_mod.build(constitution, config.mix, seed=config.seed)
    convs = [it.conversation for it in items]
    pieces = sorted({m["content"] for c in convs for m in c} | {"user\n", "assistant\n", "system\n", "\n"})
    tokenizer = build_tokenizer(pieces)
    enc = Encoder(tokenizer)
    kind_weight = dict(config.kind_weights)
    encoded = []  # (token ids, loss weight per token)
    for it in items:
        ids, mask = enc(it.conversation, it.trained_from)
        w = kind_weight.get(it.kind, 1.0)
        encoded.append((ids, [w if m else 0.0 for m in mask]))
    n_tokens = sum(len(ids) for ids, _ in encoded)
    n_loss = sum(sum(w > 0 for w in ws) for _, ws in encoded)
    longest = max(len(ids) for ids, _ in encoded)
    if longest > config.shape.max_position_embeddings:
        raise ValueError(f"a corpus conversation has {longest} tokens, over max_position_embeddings")
    print(
        f"[toyworld] corpus: {len(convs):,} conversations, {n_tokens:,} tokens ({n_loss:,} with loss), "
        f"longest {longest}; vocab {len(tokenizer):,}; built in {time.perf_counter() - t0:.0f}s",
        flush=True,
    )

    model = build_model(tokenizer, config.shape)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[toyworld] model: {n_params / 1e6:.2f}M parameters", flush=True)
    batches = _batches(encoded, config.batch_tokens, rng)
    steps = len(batches)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.98),
        eps=1e-8,
    )

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return config.lr * (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, steps - config.warmup_steps)
        return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    t1 = time.perf_counter()
    seen, run_loss = 0, 0.0
    for step, batch in enumerate(batches):
        ids, attn, weights = _collate([encoded[i] for i in batch], tokenizer.pad_token_id)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            logits = model(input_ids=ids, attention_mask=attn).logits  # (B, T, V)
        loss = weighted_lm_loss(logits, ids, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        seen += int(attn.sum())
        run_loss += loss.item()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            dt = time.perf_counter() - t1
            print(f"[toyworld] step {step + 1}/{steps}  loss {run_loss / log_every:.4f}  lr {lr_at(step):.2e}  {seen / dt:,.0f} tok/s  {dt:.0f}s", flush=True)
            run_loss = 0.0

    model.eval()
    save(
        model,
        tokenizer,
        out_dir,
        config,
        stats={
            "conversations": len(convs),
            "tokens": n_tokens,
            "loss_tokens": n_loss,
            "parameters": n_params,
            "steps": steps,
            "train_seconds": round(time.perf_counter() - t1, 1),
            "total_seconds": round(time.perf_counter() - t0, 1),
            "torch": torch.__version__,
            "threads": config.threads,
        },
    )
    print(f"[toyworld] saved to {out_dir} in {time.perf_counter() - t0:.0f}s total", flush=True)
    return out_dir


def save(model, tokenizer, out_dir: Path, config: TrainConfig, stats: dict) -> None:
    from transformers import GenerationConfig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=256)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "toyworld_train.json").write_text(json.dumps({"config": asdict(config), "stats": stats}, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    from cai.toyworld import model_path

    ap = argparse.ArgumentParser(prog="cai toyworld train", description="Pre-train the toy world's helpful-only model from scratch.")
    ap.add_argument("--out", type=Path, default=model_path(), help="output directory (default: the shipped model)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the corpus, the initialisation and the batch order")
    ap.add_argument("--constitution", type=Path, default=None, help="constitution whose principles the corpus uses (default: constitutions/toyworld.yaml)")
    ap.add_argument("--threads", type=int, default=TrainConfig.threads, help="torch threads (the weights depend on it: the shipped model used the default)")
    args = ap.parse_args(argv)
    train(args.out, seed=args.seed, config=TrainConfig(threads=args.threads), constitution_path=args.constitution)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
