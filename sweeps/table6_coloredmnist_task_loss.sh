#!/usr/bin/env bash
# Table 6: a loss meta-learned on ColoredMNIST itself (task-specific) against the generic one
# meta-learned on RotatedMNIST, both deployed on ColoredMNIST.
# A task-specific loss must not have seen the domain it is tested on, so this is leave-one-out:
# for each environment e of ColoredMNIST, META_SEEDS meta-training runs on the other two
# environments ($OUT_ROOT/table6/meta/without_env<e>), each deployed on e. The generic losses
# are Table 5's runs (RotatedMNIST without environment 0, $OUT_ROOT/table5/meta: the same
# command, so whichever table runs first trains them and the other resumes them). Every loss is
# deployed with CE and the published ITL, N_TRIALS trial seeds, in
# $OUT_ROOT/table6/deploy/env<e>; then Table 6 from those records. Rerunning resumes every stage.
N_TRIALS=${N_TRIALS:-5}
source "$(dirname "$0")/_common.sh"
check_meta_settings
GENERIC_DIR="$OUT_ROOT/table5/meta"

meta_train "$GENERIC_DIR" --datasets RotatedMNIST --exclude_envs 0
for env in 0 1 2; do
    task_dir="$OUT_ROOT/table6/meta/without_env$env"
    meta_train "$task_dir" --datasets ColoredMNIST --exclude_envs "$env"
    specs=()
    learned_specs specs "$GENERIC_DIR" RotatedMNIST generic
    learned_specs specs "$task_dir" ColoredMNIST task
    deploy "$OUT_ROOT/table6/deploy/env$env" ColoredMNIST "$env" "${specs[@]}"
done
collect "$OUT_ROOT/table6/deploy" 6
