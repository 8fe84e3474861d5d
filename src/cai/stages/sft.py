"""SL-CAI, step 2: fine-tune the model on its own revised answers, mixed with helpful ones.

    cai sft CONFIG [--set sft.lora.r=16] [--set sft.helpful_ratio=0.5]

Reads:  <run_dir>/critique/records.jsonl; helpful data (sft.helpful_dataset, or prompts.helpful).
Model:  sft.model, else models.policy (local weights).
Writes: <run_dir>/sft/model (safetensors + tokenizer, loadable with from_pretrained),
        sft/metrics.json, logs/sft/ (TensorBoard, scalars.jsonl); checkpoints/ while it runs.

Training data, one conversation per example, in TRL's conversational prompt-completion format
`{"prompt": [turns before the last answer], "completion": [last assistant turn]}`, so SFTTrainer's
loss covers the completion only (the prompt's labels are -100), whatever the chat template:

* revisions: the red-team conversation (earlier turns, then the request) -> the final revision;
* helpful: `sft.helpful_ratio` examples per revision example, so the model does not learn that
  refusing is always right (the CAI paper mixes in helpfulness data for the same reason): from
  `sft.helpful_dataset` (JSONL or a saved HF dataset with `messages`) if given, else the starting
  model's own greedy answers to `prompts.helpful` (single- or multi-turn), kept in the run store
  (stage "sft-helpful") so a resumed run does not generate them again. Which helpful examples are
  used is a seeded draw, the same on every run.

Full fine-tuning, or LoRA adapters (`sft.lora`) merged into the weights at the end. Checkpoints
every `sft.save_steps` steps; a rerun resumes from the last one; they are deleted once the model is
saved.

On several processes (`cai launch --nproc N sft CONFIG`, torchrun, accelerate launch): TRL's trainer
(DDP, or DeepSpeed / FSDP through an accelerate config) shards every global batch of
`sft.batch_size x sft.grad_accum` examples over the processes (cai.distributed.batch_split); the
main process alone generates the helpful answers, writes the log, checkpoints and the model.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cai import distributed
from cai.backends import make_backend
from cai.checkpoint import checkpoint_step, latest_checkpoint
from cai.config import Config, LocalModel
from cai.errors import InputError
from cai.lifecycle import StageRun, file_hash, identity, model_identity, source_identity, stable_seed
from cai.prompts import load_prompts
from cai.records import Conversation, CritiqueRecord, GenerationParams, Prompt, assistant, read_records
from cai.rundir import RunDir, starting_model
from cai.store import atomic_write_text, read_jsonl
from cai.training import apply_lora, load_for_training, save_merged, training_args_defaults
from cai.trainlog import TrainLog, quiet, trainer_callback

STAGE = "sft"
HELPFUL_STAGE = "sft-helpful"  # run-store items: the starting model's answers to helpful prompts
HELPFUL_BATCH = 16  # helpful prompts per generate call (each batch is committed to the store)


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


def revision_examples(records: list[CritiqueRecord]) -> list[dict[str, Conversation]]:
    return [{"prompt": r.conversation, "completion": [assistant(r.revision_response)]} for r in records]


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
        rows, unit = read_jsonl(path), "line"
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
    prompts = load_prompts(config.prompts.helpful).prompts
    return [prompts[i] for i in draw(len(prompts), n_wanted, config.seed)], "the starting model's answers to prompts.helpful"


def answer_helpful(run: StageRun, spec: LocalModel, prompts: list[Prompt], max_new_tokens: int) -> list[dict[str, Conversation]]:
    """The starting model's greedy answers to `prompts`, kept in the run store as they are made."""
    done = run.store.items(HELPFUL_STAGE)
    todo = [(i, p) for i, p in enumerate(prompts) if p.id not in done]
    if todo:
        run.say(f"generating {len(todo)} helpful answers with the starting model ({len(prompts) - len(todo)} kept from before)")
        backend = make_backend(spec)
        params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0)
        try:
            for start in range(0, len(todo), HELPFUL_BATCH):
                batch = todo[start : start + HELPFUL_BATCH]
                gens = backend.generate([p.messages for _, p in batch], params)
                run.store.put(HELPFUL_STAGE, [(p.id, i, {"prompt": p.messages, "response": g.text}) for (i, p), g in zip(batch, gens)])
        finally:
            backend.close()
        done = run.store.items(HELPFUL_STAGE)
    answers = [done[p.id] for p in prompts]
    return [
        {"prompt": a["prompt"], "completion": [assistant(a["response"])]}
        for a in answers
        if a["response"].strip()  # an empty answer teaches nothing but to stop
    ]


# ---------------------------------------------------------------- training


def make_trainer(config: Config, spec: LocalModel, examples: list[dict], callbacks: Sequence = ()):
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
        **training_args_defaults(c, RunDir(config.run_dir).checkpoints(STAGE), config.seed, spec.device, config.logging.every_steps)
        | distributed.trainer_args(c, "sft"),
        completion_only_loss=True,  # prompt-completion data: loss on the completion (the last answer) only
        assistant_only_loss=False,
        packing=False,
    )
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tokenizer, callbacks=list(callbacks))


def rebuild(config: Config, spec: LocalModel):
    """A fresh copy of the model being trained (with its LoRA adapters), for the gathered weights of
    a sharded run (cai.distributed.trained_model)."""
    model, _ = load_for_training(spec, lora=config.sft.lora is not None)
    return apply_lora(model, config.sft.lora, "CAUSAL_LM") if config.sft.lora is not None else model


def run(config: Config, force: bool = False, callbacks: Sequence = ()) -> Path:
    """Fine-tune; returns `<run_dir>/sft`. `callbacks`: extra transformers TrainerCallbacks."""
    c = config.sft
    rd = RunDir(config.run_dir)
    spec = starting_model(config, STAGE)
    if not rd.critique_records.is_file():
        raise InputError(f"{rd.critique_records}: no critique records; run `cai critique` first")
    records = read_records(rd.critique_records, CritiqueRecord)
    if not records:
        raise InputError(f"{rd.critique_records}: the critique records are empty; nothing to fine-tune on")
    revisions = revision_examples(records)
    pool, helpful_source = helpful_pool(config, round(c.helpful_ratio * len(revisions)))
    helpful_prompts = config.prompts.helpful if (c.helpful_dataset is None and c.helpful_ratio > 0) else None
    fp = {
        "seed": config.seed,
        "records": file_hash(rd.critique_records),
        "model": model_identity(spec),
        "sft": identity(c) | {"model": None},
        "helpful_dataset": file_hash(c.helpful_dataset) if c.helpful_dataset and Path(c.helpful_dataset).exists() else None,
        "prompts.helpful": source_identity(helpful_prompts),
    }
    with StageRun(config, STAGE, fp, force=force, clear=[HELPFUL_STAGE]) as run:
        if run.complete:
            return rd.stage_dir(STAGE)
        generate = bool(pool) and isinstance(pool[0], Prompt)
        # The main process generates (and stores) the helpful answers; the others wait for them.
        helpful = distributed.main_decides(lambda: answer_helpful(run, spec, pool, c.helpful_max_new_tokens)) if generate else pool
        run.say(f"{len(revisions)} revision examples + {len(helpful)} helpful ({helpful_source}); model {spec.path}")

        resume = distributed.broadcast_object(latest_checkpoint(rd.checkpoints(STAGE)))  # the main process's view
        log = TrainLog.for_stage(config, STAGE, resume_step=checkpoint_step(resume) or 0)
        trainer = quiet(make_trainer(config, spec, revisions + helpful, [trainer_callback(log, STAGE), *callbacks]))
        if resume:
            run.say(f"resuming from {resume}")
        t0 = time.perf_counter()
        try:
            result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        finally:
            log.close()
        model = distributed.trained_model(trainer, lambda: rebuild(config, spec))  # (every process takes part)
        train_loss = distributed.mean_over_processes(result.training_loss)  # (each process's is over its shard)
        if not run.main:
            return rd.stage_dir(STAGE)  # (leaving the `with` waits for the main process's writes)
        save_merged(model, trainer.processing_class, rd.model(STAGE))

        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        metrics = {
            "train_loss": train_loss,  # mean over the steps run in this call
            "last_logged_loss": losses[-1] if losses else None,
            "examples": {"revisions": len(revisions), "helpful": len(helpful)},
            "helpful_source": helpful_source,
            "steps": trainer.state.global_step,
            "resumed_from_step": checkpoint_step(resume),
            "epochs": c.epochs,
            "batch": distributed.batch_layout(trainer.args),
            "lora": c.lora is not None,
            "model": spec.path,
            "train_runtime_s": round(time.perf_counter() - t0, 1),
        }
        atomic_write_text(rd.metrics(STAGE), json.dumps(metrics, indent=2))
        shutil.rmtree(rd.checkpoints(STAGE), ignore_errors=True)
        summary = {"train_loss": metrics["train_loss"], "revisions": len(revisions), "helpful": len(helpful), "steps": metrics["steps"]}
        run.finish(summary, [rd.model(STAGE), rd.metrics(STAGE)], backend=f"local: {spec.path}")
        run.say(f"train loss {train_loss:.4f} over {trainer.state.global_step} steps -> {rd.model(STAGE)}")
    return rd.stage_dir(STAGE)
