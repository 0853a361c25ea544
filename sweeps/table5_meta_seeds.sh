#!/usr/bin/env bash
# Table 5 and Fig. 3: how much the learned loss depends on its meta-training seed.
# 1. META_SEEDS meta-training runs on RotatedMNIST without environment 0 (the paper's settings,
#    META_STEPS outer steps), in $OUT_ROOT/table5/meta; Fig. 3 (their mean curve) is drawn from
#    them into $OUT_ROOT/fig3.png.
# 2. Each seed's loss deployed, with CE and the published ITL, on RotatedMNIST's environment 0
#    (never seen in meta-training) and on ColoredMNIST's three environments, N_TRIALS trial
#    seeds each, in $OUT_ROOT/table5/deploy.
# 3. Table 5 from those records.
# `bash sweeps/table5_meta_seeds.sh fig3` stops after step 1. Rerunning resumes every stage.
N_TRIALS=${N_TRIALS:-5}
source "$(dirname "$0")/_common.sh"
check_meta_settings
case "$COMMAND" in launch | fig3) ;; *)
    echo "$(basename "$0"): error: unknown command $COMMAND; choose launch or fig3" >&2
    exit 2 ;;
esac
META_DIR="$OUT_ROOT/table5/meta"
DEPLOY_DIR="$OUT_ROOT/table5/deploy"

meta_train "$META_DIR" --datasets RotatedMNIST --exclude_envs 0
stage "$PY" -m domainbed_itl.scripts.meta_figures fig3 --runs "$META_DIR" --out "$OUT_ROOT/fig3.png"
[ "$COMMAND" = fig3 ] && exit 0

specs=()
learned_specs specs "$META_DIR" RotatedMNIST seed
deploy "$DEPLOY_DIR/RotatedMNIST" RotatedMNIST 0 "${specs[@]}"
deploy "$DEPLOY_DIR/ColoredMNIST" ColoredMNIST "0 1 2" "${specs[@]}"
collect "$DEPLOY_DIR" 5
