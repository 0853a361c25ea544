#!/usr/bin/env bash
# Table 1: PACS with a ResNet-18, CE/BCE/SCE/iSCE/ITL with ERM, and RSC with CE/ITL.
# The paper used the classic PACS split of Li et al. (2018); this runs the same comparison under
# DomainBed's protocol and splits, so numbers are comparable among the rows, not with Table 1.
source "$(dirname "$0")/_common.sh"
# shellcheck disable=SC2086  # DATASETS and ALGORITHMS are lists
run_sweep multi_source table1 --datasets ${DATASETS:-PACS} \
    --algorithms ${ALGORITHMS:-ERM ERM_BCE ERM_SCE ERM_iSCE ERM_ITL RSC RSC_ITL} \
    --hparams "$RESNET18" --single_test_envs
