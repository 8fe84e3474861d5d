"""`cai seeds CONFIG --seeds 0 1 2`: the whole pipeline for several seeds, and what holds over them.

    cai seeds configs/toyworld.yaml --seeds 0 1 2          # runs <run_dir>/seed-0, seed-1, seed-2
    cai seeds configs/toyworld.yaml --seeds 0 1 2 --set evaluate.red_team.path=...   # any override

One seed is an anecdote. Each seed is a full `cai run` (resumable, each in its own run directory,
`<run_dir>/seed-<S>`); then every model's rates are gathered per prompt form (single-turn, held-out
phrasings, multi-turn, jailbreak wrappers, near misses: the `form` the evaluation prompts carry) and
reported as the mean and the WORST seed, with n (prompts per seed). Written to
`<run_dir>/seeds.json` and `<run_dir>/seeds.md` (the table the README shows), and printed.

Also, pooled over seeds and paired by prompt: for each form, how many prompts RL-CAI (ppo, dpo) got
right where SL-CAI (sft) got them wrong, and the other way round ("right": a good refusal of a
harmful request, a helpful answer to a benign one). Rates need an oracle (the toy world); without
one the AI judge's mean probabilities are reported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cai.config import Config
from cai.errors import InputError
from cai.records import Answer, read_records
from cai.rundir import RunDir
from cai.store import atomic_write_text

# What is reported per kind of prompt, and which direction is bad (for "worst").
MEASURES = {"red_team": (("harmful", "high"), ("evasive", "high"), ("good_refusal", "low")), "helpful": (("helpful", "low"), ("evasive", "high"))}
RIGHT = {"red_team": "good_refusal", "helpful": "helpful"}


def seed_config(config: Config, seed: int) -> Config:
    return config.model_copy(update={"seed": seed, "run_dir": str(Path(config.run_dir) / f"seed-{seed}")})


def run(config: Config, seeds: list[int], start: str | None = None, until: str | None = None) -> dict[str, Any]:
    from cai import pipeline

    if not seeds or len(set(seeds)) != len(seeds):
        raise InputError(f"--seeds {seeds}: give distinct seeds")
    for i, seed in enumerate(seeds, 1):
        print(f"[seeds] seed {seed} ({i}/{len(seeds)}) -> {seed_config(config, seed).run_dir}", flush=True)
        pipeline.run(seed_config(config, seed), start=start, until=until)
    result = aggregate(config, seeds)
    rd = RunDir(config.run_dir)
    atomic_write_text(rd.root / "seeds.json", json.dumps(result, indent=2))
    atomic_write_text(rd.root / "seeds.md", markdown(result))
    print(markdown(result))
    print(f"[seeds] -> {rd.root / 'seeds.json'}, {rd.root / 'seeds.md'}")
    return result


def aggregate(config: Config, seeds: list[int]) -> dict[str, Any]:
    """Mean and worst seed per model, kind, form and measure; paired RL-vs-SL counts per form."""
    per_seed = {}
    answers: dict[int, list[Answer]] = {}
    for seed in seeds:
        rd = RunDir(seed_config(config, seed).run_dir)
        if not rd.evaluate_metrics.is_file():
            raise InputError(f"{rd.evaluate_metrics}: seed {seed} has not been evaluated; run `cai seeds` again to finish it")
        per_seed[seed] = json.loads(rd.evaluate_metrics.read_text())
        answers[seed] = read_records(rd.evaluate_answers, Answer)
    models = per_seed[seeds[0]]["stages"]
    table: dict[str, Any] = {}
    for model in models:
        for kind, measures in MEASURES.items():
            forms: dict[str, dict[str, Any]] = {}
            for seed in seeds:
                entry = per_seed[seed]["models"].get(model, {}).get(kind)
                if not entry:
                    continue
                groups = [("all", entry), *entry.get("by_form", {}).items()]
                groups += [(f"{tag}={value}", r) for tag, by in entry.get("by_tag", {}).items() for value, r in by.items()]
                for form, r in groups:
                    f = forms.setdefault(form, {"n": r["n"], **{m: [] for m, _ in measures}})
                    for m, _ in measures:
                        f[m].append(r[m])
            for form, f in forms.items():
                row = {"n": f["n"]}
                for m, bad in measures:
                    vals = f[m]
                    row[m] = {"mean": sum(vals) / len(vals), "worst": max(vals) if bad == "high" else min(vals), "per_seed": vals}
                table.setdefault(model, {}).setdefault(kind, {})[form] = row
    return {"seeds": seeds, "models": models, "rates": table, "paired": paired(answers, models)}


def paired(answers: dict[int, list[Answer]], models: list[str]) -> dict[str, Any]:
    """For each RL model and form: prompts (pooled over seeds) only it got right vs only SFT got right."""
    if "sft" not in models or answers and next(iter(answers.values()))[0].oracle is None:
        return {}
    out: dict[str, Any] = {}
    for rl in [m for m in ("ppo", "dpo") if m in models]:
        for rows in answers.values():
            by = {(a.model, a.kind, a.prompt_id): a for a in rows}
            for a in rows:
                if a.model != "sft":
                    continue
                other = by.get((rl, a.kind, a.prompt_id))
                if other is None:
                    continue
                sl_ok, rl_ok = a.oracle == RIGHT[a.kind], other.oracle == RIGHT[a.kind]
                c = out.setdefault(f"{rl} vs sft", {}).setdefault(f"{a.kind} / {a.form}", {"only_rl": 0, "only_sl": 0, "both": 0, "neither": 0})
                c["only_rl" if rl_ok and not sl_ok else "only_sl" if sl_ok and not rl_ok else "both" if rl_ok else "neither"] += 1
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def markdown(result: dict[str, Any]) -> str:
    """The seeds report as Markdown tables: one row per model and form, mean (worst seed)."""
    seeds = result["seeds"]
    lines = [f"Seeds {', '.join(map(str, seeds))}; each cell: mean over seeds (worst seed); n = prompts per seed.", ""]
    for kind, measures in MEASURES.items():
        head = ["model", "form", "n"] + [m for m, _ in measures]
        lines += [f"**{'red-team prompts' if kind == 'red_team' else 'benign prompts'}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for model in result["models"]:
            for form, row in result["rates"].get(model, {}).get(kind, {}).items():
                cells = [f"{_pct(row[m]['mean'])} ({_pct(row[m]['worst'])})" for m, _ in measures]
                lines.append("| " + " | ".join([model, form, str(row["n"]), *cells]) + " |")
        lines.append("")
    if result.get("paired"):
        lines += [
            "**Paired by prompt, pooled over seeds: prompts only RL-CAI got right / only SL-CAI got right**",
            "",
            "| comparison | form | only RL | only SL | both | neither |",
            "|---|---|---|---|---|---|",
        ]
        for comp, forms in result["paired"].items():
            for form, c in forms.items():
                lines.append(f"| {comp} | {form} | {c['only_rl']} | {c['only_sl']} | {c['both']} | {c['neither']} |")
        lines.append("")
    return "\n".join(lines)
