#!/usr/bin/env bash
# Prepare CIFAR-10/100 as tensorflow-datasets in a data directory (by default in the bucket).
#
#   BUCKET=my-bucket tpu/prepare_data.sh                            # on the TPU VM: straight into the bucket
#   DATA_DIR=$HOME/tensorflow_datasets UPLOAD_TO=gs://my-bucket/tensorflow_datasets tpu/prepare_data.sh
#                                                                   # anywhere: build locally, then copy up
#
# Uses the tensorflow_datasets Python API (builder.download_and_prepare), the same thing as
# `tfds build NAME --data_dir=DIR`, without the CLI's apache-beam import.
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: BUCKET=NAME [VAR=VALUE ...] tpu/prepare_data.sh

Downloads and prepares tensorflow-datasets so that the experiments binaries can read them with
--data_dir. Needs network access (the CIFAR archives are downloaded from their original site).

Variables (defaults in brackets):
  BUCKET        GCS bucket name, without gs:// (required unless DATA_DIR is set)
  DATA_DIR      where the prepared datasets go (local path or gs://)   [gs://$BUCKET/tensorflow_datasets]
  DATASETS      space-separated tfds names                            [cifar10 cifar100]
  DOWNLOAD_DIR  where the raw archives are downloaded (kept out of the bucket)   [${TMPDIR:-/tmp}/tfds_downloads]
  UPLOAD_TO     optional gs:// directory: copy each prepared dataset there afterwards
                (for DATA_DIR on a local disk); uses `gcloud storage cp -r`
  VERIFY        1: load every dataset with oneshot_tf.data.load_dataset and print its splits   [1]
  PYTHON        interpreter                                           [~/oneshot-venv/bin/python if present, else python3]
EOF
}

# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
help_or_no_args "$@"

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(dirname "$script_dir")"

BUCKET="${BUCKET:-}"
BUCKET="${BUCKET#gs://}"
BUCKET="${BUCKET%/}"
if [[ -z "$BUCKET" && -z "${DATA_DIR:-}" ]]; then
  echo "error: set BUCKET (or DATA_DIR)" >&2
  usage
  exit 2
fi
DATA_DIR="${DATA_DIR:-gs://$BUCKET/tensorflow_datasets}"
DATASETS="${DATASETS:-cifar10 cifar100}"
DOWNLOAD_DIR="${DOWNLOAD_DIR:-${TMPDIR:-/tmp}/tfds_downloads}"
UPLOAD_TO="${UPLOAD_TO:-}"
UPLOAD_TO="${UPLOAD_TO%/}"
VERIFY="${VERIFY:-1}"
PYTHON="$(default_python)"

read -r -a names <<<"$DATASETS"
if [[ ${#names[@]} -eq 0 ]]; then
  echo "error: DATASETS is empty" >&2
  exit 2
fi
if [[ -n "$UPLOAD_TO" && "$UPLOAD_TO" != gs://* ]]; then
  echo "error: UPLOAD_TO must be a gs:// directory, got '$UPLOAD_TO'" >&2
  exit 2
fi

# tensorflow-datasets 4.9.x imports importlib_resources (an optional dependency of etils) in
# download_and_prepare, and `pip install -e .` does not bring it in.
if ! "$PYTHON" -c 'import tensorflow_datasets, importlib_resources' 2>/dev/null; then
  echo "error: $PYTHON cannot import tensorflow_datasets and importlib_resources; install them:" >&2
  echo "  $PYTHON -m pip install tensorflow-datasets importlib_resources" >&2
  exit 1
fi

echo "preparing ${names[*]} in $DATA_DIR (downloads in $DOWNLOAD_DIR)" >&2
mkdir -p "$DOWNLOAD_DIR"
"$PYTHON" - "$DATA_DIR" "$DOWNLOAD_DIR" "${names[@]}" <<'PY'
import sys

import tensorflow_datasets as tfds

data_dir, download_dir, names = sys.argv[1], sys.argv[2], sys.argv[3:]
for name in names:
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
        print(f"{name}: already prepared in {builder.data_dir}")
    else:
        print(f"{name}: downloading and preparing into {builder.data_dir} ...", flush=True)
        builder.download_and_prepare(download_dir=download_dir)
    splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    print(f"{name}: {splits}")
PY

if [[ -n "$UPLOAD_TO" ]]; then
  for name in "${names[@]}"; do
    echo "copying $DATA_DIR/$name to $UPLOAD_TO/" >&2
    gcloud storage cp -r "$DATA_DIR/$name" "$UPLOAD_TO/"
  done
  DATA_DIR="$UPLOAD_TO"
fi

if [[ "$VERIFY" == 1 ]]; then
  cd "$repo_dir"
  "$PYTHON" - "$DATA_DIR" "${names[@]}" <<'PY'
import sys

from oneshot_tf.data import load_dataset

data_dir, names = sys.argv[1], sys.argv[2:]
for name in names:
    print(f"{name} as the experiments see it (--data_dir={data_dir}):", load_dataset(name, data_dir=data_dir).summary())
PY
fi
echo "done: pass --data_dir=$DATA_DIR (run_paper.sh: DATA_DIR=$DATA_DIR)" >&2
