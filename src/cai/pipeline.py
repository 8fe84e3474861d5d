"""`cai run CONFIG`: every stage in order, each skipped when done and resumed when interrupted.

    cai run configs/toyworld.yaml [--from sample] [--until label] [--set KEY=VALUE ...] [--force]

The order is cai.registry.STAGES: critique -> sft -> sample -> label -> pm -> ppo (and/or dpo) ->
evaluate. Each stage decides for itself whether its output is complete (cai.lifecycle), so running
the same command again after a kill finishes the run and redoes nothing; a stage whose config
changed is reported, not silently reused. After changing a stage's settings,
`cai run CONFIG --from STAGE --force` redoes that stage and every later one (they depend on it).
The run directory is locked for the whole run: a second process on it stops at once.
"""

from __future__ import annotations

import json
import time

from cai import registry
from cai.config import Config
from cai.lifecycle import RunLock, stage_summary
from cai.rundir import RunDir
from cai.scoreboard import table


def headline(config: Config, name: str) -> str:
    """The figures worth printing for a finished stage, from its summary in the run store."""
    s = {k: v for k, v in stage_summary(config.run_dir, name).items() if not k.startswith("_")}
    keys = {
        "critique": ("prompts", "{} prompts critiqued and revised"),
        "sample": ("pairs", "{} response pairs"),
        "label": ("mean_p_chosen", "mean p(chosen) {:.3f}"),
    }
    if name in keys and keys[name][0] in s:
        key, fmt = keys[name]
        return fmt.format(s[key])
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in list(s.items())[:3])


def run(config: Config, start: str | None = None, until: str | None = None, force: bool = False) -> None:
    """Run the selected stages in order; `force` discards their earlier output and redoes them."""
    plan = registry.planned(config, start, until)
    rd = RunDir(config.run_dir)
    t_all = time.perf_counter()
    with RunLock(rd.root):
        for i, stage in enumerate(plan, 1):
            t0 = time.perf_counter()
            stage.run(config, force=force)
            print(f"[{i}/{len(plan)}] {stage.name} done in {time.perf_counter() - t0:.0f}s: {headline(config, stage.name)}", flush=True)
        print(f"[cai run] finished in {time.perf_counter() - t_all:.0f}s; outputs in {rd.root}", flush=True)
        if rd.evaluate_metrics.is_file():
            from cai import report

            print(table(json.loads(rd.evaluate_metrics.read_text())))
            print(f"report: {report.build(rd.root)}")
