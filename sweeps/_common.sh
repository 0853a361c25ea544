# Shared settings for the paper-table launch files; each can be overridden from the environment.
# DomainBed's protocol: 20 random hyperparameter draws, 3 trials, all test-environment choices.
set -euo pipefail
PY=${PY:-python}
DATA_DIR=${DATA_DIR:-data}
OUT_ROOT=${OUT_ROOT:-out/sweeps}
N_HPARAMS=${N_HPARAMS:-20}
N_TRIALS=${N_TRIALS:-3}
LAUNCHER=${LAUNCHER:-local}
# The paper's baselines come from the 2021 DomainBed: torchvision's ImageNet ResNet-50 with frozen
# BatchNorm. The current public defaults (AugMix ResNet-50, trainable BatchNorm) differ.
RESNET50_2021='{"resnet50_augmix": false, "freeze_bn": true}'
RESNET18='{"resnet18": true, "resnet50_augmix": false, "freeze_bn": true}'
