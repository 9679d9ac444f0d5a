#!/usr/bin/env bash
# Fine-tune the VQA testbed several ways side by side on one GPU: each NAME is a train-testbed
# stage config of the recipe (configs/testbed/NAME.yaml), run on cuda from the checkpoint and
# for the time budget the JSON overrides give (they win over the config). Checkpoints and logs
# go to OUT_DIR/NAME. The runs call arr_coc.training.testbed directly: no W&B run, the log is
# the progress bar and the final line.
#
#   bash benchmarks/gpu_train.sh OUT_DIR NAME... [-- JSON_OVERRIDES]
#   bash benchmarks/gpu_train.sh /tmp/tuned grown-more more -- '{"init": "arr_coc/assets/vqa-testbed", "time_budget_s": 360}'
#   bash benchmarks/gpu_train.sh /tmp/smoke grown pruned -- '{"init": "arr_coc/assets/vqa-testbed", "device": "cpu", "time_budget_s": 5}'
#
# Needs torch with CUDA, and transformers, kornia and pydantic as gpu_check.sh describes.
set -u
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu_train.sh OUT_DIR NAME... [-- JSON_OVERRIDES]}
shift
NAMES=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do NAMES+=("$1"); shift; done
OVERRIDES=${2:-"{}"}
if [ ${#NAMES[@]} -eq 0 ]; then echo "gpu_train.sh: name at least one stage config (configs/testbed/NAME.yaml)" >&2; exit 2; fi
for name in "${NAMES[@]}"; do
    [ -f "configs/testbed/$name.yaml" ] || { echo "gpu_train.sh: no configs/testbed/$name.yaml" >&2; exit 2; }
done
mkdir -p "$OUT"
PY=${PYTHON:-$(command -v python || command -v python3)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
TRAIN='
import json, sys
from arr_coc.training.config import load_config_file
from arr_coc.training.testbed import train_testbed, train_testbed_config
config = train_testbed_config(load_config_file(sys.argv[1]), {"device": "cuda", "out": sys.argv[2]}, json.loads(sys.argv[3]))
result = train_testbed(config)
print(f"{config.out}: {result.steps} steps, held-out accuracy with all tokens {result.heldout_accuracy:.3f}")
'
for name in "${NAMES[@]}"; do
    "$PY" -c "$TRAIN" "configs/testbed/$name.yaml" "$OUT/$name" "$OVERRIDES" > "$OUT/$name.log" 2>&1 &
done
FAILED=0
for job in $(jobs -p); do wait "$job" || FAILED=$((FAILED + 1)); done
for name in "${NAMES[@]}"; do tail -n 1 "$OUT/$name.log"; done
exit $FAILED
