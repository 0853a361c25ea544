#!/usr/bin/env bash
# The learned loss: one meta-training run on RotatedMNIST with the paper's settings
# (--preset paper, META_STEPS outer steps) in $OUT_ROOT/meta. Its plan (outer steps left and
# their estimated cost) comes first and asks unless YES=1; rerunning resumes after the last
# outer step. LAUNCHER=dummy prints the plan and the command and trains nothing.
source "$(dirname "$0")/_common.sh"
check_meta_settings
META_DIR="$OUT_ROOT/meta"
yes=()
if [ "${YES:-0}" = 1 ] || [ "$LAUNCHER" = dummy ]; then yes=(--yes); fi
"$PY" -m domainbed_itl.scripts.plan meta_train --output_dir "$META_DIR" \
    --outer_steps "$META_STEPS" "${yes[@]}"
stage "$PY" -m domainbed_itl.scripts.meta_train --dataset RotatedMNIST --data_dir "$DATA_DIR" \
    --output_dir "$META_DIR" --preset paper --outer_steps "$META_STEPS"
if [ "$LAUNCHER" != dummy ]; then
    echo "Learned loss: $META_DIR/learned_loss.json (ERM_ITL's --hparams)"
fi
