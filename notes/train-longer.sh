#!/usr/bin/env bash
# The bundled model's recipe (models/README.md: classification, lam=0.8, temperature 0.2 while training,
# seed width x 0.5, 112 px crops, scale augmentation --zoom 2, weight average --ema 0.999) at a chosen length,
# in the background. Defaults reproduce the bundled model (runs/zoom2-3k-ema, 3,000 steps); STEPS / ZOOM / EMA /
# SEED / OUT change the run (EMA=0: no average, as the runs before session 10; score it with notes/loss-comparison.py
# --runs runs --only NAME after touching OUT/DONE).
# Re-running resumes (--resume) from OUT/last.pt: a run resumes only with the STEPS, ZOOM, EMA and SEED it started with.
# THREADS=1 while other jobs share the 2 cores.
set -u
OUT=${OUT:-runs/zoom2-3k-ema}
resume=()
[ -f "$OUT/last.pt" ] && resume=(--resume)
OMP_NUM_THREADS=${THREADS:-2} MKL_NUM_THREADS=${THREADS:-2} .venv/bin/python cli.py train --data ../shared/data/train \
    --out "$OUT" --cache runs/cache112 --width-mult 0.5 --image-size 112 --zoom "${ZOOM:-2}" --batch-size 16 \
    --steps "${STEPS:-3000}" --val-every 100 --val-limit 40 --log-every 50 --workers 1 \
    --loss classification --loss-option lam=0.8 --loss-option temperature=0.2 --ema "${EMA:-0.999}" --seed "${SEED:-0}" \
    "${resume[@]}" >>"$OUT.log" 2>&1
