#!/usr/bin/env bash
# Table 2 / Table 9: ERM_ITL against ERM, SagNet, CORAL, CDANN and RSC on six DomainBed datasets.
source "$(dirname "$0")/_common.sh"
$PY -m domainbed.scripts.sweep "${1:-launch}" \
    --datasets ColoredMNIST VLCS PACS TerraIncognita OfficeHome DomainNet \
    --algorithms ERM SagNet CORAL CDANN RSC ERM_ITL \
    --hparams "$RESNET50_2021" \
    --n_hparams "$N_HPARAMS" --n_trials "$N_TRIALS" --data_dir "$DATA_DIR" \
    --output_dir "$OUT_ROOT/table2" --command_launcher "$LAUNCHER" ${EXTRA:-}
