# Shared by the tpu/ scripts (sourced, not run).

# help_or_no_args "$@": -h/--help prints usage and exits 0; any other argument is an error.
help_or_no_args() {
  case "${1:-}" in
    -h | --help) usage; exit 0 ;;
  esac
  if [[ $# -gt 0 ]]; then
    echo "error: unexpected arguments: $*" >&2
    usage
    exit 2
  fi
}

# default_python: $PYTHON, else the venv create_vm.sh makes, else python3.
default_python() {
  if [[ -n "${PYTHON:-}" ]]; then
    echo "$PYTHON"
  elif [[ -x "$HOME/oneshot-venv/bin/python" ]]; then
    echo "$HOME/oneshot-venv/bin/python"
  else
    echo python3
  fi
}
