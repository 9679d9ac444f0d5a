#!/usr/bin/env bash
# One GPU check of the serving path: correctness, then every speed figure, into one text file.
#
#   bash benchmarks/gpu_check.sh [OUT_FILE]        # default gpu_check.txt; ~9 min on one H200
#   bash benchmarks/gpu_check.sh --smoke [OUT_FILE] # the same steps on CPU at toy sizes (CI runs this)
#
# For a machine with one CUDA GPU, Python 3.12, torch preinstalled and no network.
# Prepare the other wheels on a machine with network (TORCHVISION = the torchvision
# release paired with the GPU machine's torch, e.g. 0.26.0 for torch 2.11):
#
#   pip download -d wheels --python-version 3.12 --platform manylinux2014_x86_64 --only-binary=:all: \
#       "torchvision==$TORCHVISION" --no-deps
#   pip download -d wheels --python-version 3.12 --platform manylinux2014_x86_64 --only-binary=:all: \
#       -r benchmarks/gpu-requirements.txt
#
# and on the GPU machine, in the repository:
#
#   pip install --no-index --find-links wheels --no-deps torchvision
#   pip install --no-index --find-links wheels -r benchmarks/gpu-requirements.txt
#   pip install --no-index --no-deps --no-build-isolation -e .
#
# Every step runs under its own time limit; a failed or timed-out step is recorded and
# the next one runs. The exit status is the number of failed steps.
set -u
cd "$(dirname "$0")/.."

SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; shift; fi
OUT=${1:-gpu_check.txt}
PY=${PYTHON:-$(command -v python || command -v python3)}
: > "$OUT"
FAILED=0

step() {  # step NAME LIMIT_S COMMAND...
    local name=$1 limit=$(($2 * LIMIT_SCALE))
    shift 2
    local start=$SECONDS
    echo "== $name (limit ${limit} s): $*" | tee -a "$OUT"
    timeout --kill-after=10 "$limit" "$@" >> "$OUT" 2>&1
    local rc=$?
    [ $rc -eq 0 ] || FAILED=$((FAILED + 1))
    echo "-- $name: exit $rc after $((SECONDS - start)) s" | tee -a "$OUT"
    echo >> "$OUT"
}

export HF_HUB_OFFLINE=1 WANDB_MODE=disabled BENTOML_DO_NOT_TRACK=true
if [ $SMOKE -eq 1 ]; then
    DEVICE=cpu MODEL=testbed SERVE_GPU=0 DTYPES="float32" LIMIT_SCALE=${LIMIT_SCALE:-4}
    SCORER_BATCHES="1 4" BATCHES="1 4" DECODE_BATCHES="1 2" BUCKETS="1 2" STEPS=4 REQUESTS=4 CONCURRENCY="1 2" WIDTH=2
else
    DEVICE=cuda MODEL=qwen2.5-vl-3b SERVE_GPU=0.5 DTYPES="float32 bfloat16" LIMIT_SCALE=${LIMIT_SCALE:-1}
    SCORER_BATCHES="1 16 64" BATCHES="1 8 16 32" DECODE_BATCHES="1 16" BUCKETS="1 2 4 8 16" STEPS=64 REQUESTS=64 \
        CONCURRENCY="1 16" WIDTH=16
fi

step environment 30 "$PY" -c "import torch, transformers, bentoml; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'| transformers', transformers.__version__, '| bentoml', bentoml.__version__); \
print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')"

for dtype in $DTYPES; do
    step "greedy ids = stock generate, three families, $DEVICE $dtype" 60 \
        env ARR_COC_TEST_DEVICE=$DEVICE ARR_COC_TEST_DTYPE=$dtype "$PY" -m pytest -q -p no:cacheprovider \
        tests/test_vlm_equivalence.py tests/test_pre_encoder.py -k greedy_ids
done

step "scorer images/s" 30 "$PY" benchmarks/bench_scorer.py --device $DEVICE --repeats 5 --batches $SCORER_BATCHES
step "vision tower: stock SDPA vs packed attention" 45 "$PY" benchmarks/bench_vision.py --model $MODEL \
    --device $DEVICE --images 448 1344 --batch 1 --repeats 3
for side in 448 1344; do
    step "TTFT vs budget, ${side}x${side}" 60 "$PY" benchmarks/bench_prune.py --models $MODEL --device $DEVICE \
        --image $side --repeats 3 --budgets 1.0 0.5 0.25 0.1 auto
done
step "decode ms/step, eager vs graph vs step scheduler" 75 "$PY" benchmarks/bench_decode.py --model $MODEL \
    --device $DEVICE --modes eager graph step --batches $DECODE_BATCHES --steps $STEPS
step "decode ids in float32 at every bucket, eager vs graph vs step scheduler" 90 "$PY" benchmarks/bench_decode.py \
    --model $MODEL --device $DEVICE --dtype float32 --modes eager graph step --batches $BUCKETS --steps $STEPS --repeats 1
step "second question, vision-feature cache" 45 "$PY" benchmarks/bench_feature_cache.py --models $MODEL \
    --device $DEVICE --image 448
step "in-process batch throughput" 50 "$PY" benchmarks/bench_batch.py --model $MODEL --device $DEVICE \
    --batches $BATCHES --budgets 1.0 0.25 0.1
step "served: both runners on the GPU" 120 env ARR_COC_VLM_GPU=$SERVE_GPU ARR_COC_RELEVANCE_GPU=$SERVE_GPU \
    "$PY" benchmarks/bench_serve.py --requests $REQUESTS --concurrency $CONCURRENCY --batching on step --no-in-process
step "served: mixed load, batch vs step scheduler" 150 env ARR_COC_VLM_GPU=$SERVE_GPU ARR_COC_RELEVANCE_GPU=$SERVE_GPU \
    "$PY" benchmarks/bench_serve.py --workload mixed --requests $REQUESTS --width $WIDTH
step "served: requests/s and cost per variant" 150 env ARR_COC_VLM_GPU=$SERVE_GPU ARR_COC_RELEVANCE_GPU=$SERVE_GPU \
    "$PY" benchmarks/bench_serve.py --workload variants --variants full arr-coc-25 arr-coc-10 divprune-25 \
    --requests $REQUESTS --concurrency $CONCURRENCY --out "${OUT%.txt}-variants.json"
step "Cloud Run capacity per variant: 1M requests a month, peak 10/s, 8 active hours a day" 20 \
    "$PY" -m arr_coc_cli capacity "${OUT%.txt}-variants.json" --requests-per-month 1000000 --peak-rps 10 --active-hours 8

echo "failed steps: $FAILED; figures in $OUT"
exit $FAILED
