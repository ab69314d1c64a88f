#!/usr/bin/env bash
# Loss comparison for issue #9: every variant trains on the same split, with the same seed, crops,
# batch and step count, two at a time (one CPU thread each) on the 2-core machine.
# Re-running resumes unfinished runs (--resume) and skips finished ones.
#   bash notes/loss-comparison.sh            # from the repository root
set -u
STEPS=${STEPS:-800}
OUT=${OUT:-runs/cmp}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
common=(--data ../shared/data/train --cache runs/cache112 --width-mult 0.5 --image-size 112 --batch-size 16
        --steps "$STEPS" --val-every 200 --val-limit 40 --log-every 50 --workers 1)
run() {  # NAME LOSS [OPTION...]
  local name=$1 loss=$2; shift 2
  local opts=() o
  for o in "$@"; do opts+=(--loss-option "$o"); done
  [ -f "$OUT/$name/DONE" ] && return 0
  local resume=()
  [ -f "$OUT/$name/last.pt" ] && resume=(--resume)
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$PY" cli.py train "${common[@]}" --out "$OUT/$name" --loss "$loss" \
      "${opts[@]}" "${resume[@]}" >>"$OUT/$name.log" 2>&1 && touch "$OUT/$name/DONE"
}
lane_a() {
  run huber huber
  run cls-l05-w300-r10 classification lam=0.5 warmup=300 reg=10 temperature=1.0
  run cls-l08 classification lam=0.8 temperature=1.0
}
lane_b() {
  run cls-l05 classification lam=0.5 temperature=1.0
  run cls-l05-w0-r10 classification lam=0.5 reg=10 temperature=1.0
  run cls-l05-w300-r0 classification lam=0.5 warmup=300 temperature=1.0
}
# a previous driver's trainers still running on these folders: wait for them, then resume / mark them done
while pgrep -f "cli.py train .*--out $OUT/" >/dev/null; do sleep 20; done
lane_a & lane_b & wait
