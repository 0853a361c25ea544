#!/usr/bin/env bash
# Table 3: ERM on PACS (ResNet-50) with hand-designed robust losses against ITL.
source "$(dirname "$0")/_common.sh"
$PY -m domainbed.scripts.sweep "${1:-launch}" --datasets PACS \
    --algorithms ERM ERM_BCE ERM_Focal ERM_SCE ERM_GCE ERM_LS ERM_iSCE ERM_ITL \
    --hparams "$RESNET50_2021" \
    --n_hparams "$N_HPARAMS" --n_trials "$N_TRIALS" --data_dir "$DATA_DIR" \
    --output_dir "$OUT_ROOT/table3" --command_launcher "$LAUNCHER" ${EXTRA:-}
