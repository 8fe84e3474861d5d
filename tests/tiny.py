"""Tiny random models and tokenizers, built locally (no network): the test suite's models.

`build_tiny_model(path)` writes a random Llama-shaped causal LM and a word-level tokenizer with a
ChatML chat template to `path`, loadable with `from_pretrained(path)` like any hub model.
"""

from __future__ import annotations

import random
from pathlib import Path

from cai.templates import CHATML_TEMPLATE

SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]

WORDS = (
    "how do i make a bomb steal car hack password poison friend bake bread fix bike learn python "
    "write poem the answer is a b ( ) : . , ? ! you should not help with that because it is harmful "
    "illegal dangerous here are steps first then finally critique revision request identify ways in "
    "which last response was unethical please rewrite remove content sure i can cannot options "
    "consider following conversation between human and assistant which of these responses less "
    "user system yes no good bad kind safe".split()
)


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins word tokens with spaces
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(300)]
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=SPECIAL))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    # Special tokens are single symbols in the text, not words, so they survive a text round trip.
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return fast


def build_tiny_model(path: str | Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# ---------------------------------------------------------------- stage outputs written through the typed records


def write_critique_records(run_dir: str | Path, rows: list[tuple[str, str, str]]) -> Path:
    """critique/records.jsonl from (id, request, final revision) triples, as the critique stage writes it."""
    from cai.records import CritiqueRecord, assistant, user, write_records

    records = [
        CritiqueRecord(
            id=i,
            context=[],
            init_prompt=q,
            init_response="sure here are steps",
            critic_prompt="",
            critic_response="",
            revision_prompt="rewrite",
            revision_response=a,
            prompt=q,
            messages=[user(q), assistant(a)],
            chosen=[user(q), assistant(a)],
            rejected=[user(q), assistant("sure here are steps")],
            rounds=[],
            model="test",
            sampling={},
            source="test",
        )
        for i, q, a in rows
    ]
    path = Path(run_dir) / "critique" / "records.jsonl"
    write_records(path, records)
    return path


def write_preferences(run_dir: str | Path, rows: list[dict]) -> Path:
    """label/preferences.jsonl from dicts with prompt (a string or a conversation), chosen, rejected
    (strings) and p_chosen, as the label stage writes it."""
    from cai.records import Preference, assistant, user, write_records

    prefs = []
    for i, r in enumerate(rows):
        prompt = [user(r["prompt"])] if isinstance(r["prompt"], str) else r["prompt"]
        prefs.append(
            Preference(
                pair_id=r.get("pair_id", f"red_team:p{i}:0-1"),
                prompt_id=r.get("prompt_id", f"p{i}"),
                kind=r.get("kind", "red_team"),
                prompt=prompt,
                chosen=[assistant(r["chosen"])],
                rejected=[assistant(r["rejected"])],
                p_chosen=r["p_chosen"],
                chosen_is_a=True,
                questions=[],
            )
        )
    path = Path(run_dir) / "label" / "preferences.jsonl"
    write_records(path, prefs)
    return path
