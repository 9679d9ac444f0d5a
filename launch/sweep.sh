#!/usr/bin/env bash
# Queue one eval job per (method, budget) of the sweep in launch/overrides/eval-*.json.
#
#   ENTITY=my-team PROJECT=arr-coc QUEUE=vertex-l4 launch/sweep.sh
set -euo pipefail
: "${ENTITY:?set ENTITY}"
: "${PROJECT:=arr-coc}"
: "${QUEUE:?set QUEUE (a Launch queue, see launch/queues/)}"
here="$(cd "$(dirname "$0")" && pwd)"
for config in "$here"/overrides/eval-*.json; do
  wandb launch --job "$ENTITY/$PROJECT/arr-coc-eval:latest" --queue "$QUEUE" \
    --entity "$ENTITY" --project "$PROJECT" --config "$config"
done
