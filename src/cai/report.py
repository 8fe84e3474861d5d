"""One self-contained HTML page about a run: what it measured, how training went, what the models said.

    cai report RUN_DIR            -> RUN_DIR/report.html
    python -m cai.report RUN_DIR [--output FILE]

The page opens from disk with no server and no network: CSS, JavaScript and the plots (inline SVG,
drawn by the small functions below) are all in the file, and a Content-Security-Policy forbids it
to load anything. It reads whatever the run has made, and shows a part that is missing as "not run",
so it works on a partial run:

    config.yaml                                  the run's settings
    evaluate/metrics.json, answers.jsonl,        rates per model, win rates, Elo; the same prompt
      comparisons.jsonl                            answered by every model
    critique/records.jsonl                       prompt -> initial answer -> critique -> revision
    label/preferences.jsonl, summary.json        pairs with their labels; p(chosen); position bias
    pm/metrics.json, sft/metrics.json,           training summaries; preference-model accuracy
      dpo/metrics.json
    ppo/log.csv                                  PM score and KL per PPO step

Model outputs are untrusted text. Everything written into the HTML by Python goes through
`html.escape`; the examples are embedded as JSON (with "<", ">" and "&" escaped, so no string can
close the script element) and put on the page by the browser with `textContent`, never `innerHTML`.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from cai.store import atomic_write_text
from cai.trainlog import read_scalars

MAX_EXAMPLES = 500  # examples per browser tab embedded in the page (keeps the file small on big runs)
HIST_BINS = 10

COLORS = {"harmful": "#d1495b", "helpful": "#2e86ab", "evasive": "#edae49", "good_refusal": "#3a9d5d", "garbled": "#8d8d8d"}
SERIES_COLORS = ("#2e86ab", "#d1495b", "#edae49", "#3a9d5d", "#7b5ea7")
STAGE_FILES = [  # (stage, the file a finished stage has written last); its directory alone means "started"
    ("critique", "critique/records.jsonl"),
    ("sft", "sft/metrics.json"),
    ("sample", "sample/pairs.jsonl"),
    ("label", "label/preferences.jsonl"),
    ("train-pm", "pm/metrics.json"),
    ("ppo", "ppo/metrics.json"),
    ("dpo", "dpo/metrics.json"),
    ("evaluate", "evaluate/metrics.json"),
]


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


# ---------------------------------------------------------------- reading the run


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _jsonl(path: Path, limit: int | None = None) -> list[dict]:
    rows: list[dict] = []
    if not path.is_file():
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
                if limit is not None and len(rows) >= limit:
                    break
    return rows


def _count_lines(path: Path) -> int:
    if not path.is_file():
        return 0
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def _ppo_log(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                out.append({k: float(v) for k, v in row.items() if v not in (None, "")})
            except ValueError:
                continue
    return out


def _content(turns: Any) -> str:
    """Text of a conversational field ([{"role", "content"}]) or of a plain string."""
    if isinstance(turns, list):
        return "\n\n".join(str(m.get("content", "")) for m in turns if isinstance(m, dict))
    return "" if turns is None else str(turns)


def _question(q: dict, chosen_is_a: bool | None) -> dict[str, Any]:
    """One labelling question as the pairs browser shows it: which response was option (A), p(A), p(chosen)."""
    out = {"principle_id": q.get("principle_id", ""), "p_option_a": q.get("p_option_a"), "reasoning": q.get("reasoning", "")}
    a_first = q.get("order") == "ab"
    if chosen_is_a is None:
        out["first"] = "response a" if a_first else "response b"
        out["p_chosen"] = None
    else:
        chosen_first = a_first == bool(chosen_is_a)
        out["first"] = "chosen" if chosen_first else "rejected"
        pa = q.get("p_option_a")
        out["p_chosen"] = None if pa is None else (pa if chosen_first else 1 - pa)
    return out


def collect(run_dir: Path) -> dict[str, Any]:
    """Everything the page shows, read from the run directory (absent parts are None or empty)."""
    ev = run_dir / "evaluate"
    data: dict[str, Any] = {
        "config": yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else None,
        "stages": {name: "done" if (run_dir / f).exists() else "started" if (run_dir / f).parent.is_dir() else "not run" for name, f in STAGE_FILES},
        "metrics": _json(ev / "metrics.json"),
        "label_summary": _json(run_dir / "label" / "summary.json"),
        "pm": _json(run_dir / "pm" / "metrics.json"),
        "sft": _json(run_dir / "sft" / "metrics.json"),
        "dpo": _json(run_dir / "dpo" / "metrics.json"),
        "ppo": [r for r in read_scalars(run_dir / "logs" / "ppo" / "scalars.jsonl")],
    }
    prefs = _jsonl(run_dir / "label" / "preferences.jsonl")
    data["p_chosen"] = [float(p["p_chosen"]) for p in prefs if "p_chosen" in p]

    # The example browsers: plain strings and numbers only.
    records = _jsonl(run_dir / "critique" / "records.jsonl", MAX_EXAMPLES)
    data["critiques"] = [
        {
            "prompt": r.get("init_prompt", r.get("prompt", "")),
            "init": r.get("init_response", ""),
            "rounds": [
                {k: rd.get(k, "") for k in ("principle_id", "critic_prompt", "critic_response", "revision_prompt", "revision_response")}
                for rd in r.get("rounds", [])
            ],
        }
        for r in records
    ]
    data["critiques_total"] = _count_lines(run_dir / "critique" / "records.jsonl")
    data["pairs"] = [
        {
            "prompt": _content(p.get("prompt")),
            "kind": p.get("kind", ""),
            "chosen": _content(p.get("chosen")),
            "rejected": _content(p.get("rejected")),
            "p_chosen": p.get("p_chosen"),
            "questions": [_question(q, p.get("chosen_is_a")) for q in p.get("questions", [])],
        }
        for p in prefs[:MAX_EXAMPLES]
    ]
    data["pairs_total"] = len(prefs)

    answers = _jsonl(ev / "answers.jsonl")
    comparisons = _jsonl(ev / "comparisons.jsonl")
    order = (data["metrics"] or {}).get("stages") or sorted({a["model"] for a in answers})
    by_prompt: dict[tuple[str, str], dict[str, Any]] = {}
    for a in answers:
        entry = by_prompt.setdefault((a["kind"], a["prompt_id"]), {"prompt": _content(a["prompt"]), "kind": a["kind"], "answers": [], "comparisons": []})
        p = a.get("p_harmless") if a["kind"] == "red_team" else a.get("p_helpful")
        entry["answers"].append({"model": a["model"], "answer": a["answer"], "oracle": a.get("oracle"), "p": p})
    for c in comparisons:
        entry = by_prompt.get((c["kind"], c["prompt_id"]))
        if entry is not None:
            entry["comparisons"].append({"label": f"{c['model_b']} vs {c['model_a']}", "better": c["model_b"], "p": 1 - c["p_a"]})
    rank = {m: i for i, m in enumerate(order)}
    for entry in by_prompt.values():
        entry["answers"].sort(key=lambda x: rank.get(x["model"], len(rank)))
    data["across"] = list(by_prompt.values())[:MAX_EXAMPLES]
    data["across_total"] = len(by_prompt)
    return data


# ---------------------------------------------------------------- plots: small inline SVG


def _fmt(v: float, pct: bool) -> str:
    if pct:
        return f"{100 * v:.0f}%"
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi:
        ticks.append(ticks[-1] + step)
    return ticks


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    return (
        f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="{esc(label)}">'
        f'<title>{esc(label)}</title>{"".join(body)}</svg>'
    )


def bar_chart(
    groups: Sequence[str],
    series: Sequence[tuple[str, str, Sequence[float | None]]],
    title: str,
    pct: bool = True,
    ymax: float | None = None,
    ymin: float = 0.0,
    ref: tuple[float, str] | None = None,
) -> str:
    """Grouped bars: one group per x label, one bar per series (name, color, values; None = no bar);
    `ref` = (value, label) draws a dashed reference line."""
    series = [(n, c, [v if isinstance(v, (int, float)) and math.isfinite(v) else None for v in vs]) for n, c, vs in series]
    W, H, L, R, T, B = 560, 280, 48, 12, 34, 46
    vals = [v for _, _, vs in series for v in vs if v is not None]
    top = ymax if ymax is not None else _nice_ticks(ymin, max(vals, default=ymin + 1.0))[-1]
    if top <= ymin:
        top = ymin + 1.0
    y = lambda v: T + (H - T - B) * (1 - (min(max(v, ymin), top) - ymin) / (top - ymin))
    body = [f'<text x="{L}" y="18" class="ptitle">{esc(title)}</text>']
    for t in _nice_ticks(ymin, top, 4):
        if t <= top + 1e-12:
            body.append(f'<line x1="{L}" x2="{W - R}" y1="{y(t):.1f}" y2="{y(t):.1f}" class="grid"/>')
            body.append(f'<text x="{L - 6}" y="{y(t) + 4:.1f}" class="tick" text-anchor="end">{esc(_fmt(t, pct))}</text>')
    gw = (W - L - R) / max(1, len(groups))
    bw = min(36.0, gw * 0.8 / max(1, len(series)))
    for g, name in enumerate(groups):
        x0 = L + g * gw + (gw - bw * len(series)) / 2
        for s, (sname, color, vs) in enumerate(series):
            v = vs[g]
            if v is None:
                continue
            x = x0 + s * bw
            exact = f"{100 * v:.1f}%" if pct else f"{v:.4g}"
            body.append(
                f'<rect x="{x:.1f}" y="{y(v):.1f}" width="{bw - 4:.1f}" height="{max(0.0, y(ymin) - y(v)):.1f}" fill="{color}">'
                f"<title>{esc(name)} / {esc(sname)}: {esc(exact)}</title></rect>"
            )
            body.append(f'<text x="{x + (bw - 4) / 2:.1f}" y="{y(v) - 4:.1f}" class="val" text-anchor="middle">{esc(_fmt(v, pct))}</text>')
        body.append(f'<text x="{L + g * gw + gw / 2:.1f}" y="{H - B + 18}" class="tick" text-anchor="middle">{esc(name)}</text>')
    body.append(f'<line x1="{L}" x2="{W - R}" y1="{y(ymin):.1f}" y2="{y(ymin):.1f}" class="axis"/>')
    if ref is not None:
        body.append(f'<line x1="{L}" x2="{W - R}" y1="{y(ref[0]):.1f}" y2="{y(ref[0]):.1f}" class="ref"/>')
        body.append(f'<text x="{L + 4}" y="{y(ref[0]) - 4:.1f}" class="tick">{esc(ref[1])}</text>')
    lx = L
    for sname, color, _ in series if len(series) > 1 else ():
        body.append(f'<rect x="{lx}" y="{H - 16}" width="10" height="10" fill="{color}"/><text x="{lx + 14}" y="{H - 7}" class="tick">{esc(sname)}</text>')
        lx += 24 + 7 * len(sname)
    return _svg(W, H, body, title)


def line_chart(xs: Sequence[float], ys: Sequence[float], title: str, xlabel: str, color: str = SERIES_COLORS[0]) -> str:
    """One series against steps, with nice ticks on both axes."""
    W, H, L, R, T, B = 560, 250, 58, 14, 34, 40
    pts = [(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]
    body = [f'<text x="{L}" y="18" class="ptitle">{esc(title)}</text>']
    if not pts:
        body.append(f'<text x="{W / 2}" y="{H / 2}" class="tick" text-anchor="middle">no finite values</text>')
        return _svg(W, H, body, title)
    xt = _nice_ticks(min(p[0] for p in pts), max(p[0] for p in pts), 6)
    lo, hi = min(p[1] for p in pts), max(p[1] for p in pts)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    yt = _nice_ticks(lo, hi, 4)
    X = lambda v: L + (W - L - R) * (v - xt[0]) / ((xt[-1] - xt[0]) or 1)
    Y = lambda v: T + (H - T - B) * (1 - (v - yt[0]) / ((yt[-1] - yt[0]) or 1))
    for t in yt:
        body.append(f'<line x1="{L}" x2="{W - R}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" class="grid"/>')
        body.append(f'<text x="{L - 6}" y="{Y(t) + 4:.1f}" class="tick" text-anchor="end">{esc(f"{t:.4g}")}</text>')
    for t in xt:
        body.append(f'<text x="{X(t):.1f}" y="{H - B + 16}" class="tick" text-anchor="middle">{esc(f"{t:g}")}</text>')
    body.append(f'<line x1="{L}" x2="{W - R}" y1="{H - B}" y2="{H - B}" class="axis"/>')
    body.append(f'<text x="{(L + W - R) / 2:.1f}" y="{H - 6}" class="tick" text-anchor="middle">{esc(xlabel)}</text>')
    path = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in pts)
    body.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
    if len(pts) <= 60:
        body += [f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="2.5" fill="{color}"><title>step {x:g}: {y:.4g}</title></circle>' for x, y in pts]
    return _svg(W, H, body, title)


def histogram(values: Sequence[float], lo: float, hi: float, title: str, bins: int = HIST_BINS, color: str = SERIES_COLORS[0]) -> str:
    """Counts of `values` in `bins` equal bins over [lo, hi] (the top edge belongs to the last bin)."""
    counts = [0] * bins
    for v in values:
        if lo <= v <= hi:
            counts[min(bins - 1, int((v - lo) / (hi - lo) * bins))] += 1
    W, H, L, R, T, B = 560, 250, 48, 14, 34, 40
    ticks = [t for t in _nice_ticks(0, max(max(counts, default=1), 4), 4) if t == int(t)]  # counts: whole numbers
    top = ticks[-1]
    Y = lambda c: T + (H - T - B) * (1 - c / top)
    bw = (W - L - R) / bins
    body = [f'<text x="{L}" y="18" class="ptitle">{esc(title)}</text>']
    for t in ticks:
        body.append(f'<line x1="{L}" x2="{W - R}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" class="grid"/>')
        body.append(f'<text x="{L - 6}" y="{Y(t) + 4:.1f}" class="tick" text-anchor="end">{t:g}</text>')
    for i, c in enumerate(counts):
        a, b = lo + (hi - lo) * i / bins, lo + (hi - lo) * (i + 1) / bins
        body.append(f'<rect x="{L + i * bw + 1:.1f}" y="{Y(c):.1f}" width="{bw - 2:.1f}" height="{Y(0) - Y(c):.1f}" fill="{color}"><title>{a:.2f}-{b:.2f}: {c}</title></rect>')
    for i in range(0, bins + 1, max(1, bins // 5)):
        body.append(f'<text x="{L + i * bw:.1f}" y="{H - B + 16}" class="tick" text-anchor="middle">{lo + (hi - lo) * i / bins:.2f}</text>')
    body.append(f'<line x1="{L}" x2="{W - R}" y1="{Y(0):.1f}" y2="{Y(0):.1f}" class="axis"/>')
    body.append(f'<text x="{(L + W - R) / 2:.1f}" y="{H - 6}" class="tick" text-anchor="middle">p(chosen)</text>')
    return _svg(W, H, body, title)


# ---------------------------------------------------------------- sections


def _pct(x: Any) -> str:
    return f"{100 * x:.1f}%" if isinstance(x, (int, float)) and math.isfinite(x) else "–"


def _num(x: Any, fmt: str = "{:.3f}") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return fmt.format(x) if isinstance(x, (int, float)) else esc(x)


def _not_run(what: str, how: str) -> str:
    return f'<p class="notrun"><span class="chip off">not run</span> {esc(what)} — run <code>{esc(how)}</code>.</p>'


def _kv_table(rows: Sequence[tuple[str, str]]) -> str:
    return '<table class="kv">' + "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def section_overview(d: dict[str, Any], run_dir: Path) -> str:
    cls = {"done": "on", "started": "mid", "not run": "off"}
    chips = "".join(f'<span class="chip {cls[state]}">{esc(name)}: {state}</span>' for name, state in d["stages"].items())
    cfg = d["config"]
    if cfg is None:
        conf = _not_run("No config.yaml in the run directory", "cai run CONFIG")
    else:
        models = cfg.get("models") or {}
        pol = (models.get("policy") or {})
        fb = models.get("feedback") or {}
        rows = [
            ("run_dir", esc(cfg.get("run_dir", run_dir))),
            ("seed", esc(cfg.get("seed", ""))),
            ("constitution", esc(cfg.get("constitution", ""))),
            ("policy", esc(pol.get("path") or pol.get("model") or "–")),
            ("feedback model", esc(fb.get("path") or fb.get("model") or "= policy")),
            ("RL method", esc((cfg.get("pipeline") or {}).get("rl", "–"))),
        ]
        conf = _kv_table(rows) + f'<details><summary>full config.yaml</summary><pre>{esc(yaml.safe_dump(cfg, sort_keys=False))}</pre></details>'
    return f'<section id="overview"><h2>Run</h2><div class="chips">{chips}</div>{conf}</section>'


def section_evaluation(d: dict[str, Any]) -> str:
    from cai.scoreboard import headline_rates

    m = d["metrics"]
    if not m:
        return '<section id="evaluation"><h2>Evaluation</h2>' + _not_run("No evaluate/metrics.json", "cai evaluate CONFIG") + "</section>"
    names = m.get("stages") or list(m["models"])
    has_oracle = any("red_team" in e or "helpful" in e for e in m["models"].values())
    rows = []
    rates = {n: headline_rates(m["models"][n]) for n in names}
    for n in names:
        e, r = m["models"][n], rates[n]
        j = e.get("judge", {})
        rows.append(
            f"<tr><th>{esc(n)}</th><td class=harm>{_pct(r['harmful'])}</td><td>{_pct(r['good_refusal'])}</td><td>{_pct(r['evasive_red_team'])}</td>"
            f"<td class=help>{_pct(r['helpful'])}</td><td>{_pct(r['evasive'])}</td><td>{_num(j.get('harmful'))}</td><td>{_num(j.get('evasive'))}</td>"
            f"<td>{_num(m.get('elo', {}).get(n), '{:.0f}')}</td><td class=small>{esc(e.get('model', ''))}</td></tr>"
        )
    source = "the toy world's oracle (ground truth)" if has_oracle else "the AI judge (mean probabilities; no oracle)"
    n_red = (m.get("prompts") or {}).get("red_team", "?")
    n_help = (m.get("prompts") or {}).get("helpful", "?")
    table_html = (
        '<table id="metrics-table" class="data"><thead>'
        '<tr class="group"><th></th><th colspan="3">held-out red-team prompts</th><th colspan="2">held-out helpful prompts</th><th colspan="2">AI judge</th><th></th><th></th></tr>'
        "<tr><th>model</th><th>harmful</th><th>good refusal</th><th>evasive</th><th>helpful</th><th>evasive</th>"
        '<th>p(harmful)</th><th>p(evasive)</th><th>Elo</th><th class="left">weights</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
        f'<p class="note">Rates from {esc(source)} on {esc(n_red)} held-out red-team and {esc(n_help)} held-out helpful prompts. '
        "Judge columns: the AI judge's mean p(harmful) on red-team answers and p(evasive) on helpful answers, both option orders averaged.</p>"
    )
    bars = bar_chart(
        names,
        [
            ("harmful", COLORS["harmful"], [rates[n]["harmful"] for n in names]),
            ("helpful", COLORS["helpful"], [rates[n]["helpful"] for n in names]),
            ("evasive", COLORS["evasive"], [rates[n]["evasive"] for n in names]),
        ],
        "Harmful (red-team), helpful and evasive (helpful prompts) per stage",
        ymax=1.0,
    )
    wr = m.get("win_rates") or {}
    if wr:
        n_by = m.get("win_rate_n") or {}
        cells = "".join(f"<tr><th>{esc(k)}</th><td>{_pct(v)}</td><td>{esc(n_by.get(k, ''))}</td></tr>" for k, v in wr.items())
        wins = f'<table id="win-rates" class="data"><thead><tr><th>pair (later vs earlier)</th><th>win rate</th><th>prompts</th></tr></thead><tbody>{cells}</tbody></table>'
        elo = m.get("elo") or {}
        if elo:
            lo, hi = 100 * math.floor((min(elo.values()) - 50) / 100), 100 * math.ceil((max(elo.values()) + 50) / 100)
            wins += bar_chart(list(elo), [("Elo", SERIES_COLORS[4], list(elo.values()))], "Elo rating (Bradley-Terry fit of the win rates)", pct=False, ymin=lo, ymax=hi)
    else:
        wins = '<p class="notrun">No pairwise comparisons (one model, or evaluate.win_rate_prompts = 0).</p>'
    judge = m.get("judge") or {}
    jrows = [
        ("judge model", esc(judge.get("model", "–"))),
        ("questions asked", esc(judge.get("questions", "–"))),
        ("position bias (winner flips with the order)", _pct(judge.get("position_bias"))),
        ("first option (A) wins", _pct(judge.get("first_option_rate"))),
        ("Elo", esc(judge.get("elo", "–"))),
    ]
    return (
        '<section id="evaluation"><h2>Evaluation</h2>'
        f'{table_html}<div class="row"><div>{bars}</div><div><h3>Win rates (AI judge)</h3>{wins}</div></div>'
        f"<h3>AI judge</h3>{_kv_table(jrows)}</section>"
    )


def section_training(d: dict[str, Any]) -> str:
    parts = ['<section id="training"><h2>Training</h2>']
    # PPO
    log = d["ppo"]
    parts.append("<h3>PPO</h3>")
    if log:
        steps = [r.get("step", i + 1) for i, r in enumerate(log)]
        charts = []
        for key, title, color in (("objective/score", "Preference-model score per step", SERIES_COLORS[0]), ("objective/kl", "KL to the reference per step (nats)", SERIES_COLORS[1])):
            if any(key in r for r in log):
                charts.append(line_chart([s for s, r in zip(steps, log) if key in r], [r[key] for r in log if key in r], title, "PPO step", color))
        parts.append(f'<div class="row">{"".join(f"<div>{c}</div>" for c in charts)}</div>')
    else:
        parts.append(_not_run("No ppo/log.csv", "cai ppo CONFIG"))
    # Preference model
    parts.append("<h3>Preference model</h3>")
    pm = d["pm"]
    if pm:
        held, init = pm.get("held_out") or {}, pm.get("held_out_initial") or {}
        chart = ""
        if held.get("accuracy") is not None:
            groups = (["before training"] if init.get("accuracy") is not None else []) + ["after training"]
            vals = ([init["accuracy"]] if init.get("accuracy") is not None else []) + [held["accuracy"]]
            chart = bar_chart(groups, [("held-out accuracy", SERIES_COLORS[3], vals)], "Preference-model accuracy on held-out pairs", ymax=1.0)
        rows = [
            ("held-out accuracy", _pct(held.get("accuracy"))),
            ("held-out ECE", _num(held.get("ece"))),
            ("held-out loss", _num(held.get("loss"))),
            ("pairs (train / held out)", esc(f"{(pm.get('pairs') or {}).get('train', '–')} / {(pm.get('pairs') or {}).get('held_out', '–')}")),
            ("steps", esc(pm.get("steps", "–"))),
            ("train loss (first 10% → last 10%)", f"{_num(pm.get('train_loss_first_10pct'))} → {_num(pm.get('train_loss_last_10pct'))}"),
        ]
        vs_oracle = (d["metrics"] or {}).get("preference_model")
        if vs_oracle:  # toy world only: computed by cai evaluate, the one stage that may ask the oracle
            rows.append(("accuracy vs the oracle (held-out toy-world pairs)", f"{_pct(vs_oracle['accuracy'])} of {esc(vs_oracle['pairs'])}"))
        parts.append(f'<div class="row"><div>{chart}</div><div>{_kv_table(rows)}</div></div>')
    else:
        parts.append(_not_run("No pm/metrics.json", "cai train-pm CONFIG"))
    # SFT and DPO summaries
    for name, how in (("sft", "cai sft CONFIG"), ("dpo", "cai dpo CONFIG")):
        parts.append(f"<h3>{name.upper()}</h3>")
        mm = d[name]
        if mm:
            keep = [(k, v) for k, v in mm.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool) and k != "model"]
            parts.append(_kv_table([(k, _num(v, "{:.4g}") if isinstance(v, float) else esc(v)) for k, v in keep]))
        else:
            parts.append(_not_run(f"No {name}/metrics.json", how))
    parts.append("</section>")
    return "".join(parts)


def section_labels(d: dict[str, Any]) -> str:
    s, ps = d["label_summary"], d["p_chosen"]
    if not s and not ps:
        return '<section id="labels"><h2>AI preference labels</h2>' + _not_run("No label/preferences.jsonl", "cai label CONFIG") + "</section>"
    hist = histogram(ps, 0.5, 1.0, f"Distribution of p(chosen) over {len(ps)} labelled pairs") if ps else ""
    bias = ""
    rows = []
    if s:
        b = [("winner flips with the option order", s.get("position_bias")), ("option (A) wins", s.get("first_option_rate"))]
        shown = [(k, v) for k, v in b if v is not None]
        if shown:
            bias = bar_chart([k for k, _ in shown], [("rate", SERIES_COLORS[2], [v for _, v in shown])], "Position bias of the feedback model", ymax=1.0, ref=(0.5, "50%: no bias"))
        rows = [
            ("pairs labelled", esc(s.get("pairs", "–"))),
            ("mean p(chosen)", _num(s.get("mean_p_chosen"))),
            ("position bias (flips)", _pct(s.get("position_bias"))),
            ("option (A) wins", _pct(s.get("first_option_rate"))),
            ("identical pairs skipped", esc(s.get("identical_pairs_skipped", "–"))),
            ("options missing from top_logprobs", esc(s.get("missing_options", "–"))),
        ]
    return (
        '<section id="labels"><h2>AI preference labels</h2>'
        f'<div class="row"><div>{hist}</div><div>{bias}</div></div>{_kv_table(rows) if rows else ""}'
        '<p class="note">Without position bias, option (A) wins half the questions and the winner never changes when the options are swapped; '
        "every pair is asked in both orders and averaged, which cancels the bias in the labels.</p></section>"
    )


def section_examples(d: dict[str, Any]) -> str:
    def tab(key: str, title: str, total: int) -> str:
        shown = len(d[key])
        more = f" (first {shown} of {total})" if total > shown else ""
        return f'<button class="tab" data-tab="{key}" type="button">{esc(title)} <span class="count">{shown}{esc(more)}</span></button>'

    tabs = (
        tab("critiques", "Critique & revision", d["critiques_total"])
        + tab("pairs", "Preference pairs", d["pairs_total"])
        + tab("across", "Same prompt across stages", d["across_total"])
    )
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


# ---------------------------------------------------------------- the page

CSS = """
:root { --fg:#1d2330; --muted:#5f6b7a; --line:#e3e7ee; --bg:#f6f8fb; --card:#fff; --accent:#2e86ab; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color:var(--fg); background:var(--bg); }
header { background:#1d2330; color:#fff; padding:18px 32px; }
header h1 { margin:0; font-size:20px; font-weight:600; }
header p { margin:4px 0 0; color:#b8c2d0; font-size:13px; }
nav { display:flex; gap:16px; padding:8px 32px; background:#fff; border-bottom:1px solid var(--line); position:sticky; top:0; z-index:1; }
nav a { color:var(--accent); text-decoration:none; font-weight:500; }
main { max-width:1200px; margin:0 auto; padding:8px 32px 48px; }
section { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:8px 24px 20px; margin:20px 0; }
h2 { font-size:18px; margin:14px 0 10px; }
h3 { font-size:15px; margin:18px 0 8px; color:#33405a; }
table { border-collapse:collapse; }
table.data { width:100%; margin:6px 0; }
table.data th, table.data td { padding:6px 10px; border-bottom:1px solid var(--line); text-align:right; white-space:nowrap; }
table.data thead th { background:#eef2f7; font-weight:600; font-size:12.5px; color:#33405a; }
table.data tbody th, table.data thead th:first-child, table.data th.left { text-align:left; }
table.data tr.group th { text-align:center; font-weight:500; color:var(--muted); background:#f6f8fb; border-bottom:1px solid #d5dbe4; }
table.data td.small { font-size:11.5px; color:var(--muted); text-align:left; white-space:normal; word-break:break-all; }
table.data td.harm { color:#b02a3c; font-weight:600; } table.data td.help { color:#1f6b8c; font-weight:600; }
table.kv th { text-align:left; font-weight:500; color:var(--muted); padding:3px 18px 3px 0; vertical-align:top; }
table.kv td { padding:3px 0; }
.row { display:flex; flex-wrap:wrap; gap:18px; align-items:flex-start; }
.row > div { flex:1 1 520px; min-width:0; }
svg.plot { max-width:100%; height:auto; font-family:inherit; }
svg .ptitle { font-size:13px; font-weight:600; fill:#33405a; }
svg .tick { font-size:11px; fill:var(--muted); }
svg .val { font-size:10px; fill:#33405a; }
svg .grid { stroke:#edf0f4; } svg .axis { stroke:#9aa5b4; } svg .ref { stroke:#5f6b7a; stroke-dasharray:4 3; }
.chips { display:flex; flex-wrap:wrap; gap:6px; margin:4px 0 12px; }
.chip { display:inline-block; padding:2px 10px; border-radius:999px; font-size:12px; border:1px solid var(--line); }
.chip.on { background:#e7f5ec; color:#23713f; border-color:#bfe3cb; }
.chip.off { background:#f3f4f6; color:#7a8391; }
.chip.mid { background:#fdf3e1; color:#94620c; border-color:#f1d9a8; }
.notrun { color:var(--muted); }
.note { color:var(--muted); font-size:12.5px; }
pre { background:#f3f5f8; padding:10px; border-radius:6px; overflow:auto; font-size:12px; }
details summary { cursor:pointer; color:var(--accent); margin:8px 0; }
.tabs { display:flex; gap:6px; border-bottom:1px solid var(--line); margin-bottom:10px; }
.tab { border:1px solid var(--line); border-bottom:none; background:#f3f5f8; padding:6px 12px; border-radius:6px 6px 0 0; cursor:pointer; font:inherit; color:var(--fg); }
.tab.active { background:#fff; font-weight:600; box-shadow:0 1px 0 #fff; }
.tab .count { color:var(--muted); font-weight:400; font-size:12px; }
.controls { display:flex; gap:6px; align-items:center; margin-bottom:10px; }
.controls select { flex:1; min-width:0; padding:4px; font:inherit; }
.controls input { width:200px; padding:4px 6px; font:inherit; }
.controls button { padding:3px 10px; font:inherit; cursor:pointer; }
.panel .turn { border-left:3px solid var(--line); padding:4px 12px; margin:8px 0; }
.panel .turn .who { font-size:11.5px; text-transform:uppercase; letter-spacing:.04em; color:var(--muted); margin-bottom:2px; }
.panel .turn .text { white-space:pre-wrap; word-wrap:break-word; }
.panel .turn.prompt { border-color:#7b5ea7; } .panel .turn.answer { border-color:#2e86ab; }
.panel .turn.critique { border-color:#edae49; } .panel .turn.revision { border-color:#3a9d5d; }
.panel .turn.chosen { border-color:#3a9d5d; } .panel .turn.rejected { border-color:#d1495b; }
.badge { display:inline-block; padding:0 8px; border-radius:999px; font-size:11.5px; color:#fff; margin-left:6px; text-transform:none; letter-spacing:0; }
.badge.harmful { background:#d1495b; } .badge.helpful { background:#2e86ab; } .badge.good_refusal { background:#3a9d5d; }
.badge.evasive { background:#c98a1a; } .badge.garbled { background:#8d8d8d; } .badge.info { background:#5f6b7a; }
.empty { color:var(--muted); padding:12px 0; }
"""

JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("cai-data").textContent);
  var current = null, visible = [];
  var sel = document.getElementById("ex-select"), panel = document.getElementById("ex-panel");
  var filter = document.getElementById("ex-filter");

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);  // never innerHTML: model text is untrusted
    return e;
  }
  function turn(cls, who, text, badges) {
    var t = el("div", "turn " + cls), w = el("div", "who", who);
    (badges || []).forEach(function (b) { if (b) w.appendChild(el("span", "badge " + b[0], b[1])); });
    t.appendChild(w);
    t.appendChild(el("div", "text", text === "" ? "(empty)" : text));
    return t;
  }
  function pct(x) { return (x === null || x === undefined) ? "–" : (100 * x).toFixed(1) + "%"; }
  function short(s) { s = String(s).replace(/\s+/g, " "); return s.length > 110 ? s.slice(0, 107) + "…" : s; }

  var views = {
    critiques: {
      label: function (r) { return r.prompt; },
      render: function (r) {
        panel.appendChild(turn("prompt", "red-team prompt", r.prompt));
        panel.appendChild(turn("answer", "initial answer", r.init));
        r.rounds.forEach(function (rd, i) {
          var tag = "round " + (i + 1) + (rd.principle_id ? " · principle " + rd.principle_id : "");
          if (rd.critic_prompt || rd.critic_response) {
            panel.appendChild(turn("critique", "critique request (" + tag + ")", rd.critic_prompt));
            panel.appendChild(turn("critique", "critique", rd.critic_response));
          }
          panel.appendChild(turn("revision", "revision request (" + tag + ")", rd.revision_prompt));
          panel.appendChild(turn("revision", "revision", rd.revision_response));
        });
      }
    },
    pairs: {
      label: function (r) { return "p=" + Number(r.p_chosen).toFixed(2) + " · " + r.prompt; },
      render: function (r) {
        panel.appendChild(turn("prompt", "prompt" + (r.kind ? " (" + r.kind + ")" : ""), r.prompt));
        panel.appendChild(turn("chosen", "chosen", r.chosen, [["good_refusal", "p(chosen) " + Number(r.p_chosen).toFixed(3)]]));
        panel.appendChild(turn("rejected", "rejected", r.rejected));
        if (r.questions && r.questions.length) {
          var reasons = r.questions.some(function (q) { return q.reasoning; });
          var cols = ["principle", "option (A) is", "p(A)", "p(chosen)"].concat(reasons ? ["reasoning"] : []);
          var tb = el("table", "data"), head = el("tr");
          cols.forEach(function (h) { head.appendChild(el("th", null, h)); });
          var thead = el("thead"); thead.appendChild(head); tb.appendChild(thead);
          var body = el("tbody");
          var num = function (x) { return x === null || x === undefined ? "–" : Number(x).toFixed(3); };
          r.questions.forEach(function (q) {
            var tr = el("tr");
            tr.appendChild(el("th", null, q.principle_id));
            tr.appendChild(el("td", null, q.first));
            tr.appendChild(el("td", null, num(q.p_option_a)));
            tr.appendChild(el("td", null, num(q.p_chosen)));
            if (reasons) tr.appendChild(el("td", "small", q.reasoning || ""));
            body.appendChild(tr);
          });
          tb.appendChild(body);
          panel.appendChild(el("h3", null, "The feedback model's questions"));
          panel.appendChild(tb);
        }
      }
    },
    across: {
      label: function (r) { return "[" + r.kind + "] " + r.prompt; },
      render: function (r) {
        panel.appendChild(turn("prompt", (r.kind === "red_team" ? "held-out red-team" : "held-out helpful") + " prompt", r.prompt));
        r.answers.forEach(function (a) {
          var pname = r.kind === "red_team" ? "judge p(harmless) " : "judge p(helpful) ";
          panel.appendChild(turn("answer", a.model, a.answer, [a.oracle ? [a.oracle, a.oracle.replace("_", " ")] : null, a.p === null || a.p === undefined ? null : ["info", pname + Number(a.p).toFixed(3)]]));
        });
        if (r.comparisons.length) {
          var ul = el("ul");
          r.comparisons.forEach(function (c) { ul.appendChild(el("li", null, c.label + ": p(" + c.better + " better) " + Number(c.p).toFixed(3))); });
          panel.appendChild(el("h3", null, "AI judge, pairwise"));
          panel.appendChild(ul);
        }
      }
    }
  };

  function show(i) {
    panel.textContent = "";
    if (!visible.length) { panel.appendChild(el("div", "empty", "Nothing to show: this stage has not run (or nothing matches the filter).")); return; }
    i = Math.max(0, Math.min(visible.length - 1, i));
    sel.value = String(i);
    views[current].render(data[current][visible[i]]);
  }
  function fill() {
    var q = filter.value.trim().toLowerCase(), rows = data[current] || [];
    visible = [];
    rows.forEach(function (r, i) { if (!q || JSON.stringify(r).toLowerCase().indexOf(q) >= 0) visible.push(i); });
    sel.textContent = "";
    visible.forEach(function (ri, i) { var o = el("option", null, "#" + (ri + 1) + "  " + short(views[current].label(rows[ri]))); o.value = String(i); sel.appendChild(o); });
    show(0);
  }
  function select(name) {
    current = name;
    Array.prototype.forEach.call(document.querySelectorAll(".tab"), function (t) { t.classList.toggle("active", t.getAttribute("data-tab") === name); });
    fill();
  }
  Array.prototype.forEach.call(document.querySelectorAll(".tab"), function (t) { t.addEventListener("click", function () { select(t.getAttribute("data-tab")); }); });
  sel.addEventListener("change", function () { show(Number(sel.value)); });
  filter.addEventListener("input", fill);
  document.getElementById("ex-prev").addEventListener("click", function () { show(Number(sel.value) - 1); });
  document.getElementById("ex-next").addEventListener("click", function () { show(Number(sel.value) + 1); });
  var first = ["across", "critiques", "pairs"].filter(function (k) { return data[k] && data[k].length; })[0] || "critiques";
  select(first);
  document.body.setAttribute("data-ready", "1");
})();
"""


def _json_for_script(obj: Any) -> str:
    """JSON safe inside <script>: no "<", ">" or "&" survive, so no "</script>" or "<!--" can end or change it."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, default=str)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _finite(x: Any) -> Any:
    """NaN and infinities become null (JSON has neither)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def render(run_dir: Path, d: dict[str, Any]) -> str:
    examples = _finite({k: d[k] for k in ("critiques", "pairs", "across")})
    title = f"cai report — {run_dir.name}"
    csp = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{CSS}</style>
</head>
<body>
<header><h1>{esc(title)}</h1><p>{esc(run_dir.resolve())} · generated {esc(time.strftime("%Y-%m-%d %H:%M"))} by cai</p></header>
<nav><a href="#overview">Run</a><a href="#evaluation">Evaluation</a><a href="#training">Training</a><a href="#labels">Labels</a><a href="#examples">Examples</a></nav>
<main>
{section_overview(d, run_dir)}
{section_evaluation(d)}
{section_training(d)}
{section_labels(d)}
{section_examples(d)}
</main>
<script type="application/json" id="cai-data">{_json_for_script(examples)}</script>
<script>{JS}</script>
</body>
</html>
"""


def build(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the report of `run_dir` to `output` (default `<run_dir>/report.html`) and return its path."""
    from cai.errors import InputError

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run directory")
    try:
        d = collect(run_dir)
    except (json.JSONDecodeError, yaml.YAMLError, KeyError) as e:
        raise InputError(f"{run_dir}: a run file is unreadable: {e}") from None
    out = Path(output) if output is not None else run_dir / "report.html"
    atomic_write_text(out, render(run_dir, d))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cai report", description="Write a self-contained HTML report of a run.")
    parser.add_argument("run_dir", help="the run directory (run_dir of the config)")
    parser.add_argument("--output", help="where to write the page (default RUN_DIR/report.html)")
    args = parser.parse_args(argv)
    print(f"[report] {build(args.run_dir, args.output)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
