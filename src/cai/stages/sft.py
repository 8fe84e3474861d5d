"""SL-CAI, step 2: fine-tune the model on its own revised answers, mixed with helpful ones.

    cai sft CONFIG [--set sft.lora.r=16] [--set sft.helpful_ratio=0.5]

Training data, one conversation per example:

* revisions: `[user(red-team prompt), assistant(final revision)]`, the `messages` column of
  `<run_dir>/critique/records.jsonl`;
* helpful: `sft.helpful_ratio` examples per revision example, so the model does not learn that
  refusing is always right (the CAI paper mixes in helpfulness data for the same reason). They
  come from `sft.helpful_dataset` (JSONL or a saved HF dataset with `messages`) if given, else
  from the starting model itself: its greedy answers to `prompts.helpful`. Those answers are kept
  in the run store (stage "sft-helpful"), so a resumed run does not generate them again. Which
  helpful examples are used is a seeded draw, the same on every run.

Every example is put in TRL's prompt-completion conversational format,
`{"prompt": [turns before the last answer], "completion": [last assistant turn]}`: SFTTrainer then
computes the loss on the completion tokens only (the prompt's labels are -100), which works with
any chat template; `assistant_only_loss` would need `{% generation %}` markers in the template.

Full fine-tuning, or LoRA adapters (`sft.lora`) merged into the weights at the end. Checkpoints go
to `<run_dir>/sft/checkpoints` every `sft.save_steps` steps; a rerun resumes from the last one. They
are deleted once the model is saved; the training logs stay there (`runs/`, for tensorboard).

Output: `<run_dir>/sft/model/` (safetensors + tokenizer, loadable with `from_pretrained`) and
`<run_dir>/sft/metrics.json`.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from cai.config import Config, LocalModel, save_config
from cai.errors import InputError
from cai.records import Conversation, GenerationParams, Prompt, assistant, user
from cai.stages.common import begin, file_hash, finish, stable_seed
from cai.store import RunStore, atomic_write_text, read_jsonl
from cai.training import apply_lora, last_checkpoint, load_for_training, remove_checkpoints, require_local, save_merged, training_args_defaults

STAGE = "sft"
HELPFUL_STAGE = "sft-helpful"  # run-store items: the starting model's answers to helpful prompts
HELPFUL_BATCH = 16  # helpful prompts per generate call (each batch is committed to the store)


def training_spec(config: Config) -> LocalModel:
    if config.sft.model is not None:
        return require_local(config.sft.model, "sft.model")
    return require_local(config.models.policy, "models.policy")


# ---------------------------------------------------------------- examples


def to_prompt_completion(messages: Any, where: str) -> dict[str, Conversation]:
    """A conversation ending with an assistant turn -> TRL's prompt-completion format."""
    ok = (
        isinstance(messages, list)
        and len(messages) >= 2
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages)
    )
    if not ok or messages[-1]["role"] != "assistant":
        raise InputError(f"{where}: `messages` must be a list of {{role, content}} turns ending with an assistant turn")
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    return {"prompt": turns[:-1], "completion": turns[-1:]}


def revision_examples(records_path: Path) -> list[dict[str, Conversation]]:
    if not records_path.is_file():
        raise InputError(f"{records_path}: no critique records; run `cai critique` first")
    rows = read_jsonl(records_path)
    if not rows:
        raise InputError(f"{records_path}: the critique records are empty; nothing to fine-tune on")
    return [to_prompt_completion(r.get("messages"), f"{records_path}: line {n}") for n, r in enumerate(rows, 1)]


def load_helpful_dataset(path: str | Path) -> list[dict[str, Conversation]]:
    """Helpful conversations from a JSONL file or a saved HF dataset (split "train" of a DatasetDict)."""
    path = Path(path)
    if path.is_dir():
        import datasets

        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            if "train" not in data:
                raise InputError(f"sft.helpful_dataset: {path} holds splits {', '.join(data)} but no 'train' split")
            data = data["train"]
        if "messages" not in data.column_names:
            raise InputError(f"sft.helpful_dataset: {path} has no `messages` column (columns: {', '.join(data.column_names)})")
        rows, unit = data.select_columns(["messages"]).to_list(), "row"
    elif path.is_file():
        try:
            rows, unit = read_jsonl(path), "line"
        except json.JSONDecodeError as e:
            raise InputError(f"sft.helpful_dataset: {path}: invalid JSON: {e}") from None
    else:
        raise InputError(f"sft.helpful_dataset: not found: {path}")
    if not rows:
        raise InputError(f"sft.helpful_dataset: {path} is empty")
    return [to_prompt_completion(r.get("messages"), f"sft.helpful_dataset: {path}: {unit} {n}") for n, r in enumerate(rows, 1)]


def draw(n_items: int, n_wanted: int, seed: int) -> list[int]:
    """Which of `n_items` to use: a seeded sample (all of them if fewer than wanted), in input order."""
    if n_wanted >= n_items:
        return list(range(n_items))
    return sorted(random.Random(stable_seed(seed, "sft-helpful")).sample(range(n_items), n_wanted))


def helpful_pool(config: Config, n_wanted: int) -> tuple[list, str]:
    """What the helpful examples are drawn from, checked before anything runs: (examples from
    sft.helpful_dataset | helpful prompts for the starting model to answer, description)."""
    from cai.prompts import load_prompts

    if n_wanted == 0:
        return [], "none"
    if config.sft.helpful_dataset is not None:
        pool = load_helpful_dataset(config.sft.helpful_dataset)
        return [pool[i] for i in draw(len(pool), n_wanted, config.seed)], f"sft.helpful_dataset ({config.sft.helpful_dataset})"
    if config.prompts.helpful is None:
        raise InputError(
            f"sft.helpful_ratio is {config.sft.helpful_ratio}, but there is no helpful data: set sft.helpful_dataset "
            "or prompts.helpful, or set sft.helpful_ratio: 0 to train on the revisions alone"
        )
    prompt_set = load_prompts(config.prompts.helpful)
    print(f"[sft] helpful: {prompt_set.summary()}")
    prompts = [prompt_set.prompts[i] for i in draw(len(prompt_set.prompts), n_wanted, config.seed)]
    return prompts, "the starting model's answers to prompts.helpful"


def answer_helpful(spec: LocalModel, prompts: list[Prompt], max_new_tokens: int, store: RunStore) -> list[dict[str, Conversation]]:
    """The starting model's greedy answers to `prompts`, kept in the run store as they are made."""
    from cai.backends import make_backend

    done = store.items(HELPFUL_STAGE)
    todo = [(i, p) for i, p in enumerate(prompts) if p.id not in done]
    if todo:
        print(f"[sft] generating {len(todo)} helpful answers with the starting model ({len(prompts) - len(todo)} kept from before)")
        backend = make_backend(spec)
        params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0)
        try:
            for start in range(0, len(todo), HELPFUL_BATCH):
                batch = todo[start : start + HELPFUL_BATCH]
                gens = backend.generate([[user(p.text)] for _, p in batch], params)
                store.put(HELPFUL_STAGE, [(p.id, i, {"prompt": p.text, "response": g.text}) for (i, p), g in zip(batch, gens)])
        finally:
            backend.close()
        done = store.items(HELPFUL_STAGE)
    answers = [done[p.id] for p in prompts]
    return [
        {"prompt": [user(a["prompt"])], "completion": [assistant(a["response"])]}
        for a in answers
        if a["response"].strip()  # an empty answer teaches nothing but to stop
    ]


# ---------------------------------------------------------------- the stage


def fingerprint(config: Config, spec: LocalModel, records_path: Path) -> dict[str, Any]:
    c = config.sft
    helpful = config.prompts.helpful if (c.helpful_dataset is None and c.helpful_ratio > 0) else None
    return {
        "seed": config.seed,
        "records": file_hash(records_path),
        "model": spec.model_dump() | ({"sha256": file_hash(spec.path)} if Path(spec.path).exists() else {}),
        "sft": c.model_dump(exclude={"model"}),
        "helpful_dataset": file_hash(c.helpful_dataset) if c.helpful_dataset and Path(c.helpful_dataset).exists() else None,
        "prompts.helpful": helpful.model_dump() | {"sha256": file_hash(helpful.path)} if helpful else None,
    }


def make_trainer(config: Config, spec: LocalModel, examples: list[dict], ckpt_dir: Path, callbacks: Sequence = ()):
    """An SFTTrainer on prompt-completion examples; its train_dataset holds the tokenized labels."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    c = config.sft
    set_seed(config.seed)  # LoRA's initial weights
    model, tokenizer = load_for_training(spec, lora=c.lora is not None)
    if c.lora is not None:
        model = apply_lora(model, c.lora, "CAUSAL_LM")
    args = SFTConfig(
        **training_args_defaults(c, ckpt_dir, config.seed, spec.device),
        completion_only_loss=True,  # prompt-completion data: loss on the completion (the last answer) only
        assistant_only_loss=False,
        packing=False,
    )
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tokenizer, callbacks=list(callbacks))


def run(config: Config, force: bool = False, callbacks: Sequence = ()) -> Path:
    """Fine-tune; returns `<run_dir>/sft`. `callbacks`: extra transformers TrainerCallbacks."""
    c = config.sft
    spec = training_spec(config)
    run_dir = Path(config.run_dir)
    records_path = run_dir / "critique" / "records.jsonl"
    revisions = revision_examples(records_path)
    out_dir, ckpt_dir = run_dir / STAGE, run_dir / STAGE / "checkpoints"

    pool, helpful_source = helpful_pool(config, round(c.helpful_ratio * len(revisions)))

    store = RunStore(run_dir)
    fp = fingerprint(config, spec, records_path)
    try:
        if begin(store, STAGE, fp, force):
            print(f"[sft] already complete: {out_dir / 'model'}")
            return out_dir
        if force:
            store.clear(HELPFUL_STAGE)
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        save_config(config, run_dir / "config.yaml")
        generate = bool(pool) and isinstance(pool[0], Prompt)
        helpful = answer_helpful(spec, pool, c.helpful_max_new_tokens, store) if generate else pool
    finally:
        store.close()
    print(f"[sft] {len(revisions)} revision examples + {len(helpful)} helpful ({helpful_source}); model {spec.path}")

    trainer = make_trainer(config, spec, revisions + helpful, ckpt_dir, callbacks)
    tokenizer = trainer.processing_class
    resume = last_checkpoint(ckpt_dir)
    resumed_from = trainer_step(resume)
    if resume:
        print(f"[sft] resuming from {resume}")
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    save_merged(trainer.model, tokenizer, out_dir / "model")

    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    metrics = {
        "train_loss": result.training_loss,  # mean over the steps this process ran
        "last_logged_loss": losses[-1] if losses else None,
        "examples": {"revisions": len(revisions), "helpful": len(helpful)},
        "helpful_source": helpful_source,
        "steps": trainer.state.global_step,
        "resumed_from_step": resumed_from,
        "epochs": c.epochs,
        "lora": c.lora is not None,
        "model": spec.path,
        "train_runtime_s": round(time.perf_counter() - t0, 1),
    }
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    with RunStore(run_dir) as store:
        finish(store, STAGE, fp, {"train_loss": metrics["train_loss"], "revisions": len(revisions), "helpful": len(helpful), "steps": metrics["steps"]})
    remove_checkpoints(ckpt_dir)
    print(f"[sft] train loss {result.training_loss:.4f} over {trainer.state.global_step} steps -> {out_dir / 'model'}")
    return out_dir


def trainer_step(checkpoint: str | None) -> int | None:
    """Global step of a Trainer checkpoint directory (`checkpoint-N`)."""
    return int(Path(checkpoint).name.split("-")[-1]) if checkpoint else None
