#!/bin/bash
# Kill `cai run` with SIGKILL again and again, at moments that land in different stages, restart it
# each time, then compare the finished run with an uninterrupted one (runs/toyworld, from `make demo`).
#
#   make demo && scripts/check_kill_resume.sh [RUN_DIR]
set -u
cd "$(dirname "$0")/.."
RUN=${1:-/tmp/cai-kill-resume}
LOG=$RUN.log
rm -rf "$RUN"
for t in 8 12 12 12 12 15 15 15 15 20 20 20 20 20; do
  .venv/bin/cai run configs/toyworld.yaml --set run_dir="$RUN" > "$LOG" 2>&1 &
  pid=$!
  sleep "$t"
  if ! kill -0 "$pid" 2>/dev/null; then wait "$pid"; echo "finished (rc $?) within ${t}s"; break; fi
  kill -9 "$pid"; wait "$pid" 2>/dev/null
  echo "SIGKILL after ${t}s, during: $(tr '\r' '\n' < "$LOG" | grep -oE '^\[[a-z-]+\]|^[a-z -]+:' | tail -1)"
done
.venv/bin/cai run configs/toyworld.yaml --set run_dir="$RUN" > "$LOG" 2>&1 || { echo "final run failed:"; tail -5 "$LOG"; exit 1; }
.venv/bin/python - "$RUN" <<'PY'
import json, sys
from pathlib import Path

a, b = Path("runs/toyworld"), Path(sys.argv[1])
same = lambda f: (a / f).read_bytes() == (b / f).read_bytes()
for f in ("critique/records.jsonl", "sample/pairs.jsonl"):
    print(f, "identical" if same(f) else "DIFFERENT")
pa = {r["pair_id"]: r for r in map(json.loads, (a / "label/preferences.jsonl").open())}
pb = {r["pair_id"]: r for r in map(json.loads, (b / "label/preferences.jsonl").open())}
print("label: same pairs", pa.keys() == pb.keys(), "| same winners", all(pa[k]["chosen"] == pb[k]["chosen"] for k in pa),
      "| max |dp|", max(abs(pa[k]["p_chosen"] - pb[k]["p_chosen"]) for k in pa))
ma, mb = (json.loads((d / "evaluate/metrics.json").read_text())["models"] for d in (a, b))
print("oracle rates identical:", all(ma[m][k] == mb[m][k] for m in ma for k in ("red_team", "helpful")))
PY
