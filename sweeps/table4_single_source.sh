#!/usr/bin/env bash
# Tables 4 and 10: single-source DG. Each job trains on one domain and is tested on the others;
# ERM, CORAL, SagNet, Mixup and ITL-Net (ERM_ITL) on VLCS, PACS, TerraIncognita and OfficeHome
# with DomainBed's 2021 ResNet-50. Table 10 details Table 4's runs (its rows lack Mixup).
source "$(dirname "$0")/_common.sh"
# shellcheck disable=SC2086  # DATASETS and ALGORITHMS are lists
run_sweep single_source table4 \
    --datasets ${DATASETS:-VLCS PACS TerraIncognita OfficeHome} \
    --algorithms ${ALGORITHMS:-ERM CORAL SagNet Mixup ERM_ITL} \
    --hparams "$RESNET50_2021"
