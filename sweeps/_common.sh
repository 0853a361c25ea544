# Shared settings and the launch routine of the paper-table launch files. Every setting can be
# overridden from the environment (the Makefile's table targets pass theirs this way).
# DomainBed's protocol: 20 random hyperparameter draws, 3 trials, all test-environment choices.
set -euo pipefail
PY=${PY:-python}
DATA_DIR=${DATA_DIR:-data}
OUT_ROOT=${OUT_ROOT:-out/sweeps}
N_HPARAMS=${N_HPARAMS:-20}
N_TRIALS=${N_TRIALS:-3}
LAUNCHER=${LAUNCHER:-local}
COMMAND=${1:-launch}
# The paper's baselines come from the 2021 DomainBed: torchvision's ImageNet ResNet-50 with frozen
# BatchNorm. The current public defaults (AugMix ResNet-50, trainable BatchNorm) differ.
RESNET50_2021='{"resnet50_augmix": false, "freeze_bn": true}'
RESNET18='{"resnet18": true, "resnet50_augmix": false, "freeze_bn": true}'

# run_sweep KIND NAME FLAG...: one sweep into $OUT_ROOT/NAME, KIND multi_source or single_source.
# `launch` first prints the plan (jobs to run, estimated cost and what the estimate rests on) and
# asks unless YES=1, then launches what is missing and continues interrupted jobs from their
# checkpoints (--resume_incomplete; live jobs are left alone), so rerunning resumes the sweep.
# Other commands (delete_incomplete, delete_all) go to the sweep as they are.
# Optional: STEPS (steps per job), MAX_PARALLEL (local launcher), EXTRA (more sweep flags).
run_sweep() {
    local kind=$1 name=$2
    shift 2
    local module=domainbed.scripts.sweep
    [ "$kind" = single_source ] && module=domainbed_itl.scripts.sweep_single_source
    local flags=("$@" --n_hparams "$N_HPARAMS" --n_trials "$N_TRIALS" --data_dir "$DATA_DIR"
                 --output_dir "$OUT_ROOT/$name" --command_launcher "$LAUNCHER")
    if [ -n "${STEPS:-}" ]; then flags+=(--steps "$STEPS"); fi
    if [ -n "${MAX_PARALLEL:-}" ]; then flags+=(--max_parallel "$MAX_PARALLEL"); fi
    # shellcheck disable=SC2206  # EXTRA is a list of flags
    flags+=(${EXTRA:-})
    if [ "$COMMAND" = launch ]; then
        local yes=()
        if [ "${YES:-0}" = 1 ]; then yes=(--yes); fi
        "$PY" -m domainbed_itl.scripts.plan --kind "$kind" launch "${flags[@]}" "${yes[@]}"
        "$PY" -m "$module" launch "${flags[@]}" --skip_confirmation --resume_incomplete
    else
        local yes=()
        if [ "${YES:-0}" = 1 ]; then yes=(--skip_confirmation); fi
        "$PY" -m "$module" "$COMMAND" "${flags[@]}" "${yes[@]}"
    fi
}
