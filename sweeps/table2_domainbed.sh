#!/usr/bin/env bash
# Tables 2 and 9 (and Fig. 2, drawn from the same runs): ERM_ITL against ERM, SagNet, CORAL,
# CDANN and RSC on six DomainBed datasets, multi-source, ResNet-50.
source "$(dirname "$0")/_common.sh"
# shellcheck disable=SC2086  # DATASETS and ALGORITHMS are lists
run_sweep multi_source table2 \
    --datasets ${DATASETS:-ColoredMNIST VLCS PACS TerraIncognita OfficeHome DomainNet} \
    --algorithms ${ALGORITHMS:-ERM SagNet CORAL CDANN RSC ERM_ITL} \
    --hparams "$RESNET50_2021"
