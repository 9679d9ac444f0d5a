#!/usr/bin/env bash
# "Serve your own model" end to end on a real-size configuration, on CPU: a random-weight
# Qwen2.5-VL-3B checkpoint stands in for a hub id (no hub access here). Every command of the
# README's section runs: distill-scorer with each teacher, models import, bentoml serve, one answer.
# The attention layers are given (--layers auto, which tries five ranges, is shown on the testbed):
# a 3B forward takes seconds on two cores. The server loads the weights in bfloat16, the scorer
# having been distilled beside them in float32 (the fingerprint holds across the two).
#
#   bash benchmarks/serve_own_model.sh [WORK_DIR]     # ~25 min, ~20 GB of memory and ~25 GB of disk on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/serve-own-model}
BIN=${BIN:-.venv/bin}
mkdir -p "$WORK"
export HF_HUB_OFFLINE=1 WANDB_MODE=offline WANDB_DIR="$WORK" BENTOML_HOME="$WORK/bentoml" ARR_COC_HOME="$WORK/home"
clock() { date +%s; }
step() { echo; echo "== $*"; }

step "a random-weight 3B checkpoint"
[ -f "$WORK/model/config.json" ] || "$BIN/python" benchmarks/real_size_checkpoint.py qwen2.5-vl-3b "$WORK/model"

step "the user's images and questions (small images: 112 px, 16 visual tokens)"
"$BIN/python" - "$WORK" <<'PY'
import json, sys
from pathlib import Path
from arr_coc.tasks.shapes_vqa import ShapesVQA
work = Path(sys.argv[1]); images = work / "images"; images.mkdir(exist_ok=True)
scenes = ShapesVQA(8, "heldout", 1)
with open(work / "questions.jsonl", "w") as lines:
    for i in range(len(scenes)):
        scene = scenes[i]
        scene.image.resize((112, 112)).save(images / f"scene{i}.png")
        lines.write(json.dumps({"image": f"images/scene{i}.png", "question": scene.question}) + "\n")
print(f"{len(scenes)} images, {len(scenes)} questions in {work}")
PY

for teacher in attention attribution; do
    step "distill-scorer --teacher $teacher"
    start=$(clock)
    "$BIN/arr-coc" distill-scorer --model "$WORK/model" --questions "$WORK/questions.jsonl" --teacher "$teacher" \
        --layers 0.25,0.75 --steps 3 --out "$WORK/scorer-$teacher" --wandb offline --no-progress 2>&1 | grep -v "^wandb:" | tail -12
    echo "-- distill-scorer --teacher $teacher: $(( $(clock) - start )) s"
done

step "models import (the VLM and the attention-distilled scorer)"
"$BIN/arr-coc" models import --vlm "$WORK/model" --scorer "$WORK/scorer-attention" | tee "$WORK/tags.txt"
VLM_TAG=$(sed -n 1p "$WORK/tags.txt"); SCORER_TAG=$(sed -n 2p "$WORK/tags.txt")

step "bentoml serve from the model store, one answer"
ARR_COC_MODEL="model-store:$VLM_TAG" ARR_COC_SCORER="model-store:$SCORER_TAG" ARR_COC_DTYPE=bfloat16 \
    "$BIN/bentoml" serve service:ARRCOC --host 127.0.0.1 --port 3917 > "$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 180); do
    curl -sf http://127.0.0.1:3917/readyz > /dev/null && break
    sleep 5
done
curl -sf http://127.0.0.1:3917/v1/models | "$BIN/python" -c "import json,sys; print(json.dumps(json.load(sys.stdin).get('arr_coc')))"
curl -sf http://127.0.0.1:3917/answer -F image=@"$WORK/images/scene0.png" -F "question=What colour is the circle?" \
    -F variant=arr-coc-25 -F max_new_tokens=4 | "$BIN/python" -c "
import json, sys
body = json.load(sys.stdin)
print({k: body[k] for k in ('scorer', 'kept_tokens', 'total_tokens') if k in body})
assert body.get('scorer') == 'trained', body"
echo "served with the distilled scorer"
