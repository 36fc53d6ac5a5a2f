#!/usr/bin/env bash
# Reproduce the paper's comparison for one task and feature extractor: HiVE-MIL and every baseline
# with the published hyper-parameters (seed 1, dropout, early stopping, lr 1e-4, 5 folds, 16 shots,
# cross-entropy). A thin wrapper around reproduce.py, which trains every (model, fold) as a Ray task
# (a local Ray instance, or a running cluster with --address auto) and writes RESULTS/table.md,
# table.csv and table_folds.csv (mean ± std test ACC/AUC/F1 per model).
#
# usage: scripts/reproduce.sh TASK EXTRACTOR DATA_ROOT [RESULTS] [extra main.py args...]
#   e.g. scripts/reproduce.sh tcga_brca plip /data/features results --text_tower /weights/plip
# Extra args may also be reproduce.py flags (--address auto, --retries N, ...).
# Environment: PYTHON (default: python), MODELS (space-separated model types; default: all below).
set -euo pipefail

usage() {
    echo "usage: $0 TASK EXTRACTOR DATA_ROOT [RESULTS] [extra main.py args...]" >&2
    echo "  TASK       tcga_brca | tcga_nsclc | tcga_rcc | demo | a custom task" >&2
    echo "  EXTRACTOR  plip | quiltnet | conch | ... (features under DATA_ROOT/<TASK>_<EXTRACTOR>/)" >&2
    echo "  RESULTS    results folder (default: results)" >&2
    exit 2
}

if [[ $# -lt 3 ]]; then
    usage
fi
case "$1" in -h | --help) usage ;; esac
TASK=$1
EXTRACTOR=$2
DATA_ROOT=$3
shift 3
RESULTS=results
if [[ $# -gt 0 && $1 != -* ]]; then
    RESULTS=$1
    shift
fi
for value in "$TASK" "$EXTRACTOR" "$DATA_ROOT"; do
    if [[ -z $value || $value == -* ]]; then
        usage
    fi
done
if [[ ! -d $DATA_ROOT ]]; then
    echo "error: DATA_ROOT $DATA_ROOT is not a folder" >&2
    exit 2
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python}
MODELS=${MODELS:-"HiVE_MIL zero_shot ViLa_MIL mean_pool max_pool MIL_fc ABMIL TransMIL LiteMIL"}
read -r -a MODEL_LIST <<<"$MODELS"

exec "$PYTHON" "$ROOT/reproduce.py" --tasks "$TASK" --extractors "$EXTRACTOR" --models "${MODEL_LIST[@]}" \
    --seed 1 --drop_out --early_stopping --lr 1e-4 --k 5 --few_shot_num 16 --feature_dim 512 --bag_loss ce \
    --results_dir "$RESULTS" --data_root_dir "$DATA_ROOT" "$@"
