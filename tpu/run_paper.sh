#!/usr/bin/env bash
# Run the paper preset of oneshot-tf on a Cloud TPU VM (run this ON the VM).
#
#   BUCKET=my-bucket tpu/run_paper.sh                        # CIFAR-10, all three steps
#   BUCKET=my-bucket DATASET=cifar100 tpu/run_paper.sh       # CIFAR-100
#   BUCKET=my-bucket STEP=train tpu/run_paper.sh             # one step only (train|score|retrain)
#   STEP=check tpu/run_paper.sh                              # is the TPU visible? how many replicas?
#   MODEL_DIR=gs://my-bucket/runs/cifar10-20250101 BUCKET=my-bucket tpu/run_paper.sh   # resume a run
#
# Extra arguments are passed to the binary unchanged, e.g. `tpu/run_paper.sh --quiet --num_winners=2`.
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: BUCKET=NAME [VAR=VALUE ...] tpu/run_paper.sh [extra experiments flags ...]

Runs `python -m experiments.$STEP --preset=paper` on this TPU VM.

Variables (defaults in brackets):
  BUCKET      GCS bucket name, without gs:// (required unless both DATA_DIR and MODEL_DIR are set)
  DATASET     cifar10 | cifar100                                 [cifar10]
  DATA_DIR    prepared tensorflow-datasets directory             [gs://$BUCKET/tensorflow_datasets]
  MODEL_DIR   run directory; every step resumes in it            [gs://$BUCKET/runs/$DATASET-<today, YYYYMMDD>]
              (set it explicitly to resume a run started on another day)
  STEP        run (all three steps) | train | score | retrain | check   [run]
  PRESET      preset of the experiments binaries                 [paper]
  STRATEGY    tf.distribute strategy                             [tpu]
  TPU         'local' on a single-host TPU VM; the TPU's name on worker 0 of a pod slice   [local]
  PRECISION   value of --precision; empty: do not pass the flag  [mixed_bfloat16]
  PJRT        1: on a single-host VM export the PJRT plugin variables
              (NEXT_PLUGGABLE_DEVICE_USE_C_API, TF_PLUGGABLE_DEVICE_LIBRARY_PATH) unless already set;
              0: leave the environment alone (stream-executor '-se' runtimes)   [1]
  LIBTPU      libtpu.so for TF_PLUGGABLE_DEVICE_LIBRARY_PATH     [/lib/libtpu.so, else the pip libtpu package's]
  PYTHON      interpreter                                        [~/oneshot-venv/bin/python if present, else python3]
  DRY_RUN     1: print the command instead of running it         [0]
EOF
}

# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
esac

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(dirname "$script_dir")"

BUCKET="${BUCKET:-}"
BUCKET="${BUCKET#gs://}"
BUCKET="${BUCKET%/}"
DATASET="${DATASET:-cifar10}"
STEP="${STEP:-run}"
PRESET="${PRESET:-paper}"
STRATEGY="${STRATEGY:-tpu}"
TPU="${TPU:-local}"
PRECISION="${PRECISION-mixed_bfloat16}"
PJRT="${PJRT:-1}"
LIBTPU="${LIBTPU:-}"
DRY_RUN="${DRY_RUN:-0}"
PYTHON="$(default_python)"

case "$STEP" in
  run | train | score | retrain | check) ;;
  *) echo "error: STEP=$STEP; use run, train, score, retrain or check" >&2; usage; exit 2 ;;
esac

if [[ "$STEP" != check ]]; then
  if [[ -z "$BUCKET" && ( -z "${DATA_DIR:-}" || -z "${MODEL_DIR:-}" ) ]]; then
    echo "error: set BUCKET (or both DATA_DIR and MODEL_DIR)" >&2
    usage
    exit 2
  fi
  DATA_DIR="${DATA_DIR:-gs://$BUCKET/tensorflow_datasets}"
  MODEL_DIR="${MODEL_DIR:-gs://$BUCKET/runs/$DATASET-$(date +%Y%m%d)}"
fi

# Runtime environment for TensorFlow on the TPU.
if [[ "$TPU" == local || -z "$TPU" ]]; then
  if [[ "$PJRT" == 1 && -z "${TF_PLUGGABLE_DEVICE_LIBRARY_PATH:-}" ]]; then
    if [[ -z "$LIBTPU" ]]; then
      if [[ -f /lib/libtpu.so ]]; then
        LIBTPU=/lib/libtpu.so
      else
        LIBTPU="$("$PYTHON" -c 'import os, libtpu; print(os.path.join(os.path.dirname(libtpu.__file__), "libtpu.so"))' 2>/dev/null || true)"
      fi
    fi
    if [[ -n "$LIBTPU" && -f "$LIBTPU" ]]; then
      export NEXT_PLUGGABLE_DEVICE_USE_C_API="${NEXT_PLUGGABLE_DEVICE_USE_C_API:-true}"
      export TF_PLUGGABLE_DEVICE_LIBRARY_PATH="$LIBTPU"
    else
      echo "note: no libtpu.so found; leaving the PJRT variables unset (TensorFlow looks for libtpu itself)" >&2
    fi
  fi
else
  # Pod slice: TensorFlow is one client on worker 0 that drives the TPU runtime of every host;
  # this process must not load libtpu itself.
  export TPU_LOAD_LIBRARY="${TPU_LOAD_LIBRARY:-0}"
fi

cd "$repo_dir"

if [[ "$DRY_RUN" == 1 ]]; then
  for var in NEXT_PLUGGABLE_DEVICE_USE_C_API TF_PLUGGABLE_DEVICE_LIBRARY_PATH TPU_LOAD_LIBRARY; do
    if [[ -n "${!var:-}" ]]; then
      echo "export $var=${!var}"
    fi
  done
fi

if [[ "$STEP" == check ]]; then
  cmd=("$PYTHON" - "$TPU")
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    echo '<<check script>>'
    exit 0
  fi
  "${cmd[@]}" <<'PY'
import sys
import tensorflow as tf
from oneshot_tf import config
from oneshot_tf.distribute import get_distribution_strategy

print("tensorflow", tf.__version__, "from", tf.__file__)
strategy = get_distribution_strategy("tpu", tpu_address=sys.argv[1])
replicas = strategy.num_replicas_in_sync
print("TPU replicas in sync:", replicas)
paper = config.resolve("paper", {})
problems = []
for name, batch in (("batch_size", paper.batch_size), ("retrain_batch_size", paper.retrain_batch_size),
                    ("candidates_per_pass", paper.candidates_per_pass)):
    if batch % replicas:
        problems.append(f"--{name}={batch} does not divide by {replicas} replicas")
    else:
        print(f"--{name}={batch}: {batch // replicas} per replica")
per_replica = paper.batch_size // replicas if paper.batch_size % replicas == 0 else None
if per_replica is not None:
    if per_replica % paper.settings.ghost_batch_size:
        problems.append(f"{per_replica} examples per replica is not a multiple of "
                        f"--ghost_batch_size={paper.settings.ghost_batch_size}")
    else:
        print(f"one-shot training: {per_replica // paper.settings.ghost_batch_size} ghost batches of "
              f"{paper.settings.ghost_batch_size} per replica")
for p in problems:
    print("problem:", p)
sys.exit(1 if problems else 0)
PY
  exit $?
fi

cmd=("$PYTHON" -m "experiments.$STEP"
     --preset="$PRESET" --dataset="$DATASET"
     --strategy="$STRATEGY" --tpu="$TPU"
     --data_dir="$DATA_DIR" --model_dir="$MODEL_DIR")
if [[ -n "$PRECISION" ]]; then
  cmd+=(--precision="$PRECISION")
fi
cmd+=("$@")

echo "MODEL_DIR=$MODEL_DIR   (rerun with this MODEL_DIR to resume)" >&2
if [[ "$DRY_RUN" == 1 ]]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"
