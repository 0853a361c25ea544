# Shared settings and the launch routine of the paper-table launch files. Every setting can be
# overridden from the environment (the Makefile passes every one of its variables this way, so a
# value is data, never shell code). Values are quoted where used; the list variables (DATASETS,
# ALGORITHMS, META_SEEDS, the *_EXTRA flags ...) are split into words on purpose.
# DomainBed's protocol: 20 random hyperparameter draws, 3 trials, all test-environment choices.
set -euo pipefail
set -f  # no globbing: list variables are split into words, never into file names
PY=${PY:-python}
DATA_DIR=${DATA_DIR:-data}
OUT_ROOT=${OUT_ROOT:-out}
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

# --- Meta-training tables and figures (Tables 5 and 6, Figs. 3 and 6) -------------------------
# These stages run in this shell, one after another; each resumes when rerun (meta-training
# after its last outer step, deployment after its last finished run). LAUNCHER=dummy prints
# every command and runs nothing; other launchers do not apply to them.
# META_STEPS: outer steps (the paper's 200); META_SEEDS: meta-training seeds; META_ORDER: the
# Taylor order; META_EXTRA: more meta_train flags (e.g. --device cuda); DEPLOY: mlp (the
# meta-learner's MLP, scripts.deploy) or domainbed (DomainBed's ERM, compare_losses); STEPS:
# training steps per deployment run (each command's default when unset); DEPLOY_EXTRA: more
# deployment flags; COLLECT_FLAGS: paper_tables flags (default --compare_paper).
META_STEPS=${META_STEPS:-200}
META_SEEDS=${META_SEEDS:-0 1 2 3 4}
META_ORDER=${META_ORDER:-4}
DEPLOY=${DEPLOY:-mlp}
COLLECT_FLAGS=${COLLECT_FLAGS-"--compare_paper"}

# check_meta_settings: refuse, before any stage runs, settings these stages cannot use.
check_meta_settings() {
    local problem=""
    case "$LAUNCHER" in local | dummy) ;; *)
        problem="LAUNCHER=$LAUNCHER: these stages run in this shell; use local or dummy" ;;
    esac
    case "$DEPLOY" in mlp | domainbed) ;; *)
        problem="DEPLOY=$DEPLOY: choose mlp or domainbed" ;;
    esac
    # A whole number before bash's arithmetic sees it (which would run a `$(...)` in it).
    case "$N_TRIALS" in "" | *[!0-9]*)
        problem="N_TRIALS=$N_TRIALS: give a whole number of trial seeds" ;;
    esac
    if [ -n "$problem" ]; then
        echo "$(basename "$0"): error: $problem" >&2
        exit 2
    fi
}

# stage CMD...: run one stage, or with LAUNCHER=dummy print it (shell-quoted) instead.
stage() {
    if [ "$LAUNCHER" = dummy ]; then
        printf '%q ' "$@"
        echo
    else
        "$@"
    fi
}

# meta_train OUT FLAG...: meta_train_many into OUT with the paper's settings, META_STEPS outer
# steps, one run per order of META_ORDER and seed of META_SEEDS
# (OUT/<dataset>_order<k>_seed<s>).
meta_train() {
    local out=$1
    shift
    # shellcheck disable=SC2086  # META_ORDER, META_SEEDS and META_EXTRA are lists
    stage "$PY" -m domainbed_itl.scripts.meta_train_many --data_dir "$DATA_DIR" --output_dir "$out" \
        --preset paper --outer_steps "$META_STEPS" --orders $META_ORDER --seeds $META_SEEDS \
        "$@" ${META_EXTRA:-}
}

# learned_specs ARRAY META_DIR DATASET PREFIX: append to the array named ARRAY the --learned
# LABEL=FILE of every META_SEEDS run of DATASET under META_DIR, labelled PREFIX<seed> (named,
# not searched for: the runs may not exist yet when LAUNCHER=dummy prints the commands). An
# array, so that a META_DIR holding spaces stays one word.
learned_specs() {
    local -n specs_into=$1
    local seed
    for seed in $META_SEEDS; do
        specs_into+=("$4$seed=$2/$3_order${META_ORDER}_seed$seed/learned_loss.json")
    done
}

# deploy OUT DATASET "ENVS" LABEL=FILE...: CE, the published ITL and each learned loss trained
# on DATASET's other environments and tested on each of ENVS, N_TRIALS trial seeds, into OUT.
deploy() {
    local out=$1 dataset=$2 envs=$3 spec
    shift 3
    local flags=(--data_dir "$DATA_DIR" --output_dir "$out" --dataset "$dataset")
    # shellcheck disable=SC2206  # ENVS is a list
    flags+=(--test_envs $envs --trial_seeds $(seq 0 $((N_TRIALS - 1))))
    for spec in "$@"; do flags+=(--learned "$spec"); done
    if [ -n "${STEPS:-}" ]; then flags+=(--steps "$STEPS"); fi
    # shellcheck disable=SC2206  # DEPLOY_EXTRA is a list of flags
    flags+=(${DEPLOY_EXTRA:-})
    local module=domainbed_itl.scripts.deploy
    if [ "$DEPLOY" = domainbed ]; then
        module=domainbed_itl.scripts.compare_losses  # its runs are sweep jobs: MAX_PARALLEL applies
        if [ -n "${MAX_PARALLEL:-}" ]; then flags+=(--max_parallel "$MAX_PARALLEL"); fi
    fi
    stage "$PY" -m "$module" "${flags[@]}"
}

# collect DIR TABLE: print a table from the deployment records under DIR.
collect() {
    # shellcheck disable=SC2086  # COLLECT_FLAGS is a list of flags
    stage "$PY" -m domainbed_itl.scripts.paper_tables --input_dir "$1" --table "$2" \
        $COLLECT_FLAGS
}
