#!/usr/bin/env bash
# Build the bento, containerize it, push it, and roll it out on Cloud Run (one NVIDIA L4).
#
#   PROJECT=my-gcp-project REGION=us-central1 deploy/cloudrun/deploy.sh [--vlm ID_OR_DIR] [--scorer DIR]
#
# Needs: docker, gcloud (authenticated, Artifact Registry repo $REPOSITORY in $REGION), and
# the project's virtualenv (make setup). With --vlm/--scorer the models are imported into the
# BentoML model store first; otherwise the store's latest arr-coc-vlm / arr-coc-scorer are used.
#
# Variants side by side, as revisions of one service:
#   - With no option the service is replaced from service.yaml (`gcloud run services replace`).
#     The manifest has no traffic block, so its new revision takes all the traffic.
#   - --tag NAME deploys the build as one more revision with `gcloud run deploy --tag NAME
#     --no-traffic`: it keeps the settings of the service's current template (GPU, probes,
#     scaling), takes no traffic and answers at https://NAME---SERVICE-HASH.run.app. The
#     service must exist, so the first deploy is a plain one.
#   - --traffic SPEC splits traffic between tagged revisions with `gcloud run services
#     update-traffic --to-tags`; alone it builds nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."

REGION="${REGION:-us-central1}"
REPOSITORY="${REPOSITORY:-arr-coc}"
SERVICE="${SERVICE:-arr-coc}"
BIN="${BIN:-.venv/bin}"

dry_run=0
revision_tag=""
variant=""
traffic=""
traffic_given=0
import_args=()
traffic_args=()
scope=()
manifest=""
image=""

usage() {
  cat <<EOF
Usage: PROJECT=ID [REGION=us-central1] deploy/cloudrun/deploy.sh [options]

Builds the bento, pushes its image and deploys it to the Cloud Run service \$SERVICE ($SERVICE).

  --vlm ID_OR_DIR     import this VLM into the BentoML model store first (arr-coc models import)
  --scorer DIR        import this relevance scorer first
  --testbed FAMILY    import this testbed first
  --tag NAME          deploy as a revision tagged NAME that gets no traffic, reachable at
                      https://NAME---\$SERVICE-HASH.run.app (the service must exist)
  --variant V         with --tag: the revision serves V when a request names no variant
                      (ARR_COC_DEFAULT_VARIANT=V)
  --traffic SPEC      split traffic between tagged revisions, e.g. arr25=50,full=50 (integer
                      percents summing to 100), or latest=100; without --tag nothing is built
  --dry-run           print the commands (prefixed with "+ ") instead of running them
  -h, --help          this help

Examples:
  deploy/cloudrun/deploy.sh --tag arr25 --variant arr-coc-25
  deploy/cloudrun/deploy.sh --tag full --variant full
  deploy/cloudrun/deploy.sh --traffic arr25=50,full=50
  deploy/cloudrun/deploy.sh --traffic arr25=100
EOF
}

die() {
  echo "deploy.sh: $*" >&2
  exit 2
}

# One word of a command as a shell would read it back.
quote() {
  local plain='^[A-Za-z0-9_./:=,@%+-]+$'
  if [[ $1 =~ $plain ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

show() {
  local line="+" word
  for word in "$@"; do
    line+=" $(quote "$word")"
  done
  echo "$line"
}

run() {
  if ((dry_run)); then
    show "$@"
  else
    "$@"
  fi
}

parse_args() {
  local option
  while (($#)); do
    option=$1
    case $option in
      -h | --help)
        usage
        exit 0
        ;;
      --dry-run) dry_run=1 ;;
      --tag=* | --variant=* | --traffic=* | --vlm=* | --scorer=* | --testbed=*)
        set_option "${option%%=*}" "${option#*=}"
        ;;
      --tag | --variant | --traffic | --vlm | --scorer | --testbed)
        [[ $# -ge 2 && $2 != --* ]] || die "$option needs a value (see --help)"
        set_option "$option" "$2"
        shift
        ;;
      *) die "unknown option: $option (see --help)" ;;
    esac
    shift
  done
}

set_option() {
  [[ -n $2 || $1 == --traffic ]] || die "$1 needs a value (see --help)"
  case $1 in
    --tag) revision_tag=$2 ;;
    --variant) variant=$2 ;;
    --traffic)
      traffic=$2
      traffic_given=1
      ;;
    *) import_args+=("$1" "$2") ;;
  esac
}

# Cloud Run tags are DNS labels: lowercase letters, digits and hyphens, starting with a letter.
check_tag() {
  [[ $1 =~ ^[a-z]([a-z0-9-]*[a-z0-9])?$ ]] ||
    die "bad tag '$1': lowercase letters, digits and hyphens, starting with a letter and not ending with a hyphen"
  [[ $1 != latest ]] || die "'latest' names the latest revision, not a tag: choose another tag"
}

# Sets traffic_args from SPEC: --to-latest for latest=100, else --to-tags with every tag=percent.
parse_traffic() {
  local spec=$1 entry tag percent total=0 entries=() to_tags=()
  local -A seen=()
  [[ -n $spec ]] || die "empty --traffic: give tag=percent entries summing to 100, e.g. arr25=50,full=50"
  [[ $spec != ,* && $spec != *, && $spec != *,,* ]] || die "empty entry in --traffic '$spec'"
  IFS=, read -ra entries <<<"$spec"
  for entry in "${entries[@]}"; do
    [[ $entry == *=* ]] || die "bad entry '$entry' in --traffic: want tag=percent"
    tag=${entry%%=*}
    percent=${entry#*=}
    [[ $percent =~ ^[0-9]{1,3}$ ]] && ((10#$percent <= 100)) ||
      die "bad percent '$percent' for '$tag' in --traffic: an integer from 0 to 100"
    if [[ $tag == latest ]]; then
      ((${#entries[@]} == 1 && 10#$percent == 100)) ||
        die "latest takes all the traffic: use --traffic latest=100 alone"
      traffic_args=(--to-latest)
      return
    fi
    check_tag "$tag"
    [[ -z ${seen[$tag]:-} ]] || die "tag '$tag' appears twice in --traffic"
    seen[$tag]=1
    total=$((total + 10#$percent))
    to_tags+=("$tag=$((10#$percent))")
  done
  ((total == 100)) || die "--traffic percents sum to $total, not 100"
  traffic_args=(--to-tags "$(
    IFS=,
    echo "${to_tags[*]}"
  )")
}

check_args() {
  [[ -z $revision_tag ]] || check_tag "$revision_tag"
  if [[ -n $variant ]]; then
    [[ -n $revision_tag ]] || die "--variant needs --tag: a plain deploy takes its settings from service.yaml"
    [[ $variant =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "bad variant '$variant'"
  fi
  if ((traffic_given)); then
    parse_traffic "$traffic"
    [[ -n $revision_tag || ${#import_args[@]} -eq 0 ]] ||
      die "--traffic alone builds nothing: --vlm/--scorer/--testbed need --tag"
  fi
}

build_requested() {
  [[ -n $revision_tag ]] || ((!traffic_given))
}

# Sets image to the pushed image of a new bento build.
build_and_push() {
  local bento
  if ((${#import_args[@]})); then
    run "$BIN/arr-coc" models import "${import_args[@]}"
  fi
  # The runners' resources are read when the service is imported: build with the production values.
  if ((dry_run)); then
    show env ARR_COC_RELEVANCE_GPU=0.5 ARR_COC_VLM_GPU=0.5 "$BIN/bentoml" build -o tag
    bento="arr-coc:dry-run"
  else
    bento=$(ARR_COC_RELEVANCE_GPU=0.5 ARR_COC_VLM_GPU=0.5 "$BIN/bentoml" build -o tag | tail -n 1 | sed 's/^__tag__://')
  fi
  image="$REGION-docker.pkg.dev/$PROJECT/$REPOSITORY/${bento%%:*}:${bento##*:}"
  run "$BIN/bentoml" containerize "$bento" --platform linux/amd64 -t "$image"
  run docker push "$image"
}

replace_service() {
  if ((dry_run)); then
    manifest=MANIFEST
    echo "+ sed 's|image: IMAGE|image: $image|' deploy/cloudrun/service.yaml > $manifest"
  else
    manifest=$(mktemp --suffix .yaml)
    trap 'rm -f -- "$manifest"' EXIT
    sed "s|image: IMAGE|image: $image|" deploy/cloudrun/service.yaml >"$manifest"
  fi
  run gcloud run services replace "$manifest" "${scope[@]}"
}

# A revision without --variant drops the one it would inherit, and serves the bento's default.
deploy_tagged() {
  local env_args=(--remove-env-vars ARR_COC_DEFAULT_VARIANT)
  [[ -z $variant ]] || env_args=(--update-env-vars "ARR_COC_DEFAULT_VARIANT=$variant")
  run gcloud run deploy "$SERVICE" --image "$image" --tag "$revision_tag" --no-traffic "${env_args[@]}" "${scope[@]}"
}

main() {
  parse_args "$@"
  check_args
  if ((dry_run)); then
    PROJECT="${PROJECT:-PROJECT}"
  else
    : "${PROJECT:?set PROJECT to the GCP project id}"
  fi
  scope=(--project "$PROJECT" --region "$REGION")

  if build_requested; then
    build_and_push
    if [[ -n $revision_tag ]]; then
      deploy_tagged
    else
      replace_service
    fi
  fi
  if ((traffic_given)); then
    run gcloud run services update-traffic "$SERVICE" "${traffic_args[@]}" "${scope[@]}"
  fi

  # Private: no allUsers invoker binding. Grant callers explicitly, e.g.
  #   gcloud run services add-iam-policy-binding "$SERVICE" --member user:me@example.com --role roles/run.invoker
  if [[ -n $revision_tag ]] || ((traffic_given)); then
    # Every revision's share of the traffic, its tag and its tag URL.
    run gcloud run services describe "$SERVICE" "${scope[@]}" --format 'yaml(status.traffic)'
  else
    run gcloud run services describe "$SERVICE" "${scope[@]}" --format 'value(status.url)'
  fi
}

main "$@"
