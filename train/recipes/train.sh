#!/usr/bin/env bash
# Train one model with the project's recipes, in the background-friendly way: output to RUN.log,
# rerunning the same command resumes from RUN/last.pt (--resume) with the settings it started with.
#
#   train/recipes/train.sh DATA RUN [RECIPE]
#
# DATA: folder of colour photos; RUN: run folder. RECIPE (default lite0):
#   lite0  EfficientNet-Lite0 encoder (ImageNet-pretrained, frozen), 160 px crops, --zoom 2,
#          lambda 0.62, 3,000 steps: the bundled model's recipe
#   vgg    VGG encoder from scratch (the previous bundled recipe), width x 0.5, lambda 0.8
# The validation list is train/splits/val.txt (names relative to DATA); EXCLUDE='imagenet_*' leaves
# those photos out of training; REPEAT='bsds_*=2 urban100_*=2' makes matching photos stand N times in
# every epoch. STEPS, SEED, THREADS and EXTRA (more train options) override defaults.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 DATA RUN [lite0|vgg]" >&2; exit 2; }
DATA=$1 RUN=$2 RECIPE=${3:-lite0}
cd "$(dirname "$0")/../.."
case "$RECIPE" in
  lite0) model=(--encoder efficientnet-lite0 --width-mult 1.0 --encoder-lr-mult 0 --loss-option lam=0.62); size=160 ;;
  vgg)   model=(--encoder vgg --width-mult 0.5 --loss-option lam=0.8); size=112 ;;
  *) echo "recipe: expected lite0 or vgg, found $RECIPE" >&2; exit 2 ;;
esac
resume=(); [ -f "$RUN/last.pt" ] && resume=(--resume)
exclude=(); [ -n "${EXCLUDE:-}" ] && exclude=(--exclude "$EXCLUDE")
repeat=(); set -f; for spec in ${REPEAT:-}; do repeat+=(--repeat "$spec"); done; set +f
mkdir -p "$(dirname "$RUN")"
OMP_NUM_THREADS=${THREADS:-2} MKL_NUM_THREADS=${THREADS:-2} ${PYTHON:-.venv/bin/python} cli.py train --data "$DATA" \
    --val-list train/splits/val.txt "${exclude[@]}" "${repeat[@]}" --out "$RUN" --image-size "$size" --zoom 2 --batch-size 16 \
    --steps "${STEPS:-3000}" --val-every 500 --val-limit 137 --log-every 50 --workers 1 \
    --loss classification --loss-option temperature=0.2 --ema 0.999 --seed "${SEED:-0}" "${model[@]}" \
    ${EXTRA:-} "${resume[@]}" >>"$RUN.log" 2>&1
