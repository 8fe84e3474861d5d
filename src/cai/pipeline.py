"""`cai run CONFIG`: every stage in order, each skipped when done and resumed when interrupted.

    cai run configs/toyworld.yaml [--from sample] [--until label] [--set KEY=VALUE ...] [--force]

The order is the paper's: critique -> sft -> sample -> label -> train-pm -> ppo (or dpo) -> evaluate.
Each stage decides for itself whether its output is complete (the run store records a
fingerprint of the config it ran under), so running the same command again after a kill finishes
the run and redoes nothing; a stage whose config changed is reported, not silently reused.
After changing a stage's settings, `cai run CONFIG --from STAGE --force` redoes that stage and
every later one (the later ones depend on it); once, since a rerun with --force starts over.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

from cai.config import Config
from cai.errors import InputError
from cai.store import RunStore

# (CLI name, module under cai.stages)
STAGES = [
    ("critique", "critique"),
    ("sft", "sft"),
    ("sample", "sample"),
    ("label", "label"),
    ("train-pm", "pm"),
    ("ppo", "ppo"),
    ("dpo", "dpo"),
    ("evaluate", "evaluate"),
]


def selected(config: Config, start: str | None, until: str | None) -> list[tuple[str, str]]:
    names = [n for n, _ in STAGES]
    for flag, value in (("--from", start), ("--until", until)):
        if value is not None and value not in names:
            raise InputError(f"{flag} {value}: not a stage; stages are {', '.join(names)}")
    rl = config.pipeline.rl
    chosen = [(n, m) for n, m in STAGES if not ((n in ("train-pm", "ppo") and rl == "dpo") or (n == "dpo" and rl == "ppo"))]
    lo = names.index(start) if start else 0
    hi = names.index(until) if until else len(names) - 1
    return [(n, m) for n, m in chosen if lo <= names.index(n) <= hi]


def headline(run_dir: Path, stage: str) -> str:
    """The one figure worth printing for a finished stage, from its summary in the run store."""
    with RunStore(run_dir) as store:
        info = store.stage({"train-pm": "pm"}.get(stage, stage))
    s = (info or {}).get("summary", {})
    if not s:
        return ""
    keys = {
        "critique": ("prompts", "{} prompts critiqued and revised"),
        "sample": ("pairs", "{} response pairs"),
        "label": ("mean_p_chosen", "mean p(chosen) {:.3f}"),
    }
    if stage in keys and keys[stage][0] in s:
        key, fmt = keys[stage]
        return fmt.format(s[key])
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in list(s.items())[:3])


def run(config: Config, start: str | None = None, until: str | None = None, force: bool = False) -> None:
    """Run the selected stages in order; `force` discards their earlier output and redoes them."""
    plan = selected(config, start, until)
    t_all = time.perf_counter()
    for i, (name, module) in enumerate(plan, 1):
        stage = importlib.import_module(f"cai.stages.{module}")
        t0 = time.perf_counter()
        stage.run(config, force=force)
        print(f"[{i}/{len(plan)}] {name} done in {time.perf_counter() - t0:.0f}s: {headline(Path(config.run_dir), name)}", flush=True)
    print(f"[cai run] finished in {time.perf_counter() - t_all:.0f}s; outputs in {config.run_dir}")
    metrics = Path(config.run_dir) / "evaluate" / "metrics.json"
    if metrics.is_file():
        from cai import report
        from cai.stages.evaluate import table

        print(table(json.loads(metrics.read_text())))
        print(f"report: {report.build(config.run_dir)}")
