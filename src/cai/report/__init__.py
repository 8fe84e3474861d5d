"""One self-contained HTML page about a run: its stages, what it measured, how training went, what the models said.

    cai report RUN_DIR                              -> RUN_DIR/report.html
    python -m cai.report RUN_DIR [--output FILE]
    report.build(run_dir)                           (cai run calls it when evaluation is done)

The package, top to bottom:

    collect.py          reads the run: stages from cai.registry with their status, wall time and
                        backend from the run store (cai.lifecycle), training logs (cai.trainlog),
                        the typed records of every stage (cai.records), evaluate/metrics.json
    charts.py           small inline SVG charts: bars, lines against steps, a histogram
    sections.py         the HTML sections: run, stages, evaluation, training, labels, examples
    static/report.css   the page's style    } real files, read here at build time and inlined
    static/report.js    the example browser }

The page opens from disk with no server and no network: CSS, JavaScript and the plots are all in
the file, and its Content-Security-Policy forbids loading anything and runs only the page's own
style and script (allowed by their SHA-256 hashes, so no other inline script can run). Links to
the training logs are relative, so they keep working when the run directory is moved. A part of the
run that is missing is shown as "not run", so the report works on a partial run.

Model outputs are untrusted text. Everything written into the HTML by Python goes through
`html.escape`; the examples are embedded as JSON (with "<", ">" and "&" escaped, so no string can
close the script element) and put on the page by the browser with `textContent`, never `innerHTML`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import time
from importlib import resources
from pathlib import Path
from typing import Any

from cai.errors import InputError
from cai.report.charts import esc
from cai.report.collect import RunData, collect
from cai.report.sections import section_evaluation, section_examples, section_labels, section_overview, section_stages, section_training
from cai.rundir import RunDir
from cai.store import atomic_write_text

__all__ = ["build", "collect", "main", "render", "static_text"]


def static_text(name: str) -> str:
    """A file of static/ (report.css, report.js), as shipped in the package."""
    text = resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")
    closing = "</style" if name.endswith(".css") else "</script"
    if closing in text.lower():  # it would end its element early
        raise ValueError(f"cai/report/static/{name} must not contain {closing!r}")
    return text


def csp_hash(text: str) -> str:
    """A CSP source for an inline element's exact text: 'sha256-<base64 digest>'."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def json_for_script(obj: Any) -> str:
    """JSON safe inside <script>: no "<", ">" or "&" survive, so no "</script>" or "<!--" can end or change it."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, default=str)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def finite_json(x: Any) -> Any:
    """NaN and infinities become null (JSON has neither)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite_json(v) for k, v in x.items()}
    if isinstance(x, list):
        return [finite_json(v) for v in x]
    return x


def render(run: RunData, page: Path) -> str:
    """The page of `run`, to be written at `page` (links to the logs are relative to it)."""
    css, js = static_text("report.css"), static_text("report.js")
    csp = f"default-src 'none'; style-src {csp_hash(css)}; script-src {csp_hash(js)}; img-src data:; base-uri 'none'; form-action 'none'"
    title = f"cai report — {run.root.resolve().name}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{css}</style>
</head>
<body>
<header><h1>{esc(title)}</h1><p>{esc(run.root.resolve())} · generated {esc(time.strftime("%Y-%m-%d %H:%M"))} by cai</p></header>
<nav><a href="#overview">Run</a><a href="#stages">Stages</a><a href="#evaluation">Evaluation</a><a href="#training">Training</a><a href="#labels">Labels</a><a href="#examples">Examples</a></nav>
<main>
{section_overview(run)}
{section_stages(run, page)}
{section_evaluation(run)}
{section_training(run, page)}
{section_labels(run)}
{section_examples(run)}
</main>
<script type="application/json" id="cai-data">{json_for_script(finite_json(run.examples))}</script>
<script>{js}</script>
</body>
</html>
"""


def build(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the report of `run_dir` to `output` (default `<run_dir>/report.html`) and return its path."""
    rd = RunDir(run_dir)
    if not rd.root.is_dir():
        raise InputError(f"{rd.root}: no such run directory")
    out = Path(output) if output is not None else rd.report
    atomic_write_text(out, render(collect(rd.root), out))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cai report", description="Write a self-contained HTML report of a run.")
    parser.add_argument("run_dir", help="the run directory (run_dir of the config)")
    parser.add_argument("--output", help="where to write the page (default RUN_DIR/report.html)")
    args = parser.parse_args(argv)
    print(f"[report] {build(args.run_dir, args.output)}")
    return 0
