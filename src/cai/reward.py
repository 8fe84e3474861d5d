"""A preference (reward) model: score conversations with it, load one the run made.

    model, tokenizer = load(rd.model("pm"))
    scores = score(model, tokenizer, [[user("hi"), assistant("hello")]])   # one float per conversation

The preference model is the base model with a one-logit head (`AutoModelForSequenceClassification`,
num_labels=1): r(conversation) is the logit at the conversation's last token. The PM stage trains it
(`rewards` keeps gradients), PPO scores its rollouts with it, evaluation checks it against the toy
world's oracle.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cai.config import LocalModel
from cai.records import Conversation
from cai.training import cuda_bf16, load_for_training, train_device

EVAL_BATCH = 16  # conversations per forward pass when scoring


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


def load(path: str | Path, device: str = "auto"):
    """(model, tokenizer) of a saved preference model, in eval mode, ready for `score`."""
    spec = LocalModel(backend="local", path=str(path), device=device)
    model, tokenizer = load_for_training(spec, head="score")
    return model.to(train_device(spec)).eval(), tokenizer
