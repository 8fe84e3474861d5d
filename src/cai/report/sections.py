"""The HTML sections of the report, one function each, from the values cai.report.collect read.

    html = section_stages(run, page=Path("runs/toyworld/report.html"))

Every value that reaches the HTML goes through `esc` (html.escape): config values, paths, backend
names, metric names and log tags may all come from users or from a run's files. Model outputs are
not written here at all: the example browser puts them on the page with textContent (report.js).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cai import registry
from cai.report.charts import COLORS, SERIES_COLORS, Series, bar_chart, esc, histogram, line_chart
from cai.report.collect import RunData, StageRow, relative_link
from cai.rundir import RunDir
from cai.scoreboard import MEASURES, headline_rates
from cai.yamlio import dump_yaml

STATUS_CLASS = {"done": "on", "running": "mid", "interrupted": "warn", "not run": "off"}

# The training curves: each chart is a group of logged tags (cai.trainlog) drawn together. A stage
# gets every chart whose tags appear in its logs/<stage>/scalars.jsonl, in this order.
CHARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("train/loss", "eval/loss")),
    ("accuracy", ("train/accuracy", "eval/accuracy")),
    ("token accuracy", ("train/mean_token_accuracy",)),
    ("reward margin (chosen − rejected)", ("train/rewards/margins",)),
    ("implicit rewards", ("train/rewards/chosen", "train/rewards/rejected")),
    ("pairs ranked right", ("train/rewards/accuracies",)),
    ("held-out calibration error (ECE)", ("eval/ece",)),
    ("preference-model score", ("objective/score",)),
    ("KL to the reference (nats)", ("objective/kl",)),
    ("policy loss", ("losses/policy",)),
    ("value loss", ("losses/value",)),
    ("clip fraction", ("losses/clipfrac",)),
)


HELD_OUT = ("held_out", "held_out_initial")  # a metrics.json with these has a held-out evaluation (pm)


def how(stage: str) -> str:
    """The command that runs a stage (its name is checked against the registry)."""
    return f"cai {registry.stage(stage).name} CONFIG"


# ---------------------------------------------------------------- formatting


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def pct(x: Any) -> str:
    return f"{100 * x:.1f}%" if finite(x) else "–"


def num(x: Any, fmt: str = "{:.3f}") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return fmt.format(x) if finite(x) else esc(x)


def duration(s: float | None) -> str:
    if s is None:
        return "–"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def rate(x: float | None, unit: str) -> str:
    if x is None:
        return "–"
    return f"{x:,.0f} {unit}/s" if x >= 100 else f"{x:.3g} {unit}/s"


def chip(status: str) -> str:
    return f'<span class="chip {STATUS_CLASS[status]}">{esc(status)}</span>'


def not_run(what: str, stage: str) -> str:
    return f'<p class="notrun"><span class="chip off">not run</span> {esc(what)} — run <code>{esc(how(stage))}</code>.</p>'


def kv_table(rows: Sequence[tuple[str, str]], cls: str = "kv") -> str:
    """Rows of (label, HTML): labels are escaped here, values must already be."""
    return f'<table class="{cls}">' + "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def scalar_rows(d: dict[str, Any], skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """The numbers and words of a metrics.json, one level of nesting flattened ("held_out.accuracy");
    a nested object of more than six values is left to the "last logged values" table."""
    rows: list[tuple[str, str]] = []
    for k, v in d.items():
        if k in skip:
            continue
        if isinstance(v, dict) and len(v) <= 6:
            rows += [(f"{k}.{kk}", num(vv, "{:.4g}")) for kk, vv in v.items() if not isinstance(vv, (dict, list))]
        elif not isinstance(v, (dict, list)) and v is not None and k != "model":
            rows.append((k, num(v, "{:.4g}") if finite(v) else esc(v)))
    return rows


# ---------------------------------------------------------------- run and stages


def section_overview(run: RunData) -> str:
    cfg = run.config
    if cfg is None:
        return '<section id="overview"><h2>Run</h2><p class="notrun"><span class="chip off">not run</span> No config.yaml in the run directory — run <code>cai run CONFIG</code>.</p></section>'
    models = cfg.get("models") or {}
    pol, fb = models.get("policy") or {}, models.get("feedback") or {}
    rows = [
        ("run_dir", esc(cfg.get("run_dir", run.root))),
        ("seed", esc(cfg.get("seed", ""))),
        ("constitution", esc(cfg.get("constitution", ""))),
        ("policy", esc(pol.get("path") or pol.get("model") or "–")),
        ("feedback model", esc(fb.get("path") or fb.get("model") or "= policy")),
        ("RL method (pipeline.rl)", esc((cfg.get("pipeline") or {}).get("rl", "–"))),
    ]
    full = f"<details><summary>full config.yaml</summary><pre>{esc(dump_yaml(cfg))}</pre></details>"
    return f'<section id="overview"><h2>Run</h2>{kv_table(rows)}{full}</section>'


def _stage_cells(s: StageRow, page: Path) -> str:
    unit = s.unit[:-1] if s.items == 1 and s.unit and s.unit.endswith("s") else s.unit
    items = f"{s.items:,} {esc(unit)}" if s.items is not None else "–"
    per_s = rate(s.items_per_s, esc(s.unit)) if s.unit else "–"
    tok = rate(s.tokens_per_s, "tok")
    logs = f'<a href="{esc(relative_link(s.logs, page))}">logs/{esc(s.name)}/</a>' if s.logs is not None else ("–" if s.training else "")
    return (
        f'<tr class="stage-{esc(s.name)}"><th title="{esc(s.help)}">{esc(s.name)}</th><td class="left">{chip(s.status)}</td>'
        f"<td>{duration(s.wall_s)}</td><td>{items}</td><td>{per_s}</td><td>{tok}</td>"
        f'<td class="small">{esc(s.backend) if s.backend else "–"}</td><td class="left">{logs}</td></tr>'
    )


def section_stages(run: RunData, page: Path) -> str:
    """Every stage of the registry in order: status, wall time, items and throughput, backend, logs."""
    rows = "".join(_stage_cells(s, page) for s in run.stages)
    todo = [s for s in run.stages if s.status in ("not run", "interrupted")]
    hint = ""
    if todo:
        hint = (
            '<p class="note">'
            + "; ".join(f"{esc(s.name)}: <code>{esc(how(s.name))}</code>" for s in todo)
            + " (or <code>cai run CONFIG</code>: it skips what is done and resumes what was interrupted).</p>"
        )
    logs_root = RunDir(run.root.resolve()).logs_root  # absolute: the page may be opened from anywhere
    return (
        '<section id="stages"><h2>Stages</h2>'
        '<table id="stage-table" class="data"><thead><tr><th>stage</th><th class="left">status</th><th>wall time</th><th>items</th>'
        '<th>items/s</th><th>tokens/s</th><th class="left">backend / server</th><th class="left">training logs</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>{hint}"
        '<p class="note">From the run store: a stage is <em>done</em> when it finished, <em>running</em> while a process holds the run '
        "directory, <em>interrupted</em> when it started and stopped (running it again resumes it). Wall time is the finishing process's "
        "part (a resumed stage's earlier part is not counted). Items are optimizer steps for a training stage, else the prompts or pairs "
        "it processed; tokens/s where the stage recorded the tokens it generated. TensorBoard: "
        f"<code>tensorboard --logdir {esc(logs_root)}</code>.</p></section>"
    )


# ---------------------------------------------------------------- evaluation


def _forms(m: dict[str, Any], names: list[str], kind: str, key: str) -> dict[str, int]:
    """{form: n} over every model, in first-seen order."""
    forms: dict[str, int] = {}
    for name in names:
        for form, r in ((m["models"][name].get(kind) or {}).get(key) or {}).items():
            forms.setdefault(form, r["n"])
    return forms


def breakdown(m: dict[str, Any], key: str, title: str) -> str:
    """Rates per form (key="by_form") or per category ("by_category") of the held-out prompts: one table
    per prompt kind (rows: forms; columns: each measure of cai.scoreboard.MEASURES for every model),
    and, where there are several forms, grouped bars of the first measure."""
    names = m.get("stages") or list(m["models"])
    parts = []
    for kind, measures in MEASURES.items():
        forms = _forms(m, names, kind, key)
        if not forms:
            continue
        head = "".join(f'<th colspan="{len(names)}">{esc(meas)}</th>' for meas in measures)
        sub = "".join(f"<th>{esc(n)}</th>" for _ in measures for n in names)
        body = []
        for form, n in forms.items():
            cells = "".join(f"<td>{pct(((m['models'][nm].get(kind) or {}).get(key) or {}).get(form, {}).get(meas))}</td>" for meas in measures for nm in names)
            body.append(f"<tr><th>{esc(form)}</th><td>{n}</td>{cells}</tr>")
        label = "red-team" if kind == "red_team" else kind
        table = (
            f'<table class="data {esc(key)}" data-kind="{esc(kind)}"><thead><tr class="group"><th></th><th></th>{head}</tr>'
            f"<tr><th>{esc(label)} prompts: {esc(title)}</th><th>n</th>{sub}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        )
        chart = ""
        if len(forms) > 1:
            first = measures[0]
            series = [
                (nm, SERIES_COLORS[i % len(SERIES_COLORS)], [((m["models"][nm].get(kind) or {}).get(key) or {}).get(f, {}).get(first) for f in forms])
                for i, nm in enumerate(names)
            ]
            chart = bar_chart(list(forms), series, f"{first.capitalize()} ({label} prompts), {title}", ymax=1.0)
        parts.append(f'<div class="row"><div>{table}</div><div>{chart}</div></div>')
    return "".join(parts)


def section_evaluation(run: RunData) -> str:
    m = run.metrics
    if not m:
        return '<section id="evaluation"><h2>Evaluation</h2>' + not_run("No evaluate/metrics.json", "evaluate") + "</section>"
    names = m.get("stages") or list(m["models"])
    has_oracle = any("red_team" in e or "helpful" in e for e in m["models"].values())
    rates = {n: headline_rates(m["models"][n]) for n in names}
    rows = []
    for n in names:
        e, r = m["models"][n], rates[n]
        j = e.get("judge", {})
        rows.append(
            f"<tr><th>{esc(n)}</th><td class=harm>{pct(r['harmful'])}</td><td>{pct(r['good_refusal'])}</td><td>{pct(r['evasive_red_team'])}</td>"
            f"<td class=help>{pct(r['helpful'])}</td><td>{pct(r['evasive'])}</td><td>{num(j.get('harmful'))}</td><td>{num(j.get('evasive'))}</td>"
            f"<td>{num((m.get('elo') or {}).get(n), '{:.0f}')}</td><td class=small>{esc(e.get('model', ''))}</td></tr>"
        )
    source = "the toy world's oracle (ground truth)" if has_oracle else "the AI judge (mean probabilities; no oracle)"
    prompts = m.get("prompts") or {}
    table_html = (
        '<table id="metrics-table" class="data"><thead>'
        '<tr class="group"><th></th><th colspan="3">held-out red-team prompts</th><th colspan="2">held-out helpful prompts</th><th colspan="2">AI judge</th><th></th><th></th></tr>'
        "<tr><th>model</th><th>harmful</th><th>good refusal</th><th>evasive</th><th>helpful</th><th>evasive</th>"
        '<th>p(harmful)</th><th>p(evasive)</th><th>Elo</th><th class="left">weights</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
        f'<p class="note">Rates from {esc(source)} on {esc(prompts.get("red_team", "?"))} held-out red-team and {esc(prompts.get("helpful", "?"))} held-out helpful prompts. '
        "Judge columns: the AI judge's mean p(harmful) on red-team answers and p(evasive) on helpful answers, both option orders averaged.</p>"
    )
    bars = bar_chart(
        names,
        [(k, COLORS[k], [rates[n][k] for n in names]) for k in ("harmful", "helpful", "evasive")],
        "Harmful (red-team), helpful and evasive (helpful prompts) per stage",
        ymax=1.0,
    )
    wr = m.get("win_rates") or {}
    if wr:
        n_by = m.get("win_rate_n") or {}
        cells = "".join(f"<tr><th>{esc(k)}</th><td>{pct(v)}</td><td>{esc(n_by.get(k, ''))}</td></tr>" for k, v in wr.items())
        wins = f'<table id="win-rates" class="data"><thead><tr><th>pair (later vs earlier)</th><th>win rate</th><th>prompts</th></tr></thead><tbody>{cells}</tbody></table>'
        elo = {k: v for k, v in (m.get("elo") or {}).items() if finite(v)}
        if elo:
            lo, hi = 100 * math.floor((min(elo.values()) - 50) / 100), 100 * math.ceil((max(elo.values()) + 50) / 100)
            wins += bar_chart(
                list(elo), [("Elo", SERIES_COLORS[4], list(elo.values()))], "Elo rating (Bradley-Terry fit of the win rates)", pct=False, ymin=lo, ymax=hi
            )
    else:
        wins = '<p class="notrun">No pairwise comparisons (one model, or evaluate.win_rate_prompts = 0).</p>'
    forms = breakdown(m, "by_form", "by form")
    if forms:
        forms = (
            '<h3 id="by-form">Rates per form of prompt</h3>'
            '<p class="note">The held-out prompts by form (single-turn, multi-turn, held-out phrasings, jailbreak wrappers, near misses: '
            f"whatever form the evaluation prompts carry), each with its n.</p>{forms}"
        )
    cats = breakdown(m, "by_category", "by category")
    if cats:
        forms += f"<details><summary>rates per category</summary>{cats}</details>"
    judge = m.get("judge") or {}
    jrows = [
        ("judge model", esc(judge.get("model", "–"))),
        ("questions asked", esc(judge.get("questions", "–"))),
        ("position bias (winner flips with the order)", pct(judge.get("position_bias"))),
        ("first option (A) wins", pct(judge.get("first_option_rate"))),
        ("Elo", esc(judge.get("elo", "–"))),
    ]
    return (
        '<section id="evaluation"><h2>Evaluation</h2>'
        f'{table_html}<div class="row"><div>{bars}</div><div><h3>Win rates (AI judge)</h3>{wins}</div></div>'
        f"{forms}<h3>AI judge</h3>{kv_table(jrows)}</section>"
    )


# ---------------------------------------------------------------- training


def curves(stage: str, rows: list[dict[str, Any]]) -> list[str]:
    """The charts of CHARTS whose tags this stage logged, each tag a line against the step. A tag
    logged once (a held-out evaluation at the end) is a dot on a chart, never a chart of its own."""
    out = []
    for title, tags in CHARTS:
        counts = {t: sum(finite(r.get(t)) for r in rows) for t in tags}
        present = [t for t in tags if counts[t]]
        if max(counts.values()) < 2:
            continue
        series = []
        for i, tag in enumerate(present):
            pts = [(r["step"], r[tag]) for r in rows if finite(r.get(tag)) and finite(r.get("step"))]
            series.append(Series(tag, SERIES_COLORS[i % len(SERIES_COLORS)], [p[0] for p in pts], [p[1] for p in pts]))
        out.append(line_chart(series, f"{stage}: {title}", "step"))
    return out


def last_values(rows: list[dict[str, Any]]) -> str:
    """Every tag's last logged value and its step: what TensorBoard would show at the end."""
    last: dict[str, tuple[int, float]] = {}
    for r in rows:
        for k, v in r.items():
            if k != "step" and finite(v):
                last[k] = (r.get("step"), v)
    cells = "".join(f"<tr><th>{esc(k)}</th><td>{num(v, '{:.4g}')}</td><td>{esc(step)}</td></tr>" for k, (step, v) in sorted(last.items()))
    return f'<details><summary>last logged values ({len(last)} tags)</summary><table class="data narrow"><thead><tr><th>tag</th><th>value</th><th>step</th></tr></thead><tbody>{cells}</tbody></table></details>'


def held_out(summary: dict[str, Any], metrics: dict[str, Any] | None) -> str:
    """A preference model's held-out accuracy before and after training, and its calibration."""
    held, init = summary.get("held_out") or {}, summary.get("held_out_initial") or {}
    if not held:
        return '<p class="note">No held-out evaluation: no pairs were held out (pm.eval_fraction, or too few pairs).</p>'
    chart = ""
    if finite(held.get("accuracy")):
        groups = (["before training"] if finite(init.get("accuracy")) else []) + ["after training"]
        vals = ([init["accuracy"]] if finite(init.get("accuracy")) else []) + [held["accuracy"]]
        chart = bar_chart(groups, [("held-out accuracy", SERIES_COLORS[3], vals)], "Preference-model accuracy on held-out pairs", ymax=1.0)
    rows = [
        ("held-out pairs", esc(held.get("pairs", "–"))),
        ("held-out accuracy", f"{pct(init.get('accuracy'))} → {pct(held.get('accuracy'))}"),
        ("held-out ECE", f"{num(init.get('ece'))} → {num(held.get('ece'))}"),
        ("held-out loss", f"{num(init.get('loss'))} → {num(held.get('loss'))}"),
    ]
    vs_oracle = (metrics or {}).get("preference_model")
    if vs_oracle:  # toy world only: computed by cai evaluate, the one stage that may ask the oracle
        rows.append(("accuracy vs the oracle (held-out toy-world pairs)", f"{pct(vs_oracle.get('accuracy'))} of {esc(vs_oracle.get('pairs', '?'))}"))
    return f"<h4>Held out (before → after training)</h4>{kv_table(rows)}{chart}"


def training_stage(run: RunData, s: StageRow, page: Path) -> str:
    rows = run.scalars.get(s.name, [])
    summary = run.train_metrics.get(s.name)
    head = f'<h3 id="train-{esc(s.name)}">{esc(s.name)} {chip(s.status)}</h3><p class="stagehelp">{esc(s.help)}</p>'
    if not rows and summary is None:
        return head + not_run(f"No logs/{s.name}/ and no {s.name}/metrics.json", s.name)
    parts = [head]
    if s.logs is not None:
        scalars = RunDir(run.root).scalars(s.name)
        links = f'<a href="{esc(relative_link(s.logs, page))}">logs/{esc(s.name)}/</a>'
        if scalars.is_file():
            links += f' · <a href="{esc(relative_link(scalars, page))}">scalars.jsonl</a>'
        parts.append(f'<p class="links">training logs: {links} ({len({r.get("step") for r in rows})} logged steps)</p>')
    charts = curves(s.name, rows)
    if charts:
        parts.append('<div class="row">' + "".join(f"<div>{c}</div>" for c in charts) + "</div>")
    left = (f"<h4>{esc(s.name)}/metrics.json</h4>" + kv_table(scalar_rows(summary, skip=HELD_OUT)) if summary else "") + (last_values(rows) if rows else "")
    right = held_out(summary, run.metrics) if summary and any(k in summary for k in HELD_OUT) else ""
    parts.append(f'<div class="row"><div>{left}</div><div>{right}</div></div>')
    return "".join(parts)


def section_training(run: RunData, page: Path) -> str:
    stages = [s for s in run.stages if s.training]
    body = "".join(training_stage(run, s, page) for s in stages)
    return f'<section id="training"><h2>Training</h2>{body}</section>'


# ---------------------------------------------------------------- labels and examples


def section_labels(run: RunData) -> str:
    s, ps = run.label_summary, run.p_chosen
    if not s and not ps:
        return '<section id="labels"><h2>AI preference labels</h2>' + not_run("No label/preferences.jsonl", "label") + "</section>"
    hist = histogram(ps, 0.5, 1.0, f"Distribution of p(chosen) over {len(ps)} labelled pairs", "p(chosen)") if ps else ""
    bias, rows = "", []
    if s:
        b = [("winner flips with the option order", s.get("position_bias")), ("option (A) wins", s.get("first_option_rate"))]
        shown = [(k, v) for k, v in b if finite(v)]
        if shown:
            bias = bar_chart(
                [k for k, _ in shown],
                [("rate", SERIES_COLORS[2], [v for _, v in shown])],
                "Position bias of the feedback model",
                ymax=1.0,
                ref=(0.5, "50%: no bias"),
            )
        rows = [
            ("pairs labelled", esc(s.get("pairs", "–"))),
            ("mean p(chosen)", num(s.get("mean_p_chosen"))),
            ("position bias (flips)", pct(s.get("position_bias"))),
            ("option (A) wins", pct(s.get("first_option_rate"))),
            ("identical pairs skipped", esc(s.get("identical_pairs_skipped", "–"))),
            ("options missing from top_logprobs", esc(s.get("missing_options", "–"))),
        ]
    return (
        '<section id="labels"><h2>AI preference labels</h2>'
        f'<div class="row"><div>{hist}</div><div>{bias}</div></div>{kv_table(rows) if rows else ""}'
        '<p class="note">Without position bias, option (A) wins half the questions and the winner never changes when the options are swapped; '
        "every pair is asked in both orders and averaged, which cancels the bias in the labels.</p></section>"
    )


def section_examples(run: RunData) -> str:
    def tab(key: str, title: str) -> str:
        shown, total = len(run.examples[key]), run.totals[key]
        more = f" (first {shown} of {total})" if total > shown else ""
        return f'<button class="tab" data-tab="{key}" type="button">{esc(title)} <span class="count">{shown}{esc(more)}</span></button>'

    tabs = tab("critiques", "Critique & revision") + tab("pairs", "Preference pairs") + tab("across", "Same prompt across stages")
    return f"""<section id="examples"><h2>Examples</h2>
<div class="tabs">{tabs}</div>
<div class="browser">
  <div class="controls">
    <input id="ex-filter" type="search" placeholder="filter by text…" aria-label="filter examples">
    <button id="ex-prev" type="button" aria-label="previous">◀</button>
    <select id="ex-select" aria-label="example"></select>
    <button id="ex-next" type="button" aria-label="next">▶</button>
  </div>
  <div id="ex-panel" class="panel"></div>
</div>
</section>"""
