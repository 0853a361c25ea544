#!/usr/bin/env bash
# Table 6: a loss meta-learned on ColoredMNIST itself against the generic ITL, both with ERM.
# Step 1 meta-learns on ColoredMNIST's domains; step 2 sweeps ERM_ITL with that loss and with ITL.
source "$(dirname "$0")/_common.sh"
META_DIR="$OUT_ROOT/table6/meta"
$PY -m domainbed_itl.meta.train --dataset ColoredMNIST --data_dir "$DATA_DIR" \
    --output_dir "$META_DIR" ${META_EXTRA:-}
for variant in generic task; do
    hparams='{}'
    [ "$variant" = task ] && hparams="$(cat "$META_DIR/learned_loss.json")"
    $PY -m domainbed.scripts.sweep launch --datasets ColoredMNIST --algorithms ERM_ITL \
        --hparams "$hparams" --n_hparams "$N_HPARAMS" --n_trials "$N_TRIALS" \
        --data_dir "$DATA_DIR" --output_dir "$OUT_ROOT/table6/$variant" \
        --command_launcher "$LAUNCHER" --skip_confirmation ${EXTRA:-}
done
