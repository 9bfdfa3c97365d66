#!/bin/sh
# Build and install signing-gateway. The Dockerfile runs exactly these steps, and so does
# tests/e2e/test_deploy_files.py, so the image's install cannot drift from what the tests check.
#
#   install.sh wheels SOURCE_DIR WHEEL_DIR   build stage: the gateway's wheel and a wheel of every dependency
#   install.sh venv WHEEL_DIR VENV_DIR       final stage: a fresh virtualenv from those wheels only (no index,
#                                            no compiler, no pip inside it), then prove the command runs
#
# PYTHON names the interpreter (default: python3); its pip (>= 22.3, for --python) does the work.
set -eu

python=${PYTHON:-python3}

usage() {
  echo "usage: $0 wheels SOURCE_DIR WHEEL_DIR | venv WHEEL_DIR VENV_DIR" >&2
  exit 2
}

[ $# -eq 3 ] || usage
case "$1" in
  wheels)
    "$python" -m pip wheel --wheel-dir "$3" "$2"
    ;;
  venv)
    "$python" -m venv --without-pip "$3"
    "$python" -m pip --python "$3/bin/python" install --no-index --find-links "$2" signing-gateway
    "$3/bin/signing-gateway" --version
    ;;
  *)
    usage
    ;;
esac
