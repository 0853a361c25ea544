#!/usr/bin/env bash
# The datasets, into DATA_DIR: MNIST (what RotatedMNIST and ColoredMNIST are made from) and, when
# DATASETS is set, those datasets as well. LAUNCHER=dummy prints the command and downloads
# nothing, as every stage of a dry run.
source "$(dirname "$0")/_common.sh"
# shellcheck disable=SC2086  # DATASETS is a list
stage "$PY" -m domainbed.scripts.download --data_dir "$DATA_DIR" ${DATASETS:+--datasets $DATASETS}
