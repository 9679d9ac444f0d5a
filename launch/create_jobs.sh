#!/usr/bin/env bash
# Create the W&B Launch jobs of ARR-COC from the bundle's container image.
#
#   ENTITY=my-team PROJECT=arr-coc IMAGE=us-docker.pkg.dev/my-gcp/arr-coc/arr-coc:0.2.0 launch/create_jobs.sh
#
# The jobs read their parameters through wandb.config, so every key of the
# files in launch/overrides/ can be overridden from the Launch drawer or with
# `wandb launch --config FILE`.
set -euo pipefail
: "${ENTITY:?set ENTITY (W&B entity)}"
: "${PROJECT:=arr-coc}"
: "${IMAGE:?set IMAGE (container image with the arr-coc package installed)}"

wandb job create image "$IMAGE" \
  --entity "$ENTITY" --project "$PROJECT" --name arr-coc-train-scorer \
  --description "Train the ARR-COC relevance scorer on the synthetic set (job_type=train)" \
  --entry-point "arr-coc train-scorer --no-progress"

wandb job create image "$IMAGE" \
  --entity "$ENTITY" --project "$PROJECT" --name arr-coc-eval \
  --description "Evaluate one ARR-COC variant (job_type=eval, group=variant)" \
  --entry-point "arr-coc eval --variant arr-coc-25"

wandb job create image "$IMAGE" \
  --entity "$ENTITY" --project "$PROJECT" --name arr-coc-distill-scorer \
  --description "Distil a relevance scorer from the served VLM itself, no labels (job_type=distill; shard K/N shares the teacher maps)" \
  --entry-point "arr-coc distill-scorer --no-progress"
