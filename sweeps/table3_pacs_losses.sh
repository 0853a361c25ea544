#!/usr/bin/env bash
# Table 3: ERM on PACS (ResNet-50) with hand-designed robust losses against ITL.
source "$(dirname "$0")/_common.sh"
# shellcheck disable=SC2086  # DATASETS and ALGORITHMS are lists
run_sweep multi_source table3 --datasets ${DATASETS:-PACS} \
    --algorithms ${ALGORITHMS:-ERM ERM_BCE ERM_Focal ERM_SCE ERM_GCE ERM_LS ERM_iSCE ERM_ITL} \
    --hparams "$RESNET50_2021"
