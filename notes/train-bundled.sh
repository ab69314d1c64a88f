#!/usr/bin/env bash
# The bundled model's training run (issue #9 winner: classification, lam=0.5, no warm-up, reg=10).
# Re-running resumes (--resume) from runs/final/last.pt. THREADS=1 while other jobs share the 2 cores.
set -u
OUT=${OUT:-runs/final}
resume=()
[ -f "$OUT/last.pt" ] && resume=(--resume)
OMP_NUM_THREADS=${THREADS:-2} MKL_NUM_THREADS=${THREADS:-2} .venv/bin/python cli.py train --data ../shared/data/train \
    --out "$OUT" --cache runs/cache112 --width-mult 0.5 --image-size 112 --batch-size 16 --steps 1500 \
    --val-every 100 --val-limit 40 --log-every 50 --workers 1 \
    --loss classification --loss-option lam=0.5 --loss-option reg=10 --loss-option temperature=0.6 \
    "${resume[@]}" >>"$OUT.log" 2>&1
