#!/usr/bin/env bash
# Create a Cloud TPU VM and install oneshot-tf on it. Run this on your workstation (gcloud
# installed and authenticated), not on the VM.
#
#   TPU_NAME=oneshot ZONE=europe-west4-a tpu/create_vm.sh                  # v3-8, this checkout copied over
#   TPU_NAME=oneshot ZONE=us-central2-b ACCELERATOR_TYPE=v4-8 tpu/create_vm.sh
#   TPU_NAME=oneshot ZONE=europe-west4-a SKIP_CREATE=1 tpu/create_vm.sh    # reinstall on an existing VM
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: TPU_NAME=NAME ZONE=ZONE [VAR=VALUE ...] tpu/create_vm.sh

Creates a TPU VM with `gcloud compute tpus tpu-vm create`, copies the code to every worker
(or clones REPO_URL there), installs it with `pip install -e .` into ~/oneshot-venv (a venv that
also sees the runtime image's own TensorFlow) and checks that TensorFlow sees the TPU.

Variables (defaults in brackets):
  TPU_NAME          name of the TPU VM (required)
  ZONE              zone with capacity for ACCELERATOR_TYPE, e.g. europe-west4-a, us-central1-a (v3),
                    us-central2-b (v4) (required)
  PROJECT           GCP project                                   [gcloud's configured project]
  ACCELERATOR_TYPE  v3-8 | v4-8 | v2-8 | ... ; pod slices: v3-32, v4-16, ...   [v3-8]
  RUNTIME_VERSION   TPU VM software version; must match TensorFlow 2.21 (see
                    `gcloud compute tpus tpu-vm versions list --zone=$ZONE`); pod slices use the
                    '-pod-pjrt' variant                            [tpu-vm-tf-2.21.0-pjrt]
  CHECK_RUNTIME     1: refuse a RUNTIME_VERSION not listed for ZONE   [1]
  SPOT              1: create a Spot TPU (cheaper, can be preempted at any time)   [0]
  CREATE_FLAGS      extra flags for `gcloud compute tpus tpu-vm create`, e.g.
                    "--service-account=SA --scopes=cloud-platform"   []
  SKIP_CREATE       1: do not create, only (re)install on an existing VM   [0]
  REPO_URL          git URL to clone on the VM; empty: copy this checkout   []
  REPO_REF          branch or tag to check out with REPO_URL      [the default branch]
  REMOTE_DIR        checkout directory on the VM, relative to the home directory   [oneshot-tf]
  TF_TPU_PACKAGE    extra pip requirement installed after the package, for a runtime image without
                    a TPU build of TensorFlow 2.21, e.g. "tensorflow-tpu==2.21.*"
                    (from https://storage.googleapis.com/libtpu-tf-releases/index.html)   []
  VERIFY            1: initialize the TPU on worker 0 and print the replica count
                    (single-host slices only, i.e. ACCELERATOR_TYPE ending in -8 or less)   [1]
EOF
}

# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
help_or_no_args "$@"

TPU_NAME="${TPU_NAME:-}"
ZONE="${ZONE:-}"
missing=()
[[ -n "$TPU_NAME" ]] || missing+=(TPU_NAME)
[[ -n "$ZONE" ]] || missing+=(ZONE)
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "error: set ${missing[*]}" >&2
  usage
  exit 2
fi
PROJECT="${PROJECT:-}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v3-8}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-vm-tf-2.21.0-pjrt}"
CHECK_RUNTIME="${CHECK_RUNTIME:-1}"
SPOT="${SPOT:-0}"
CREATE_FLAGS="${CREATE_FLAGS:-}"
SKIP_CREATE="${SKIP_CREATE:-0}"
REPO_URL="${REPO_URL:-}"
REPO_REF="${REPO_REF:-}"
REMOTE_DIR="${REMOTE_DIR:-oneshot-tf}"
TF_TPU_PACKAGE="${TF_TPU_PACKAGE:-}"
VERIFY="${VERIFY:-1}"

if ! command -v gcloud >/dev/null 2>&1; then
  echo "error: gcloud not found; install the Google Cloud CLI and run 'gcloud auth login'" >&2
  exit 1
fi

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(dirname "$script_dir")"

common=(--zone="$ZONE")
if [[ -n "$PROJECT" ]]; then
  common+=(--project="$PROJECT")
fi

# Single host: v2-8, v3-8, v4-8, v5litepod-8, ... (the number after the last '-' is at most 8).
size="${ACCELERATOR_TYPE##*-}"
single_host=0
if [[ "$size" =~ ^[0-9]+$ ]] && (( size <= 8 )); then
  single_host=1
fi
if [[ "$single_host" == 0 && "$RUNTIME_VERSION" != *-pod* ]]; then
  echo "warning: $ACCELERATOR_TYPE is a multi-host pod slice; TensorFlow pod slices use a '-pod' runtime" \
       "(e.g. tpu-vm-tf-2.21.0-pod-pjrt), RUNTIME_VERSION is $RUNTIME_VERSION" >&2
fi

# 1. Create the TPU VM.
if [[ "$SKIP_CREATE" != 1 ]]; then
  if [[ "$CHECK_RUNTIME" == 1 ]]; then
    versions="$(gcloud compute tpus tpu-vm versions list "${common[@]}" --format='value(version)')"
    if ! grep -qxF -- "$RUNTIME_VERSION" <<<"$versions"; then
      echo "error: runtime version '$RUNTIME_VERSION' is not offered in $ZONE. TensorFlow runtimes there:" >&2
      grep -E '^tpu-vm-tf-' <<<"$versions" | sort -V >&2 || echo "  (none)" >&2
      echo "Pick the one matching TensorFlow 2.21 (RUNTIME_VERSION=...), or a base image such as" \
           "tpu-ubuntu2204-base with TF_TPU_PACKAGE='tensorflow-tpu==2.21.*'; CHECK_RUNTIME=0 skips this check." >&2
      exit 1
    fi
  fi
  create=(gcloud compute tpus tpu-vm create "$TPU_NAME" "${common[@]}"
          --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION")
  if [[ "$SPOT" == 1 ]]; then
    create+=(--spot)
  fi
  if [[ -n "$CREATE_FLAGS" ]]; then
    read -r -a extra <<<"$CREATE_FLAGS"
    create+=("${extra[@]}")
  fi
  echo "+ ${create[*]}" >&2
  "${create[@]}"
fi

ssh_all=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${common[@]}" --worker=all)
scp_all=(gcloud compute tpus tpu-vm scp "${common[@]}" --worker=all)

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT

# 2. Get the code onto every worker.
if [[ -z "$REPO_URL" ]]; then
  echo "copying $repo_dir to ~/$REMOTE_DIR on every worker" >&2
  tar -C "$repo_dir" -czf "$workdir/oneshot-tf.tar.gz" \
      --exclude=./.git --exclude=./.venv --exclude=./runs --exclude='*.egg-info' \
      --exclude='__pycache__' --exclude='.pytest_cache' .
  "${scp_all[@]}" "$workdir/oneshot-tf.tar.gz" "$TPU_NAME:oneshot-tf.tar.gz"
fi

# 3. Install (the same script on every worker).
{
  echo 'set -euo pipefail'
  printf 'REMOTE_DIR=%q\nREPO_URL=%q\nREPO_REF=%q\nTF_TPU_PACKAGE=%q\n' \
         "$REMOTE_DIR" "$REPO_URL" "$REPO_REF" "$TF_TPU_PACKAGE"
  cat <<'REMOTE'
cd "$HOME"
if [[ -n "$REPO_URL" ]]; then
  if [[ -d "$REMOTE_DIR/.git" ]]; then
    git -C "$REMOTE_DIR" fetch --quiet --tags origin
    ref="${REPO_REF:-HEAD}"
    commit="$(git -C "$REMOTE_DIR" rev-parse --verify --quiet "origin/$ref^{commit}" \
              || git -C "$REMOTE_DIR" rev-parse --verify "$ref^{commit}")"
    git -C "$REMOTE_DIR" checkout --quiet --detach "$commit"
  else
    git clone --quiet ${REPO_REF:+--branch "$REPO_REF"} "$REPO_URL" "$REMOTE_DIR"
  fi
else
  mkdir -p "$REMOTE_DIR"
  tar -C "$REMOTE_DIR" -xzf oneshot-tf.tar.gz
  rm -f oneshot-tf.tar.gz
fi
# A venv that still sees the TensorFlow build preinstalled on TPU runtime images.
if [[ ! -x "$HOME/oneshot-venv/bin/python" ]]; then
  if ! python3 -m venv --system-site-packages "$HOME/oneshot-venv"; then
    sudo apt-get update -q && sudo apt-get install -y -q python3-venv
    python3 -m venv --system-site-packages "$HOME/oneshot-venv"
  fi
fi
# shellcheck source=/dev/null
. "$HOME/oneshot-venv/bin/activate"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -e "$HOME/$REMOTE_DIR"
# tensorflow-datasets needs importlib_resources to download and prepare datasets (tpu/prepare_data.sh).
python -m pip install --quiet importlib_resources
if [[ -n "$TF_TPU_PACKAGE" ]]; then
  python -m pip install --quiet "$TF_TPU_PACKAGE" -f https://storage.googleapis.com/libtpu-tf-releases/index.html
fi
python -c 'import socket, tensorflow as tf, keras; print(socket.gethostname(), "tensorflow", tf.__version__, tf.__file__, "keras", keras.__version__)'
REMOTE
} >"$workdir/install.sh"

"${scp_all[@]}" "$workdir/install.sh" "$TPU_NAME:oneshot-install.sh"
"${ssh_all[@]}" --command='bash oneshot-install.sh && rm -f oneshot-install.sh'

# 4. Check that TensorFlow sees the TPU (worker 0; single-host slices only).
if [[ "$VERIFY" == 1 ]]; then
  if [[ "$single_host" == 1 ]]; then
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${common[@]}" --worker=0 \
      --command="cd $(printf '%q' "$REMOTE_DIR") && STEP=check tpu/run_paper.sh"
  else
    echo "pod slice: skipped the TPU check; on worker 0 run: cd $REMOTE_DIR && STEP=check TPU=$TPU_NAME tpu/run_paper.sh" >&2
  fi
fi

cat >&2 <<EOF

Done. Next:
  gcloud compute tpus tpu-vm ssh $TPU_NAME ${common[*]}
  cd $REMOTE_DIR && BUCKET=<bucket> tpu/prepare_data.sh && BUCKET=<bucket> tpu/run_paper.sh
Delete the VM when finished (it is billed while it exists):
  gcloud compute tpus tpu-vm delete $TPU_NAME ${common[*]}
EOF
