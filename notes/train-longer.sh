#!/usr/bin/env bash
# A longer run of the loss comparison's winner (issue #9: classification, lam=0.8, no warm-up, no reg),
# 1,500 steps instead of 800, to see whether the bundled model gains from more training (score it with
# notes/loss-comparison.py --runs runs --only long-l08 after touching runs/long-l08/DONE).
# Re-running resumes (--resume) from OUT/last.pt. THREADS=1 while other jobs share the 2 cores.
# STEPS (default 1500) sets the run length; a run resumes only with the STEPS it started with.
set -u
OUT=${OUT:-runs/long-l08}
resume=()
[ -f "$OUT/last.pt" ] && resume=(--resume)
OMP_NUM_THREADS=${THREADS:-2} MKL_NUM_THREADS=${THREADS:-2} .venv/bin/python cli.py train --data ../shared/data/train \
    --out "$OUT" --cache runs/cache112 --width-mult 0.5 --image-size 112 --batch-size 16 --steps "${STEPS:-1500}" \
    --val-every 100 --val-limit 40 --log-every 50 --workers 1 \
    --loss classification --loss-option lam=0.8 --loss-option temperature=0.2 \
    "${resume[@]}" >>"$OUT.log" 2>&1
