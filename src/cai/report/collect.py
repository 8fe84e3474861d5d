"""Reading a run directory for the report: everything the page shows, as plain typed values.

    run = collect(Path("runs/toyworld"))
    run.stages[0].status, run.stages[0].wall_s, run.scalars["sft"][-1]["train/loss"]

Paths come from cai.rundir, the stages and their order from cai.registry, what a finished stage
recorded (summary, wall time, backend) from the run store through cai.lifecycle, and the JSONL
outputs are read as their typed records (cai.records), so a bad line is an InputError naming the
file, the line and the field. A part of the run that is missing is None or empty, never an error:
the report of a partial run shows it as "not run".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai import registry
from cai.lifecycle import stage_status, stage_summary
from cai.records import Answer, Comparison, CritiqueRecord, Preference, Question, read_records
from cai.rundir import RunDir
from cai.trainlog import read_scalars
from cai.yamlio import load_json, load_yaml

MAX_EXAMPLES = 500  # examples per browser tab embedded in the page (keeps the file small on big runs)
# What a stage's items are, from its summary: a training stage counts optimizer steps; a stage that
# generates or labels counts the first of these it recorded (critique, sample: prompts; label: pairs;
# redteam: generation requests).
TRAINING_ITEMS = "steps"
DATA_ITEMS = ("prompts", "pairs", "answers", "requests")


@dataclass(frozen=True)
class StageRow:
    """One row of the stage table: a stage of cai.registry and what the run store says of it."""

    name: str
    help: str
    status: str  # "done" | "running" | "interrupted" | "not run" (cai.lifecycle.stage_status)
    training: bool  # writes logs/<stage>/ (TensorBoard + scalars.jsonl)
    wall_s: float | None  # the finishing process's part (a resumed stage's earlier part is not counted)
    items: int | None
    unit: str | None  # what `items` counts: "steps", "prompts", "pairs", ...
    tokens: int | None  # generated tokens: the summary's "tokens", else its backend's completion_tokens counter
    backend: str | None  # the backend or server that produced the stage's data
    logs: Path | None  # <run_dir>/logs/<stage>/ when it exists

    @property
    def items_per_s(self) -> float | None:
        return self.items / self.wall_s if self.items is not None and self.wall_s else None

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.wall_s if self.tokens is not None and self.wall_s else None


@dataclass(frozen=True)
class RunData:
    root: Path
    config: dict[str, Any] | None  # config.yaml as saved by the last stage that ran
    stages: list[StageRow]  # in registry order
    metrics: dict[str, Any] | None  # evaluate/metrics.json (cai.scoreboard.metrics)
    label_summary: dict[str, Any] | None  # label/summary.json
    train_metrics: dict[str, dict[str, Any]]  # training stage -> its metrics.json
    scalars: dict[str, list[dict[str, Any]]]  # training stage -> the rows of logs/<stage>/scalars.jsonl
    p_chosen: list[float]  # every labelled pair's soft label
    examples: dict[str, list[dict[str, Any]]]  # "critiques", "pairs", "across": plain strings and numbers only
    totals: dict[str, int]  # how many of each example there are (the page embeds MAX_EXAMPLES at most)


def _is_training(stage: registry.Stage) -> bool:
    return f"logs/{stage.name}" in stage.writes


def _items(summary: dict[str, Any], training: bool) -> tuple[int | None, str | None]:
    for key in (TRAINING_ITEMS,) if training else DATA_ITEMS:
        if isinstance(summary.get(key), int) and not isinstance(summary.get(key), bool):
            return summary[key], key
    return None, None


def stage_row(rd: RunDir, stage: registry.Stage) -> StageRow:
    status = stage_status(rd.root, stage.name)
    summary = stage_summary(rd.root, stage.name)  # {} unless done
    training = _is_training(stage)
    items, unit = _items(summary, training)
    wall = summary.get("_wall_s")
    tokens = summary.get("tokens", (summary.get("_backend_stats") or {}).get("completion_tokens"))
    return StageRow(
        name=stage.name,
        help=stage.help,
        status=status,
        training=training,
        wall_s=float(wall) if isinstance(wall, (int, float)) else None,
        items=items,
        unit=unit,
        tokens=tokens if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens > 0 else None,
        backend=summary.get("_backend"),
        logs=rd.logs(stage.name) if training and rd.logs(stage.name).is_dir() else None,
    )


def _json(path: Path) -> Any:
    return load_json(path) if path.is_file() else None


def _records(path: Path, cls):
    return read_records(path, cls) if path.is_file() else []


def _turns(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _text(messages: list[dict[str, str]]) -> str:
    return "\n\n".join(m["content"] for m in messages)


# ---------------------------------------------------------------- the example browsers


def critique_example(r: CritiqueRecord) -> dict[str, Any]:
    """prompt (with its earlier turns) -> initial answer -> every critique and revision round."""
    return {
        "context": _turns(r.context),
        "prompt": r.init_prompt,
        "init": r.init_response,
        "rounds": [
            {
                "principle_id": rd.principle_id,
                "critic_prompt": rd.critic_prompt,
                "critic_response": rd.critic_response,
                "revision_prompt": rd.revision_prompt,
                "revision_response": rd.revision_response,
            }
            for rd in r.rounds
        ],
    }


def question_view(q: Question, chosen_is_a: bool) -> dict[str, Any]:
    """One labelling question as the pairs browser shows it: which response was option (A), p(A),
    and p(chosen) (= p(A) when the chosen response was option (A), else 1 - p(A))."""
    chosen_first = (q.order == "ab") == chosen_is_a
    return {
        "principle_id": q.principle_id,
        "first": "chosen" if chosen_first else "rejected",
        "p_option_a": q.p_option_a,
        "p_chosen": q.p_option_a if chosen_first else 1 - q.p_option_a,
        "reasoning": q.reasoning or "",
    }


def pair_example(p: Preference) -> dict[str, Any]:
    return {
        "context": _turns(p.prompt[:-1]),
        "prompt": p.prompt[-1]["content"] if p.prompt else "",
        "kind": p.kind,
        "chosen": _text(p.chosen),
        "rejected": _text(p.rejected),
        "p_chosen": p.p_chosen,
        "questions": [question_view(q, p.chosen_is_a) for q in p.questions],
    }


def across_examples(answers: list[Answer], comparisons: list[Comparison], order: list[str]) -> list[dict[str, Any]]:
    """The same held-out prompt answered by every model (in stage order), with the judge's pairwise verdicts."""
    by_prompt: dict[tuple[str, str], dict[str, Any]] = {}
    for a in answers:
        entry = by_prompt.setdefault(
            (a.kind, a.prompt_id),
            {
                "context": _turns(a.prompt[:-1]),
                "prompt": a.prompt[-1]["content"] if a.prompt else "",
                "kind": a.kind,
                "form": a.form,
                "answers": [],
                "comparisons": [],
            },
        )
        p = a.p_harmless if a.kind == "red_team" else a.p_helpful
        entry["answers"].append({"model": a.model, "answer": a.answer, "oracle": a.oracle, "p": p})
    for c in comparisons:
        entry = by_prompt.get((c.kind, c.prompt_id))
        if entry is not None:
            entry["comparisons"].append({"label": f"{c.model_b} vs {c.model_a}", "better": c.model_b, "p": 1 - c.p_a})
    rank = {m: i for i, m in enumerate(order)}
    for entry in by_prompt.values():
        entry["answers"].sort(key=lambda x: rank.get(x["model"], len(rank)))
    return list(by_prompt.values())


# ---------------------------------------------------------------- the run


def collect(run_dir: str | Path) -> RunData:
    """Everything the page shows, read from the run directory (absent parts are None or empty)."""
    rd = RunDir(run_dir)
    stages = [stage_row(rd, s) for s in registry.STAGES]
    training = [s.name for s in registry.STAGES if _is_training(s)]
    metrics = _json(rd.evaluate_metrics)

    critiques = _records(rd.critique_records, CritiqueRecord)
    prefs = _records(rd.label_preferences, Preference)
    answers = _records(rd.evaluate_answers, Answer)
    comparisons = _records(rd.evaluate_comparisons, Comparison)
    order = (metrics or {}).get("stages") or sorted({a.model for a in answers})
    across = across_examples(answers, comparisons, order)

    return RunData(
        root=rd.root,
        config=load_yaml(rd.config)[0] if rd.config.is_file() else None,
        stages=stages,
        metrics=metrics,
        label_summary=_json(rd.label_summary),
        train_metrics={name: m for name in training if (m := _json(rd.metrics(name))) is not None},
        scalars={name: rows for name in training if (rows := read_scalars(rd.scalars(name)))},
        p_chosen=[p.p_chosen for p in prefs],
        examples={
            "critiques": [critique_example(r) for r in critiques[:MAX_EXAMPLES]],
            "pairs": [pair_example(p) for p in prefs[:MAX_EXAMPLES]],
            "across": across[:MAX_EXAMPLES],
        },
        totals={"critiques": len(critiques), "pairs": len(prefs), "across": len(across)},
    )


def relative_link(target: Path, page: Path) -> str:
    """`target` as a link from the page at `page` (a relative path with "/" separators; a directory ends in "/")."""
    rel = Path(os.path.relpath(target.resolve(), page.resolve().parent)).as_posix()
    return rel + "/" if target.is_dir() else rel
