#!/usr/bin/env bash
# Fig. 6: the Taylor order. Meta-training on RotatedMNIST's six environments (the paper's
# settings, META_STEPS outer steps) for each order of ORDERS (default 2 3 4 5) and each seed of
# META_SEEDS, in $OUT_ROOT/fig6/meta; then the inner and held-out accuracy per order (each run's
# mean over its last 10 outer steps, mean +/- std over seeds) in $OUT_ROOT/fig6.png.
# Rerunning resumes every run.
source "$(dirname "$0")/_common.sh"
check_meta_settings
META_DIR="$OUT_ROOT/fig6/meta"
# shellcheck disable=SC2086  # ORDERS is a list
META_ORDER="${ORDERS:-2 3 4 5}" meta_train "$META_DIR" --datasets RotatedMNIST
stage "$PY" -m domainbed_itl.scripts.meta_figures fig6 --runs "$META_DIR" --out "$OUT_ROOT/fig6.png"
