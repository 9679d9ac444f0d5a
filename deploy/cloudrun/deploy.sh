#!/usr/bin/env bash
# Build the bento, containerize it, push it, and roll it out on Cloud Run (one NVIDIA L4).
#
#   PROJECT=my-gcp-project REGION=us-central1 deploy/cloudrun/deploy.sh [--vlm ID_OR_DIR] [--scorer DIR]
#
# Needs: docker, gcloud (authenticated, Artifact Registry repo $REPOSITORY in $REGION), and
# the project's virtualenv (make setup). With --vlm/--scorer the models are imported into the
# BentoML model store first; otherwise the store's latest arr-coc-vlm / arr-coc-scorer are used.
set -euo pipefail
cd "$(dirname "$0")/../.."

: "${PROJECT:?set PROJECT to the GCP project id}"
REGION="${REGION:-us-central1}"
REPOSITORY="${REPOSITORY:-arr-coc}"
SERVICE="${SERVICE:-arr-coc}"
BIN="${BIN:-.venv/bin}"

if [[ $# -gt 0 ]]; then
  "$BIN/arr-coc" models import "$@"
fi

# The runners' resources are read when the service is imported: build with the production values.
export ARR_COC_RELEVANCE_GPU=0.5 ARR_COC_VLM_GPU=0.5
tag=$("$BIN/bentoml" build -o tag | tail -n 1 | sed 's/^__tag__://')
image="$REGION-docker.pkg.dev/$PROJECT/$REPOSITORY/${tag%%:*}:${tag##*:}"

"$BIN/bentoml" containerize "$tag" --platform linux/amd64 -t "$image"
docker push "$image"

manifest=$(mktemp)
sed "s|image: IMAGE|image: $image|" deploy/cloudrun/service.yaml > "$manifest"
gcloud run services replace "$manifest" --project "$PROJECT" --region "$REGION"
# Private: no allUsers invoker binding. Grant callers explicitly, e.g.
#   gcloud run services add-iam-policy-binding "$SERVICE" --member user:me@example.com --role roles/run.invoker
gcloud run services describe "$SERVICE" --project "$PROJECT" --region "$REGION" --format 'value(status.url)'
