#!/usr/bin/env bash
# One entry for a fresh machine: sets up .venv (pinned by constraints.txt) when needed, then
#   ./run.sh test [pytest args]   runs the test suite
#   ./run.sh demo [overrides]     synthetic world -> shards -> GLEAM-C training (local Ray);
#                                 overrides go to jobs/train_core.py
#   ./run.sh serve                gallery index + GLEAM-X (after demo), then `serve run` on :8000
#   ./run.sh bench                runs the benchmarks (JSON under benchmarks/results/)
#   ./run.sh setup                only installs
set -euo pipefail
cd "$(dirname "$0")"
VENV="${GLEAM_VENV:-.venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.gleam-installed"

setup() {
  if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
  fi
  if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ constraints.txt -nt "$STAMP" ]; then
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet -c constraints.txt -e '.[cpu,dev]'
    touch "$STAMP"
  fi
  export RAY_USAGE_STATS_ENABLED=0
}

# The web page test drives the system's Chromium (Debian package; playwright never downloads a
# browser here). Installed when missing and this user may use apt.
browser() {
  if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
      || echo "warning: could not install chromium; the web page test will fail" >&2
  fi
}

command="${1:-test}"
shift || true
case "$command" in
  setup) setup ;;
  test) setup; browser; exec "$PY" -m pytest "$@" ;;
  demo)
    setup
    "$PY" jobs/make_shards.py --config configs/make-shards-local.yaml
    "$PY" jobs/inspect_shards.py data/synth
    "$PY" jobs/train_core.py --config configs/local-cpu.yaml "$@"
    "$PY" jobs/contact_sheet.py --out runs/contact_sheet.png --locations 4 --seed 0
    ;;
  serve)
    setup
    # GLEAM-C: the kept checkpoint models/gleam-c-lite0-synth (MODEL_CARD.md) when present, else the
    # demo's run; queries are then embedded with the checkpoint the index records (checkpoint: "")
    if [ -f models/gleam-c-lite0-synth/config.json ]; then GLEAM_C=gleam-c-lite0-synth
      [ -f data/synth/manifest.json ] || "$PY" jobs/make_shards.py --config configs/make-shards-local.yaml
    else GLEAM_C=runs/gleam-c-local/final; [ -f "$GLEAM_C/config.json" ] || "$0" demo; fi
    "$PY" jobs/build_index.py --config configs/build-index-local.yaml checkpoint="$GLEAM_C"
    mkdir -p runs && sed 's#^\( *\)checkpoint: .*#\1checkpoint: ""#' configs/serve-local.yaml > runs/serve-local.yaml
    # claims the fact heads give P < 0.6 are dropped from explanations (the threshold bench_explain chose on val)
    [ -f runs/gleam-x-local/final/config.json ] || "$PY" jobs/train_explain.py --config configs/explain-local.yaml \
      model.vision.claim_threshold=0.6
    PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "$VENV/bin/serve" run runs/serve-local.yaml
    ;;
  bench)
    setup
    for bench in benchmarks/bench_*.py; do "$PY" "$bench"; done
    ;;
  *) echo "usage: ./run.sh {setup|test|demo|serve|bench} [args]" >&2; exit 2 ;;
esac
