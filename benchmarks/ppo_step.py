"""PPO step time and peak memory: cai's PPO against TRL 1.12's PPOTrainer, same models, batch and lengths.

    .venv/bin/python benchmarks/ppo_step.py [--sizes tiny,100m] [--steps 4] [--no-write]

TRL removed PPOTrainer in 1.13 and cai pins TRL 1.16, so TRL 1.12 runs in its own virtual
environment, `benchmarks/.venv-trl112` (created on first use; never a dependency of cai), with the
same torch, transformers, accelerate, peft and datasets versions as cai: only the PPO code differs.

Per size, the script writes one random-weight Llama policy, a reward model of the same shape
(AutoModelForSequenceClassification, num_labels=1) and a word-level tokenizer with a ChatML template,
then runs each implementation in a fresh process, one after the other:

- cai: `cai.stages.ppo.train` with the preference-model reward (`pm_reward_fn`): LoRA policy,
  reference = adapters off, value = a linear head on the policy's trunk.
- TRL: `trl.experimental.ppo.PPOTrainer` as its docs and example script set it up with peft:
  the same LoRA config on the policy, reference = adapters off (ref_model=None), and a separate value
  model (AutoModelForSequenceClassification initialised from the reward model, fully trained).

Both: rollout batch 8, minibatches of 4, 2 PPO epochs, 32 new tokens at temperature 1 (random
weights rarely say EOS, so both generate the full 32), prompts of 16 words in the chat template,
Adam(W) at 1e-4, kl_coef 0.05, vf_coef 0.1, fp32, the same torch thread count (THREADS). The step time is the
median over steps 2..N (step 1 warms up); the peak RSS is the process's high-water mark
(`ru_maxrss`: weights, activations, optimizer state, and the ~0.3 GiB of torch + transformers itself).

Prints a table and rewrites the `## ppo_step` section of benchmarks/RESULTS.md (other sections stay).
Built models live in benchmarks/.work/ppo_step/ (git-ignored).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import RESULTS, write_section  # benchmarks/_results.py

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / ".work" / "ppo_step"
TRL_VENV = REPO / "benchmarks" / ".venv-trl112"
# The same versions as cai's pyproject, so that the two sides differ only in their PPO code.
TRL_PINS = [
    "trl==1.12.0",
    "torch==2.13.0",
    "transformers==5.24.0",
    "accelerate==1.15.0",
    "datasets==5.2.0",
    "peft==0.21.2",
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
]
SECTION = "## ppo_step"

SIZES = {
    # ~90K parameters: the tiny end, where per-step overhead (Python, generate, trainer machinery) dominates.
    "tiny": dict(vocab=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    # ~106M parameters: a GPT-2-small-sized Llama (untied 32k vocabulary).
    "100m": dict(vocab=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=12, num_key_value_heads=12),
}
# torch threads per size, the same for both sides. The tiny model's matmuls are a few hundred numbers:
# a second thread only adds a barrier wait, which on a shared machine costs a scheduler slice each.
THREADS = {"tiny": 1, "100m": os.cpu_count() or 1}
RUN = dict(
    rollout_batch=8,
    minibatch_size=4,
    ppo_epochs=2,
    max_new_tokens=32,
    prompt_words=16,
    n_prompts=64,
    learning_rate=1e-4,
    kl_coef=0.05,
    vf_coef=0.1,
    lora_r=16,
    lora_alpha=32,
)
SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]


# ---------------------------------------------------------------- shared by both sides (stdlib + torch/transformers only)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def prompts(size_dir: Path) -> list[str]:
    return json.loads((size_dir / "prompts.json").read_text())


def build(size: str, size_dir: Path) -> None:
    """Policy, reward model and tokenizer for one size (random weights, seeded)."""
    import random

    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from cai.templates import CHATML_TEMPLATE

    shape = dict(SIZES[size])
    vocab_size = shape.pop("vocab")
    words = [f"w{i}" for i in range(vocab_size - len(SPECIAL))]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(SPECIAL + words)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<|im_start|>", eos_token="<|im_end|>")
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    config = LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **shape,
    )
    torch.manual_seed(0)
    policy = LlamaForCausalLM(config)
    policy.generation_config.eos_token_id = tokenizer.eos_token_id
    policy.save_pretrained(size_dir / "policy")
    tokenizer.save_pretrained(size_dir / "policy")
    config.num_labels = 1
    AutoModelForSequenceClassification.from_config(config).save_pretrained(size_dir / "reward")
    tokenizer.save_pretrained(size_dir / "reward")
    rng = random.Random(0)
    texts = [" ".join(rng.choice(words) for _ in range(RUN["prompt_words"])) for _ in range(RUN["n_prompts"])]
    (size_dir / "prompts.json").write_text(json.dumps(texts))
    (size_dir / "params.json").write_text(json.dumps({"params": sum(p.numel() for p in policy.parameters())}))


def worker_cai(size_dir: Path, steps: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from cai.config import PPO, LoRA
    from cai.stages.ppo import pm_reward_fn, train

    tokenizer = AutoTokenizer.from_pretrained(size_dir / "policy")
    policy = AutoModelForCausalLM.from_pretrained(size_dir / "policy", dtype=torch.float32)
    pm = AutoModelForSequenceClassification.from_pretrained(size_dir / "reward", dtype=torch.float32).eval().requires_grad_(False)
    cfg = PPO(
        steps=steps,
        rollout_batch=RUN["rollout_batch"],
        minibatch_size=RUN["minibatch_size"],
        ppo_epochs=RUN["ppo_epochs"],
        learning_rate=RUN["learning_rate"],
        max_new_tokens=RUN["max_new_tokens"],
        temperature=1.0,
        kl_coef=RUN["kl_coef"],
        vf_coef=RUN["vf_coef"],
        save_steps=10_000,
        lora=LoRA(r=RUN["lora_r"], alpha=RUN["lora_alpha"]),
    )
    with tempfile.TemporaryDirectory() as out:
        history = train(policy, tokenizer, pm_reward_fn(pm, tokenizer), prompts(size_dir), cfg, out, seed=0).history
    return {
        "step_s": [h["time/step_s"] for h in history],
        "response_tokens": [h["objective/response_length"] for h in history],
        "peak_rss_mib": peak_rss_mib(),
    }


def worker_trl(size_dir: Path, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(size_dir / "policy", padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(size_dir / "policy", dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(size_dir / "reward", dtype=torch.float32, num_labels=1)
    reward = AutoModelForSequenceClassification.from_pretrained(size_dir / "reward", dtype=torch.float32, num_labels=1)
    texts = prompts(size_dir)
    ids = [
        tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"] for t in texts
    ]
    data = Dataset.from_dict({"input_ids": ids})

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            times.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter())

    B, mb = RUN["rollout_batch"], RUN["minibatch_size"]
    with tempfile.TemporaryDirectory() as out:
        args = PPOConfig(
            output_dir=out,
            report_to="none",
            save_strategy="no",
            bf16=False,
            fp16=False,
            gradient_checkpointing=False,
            per_device_train_batch_size=B,
            gradient_accumulation_steps=1,
            num_mini_batches=B // mb,
            num_ppo_epochs=RUN["ppo_epochs"],
            local_rollout_forward_batch_size=B,
            total_episodes=B * steps,
            response_length=RUN["max_new_tokens"],
            temperature=1.0,
            stop_token="eos",
            learning_rate=RUN["learning_rate"],
            kl_coef=RUN["kl_coef"],
            vf_coef=RUN["vf_coef"],
            num_sample_generations=0,
            logging_steps=1,
            disable_tqdm=True,
            seed=0,
        )
        trainer = PPOTrainer(
            args=args,
            processing_class=tokenizer,
            model=policy,
            ref_model=None,
            reward_model=reward,
            train_dataset=data,
            value_model=value,
            eval_dataset=data,
            callbacks=[StepTimer()],
            peft_config=LoraConfig(r=RUN["lora_r"], lora_alpha=RUN["lora_alpha"], lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"),
        )
        trainer.train()
    return {"step_s": [b - a for a, b in zip(times, times[1:])], "peak_rss_mib": peak_rss_mib()}


# ---------------------------------------------------------------- driver


def ensure_trl_venv() -> Path:
    """benchmarks/.venv-trl112 with TRL 1.12 and cai's versions of everything else; created once."""
    python = TRL_VENV / "bin" / "python"
    stamp = TRL_VENV / (".installed-" + "-".join(p.replace("==", "_") for p in TRL_PINS))
    if stamp.is_file():
        return python
    print(f"[setup] creating {TRL_VENV.relative_to(REPO)} ({', '.join(TRL_PINS)}) ...", flush=True)
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
    # torch first, pinned, so that nothing pulls CUDA packages.
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", TRL_PINS[1]], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *TRL_PINS], check=True)
    stamp.touch()
    return python


def run_worker(python: Path, impl: str, size: str, steps: int) -> dict:
    cmd = [str(python), __file__, "--worker", impl, "--size", size, "--steps", str(steps)]
    env = dict(os.environ, PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{impl} worker failed on size {size} (exit {proc.returncode})")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - t0
    return result


def table(results: dict, params: dict, steps: int) -> str:
    lines = [
        "| size | params | threads | implementation | step 1 (s) | median step 2..N (s) | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for (size, impl), r in results.items():
        later = r["step_s"][1:] or r["step_s"]
        lines.append(
            f"| {size} | {params[size] / 1e6:.2f}M | {THREADS[size]} | {impl} | {r['step_s'][0]:.2f} | {statistics.median(later):.2f} | "
            f"{r['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="tiny,100m", help="comma-separated: " + ", ".join(SIZES))
    ap.add_argument("--steps", type=int, default=3, help="PPO steps per run (the first is reported apart, as warm-up)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/RESULTS.md alone")
    ap.add_argument("--worker", choices=["cai", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--size", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:  # inside a fresh process: one implementation, one size; the last stdout line is JSON
        import torch

        torch.set_num_threads(THREADS[args.size])
        size_dir = WORK / args.size
        fn = worker_cai if args.worker == "cai" else worker_trl
        print(json.dumps(fn(size_dir, args.steps)))
        return

    sizes = args.sizes.split(",")
    trl_python = ensure_trl_venv()
    params, results = {}, {}
    for size in sizes:
        size_dir = WORK / size
        if not (size_dir / "params.json").is_file():
            print(f"[setup] building the {size} models in {size_dir.relative_to(REPO)}", flush=True)
            build(size, size_dir)
        params[size] = json.loads((size_dir / "params.json").read_text())["params"]
        for impl, python in (("cai", Path(sys.executable)), ("TRL 1.12 PPOTrainer", trl_python)):
            print(f"[run] {size} / {impl} ...", flush=True)
            r = run_worker(python, "cai" if impl == "cai" else "trl", size, args.steps)
            results[(size, impl)] = r
            print(f"      steps {', '.join(f'{s:.2f}' for s in r['step_s'])} s; peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)

    import torch

    body = table(results, params, args.steps)
    text = "\n".join(
        [
            SECTION,
            "",
            f"`benchmarks/ppo_step.py`, {datetime.date.today().isoformat()}, {platform.machine()} CPU, "
            f"{os.cpu_count()} cores (shared with other jobs, so times are noisy), torch {torch.__version__}, fp32.",
            f"Random-weight Llama policy + same-shape reward model; rollout batch {RUN['rollout_batch']}, minibatches of {RUN['minibatch_size']}, "
            f"{RUN['ppo_epochs']} PPO epochs, {RUN['max_new_tokens']} new tokens, prompts of {RUN['prompt_words']} words + chat template, "
            f"LoRA r={RUN['lora_r']} on all linear layers, {args.steps} steps per run, each run in a fresh process.",
            "cai: LoRA policy, reference = adapters off, value = linear head on the shared trunk. "
            "TRL 1.12 (`trl.experimental.ppo.PPOTrainer`, peft_config): LoRA policy, reference = adapters off, "
            "separate full value model initialised from the reward model (its documented setup).",
            "",
            body,
            "",
        ]
    )
    print("\n" + text)
    if not args.no_write:
        write_section(SECTION, text)
        print(f"wrote the {SECTION} section of {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
